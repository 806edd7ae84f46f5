"""External validation: alias mapping, metrics on fixed predictions, and the evaluate/summary stages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from classifier_fixtures import write_image_folder
from dermcan import evaluation, models

REPO = Path(__file__).resolve().parents[1]
MEL, NEV, BCC, SK = "malignantmelanoma", "melanocyticnevus", "basalcellcarcinoma", "seborrheickeratosis"


def test_aliases_map_folders(tmp_path):
    write_image_folder(tmp_path, ["MEL", "ML", "hemangioma", "XX"], per_class=2)
    external = evaluation.load_external_set("t", tmp_path, {"MEL": MEL, "ML": NEV})
    labels = sorted({label for _, label in external.samples})
    assert labels == ["hemangioma", MEL, NEV]
    assert len(external.samples) == 6
    assert external.skipped_folders == {"XX": 2}


def test_alias_to_unknown_class_raises(tmp_path):
    write_image_folder(tmp_path, ["MEL"], per_class=1)
    with pytest.raises(ValueError, match="aliases\\['MEL'\\].*melanomaa"):
        evaluation.load_external_set("t", tmp_path, {"MEL": "melanomaa"})


def test_class_filter_excludes_and_reports(tmp_path):
    write_image_folder(tmp_path, ["MEL", "ML"], per_class=2)
    external = evaluation.load_external_set("t", tmp_path, {"MEL": MEL, "ML": NEV}, classes=[MEL])
    assert [label for _, label in external.samples] == [MEL, MEL]
    assert external.excluded_by_class_filter == {NEV: 2}


def test_missing_external_folder_names_param(tmp_path):
    with pytest.raises(FileNotFoundError, match="evaluate.externals.t.path"):
        evaluation.load_external_set("t", tmp_path / "absent", {})


def test_no_known_class_raises(tmp_path):
    write_image_folder(tmp_path, ["XX"], per_class=1)
    with pytest.raises(ValueError, match="no images of a known class"):
        evaluation.load_external_set("t", tmp_path, {})


# Model classes mel, nev, bcc; the test set also has sk, which the model lacks.
MODEL_CLASSES = [MEL, NEV, BCC]
LABELS = [MEL, MEL, NEV, NEV, SK, SK]
PROBABILITIES = np.array(
    [
        [0.7, 0.2, 0.1],  # mel: malignancy .8, mel/(mel+nev) .7/.9
        [0.3, 0.6, 0.1],  # mel: malignancy .4, .3/.9
        [0.4, 0.5, 0.1],  # nev: malignancy .5, .4/.9
        [0.1, 0.8, 0.1],  # nev: malignancy .2, .1/.9
        [0.1, 0.1, 0.8],  # sk: malignancy .9
        [0.1, 0.7, 0.2],  # sk: malignancy .3
    ]
)


@pytest.fixture(scope="module")
def result():
    return evaluation.evaluate_predictions(LABELS, PROBABILITIES, MODEL_CLASSES, iterations=50, seed=0)


def test_malignancy_auroc_hand_computed(result):
    # Malignant scores .8, .4 against benign .5, .2, .9, .3: .8 wins 3 pairs, .4 wins 2 -> 5/8.
    assert result["malignancy"]["auroc"]["value"] == pytest.approx(0.625)


def test_melanoma_vs_nevus_hand_computed(result):
    # mel .7/.9 beats both nevi, .3/.9 beats .1/.9 only -> 3/4.
    assert result["melanoma_vs_nevus_auroc"]["value"] == pytest.approx(0.75)


def test_class_without_images_is_null_with_reason(result):
    bcc = result["per_class_auroc"][BCC]
    assert bcc["value"] is None
    assert bcc["reason"] == "no images of this class in the test set"


def test_missing_classes_reported(result):
    assert result["classes_model_lacks"] == [SK]
    assert result["classes_test_set_lacks"] == [BCC]


def test_top1_counts_unknown_class_as_miss(result):
    # Correct: row 0 (mel) and rows 2, 3 (nev); the sk rows can never be right.
    assert result["top1_accuracy"]["value"] == pytest.approx(0.5)


def test_youden_sensitivity_and_specificity(result):
    youden = result["malignancy"]["youden"]
    # Threshold .8 gives sens 1/2, spec 3/4 (J 1/4); .4 gives sens 1, spec 1/2 (J 1/2, the max).
    assert youden["threshold"] == pytest.approx(0.4)
    assert youden["sensitivity"]["value"] == pytest.approx(1.0)
    assert youden["specificity"]["value"] == pytest.approx(0.5)


def test_model_without_malignant_class(result):
    out = evaluation.evaluate_predictions([MEL, NEV], np.array([[0.5, 0.5], [0.2, 0.8]]), [NEV, SK], iterations=0)
    assert out["malignancy"]["auroc"]["value"] is None
    assert out["malignancy"]["auroc"]["reason"] == "the model has no malignant class"
    assert out["melanoma_vs_nevus_auroc"]["reason"] == "the model lacks melanoma or nevus"


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    return subprocess.run(
        [sys.executable, str(REPO / "src/stages" / script), *args], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=120,
    )


def test_evaluate_and_summary_stages(tmp_path):
    write_image_folder(tmp_path / "data/external/demo", ["MEL", "ML", "BCC", "SK"], per_class=3)
    model = models.build_classifier("mobilenet_v3_small", 3)
    models.save_classifier(
        tmp_path / "models/can/model.pt", model, arch="mobilenet_v3_small", classes=MODEL_CLASSES,
        input_size=32, mean=models.IMAGENET_MEAN, std=models.IMAGENET_STD, train_set="can",
    )
    params = {
        "evaluate": {
            "seed": 0, "bootstrap": {"iterations": 20}, "malignant": None, "high_sensitivity": 0.95,
            "batch_size": 8, "top_errors": 4, "cache": {"margin": 0.15, "dir": None},
            "externals": {"demo": {"path": "data/external/demo", "aliases": {"MEL": MEL, "ML": NEV, "BCC": BCC, "SK": SK}, "classes": None}},
        }
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    evaluated = _run("evaluate.py", "can", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads((tmp_path / "metrics/evaluate/can.json").read_text())
    assert metrics["demo"]["n_images"] == 12
    plots = tmp_path / "plots/evaluate/can/demo"
    assert (plots / "roc_malignancy.csv").read_text().startswith("fpr,tpr,threshold")
    assert (plots / "confusion.csv").read_text().startswith("actual,predicted")
    assert (plots / "errors.png").read_bytes()[:4] == b"\x89PNG"

    summarised = _run("summary.py", cwd=tmp_path)
    assert summarised.returncode == 0, summarised.stderr
    table = (tmp_path / "metrics/summary.md").read_text()
    assert "| can | demo | 12 |" in table
    summary = json.loads((tmp_path / "metrics/summary.json").read_text())
    assert summary["can"]["demo"]["malignancy_auroc"] == metrics["demo"]["malignancy"]["auroc"]
