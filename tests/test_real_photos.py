"""The pipeline end to end on a few real clinical photographs, in a temporary git repository.

Training photos come from the DermNet NZ folder of the real-clinical test data (10 photos in
each of 4 classes, spread over each class folder). The external test set comes from its
SD-198 folder (3 photos in each of 4 classes, hemangioma among them, which the training subset
lacks). The photos are copied into ``tmp_path`` for the test and deleted with it. DermNet NZ
allows these photos for research testing only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pipeline_repo import REPO, make_pipeline_repo, run

pytestmark = pytest.mark.slow

# The real-clinical folder, wherever the shared data sits next to this checkout.
REAL_CANDIDATES = (Path("/work/shared/data/real-clinical"), REPO.parent / "shared" / "data" / "real-clinical")
REAL = next((path for path in REAL_CANDIDATES if (path / "dermnetnz").is_dir()), None)

TRAIN_CLASSES = ("actinickeratosis", "basalcellcarcinoma", "malignantmelanoma", "melanocyticnevus")
TRAIN_PER_CLASS = 10
# hemangioma is absent from training, and melanocyticnevus has no SD-198 photos at all.
TEST_CLASSES = ("actinickeratosis", "basalcellcarcinoma", "malignantmelanoma", "hemangioma")
TEST_PER_CLASS = 3
# A class folder with no photos in it: the run must leave the class out, not fail.
EMPTY_CLASS = "seborrheickeratosis"


def _copy_subset(source: Path, destination: Path, classes: tuple[str, ...], per_class: int) -> None:
    for class_name in classes:
        available = sorted((source / class_name).glob("*.jpg"))
        assert len(available) >= per_class, f"{source / class_name} has fewer than {per_class} photos"
        # Evenly spaced files: a folder's neighbours are often photos of one patient.
        files = [available[i * len(available) // per_class] for i in range(per_class)]
        (destination / class_name).mkdir(parents=True)
        for file in files:
            shutil.copyfile(file, destination / class_name / file.name)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    if REAL is None:
        pytest.skip(f"real clinical photos not found in any of {[str(p) for p in REAL_CANDIDATES]}")
    scratch = tmp_path_factory.mktemp("real_photos")
    photos = scratch / "dermnetnz"
    external = scratch / "sd198"
    _copy_subset(REAL / "dermnetnz", photos, TRAIN_CLASSES, TRAIN_PER_CLASS)
    (photos / EMPTY_CLASS).mkdir()
    _copy_subset(REAL / "sd198", external, TEST_CLASSES, TEST_PER_CLASS)

    overrides = {
        "crawl.source": "folder",
        "crawl.folder.path": str(photos),
        # Out-of-fold predictions on 40 photos are close to chance, and predicted_neq_given
        # then drops most crops; cleanlab's default method flags fewer.
        "annotate.filter_by": "prune_by_noise_rate",
        # Annotate still keeps only 3 or so crops of some classes. A half-and-half split can
        # divide 2 crops; the split leaves out a class it cannot divide.
        "split.val_fraction": 0.5,
        "split.small_classes": "drop",
        "evaluate.externals": {
            "sd198": {"path": str(external), "aliases": {name: name for name in TEST_CLASSES}, "classes": None},
        },
    }
    path = make_pipeline_repo(scratch / "repo", overrides)
    # summary depends on every evaluate@SET through metrics/evaluate, GAN sets included, so
    # it runs on its own once evaluate@can has written its file.
    run(["dvc", "repro", "evaluate@can"], path)
    run(["dvc", "repro", "--single-item", "summary"], path)
    return path


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_crawl_ingests_every_photo(repo):
    crawl = _read_json(repo / "metrics" / "crawl.json")
    assert crawl["by_status"]["downloaded"] == TRAIN_PER_CLASS * len(TRAIN_CLASSES)
    assert crawl["downloaded_by_class"][EMPTY_CLASS] == 0


def test_annotate_keeps_crops_of_real_photos(repo):
    crops = list((repo / "data" / "annotated").rglob("*.jpg"))
    assert crops, "annotate kept no crop of the real photos"
    assert (repo / "data" / "annotated" / "annotations.csv").is_file()
    assert any((repo / "plots" / "annotate").glob("*.png")), "no contact sheet in plots/annotate"


def test_model_leaves_out_empty_class(repo):
    checkpoint = torch.load(repo / "models" / "can" / "model.pt", map_location="cpu", weights_only=False)
    assert EMPTY_CLASS not in checkpoint["classes"]
    assert set(checkpoint["classes"]) <= set(TRAIN_CLASSES)
    assert len(checkpoint["classes"]) >= 2


def test_split_reports_left_out_classes(repo):
    split = _read_json(repo / "metrics" / "split.json")
    checkpoint = torch.load(repo / "models" / "can" / "model.pt", map_location="cpu", weights_only=False)
    # Every training class is either in the model or reported as left out, never lost silently.
    for class_name in TRAIN_CLASSES:
        assert (class_name in checkpoint["classes"]) != (class_name in split["left_out"]), class_name


def test_evaluate_writes_external_metrics(repo):
    results = _read_json(repo / "metrics" / "evaluate" / "can.json")
    assert set(results) == {"sd198"}
    sd198 = results["sd198"]
    assert sd198["n_images"] == TEST_PER_CLASS * len(TEST_CLASSES)
    assert sd198["malignancy"]["auroc"]["value"] is not None
    assert 0.0 <= sd198["top1_accuracy"]["value"] <= 1.0


def test_summary_lists_real_run(repo):
    summary = _read_json(repo / "metrics" / "summary.json")
    assert "sd198" in summary["can"]
    assert "sd198" in (repo / "metrics" / "summary.md").read_text(encoding="utf-8")
