"""Temporary git + DVC repositories for the release tests.

``build_demo_pipeline`` copies this project's pipeline into a new repository (see
``pipeline_repo.make_pipeline_repo``, with its tiny params) and runs the data stages a release
ships: ``dvc repro split measure_annotation``, which also runs demo_web, crawl and annotate.
Training, evaluation and GAN stages are not run, because a data release does not check them.

``build_stand_in_pipeline`` writes a two-stage stand-in (a "crawl" stage and an "annotate"
stage) that produces data/crawl/, data/annotated/, data/split/can.csv and metrics/annotate.json
with known counts in a second or two. Only the datasheet unit test uses it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pipeline_repo import dvc_environment as pipeline_environment
from pipeline_repo import make_pipeline_repo
from s3_server import dvc_environment

# The stages `dvc repro` runs for a data release; their upstream stages run with them.
DATA_STAGES = ("split", "measure_annotation")

CRAWL_SCRIPT = '''
"""Stand-in crawl: writes a few fake JPEGs, a crawl manifest and crawl_info.json."""
import csv, hashlib, json, pathlib, yaml

params = yaml.safe_load(open("params.yaml"))["crawl"]
images = pathlib.Path("data/crawl/images")
images.mkdir(parents=True, exist_ok=True)
rows = []
for index in range(params["images"]):
    data = f"jpeg bytes {params['seed']} {index}".encode() * 20
    digest = hashlib.sha256(data).hexdigest()
    (images / f"{digest}.jpg").write_bytes(data)
    host = "derm.example" if index % 2 else "atlas.example"
    label = ["malignantmelanoma", "basalcellcarcinoma"][index % 2]
    rows.append({"url": f"http://{host}/img/{index}.jpg", "page_url": f"http://{host}/page/{index}",
                 "label": label, "status": "downloaded", "sha256": digest})
rows.append({"url": "http://blocked.example/img/x.jpg", "page_url": "http://blocked.example/p",
             "label": "", "status": "blocked_site", "sha256": ""})
with open("data/crawl/manifest.csv", "w", newline="") as handle:
    writer = csv.DictWriter(handle, fieldnames=["url", "page_url", "label", "status", "sha256"])
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda row: row["url"]))
json.dump({"started": "2026-01-02T03:04:05Z", "finished": "2026-01-02T03:09:00Z",
           "source": params["source"]}, open("data/crawl/crawl_info.json", "w"))
'''

ANNOTATE_SCRIPT = '''
"""Stand-in annotate: keeps images whose score passes a threshold, writes crops, a split and metrics."""
import csv, json, pathlib, yaml

params = yaml.safe_load(open("params.yaml"))["annotate"]
manifest = list(csv.DictReader(open("data/crawl/manifest.csv")))
kept = []
for index, row in enumerate(r for r in manifest if r["status"] == "downloaded"):
    score = (index % 10) / 10
    if score < params["threshold"]:
        continue
    crop = pathlib.Path("data/annotated") / row["label"] / f"{row['sha256'][:16]}_0.jpg"
    crop.parent.mkdir(parents=True, exist_ok=True)
    crop.write_bytes(pathlib.Path("data/crawl/images", row["sha256"] + ".jpg").read_bytes()[:100])
    kept.append({"path": str(crop), "label": row["label"], "split": "val" if index % 3 == 0 else "train",
                 "group": row["sha256"][:8]})
with open("data/annotated/annotations.csv", "w", newline="") as handle:
    writer = csv.DictWriter(handle, fieldnames=["crop_path", "decision"])
    writer.writeheader()
    writer.writerows({"crop_path": row["path"], "decision": "keep"} for row in kept)
pathlib.Path("data/annotated/can_manifest.txt").write_text(
    "".join(f"{row['path']} {row['label']}\\n" for row in kept))
pathlib.Path("data/split").mkdir(parents=True, exist_ok=True)
with open("data/split/can.csv", "w", newline="") as handle:
    writer = csv.DictWriter(handle, fieldnames=["path", "label", "split", "group"])
    writer.writeheader()
    writer.writerows(kept)
pathlib.Path("metrics").mkdir(exist_ok=True)
json.dump({"crop": {"precision": 0.9, "recall": 0.8}, "kept": len(kept)}, open("metrics/annotate.json", "w"))
'''

PARAMS = """\
crawl:
  source: demo
  seed: 1
  images: 8
  licences: [CC-BY-4.0, CC0-1.0]
  blocked_sites: [blocked.example]
annotate:
  method: stand-in threshold
  threshold: 0.3
"""


def run_command(
    repository: Path,
    *command: str,
    check: bool = True,
    extra_environment: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in ``repository`` with S3 test credentials; raise with its output on failure.

    The environment puts this virtualenv first on PATH, so the stages' `python` is this one.
    """
    environment = dvc_environment(pipeline_environment())
    environment.update(extra_environment or {})
    completed = subprocess.run(
        command,
        cwd=repository,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    if check and completed.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} failed in {repository} with exit code {completed.returncode}:\n"
            f"{completed.stdout}\n{completed.stderr}"
        )
    return completed


def run_dvc(
    repository: Path,
    *arguments: str,
    check: bool = True,
    extra_environment: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return run_command(
        repository,
        sys.executable,
        "-m",
        "dvc",
        *arguments,
        check=check,
        extra_environment=extra_environment,
    )


def run_git(repository: Path, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_command(repository, "git", *arguments, check=check)


def run_release(repository: Path, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_command(repository, sys.executable, "-m", "dermcan.release", *arguments, check=check)


def configure_git(repository: Path) -> None:
    """Give ``repository`` its own committer, so commits never depend on the user's git config."""
    run_git(repository, "config", "user.name", "Release Test")
    run_git(repository, "config", "user.email", "release-test@example.invalid")
    run_git(repository, "config", "commit.gpgsign", "false")
    run_git(repository, "config", "tag.gpgsign", "false")


def init_repository(repository: Path) -> None:
    repository.mkdir(parents=True, exist_ok=True)
    run_git(repository, "init", "-q", "-b", "main")
    configure_git(repository)
    run_dvc(repository, "init", "-q")


def add_remotes(repository: Path, remotes: dict[str, dict[str, str]], *, default: str, local: bool = False) -> None:
    """Write DVC remote sections into .dvc/config (or .dvc/config.local) the way `dvc remote add` does.

    Writing the file directly saves one DVC start-up per option; the result is the same INI text.
    """
    path = repository / ".dvc" / ("config.local" if local else "config")
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if default and "[core]\n" in text:
        # A second [core] section is a config error, so the key joins the existing one.
        text = text.replace("[core]\n", f"[core]\n    remote = {default}\n", 1)
    elif default:
        text += f"[core]\n    remote = {default}\n"
    lines = [text]
    for name, options in remotes.items():
        lines.append(f"['remote \"{name}\"']\n")
        lines.extend(f"    {key} = {value}\n" for key, value in options.items())
    path.write_text("".join(lines), encoding="utf-8")


def build_demo_pipeline(repository: Path) -> None:
    """Copy the demo pipeline into a new repository at ``repository``, run the data stages, commit."""
    make_pipeline_repo(repository)
    configure_git(repository)
    run_dvc(repository, "repro", *DATA_STAGES)
    run_git(repository, "add", "-A")
    run_git(repository, "commit", "-q", "-m", "Run the data stages")


# The repository build_demo_pipeline made in this test session; copies of it are much faster
# than a second `dvc repro`.
_built_demo_pipelines: list[Path] = []


def copy_demo_pipeline(
    tmp_path_factory: pytest.TempPathFactory,
    destination: Path,
    remotes: dict[str, dict[str, str]],
    *,
    default: str,
) -> Path:
    """Copy the session's demo pipeline repository to ``destination``, add ``remotes`` and commit them.

    The first call builds the repository with :func:`build_demo_pipeline`.
    """
    if not _built_demo_pipelines:
        built = tmp_path_factory.mktemp("demo-pipeline") / "repo"
        build_demo_pipeline(built)
        _built_demo_pipelines.append(built)
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(_built_demo_pipelines[0], destination, symlinks=True)
    add_remotes(destination, remotes, default=default)
    run_git(destination, "commit", "-q", "-am", "Configure the DVC remotes")
    return destination


def build_stand_in_pipeline(repository: Path) -> None:
    """Write the stand-in pipeline into ``repository``, run it and commit it."""
    stages = repository / "stages"
    stages.mkdir(exist_ok=True)
    (stages / "crawl.py").write_text(CRAWL_SCRIPT, encoding="utf-8")
    (stages / "annotate.py").write_text(ANNOTATE_SCRIPT, encoding="utf-8")
    (repository / "params.yaml").write_text(PARAMS, encoding="utf-8")
    python = sys.executable
    (repository / "dvc.yaml").write_text(
        textwrap.dedent(
            f"""\
            stages:
              crawl:
                cmd: {python} stages/crawl.py
                deps: [stages/crawl.py]
                params: [crawl.source, crawl.seed, crawl.images, crawl.licences, crawl.blocked_sites]
                outs: [data/crawl]
              annotate:
                cmd: {python} stages/annotate.py
                deps: [stages/annotate.py, data/crawl]
                params: [annotate.method, annotate.threshold]
                outs: [data/annotated, data/split]
                metrics:
                  - metrics/annotate.json:
                      cache: false
            """
        ),
        encoding="utf-8",
    )
    run_dvc(repository, "repro")
    run_git(repository, "add", "-A")
    run_git(repository, "commit", "-q", "-m", "Add the pipeline")


def pull_data(repository: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run `dvc pull --allow-missing`: the data stages' outputs, without the models never trained."""
    return run_dvc(repository, "pull", "--allow-missing", *arguments)


def data_status(repository: Path) -> str:
    """Return `dvc status --json` of the data stages and their upstream stages, stripped."""
    return run_dvc(repository, "status", "--json", "--with-deps", *DATA_STAGES).stdout.strip()


def hash_tree(repository: Path, *folders: str) -> dict[str, str]:
    """Return the SHA-256 of every file under ``folders`` of ``repository``, by relative path."""
    hashes = {}
    for folder in folders:
        base = repository / folder
        paths = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for path in paths:
            hashes[path.relative_to(repository).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


RELEASED_PATHS = ("data/crawl", "data/annotated", "data/split", "data/release", "metrics/annotate.json")


def workspace_files(repository: Path) -> dict[str, str]:
    """Return the hashes of the files a release ships, as present in ``repository``'s workspace."""
    present = [path for path in RELEASED_PATHS if (repository / path).exists()]
    return hash_tree(repository, *present)


def clone(source: Path, destination: Path) -> Path:
    run_command(source.parent, "git", "clone", "-q", os.fspath(source), os.fspath(destination))
    configure_git(destination)
    return destination
