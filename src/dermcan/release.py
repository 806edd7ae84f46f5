"""Release a version of the crawled and annotated data set on a DVC remote.

Run from the repository root::

    python -m dermcan.release v1 [--remote NAME] [--no-push] [--dry-run]

The release procedure:

1. checks that the git tree is clean, that the data stages are up to date and that the tag
   ``dataset-<version>`` does not exist yet (a clear error lists what is wrong). The data stages
   are those that write what a release ships (``crawl``, ``annotate``, ``split``,
   ``measure_annotation``) and every stage upstream of them: ``dvc status --with-deps`` on
   :data:`RELEASED_STAGES`. Training, evaluation and GAN stages are not checked, because a data
   release ships no models and should not wait for hours of training;
2. writes ``data/release/DATASHEET.md`` (see ``dermcan.datasheet``), copies the CAN-format
   manifest ``data/annotated/can_manifest.txt`` into ``data/release/``, and packs
   ``data/crawl`` and ``data/annotated`` into tar shards with provenance indexes under
   ``data/release/shards/`` (see ``dermcan.shards``). A few shards move to and from a remote
   much faster than thousands of small files;
3. tracks ``data/release`` with ``dvc add``. The datasheet describes one release, so it is
   made by this command and is no pipeline stage: ``dvc repro`` never rewrites it and never
   reports it stale;
4. freezes the crawl stage (``dvc freeze crawl``), so a plain ``dvc repro`` never re-crawls a
   released crawl. A deliberate refresh is ``dvc unfreeze crawl && dvc repro crawl``;
5. commits, runs ``dvc push`` and creates the annotated tag ``dataset-<version>``.

The tag is created only after the push succeeded, so a tag always names data that is on the
remote. When the push fails, the release commit stays and rerunning the same command finishes
the release: the datasheet is deterministic, so the rerun commits nothing new.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from dermcan import atomic_io
from dermcan.datasheet import locked_params, render_datasheet
from dermcan.release_shards import write_release_shards

log = logging.getLogger(__name__)

RELEASE_FOLDER = Path("data/release")
DATASHEET_NAME = "DATASHEET.md"
CAN_MANIFEST = Path("data/annotated/can_manifest.txt")
FROZEN_STAGE = "crawl"
# The stages whose outputs a release ships: data/crawl, data/annotated, data/split and
# metrics/annotate.json. The up-to-date check covers these and every stage upstream of them.
RELEASED_STAGES = ("crawl", "annotate", "split", "measure_annotation")
TAG_PREFIX = "dataset-"
VERSION_PATTERN = re.compile(r"v\d+(\.\d+){0,2}")


class ReleaseError(RuntimeError):
    """A release precondition or step failed; the message names the problem and the fix."""


@dataclass(frozen=True)
class ReleasePlan:
    """The planned release: its tag, datasheet text and the remote to push to."""

    version: str
    tag: str
    datasheet: str
    remote: str | None
    push: bool


def _run(
    root: Path, *command: str, check: bool = True, environment: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    log.debug("running %s in %s", " ".join(command), root)
    completed = subprocess.run(
        command, cwd=root, capture_output=True, text=True, check=False, env=environment
    )
    if check and completed.returncode != 0:
        output = (completed.stderr or completed.stdout).strip()
        raise ReleaseError(f"`{' '.join(command)}` failed in {root}:\n{output}")
    return completed


def _dvc(root: Path, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ)
    environment.setdefault("DVC_NO_ANALYTICS", "1")
    # The DVC of this interpreter's environment, whatever `dvc` on PATH is.
    return _run(root, sys.executable, "-m", "dvc", *arguments, check=check, environment=environment)


def _git(root: Path, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(root, "git", *arguments, check=check)


def tag_name(version: str) -> str:
    """Return the git tag of ``version`` ("v1" gives "dataset-v1"); raise ``ReleaseError`` if invalid."""
    if not VERSION_PATTERN.fullmatch(version):
        raise ReleaseError(
            f"invalid version {version!r}: use v followed by a number, such as v1, v2 or v1.1"
        )
    return f"{TAG_PREFIX}{version}"


def check_git_clean(root: Path) -> None:
    """Raise ``ReleaseError`` listing uncommitted and untracked files, if there are any."""
    status = _git(root, "status", "--porcelain", "--untracked-files=all").stdout.splitlines()
    if status:
        listed = "\n".join(f"  {line}" for line in status[:20])
        more = f"\n  ... and {len(status) - 20} more" if len(status) > 20 else ""
        raise ReleaseError(
            f"the git tree in {root} has uncommitted changes:\n{listed}{more}\n"
            "commit or remove them, then release again"
        )


def stale_stages(root: Path, targets: Sequence[str] = ()) -> dict[str, object]:
    """Return what ``dvc status`` reports as changed, by stage or .dvc file; empty when up to date.

    With ``targets`` only those stages and the stages upstream of them are checked.
    """
    arguments = ["status", "--json"]
    if targets:
        arguments += ["--with-deps", *targets]
    text = _dvc(root, *arguments).stdout.strip()
    return json.loads(text) if text else {}


def released_stage_targets(root: Path) -> list[str]:
    """Return the stages of :data:`RELEASED_STAGES` that ``dvc.yaml`` defines, in that order."""
    defined = set(stage_names(root))
    return [stage for stage in RELEASED_STAGES if stage in defined]


def check_pipeline_up_to_date(root: Path) -> None:
    """Raise ``ReleaseError`` listing each stale data stage and what changed in it.

    Only the released stages and their upstream stages are checked. When ``dvc.yaml`` defines
    none of :data:`RELEASED_STAGES`, the whole pipeline is checked.
    """
    targets = released_stage_targets(root)
    stale = stale_stages(root, targets)
    if not stale:
        return
    lines = []
    for stage, changes in sorted(stale.items()):
        lines.append(f"  {stage}: {json.dumps(changes, sort_keys=True)}")
    scope = f"dvc status --with-deps {' '.join(targets)}" if targets else "dvc status"
    repro = f"dvc repro {' '.join(targets)}" if targets else "dvc repro"
    raise ReleaseError(
        f"the data stages are not up to date ({scope}):\n"
        + "\n".join(lines)
        + f"\nrun `{repro}`, commit dvc.lock, then release again"
    )


def check_tag_free(root: Path, tag: str) -> None:
    if _git(root, "rev-parse", "--verify", "--quiet", f"refs/tags/{tag}", check=False).returncode == 0:
        raise ReleaseError(f"tag {tag} already exists in {root}: release a new version instead")


def resolve_remote(root: Path, remote: str | None) -> str:
    """Return the remote to push to: ``remote`` if configured, else the default remote."""
    config = {}
    for line in _dvc(root, "config", "--list").stdout.splitlines():
        key, _, value = line.partition("=")
        config[key.strip()] = value.strip()
    names = sorted({key.split(".")[1] for key in config if key.startswith("remote.") and key.count(".") >= 2})
    if remote is not None:
        if remote not in names:
            known = ", ".join(names) or "none"
            raise ReleaseError(
                f"DVC remote {remote!r} is not configured (configured: {known}); "
                f"add it with `dvc remote add {remote} URL`"
            )
        return remote
    default = config.get("core.remote", "")
    if not default:
        raise ReleaseError(
            "no DVC remote given and no default remote configured: pass --remote NAME, "
            "or set one with `dvc remote add -d storage URL` (see docs/RELEASES.md)"
        )
    return default


def stage_names(root: Path) -> list[str]:
    """Return the stage names in ``dvc.yaml`` (a foreach stage counts once, by its base name)."""
    pipeline = root / "dvc.yaml"
    if not pipeline.is_file():
        return []
    stages = (yaml.safe_load(pipeline.read_text(encoding="utf-8")) or {}).get("stages") or {}
    return list(stages)


def stages_never_run(root: Path) -> list[str]:
    """Return the ``dvc.yaml`` stages without a ``dvc.lock`` entry, by base name.

    A foreach stage counts as run when any of its items (``train@can``) has an entry.
    """
    lock_file = root / "dvc.lock"
    lock = yaml.safe_load(lock_file.read_text(encoding="utf-8")) if lock_file.is_file() else None
    locked = {name.split("@", 1)[0] for name in ((lock or {}).get("stages") or {})}
    return [stage for stage in stage_names(root) if stage not in locked]


def warn_stages_never_run(root: Path, tag: str) -> None:
    """Warn that a plain ``dvc pull`` at ``tag`` will fail on the outputs of stages that never ran."""
    never_run = stages_never_run(root)
    if never_run:
        log.warning(
            "dvc.lock has no entry for %s: at %s a plain `dvc pull` exits with an error for their "
            "outputs, and `dvc pull --allow-missing` gets the data. Run `dvc repro` before "
            "releasing to include them",
            ", ".join(never_run), tag,
        )


def warn_frozen_param_drift(root: Path, stage: str) -> None:
    """Warn when params.yaml no longer matches the params a frozen stage's outputs were made with.

    ``dvc status`` does not check a frozen stage's params, so this drift passes the up-to-date check.
    """
    params_file = root / "params.yaml"
    if not params_file.is_file():
        return
    section = (yaml.safe_load(params_file.read_text(encoding="utf-8")) or {}).get(stage) or {}
    for key, value in sorted(locked_params(root, stage).items()):
        if key in section and section[key] != value:
            log.warning(
                "params.yaml %s.%s is %r but the frozen %s stage ran with %r, which the datasheet "
                "states. Run `dvc unfreeze %s && dvc repro %s` to apply the new value",
                stage, key, section[key], stage, value, stage, stage,
            )


def plan_release(root: Path, version: str, *, remote: str | None, push: bool) -> ReleasePlan:
    """Check every precondition and render the datasheet; change nothing."""
    tag = tag_name(version)
    if not (root / ".dvc").is_dir():
        raise ReleaseError(f"{root} is not a DVC repository: run the release from the repository root")
    check_tag_free(root, tag)
    check_git_clean(root)
    check_pipeline_up_to_date(root)
    resolved = resolve_remote(root, remote) if push else remote
    warn_frozen_param_drift(root, FROZEN_STAGE)
    warn_stages_never_run(root, tag)
    datasheet = render_datasheet(root, version, tag=tag)
    return ReleasePlan(version=version, tag=tag, datasheet=datasheet, remote=resolved, push=push)


def write_release_folder(root: Path, plan: ReleasePlan) -> None:
    """Write the datasheet, the CAN-format manifest and the shards into ``data/release``."""
    folder = root / RELEASE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    atomic_io.write_text(folder / DATASHEET_NAME, plan.datasheet)
    manifest = root / CAN_MANIFEST
    if manifest.is_file():
        with atomic_io.atomic_path(folder / CAN_MANIFEST.name) as temporary:
            shutil.copyfile(manifest, temporary)
    else:
        log.warning("%s not found: the release has no CAN-format manifest", manifest)
    write_release_shards(root, folder / "shards")
    log.info("wrote %s", folder)


def freeze_stage(root: Path, stage: str) -> None:
    if stage not in stage_names(root):
        log.warning("no stage named %r in dvc.yaml: nothing to freeze", stage)
        return
    _dvc(root, "freeze", stage)
    log.info("froze stage %s: `dvc repro` will not rerun it", stage)


def commit_release(root: Path, plan: ReleasePlan) -> bool:
    """Stage the release files and commit them; return False when there was nothing to commit."""
    paths = [f"{RELEASE_FOLDER}.dvc", "dvc.yaml", "dvc.lock", str(RELEASE_FOLDER.parent / ".gitignore")]
    _git(root, "add", "--", *[path for path in paths if (root / path).exists()])
    if _git(root, "diff", "--cached", "--quiet", check=False).returncode == 0:
        log.info("release files are already committed")
        return False
    _git(root, "commit", "-q", "-m", f"Release data set {plan.version}")
    log.info("committed the release files")
    return True


def push_data(root: Path, plan: ReleasePlan) -> None:
    arguments = ["push"] + (["-r", plan.remote] if plan.remote else [])
    completed = _dvc(root, *arguments, check=False)
    if completed.returncode != 0:
        output = (completed.stderr or completed.stdout).strip()
        raise ReleaseError(
            f"`dvc {' '.join(arguments)}` failed:\n{output}\n"
            f"The release commit is made but {plan.tag} is not tagged. Fix the remote, then run "
            f"`python -m dermcan.release {plan.version}` again to push and tag"
        )
    log.info("pushed the data to DVC remote %s", plan.remote)


def release(
    root: str | os.PathLike[str],
    version: str,
    *,
    remote: str | None = None,
    push: bool = True,
    dry_run: bool = False,
) -> ReleasePlan:
    """Release ``version`` of the data set in the repository at ``root``; see the module docstring.

    With ``dry_run`` only the checks run and the plan is returned. Raises ``ReleaseError``.
    """
    root = Path(root).resolve()
    plan = plan_release(root, version, remote=remote, push=push)
    if dry_run:
        return plan

    write_release_folder(root, plan)
    _dvc(root, "add", str(RELEASE_FOLDER))
    freeze_stage(root, FROZEN_STAGE)
    commit_release(root, plan)
    if push:
        push_data(root, plan)
    else:
        log.warning("--no-push: run `dvc push` before sharing %s, or its data cannot be pulled", plan.tag)
    _git(root, "tag", "-a", plan.tag, "-m", f"dermcan data set {plan.version}")
    log.info("tagged %s; share it with `git push origin HEAD %s`", plan.tag, plan.tag)
    return plan


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dermcan.release",
        description="Release a version of the crawled and annotated data set on a DVC remote.",
    )
    parser.add_argument("version", help="version to release, such as v1; the git tag is dataset-VERSION")
    parser.add_argument("--remote", help="DVC remote to push to (default: the default remote)")
    parser.add_argument(
        "--no-push", action="store_true", help="commit and tag, but do not run `dvc push`"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="run the checks and print the datasheet; write, commit, push and tag nothing",
    )
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        plan = release(
            Path.cwd(),
            arguments.version,
            remote=arguments.remote,
            push=not arguments.no_push,
            dry_run=arguments.dry_run,
        )
    except ReleaseError as error:
        log.error("%s", error)
        return 1

    if arguments.dry_run:
        print(plan.datasheet)
        target = f"DVC remote {plan.remote}" if plan.push else "no remote (--no-push)"
        log.info("dry run: would write %s, freeze %s, commit, push to %s and tag %s",
                 RELEASE_FOLDER, FROZEN_STAGE, target, plan.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
