"""params.yaml loading and the class table."""

from __future__ import annotations

from pathlib import Path

import pytest

from dermcan import classes
from dermcan.params import load_params

REPO = Path(__file__).resolve().parents[1]


def test_load_section_and_dotted(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  sets:\n    can: {epochs: 3}\n", encoding="utf-8")
    assert load_params("train.sets.can", path) == {"epochs": 3}
    with pytest.raises(KeyError, match="train.missing"):
        load_params("train.missing", path)


def test_missing_params_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="params.yaml"):
        load_params("train", tmp_path / "params.yaml")


def test_repository_params_has_every_stage_section():
    params = load_params(path=REPO / "params.yaml")
    for section in ("demo_web", "demo_external", "crawl", "annotate", "split", "train", "evaluate", "gan"):
        assert section in params, section


def test_every_class_named_in_five_languages():
    assert len(classes.CLASSES) == 10
    for name in classes.CLASSES:
        assert set(classes.NAMES_BY_LANGUAGE[name]) == set(classes.LANGUAGES)
        assert name in classes.DISPLAY_NAMES
    assert set(classes.MALIGNANT) <= set(classes.CLASSES)
    with pytest.raises(ValueError, match="valid classes"):
        classes.check_class_name("melanoma")
