"""Build a throw-away git + DVC repository holding this project's pipeline at a tiny size.

Pipeline tests run real `dvc` commands in such a repository, never in the checkout itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# Parameter values that shrink every stage to seconds; keys are dotted paths into params.yaml.
TINY_PARAMS: dict[str, Any] = {
    "demo_web.photos_per_class": 8,
    "demo_web.blog_posts": 3,
    "demo_external.images_per_class": 4,
    "demo_external.size": 64,
    "annotate.folds": 3,
    "split.val_fraction": 0.25,
    "train.epochs": 1,
    "train.batch_size": 16,
    "train.model.input_size": 32,
    "train.num_workers": 0,
    "evaluate.bootstrap.iterations": 20,
    "evaluate.top_errors": 4,
    "gan.resolution": 16,
    "gan.generator_width": 4,
    "gan.discriminator_width": 4,
    "gan.max_channels": 16,
    "gan.iterations": 4,
    "gan.batch_size": 4,
    "gan.checkpoint_every": 2,
    "gan.images_per_class": 4,
    "gan.metrics.kid_subset_size": 4,
}


def dvc_environment() -> dict[str, str]:
    """Return an environment in which `dvc` and the stages' `python` are this virtualenv's."""
    environment = dict(os.environ)
    environment["PATH"] = f"{VENV_BIN}{os.pathsep}{environment.get('PATH', '')}"
    environment["DVC_NO_ANALYTICS"] = "1"
    environment["DO_NOT_TRACK"] = "1"
    environment["OMP_NUM_THREADS"] = environment.get("OMP_NUM_THREADS", "2")
    environment["GIT_AUTHOR_NAME"] = environment["GIT_COMMITTER_NAME"] = "dermcan test"
    environment["GIT_AUTHOR_EMAIL"] = environment["GIT_COMMITTER_EMAIL"] = "test@dermcan.invalid"
    return environment


def run(command: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in ``cwd``; on failure raise with its output, so the test log shows why."""
    result = subprocess.run(
        command, cwd=cwd, env=dvc_environment(), capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} failed with exit code {result.returncode}\n"
            f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}"
        )
    return result


def set_dotted(params: dict[str, Any], dotted: str, value: Any) -> None:
    node = params
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def update_params(repo: Path, overrides: Mapping[str, Any]) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    for dotted, value in overrides.items():
        set_dotted(params, dotted, value)
    path.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True), encoding="utf-8")


def make_pipeline_repo(destination: Path, overrides: Mapping[str, Any] | None = None) -> Path:
    """Copy the pipeline (dvc.yaml, params.yaml, src/) into a new git + DVC repo at ``destination``.

    The copy gets :data:`TINY_PARAMS` and then ``overrides``, and one commit.
    """
    destination.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, destination / name)
    shutil.copytree(
        REPO / "src", destination / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    update_params(destination, {**TINY_PARAMS, **(overrides or {})})

    run(["git", "init", "-q", "-b", "main"], destination)
    run(["dvc", "init", "-q"], destination)
    run(["dvc", "config", "core.analytics", "false"], destination)
    run(["git", "add", "-A"], destination)
    run(["git", "commit", "-q", "-m", "pipeline under test"], destination)
    return destination

