"""Every stage in dvc.yaml lists, as deps, the dermcan modules its script imports.

A module missing from a stage's deps means a change to it leaves ``dvc status`` clean and the
stage's outputs stale. Only imports at module level count: an import inside a function runs
only in some modes (a real-mode detector, a check of train.model.arch), and the stages that
need it list the module themselves.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SOURCES = REPO / "src"


def _module_level_imports(path: Path) -> set[str]:
    """Return the dermcan modules that ``path`` imports outside any function or class."""
    modules: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module == "dermcan":
            modules.update(f"dermcan.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dermcan."):
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names if alias.name.startswith("dermcan."))
    return modules


def _imported_files(script: Path) -> set[str]:
    """Return the repository-relative paths of the dermcan modules ``script`` imports, transitively."""
    found: set[str] = set()
    pending = [script]
    while pending:
        for module in _module_level_imports(pending.pop()):
            path = SOURCES / (module.replace(".", "/") + ".py")
            relative = path.relative_to(REPO).as_posix()
            if path.is_file() and relative not in found:
                found.add(relative)
                pending.append(path)
    return found


def _stage_scripts() -> list[tuple[str, str, list[str]]]:
    """Return (stage name, script path, deps) for each stage whose command runs a stage script."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    found = []
    for name, stage in stages.items():
        body = stage.get("do", stage)  # a foreach stage keeps its command under "do"
        script = re.search(r"src/stages/\w+\.py", body["cmd"])
        if script is not None:
            found.append((name, script.group(0), list(body.get("deps", []))))
    return found


def test_every_stage_script_found() -> None:
    names = {name for name, _, _ in _stage_scripts()}
    assert {"crawl", "annotate", "train", "gan_train", "evaluate"} <= names


def test_module_imports_found() -> None:
    imported = _imported_files(SOURCES / "stages" / "train.py")
    assert "src/dermcan/training.py" in imported
    assert "src/dermcan/atomic_io.py" in imported  # reached through dermcan.training


@pytest.mark.parametrize(
    ("stage", "script", "deps"), [pytest.param(*stage, id=stage[0]) for stage in _stage_scripts()]
)
def test_stage_deps_cover_imports(stage: str, script: str, deps: list[str]) -> None:
    assert script in deps, f"{stage}: its script {script} is not a dep"
    missing = sorted(_imported_files(REPO / script) - set(deps))
    assert missing == [], f"{stage} imports {missing} but dvc.yaml does not list them as deps"
