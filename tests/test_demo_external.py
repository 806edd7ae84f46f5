"""The shifted external test set: Dermofit class folders, counts, image size, determinism, shift."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from dermcan.demo_external import DERMOFIT_CODES, generate_external_set

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL_PARAMS = {"seed": 9, "images_per_class": 3, "size": 48}
EXPECTED_CODES = {"AK", "BCC", "DF", "VASC", "IEC", "MEL", "ML", "PYO", "SK", "SCC"}


def _hash_listing(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def external_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("external") / "demo_shifted"
    generate_external_set(out_dir, SMALL_PARAMS)
    return out_dir


def test_codes_cover_all_classes() -> None:
    assert set(DERMOFIT_CODES.values()) == EXPECTED_CODES
    assert len(DERMOFIT_CODES) == 10


def test_every_class_folder_has_count(external_set: Path) -> None:
    folders = {path.name: path for path in external_set.iterdir() if path.is_dir()}
    assert set(folders) == EXPECTED_CODES
    for code, folder in folders.items():
        assert len(list(folder.glob("*.png"))) == SMALL_PARAMS["images_per_class"], code


def test_images_are_square_rgb(external_set: Path) -> None:
    for path in external_set.rglob("*.png"):
        with Image.open(path) as image:
            assert image.size == (SMALL_PARAMS["size"], SMALL_PARAMS["size"]), path
            assert image.mode == "RGB", path


def test_same_seed_byte_identical(external_set: Path, tmp_path: Path) -> None:
    generate_external_set(tmp_path / "again", SMALL_PARAMS)
    assert _hash_listing(tmp_path / "again") == _hash_listing(external_set)


def test_rerun_replaces_folder(tmp_path: Path) -> None:
    generate_external_set(tmp_path / "set", SMALL_PARAMS | {"images_per_class": 4})
    generate_external_set(tmp_path / "set", SMALL_PARAMS)
    assert len(list((tmp_path / "set" / "MEL").glob("*.png"))) == SMALL_PARAMS["images_per_class"]


def test_skin_darker_than_demo_web_default(tmp_path: Path) -> None:
    pale = tmp_path / "pale"
    generate_external_set(
        pale, SMALL_PARAMS | {"skin_tone_range": [0.0, 0.2], "lightings": ["neutral"]}
    )
    generate_external_set(tmp_path / "shifted", SMALL_PARAMS)

    def corner_brightness(folder: Path) -> float:
        values = [
            np.asarray(Image.open(path), dtype=float)[:6, :6].mean()
            for path in folder.rglob("*.png")
        ]
        return float(np.mean(values))

    assert corner_brightness(tmp_path / "shifted") < corner_brightness(pale) - 30


def test_invalid_params_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lightings"):
        generate_external_set(tmp_path / "x", {"lightings": ["sunset"]})
    with pytest.raises(ValueError, match="unknown demo_external params"):
        generate_external_set(tmp_path / "x", {"count": 3})
    assert not (tmp_path / "x").exists()


def test_stage_script_writes_outputs(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"demo_external": SMALL_PARAMS}), encoding="utf-8"
    )
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "src/stages/demo_external.py")],
        cwd=tmp_path,
        check=True,
        timeout=120,
    )
    written = sorted(path.name for path in (tmp_path / "data/external/demo_shifted").iterdir())
    assert written == sorted(EXPECTED_CODES)
