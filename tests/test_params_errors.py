"""Invalid params and input files: stage scripts stop before any work with a message that names
the file, line and key that are wrong and what to do.

Every stage test runs the real script from src/stages/ as a subprocess, with its working
directory set to a temporary folder laid out like the repository: the repository's
params.yaml with one line changed, and old outputs that the failed run must leave unchanged.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from crawl_sites import jpeg_bytes, textured_image
from dermcan.atomic_io import read_csv
from dermcan.can_manifest import read_manifest
from dermcan.params import check_section, load_params

REPO = Path(__file__).resolve().parents[1]
STAGES = REPO / "src" / "stages"


def _set_line(root: Path, section: str, key: str, value: str) -> int:
    """Replace ``key: ...`` in ``section`` of root/params.yaml, keeping the indentation, and return its line.

    ``key`` may be dotted ("timeouts.read_s"): each part is searched after the previous one.
    """
    path = root / "params.yaml"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    index = lines.index(f"{section}:\n")
    for part in key.split("."):
        index += 1
        while not re.match(rf"\s+{re.escape(part)}:", lines[index]):
            index += 1
    indent = lines[index][: len(lines[index]) - len(lines[index].lstrip())]
    lines[index] = f"{indent}{key.split('.')[-1]}: {value}\n"
    path.write_text("".join(lines), encoding="utf-8")
    return index + 1


def _layout(root: Path, old_outputs: dict[str, str]) -> Path:
    """Lay out ``root`` like the repository: its params.yaml and old outputs with known bytes."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    for relative, content in old_outputs.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(content, encoding="utf-8")
    return root


def _snapshot(root: Path) -> dict[str, str]:
    """Map every file and folder under ``root`` to a digest of its bytes ("dir" for a folder)."""
    snapshot = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        snapshot[relative] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return snapshot


def _run_stage(root: Path, stage: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(STAGES / f"{stage}.py"), *arguments],
        cwd=root, env=environment, capture_output=True, text=True, timeout=300, check=False,
    )


def _assert_rejected(root: Path, before: dict[str, str], result: subprocess.CompletedProcess[str]) -> str:
    """Assert the stage exited 1 with a message and no traceback, and left ``root`` as it was."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    assert _snapshot(root) == before
    return result.stderr


OLD_TRAIN_OUTPUTS = {"models/can/model.pt": "old model", "metrics/train/can/metrics.json": "{}"}


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("epochs", '"ten"', "train.epochs must be an integer >= 1, got 'ten' (a string)"),
        ("batch_size", "-1", "train.batch_size must be an integer >= 1, got -1"),
        ("optimizer.lr", "fast", "train.optimizer.lr must be a number > 0.0, got 'fast' (a string)"),
    ],
)
def test_train_rejects_bad_value(tmp_path: Path, key: str, value: str, problem: str) -> None:
    root = _layout(tmp_path, OLD_TRAIN_OUTPUTS)
    line = _set_line(root, "train", key, value)
    before = _snapshot(root)

    message = _assert_rejected(root, before, _run_stage(root, "train", "can"))

    assert f"params.yaml line {line}: {problem}" in message
    assert f"Correct train.{key} in params.yaml." in message


def test_split_rejects_val_fraction_above_one(tmp_path: Path) -> None:
    root = _layout(tmp_path, {"data/split/can.csv": "path,label,split,group\n", "metrics/split.json": "{}"})
    line = _set_line(root, "split", "val_fraction", "1.5")
    before = _snapshot(root)

    message = _assert_rejected(root, before, _run_stage(root, "split"))

    assert f"params.yaml line {line}: split.val_fraction must be a number > 0.0 and < 1.0, got 1.5" in message


OLD_CRAWL_OUTPUTS = {"data/crawl/manifest.csv": "url,status\nhttp://demo-web.test/a.jpg,downloaded\n"}


@pytest.mark.parametrize("value", ['"2.0"', "2 s"])
def test_crawl_rejects_timeout_as_string(tmp_path: Path, value: str) -> None:
    root = _layout(tmp_path, OLD_CRAWL_OUTPUTS)
    line = _set_line(root, "crawl", "timeouts.read_s", value)
    before = _snapshot(root)

    message = _assert_rejected(root, before, _run_stage(root, "crawl"))

    shown = value.strip('"')
    assert f"params.yaml line {line}: crawl.timeouts.read_s must be a number > 0.0, got '{shown}' (a string)" in message
    assert not (root / "data" / "crawl_state").exists()


def test_several_bad_values_listed_together(tmp_path: Path) -> None:
    root = _layout(tmp_path, OLD_TRAIN_OUTPUTS)
    epochs_line = _set_line(root, "train", "epochs", "0")
    batch_line = _set_line(root, "train", "batch_size", "1.5")
    before = _snapshot(root)

    message = _assert_rejected(root, before, _run_stage(root, "train", "can"))

    assert message.startswith("error: params.yaml has 2 invalid values:")
    assert f"params.yaml line {epochs_line}: train.epochs must be an integer >= 1, got 0" in message
    assert f"params.yaml line {batch_line}: train.batch_size must be an integer >= 1, got 1.5 (a float)" in message


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    root = _layout(tmp_path, {"data/split/can.csv": "path,label,split,group\n"})
    line = _set_line(root, "split", "group_by", "photo: page")
    before = _snapshot(root)

    message = _assert_rejected(root, before, _run_stage(root, "split"))

    assert "params.yaml is not valid YAML: mapping values are not allowed here" in message
    assert f"at line {line}, column" in message
    assert "Correct the syntax there" in message


def test_unknown_model_lists_close_matches(tmp_path: Path) -> None:
    root = _layout(tmp_path, OLD_TRAIN_OUTPUTS)
    line = _set_line(root, "train", "model.arch", "resnet5")
    before = _snapshot(root)

    message = _assert_rejected(root, before, _run_stage(root, "train", "can"))

    assert f"params.yaml line {line}: train.model.arch is invalid: unknown model 'resnet5'." in message
    assert "Did you mean resnet50 or " in message
    assert "torchvision.models.list_models(module=torchvision.models)" in message
    assert "mobilenet_v3_small" in message
    assert message.rstrip().endswith("Correct train.model.arch in params.yaml.")


def test_missing_external_set_folder(tmp_path: Path) -> None:
    old_outputs = {
        "metrics/evaluate/can.json": '{"demo_shifted": {}}',
        "plots/evaluate/can/demo_shifted/confusion.csv": "true,predicted,count\n",
        "models/can/model.pt": "old model",
    }
    root = _layout(tmp_path, old_outputs)
    line = _set_line(root, "evaluate", "externals.demo_shifted.path", "data/external/ph2")
    before = _snapshot(root)

    message = _assert_rejected(root, before, _run_stage(root, "evaluate", "can"))

    assert (
        f"params.yaml line {line}: evaluate.externals.demo_shifted.path names folder data/external/ph2, "
        "which is not found." in message
    )
    assert "Place a test set there in ImageFolder layout" in message
    assert "`dvc repro demo_external`" in message


@pytest.mark.parametrize(
    ("stage", "arguments", "key", "value", "key_path"),
    [
        ("crawl", (), "crawl.folder.aliases.Angioma", "hemangiom", "crawl.folder.aliases.Angioma"),
        ("crawl", (), "crawl.manifest.aliases", "{Nodular melanoma: hemangiom}",
         "crawl.manifest.aliases['Nodular melanoma']"),
        ("evaluate", ("can",), "evaluate.externals.demo_shifted.aliases.VASC", "hemangiom",
         "evaluate.externals.demo_shifted.aliases.VASC"),
    ],
)
def test_alias_to_unknown_class(
    tmp_path: Path, stage: str, arguments: tuple[str, ...], key: str, value: str, key_path: str
) -> None:
    root = _layout(tmp_path, {**OLD_CRAWL_OUTPUTS, "metrics/evaluate/can.json": "{}"})
    (root / "data" / "external" / "demo_shifted").mkdir(parents=True)
    section, key = key.split(".", 1)
    line = _set_line(root, section, key, value)
    before = _snapshot(root)

    message = _assert_rejected(root, before, _run_stage(root, stage, *arguments))

    assert f"params.yaml line {line}: {key_path} names 'hemangiom' (a string), which is not a class" in message
    assert "did you mean hemangioma?" in message
    assert "Valid classes (dermcan.classes.CLASSES) are: actinickeratosis, " in message


def test_missing_section_named(tmp_path: Path) -> None:
    root = tmp_path
    (root / "params.yaml").write_text("train:\n  epochs: 1\n", encoding="utf-8")
    before = _snapshot(root)

    message = _assert_rejected(root, before, _run_stage(root, "split"))

    assert "params.yaml has no section 'split'" in message


def test_repository_params_are_valid() -> None:
    params = load_params(path=REPO / "params.yaml")
    for section in params:
        errors = [e for e in check_section(section, params[section], REPO / "params.yaml") if "externals" not in e]
        assert errors == [], section


def test_released_manifest_short_line_recorded(tmp_path: Path) -> None:
    """A released manifest's malformed line is recorded with its line number, not fatal."""
    root = _layout(tmp_path, {})
    mirror = root / "mirror" / "example.org" / "img"
    mirror.mkdir(parents=True)
    (mirror / "a.jpg").write_bytes(jpeg_bytes(textured_image(3)))
    manifest = root / "manifest.txt"
    manifest.write_text(
        "## test manifest\n"
        "00000 malignantmelanoma 0.5 0.5 0.4 0.4 http://example.org/img/a.jpg\n"
        "00001 melanocyticnevus 0.5\n",
        encoding="utf-8",
    )
    _set_line(root, "crawl", "source", "manifest")
    _set_line(root, "crawl", "manifest.path", "manifest.txt")
    _set_line(root, "crawl", "manifest.mirror", "{directory: mirror, web_fallback: false}")

    result = _run_stage(root, "crawl")

    assert result.returncode == 0, result.stderr
    assert "manifest.txt line 3 is malformed: expected 7 fields" in result.stderr
    boxes = {row["line"]: row for row in read_csv(root / "data" / "crawl" / "manifest_boxes.csv")}
    assert boxes["3"]["status"] == "malformed"
    assert "found 3" in boxes["3"]["reason"]
    assert boxes["2"]["status"] == "cropped"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("## only a header\n", "has no entries"),
        ("url,filepath\nhttp://example.org/a.jpg,a.jpg\n", "none of its 2 lines is a valid"),
    ],
)
def test_released_manifest_without_valid_lines(tmp_path: Path, content: str, expected: str) -> None:
    root = _layout(tmp_path, {})
    (root / "manifest.txt").write_text(content, encoding="utf-8")
    _set_line(root, "crawl", "source", "manifest")
    _set_line(root, "crawl", "manifest.path", "manifest.txt")

    result = _run_stage(root, "crawl")

    assert result.returncode != 0
    assert "manifest.txt" in result.stderr
    assert expected in result.stderr
    assert "crawl.manifest.path" in result.stderr
    assert not (root / "data" / "crawl" / "manifest.csv").exists()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("00000 malignantmelanoma 0.5 0.5 0.4", "expected 7 fields"),
        ("0000x malignantmelanoma 0.5 0.5 0.4 0.4 http://example.org/a.jpg", "running number '0000x'"),
        ("00000 malignantmelanoma 0.5 half 0.4 0.4 http://example.org/a.jpg", "y_center 'half' is not a number"),
    ],
)
def test_can_manifest_bad_line_names_file_and_line(tmp_path: Path, line: str, expected: str) -> None:
    path = tmp_path / "can_manifest.txt"
    path.write_text(f"## header\n{line}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: ")) as raised:
        read_manifest(path)
    assert expected in str(raised.value)
    assert "annotate" in str(raised.value)
