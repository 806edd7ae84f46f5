"""End-to-end tests of the annotation on a small generated crawl, and of its measurement."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from annotation_fixtures import make_crawl
from dermcan.annotation import ANNOTATION_COLUMNS, AnnotateConfig, annotate, write_annotation
from dermcan.annotation_truth import measure_annotation
from dermcan.atomic_io import read_csv
from dermcan.can_manifest import entry_to_pixels, read_manifest
from dermcan.params import load_params

REPO = Path(__file__).resolve().parents[1]
DECISIONS = {"keep", "relabel", "drop", "reject"}


@pytest.fixture(scope="module")
def crawl(tmp_path_factory):
    root = tmp_path_factory.mktemp("crawl")
    rows, truth = make_crawl(root, per_class=6, wrong_captions=6, off_topic=5, width=256, height=192)
    return root, read_csv(root / "manifest.csv"), truth


@pytest.fixture(scope="module")
def config() -> AnnotateConfig:
    params = load_params("annotate", REPO / "params.yaml")
    return AnnotateConfig.from_params(params)


@pytest.fixture(scope="module")
def annotated(crawl, config, tmp_path_factory):
    root, manifest, _ = crawl
    opened: list[str] = []

    def record(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], (str, Path)):
            opened.append(str(args[0]))

    sys.addaudithook(record)
    annotation = annotate(manifest, root / "images", config)
    files_opened = list(opened)
    opened.clear()
    output = tmp_path_factory.mktemp("out") / "annotated"
    write_annotation(annotation, output, ["test header"])
    return annotation, output, files_opened


def test_every_row_has_a_decision_and_reason(annotated) -> None:
    annotation, _, _ = annotated
    for row in annotation.rows:
        assert row["decision"] in DECISIONS
        assert row["reason"]
        assert set(row) == set(ANNOTATION_COLUMNS)


def test_every_downloaded_image_is_accounted_for(annotated, crawl) -> None:
    annotation, _, _ = annotated
    _, manifest, _ = crawl
    downloaded = {row["sha256"] for row in manifest if row["status"] == "downloaded"}
    assert {row["sha256"] for row in annotation.rows} == downloaded


def test_off_topic_images_are_rejected(annotated, crawl) -> None:
    annotation, _, _ = annotated
    _, _, truth = crawl
    off_topic_urls = {path for path, entry in truth.items() if entry["kind"] == "off_topic"}
    rows = [row for row in annotation.rows if row["url"].split("8000", 1)[1] in off_topic_urls]
    assert len(rows) == 5
    assert all(row["decision"] == "reject" for row in rows)
    assert all(row["reason"].startswith("not a clinical photo") for row in rows)


def test_crop_path_set_only_for_kept_crops(annotated) -> None:
    annotation, _, _ = annotated
    for row in annotation.rows:
        kept = row["decision"] in ("keep", "relabel")
        assert bool(row["crop_path"]) == kept
        if kept:
            assert row["crop_path"] == f"data/annotated/{row['verified_label']}/{row['crop_id']}.jpg"


def test_crops_are_written_in_imagefolder_layout(annotated) -> None:
    annotation, output, _ = annotated
    kept = [row for row in annotation.rows if row["crop_path"]]
    written = sorted(path.relative_to(output).as_posix() for path in output.glob("*/*.jpg"))
    assert written == sorted(row["crop_path"].removeprefix("data/annotated/") for row in kept)
    assert list(read_csv(output / "annotations.csv")[0]) == list(ANNOTATION_COLUMNS)


def test_manifest_lists_kept_crop_boxes(annotated) -> None:
    annotation, output, _ = annotated
    header, entries = read_manifest(output / "can_manifest.txt")
    kept = [row for row in annotation.rows if row["crop_path"]]
    assert header == ["test header"]
    assert len(entries) == len(kept)
    for entry, row in zip(entries, kept):
        assert entry.label == row["verified_label"]
        assert entry.url == row["url"]
        box = entry_to_pixels(entry, row["image_width"], row["image_height"])
        expected = (row["crop_x0"], row["crop_y0"], row["crop_x1"], row["crop_y1"])
        assert box == pytest.approx(expected, abs=0.01)


def test_annotation_opens_only_stored_images(annotated, crawl) -> None:
    root, _, _ = crawl
    _, _, opened = annotated
    outside = [path for path in opened if path.startswith(str(root)) and "/images/" not in path]
    assert outside == []
    assert not any("truth" in Path(path).name for path in opened)


def test_measurement_on_generated_crawl(annotated, crawl) -> None:
    annotation, output, _ = annotated
    _, manifest, truth = crawl
    metrics = measure_annotation(read_csv(output / "annotations.csv"), manifest, truth, iou_threshold=0.5)
    assert metrics["distinct_images"] == 65
    assert metrics["off_topic_removed_share"] == 1.0
    assert metrics["wrong_caption_images"] == 6
    assert metrics["precision"] >= 0.85
    assert metrics["recall"] >= 0.7
    assert metrics["mean_box_iou"] >= 0.7


def test_measurement_counts_by_hand() -> None:
    manifest = [
        {"url": "http://h/img/a.jpg", "status": "downloaded", "sha256": "a", "label": "hemangioma"},
        {"url": "http://h/img/b.jpg", "status": "downloaded", "sha256": "b", "label": "hemangioma"},
        {"url": "http://h/img/c.jpg", "status": "downloaded", "sha256": "c", "label": "melanocyticnevus"},
        {"url": "http://h/img/a2.jpg", "status": "duplicate", "sha256": "a", "label": "hemangioma"},
    ]
    truth = {
        "/img/a.jpg": {"kind": "lesion", "true_label": "hemangioma", "boxes": [[0, 0, 10, 10], [50, 50, 60, 60]]},
        "/img/b.jpg": {"kind": "lesion", "true_label": "malignantmelanoma", "boxes": [[0, 0, 10, 10]]},
        "/img/c.jpg": {"kind": "off_topic", "true_label": None, "boxes": []},
    }

    def crop(sha: str, box: tuple, label: str, decision: str = "keep") -> dict:
        x0, y0, x1, y1 = box
        return {"sha256": sha, "x0": x0, "y0": y0, "x1": x1, "y1": y1, "verified_label": label, "decision": decision}

    rows = [
        crop("a", (0, 0, 10, 10), "hemangioma"),
        crop("a", (30, 30, 40, 40), "hemangioma"),
        crop("b", (0, 0, 10, 10), "hemangioma", "drop"),
        {"sha256": "c", "decision": "reject", "verified_label": ""},
    ]
    metrics = measure_annotation(rows, manifest, truth, iou_threshold=0.5)
    assert metrics["kept_crops"] == 2
    assert metrics["precision"] == 0.5
    assert metrics["true_lesions"] == 3
    assert metrics["recall"] == pytest.approx(1 / 3, abs=1e-4)
    assert metrics["off_topic_removed_share"] == 1.0
    assert metrics["wrong_caption_removed_share"] == 1.0
    assert metrics["correct_caption_lost_share"] == 0.0


def _digest_tree(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_annotate_stage_ignores_the_truth_file(tmp_path: Path) -> None:
    _, truth = make_crawl(tmp_path / "data/crawl", per_class=3, off_topic=2, seed=5)
    params = {"annotate": load_params("annotate", REPO / "params.yaml")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    truth_path = tmp_path / "data/demo/truth.json"
    truth_path.parent.mkdir(parents=True)
    truth_path.write_text(json.dumps(truth), encoding="utf-8")

    outputs = {}
    for run in ("with truth", "without truth"):
        if run == "without truth":
            truth_path.rename(truth_path.with_suffix(".hidden"))
        subprocess.run([sys.executable, str(REPO / "src/stages/annotate.py")], cwd=tmp_path,
                       check=True, capture_output=True)
        outputs[run] = {**_digest_tree(tmp_path / "data/annotated"), **_digest_tree(tmp_path / "plots")}

    assert outputs["with truth"]
    assert outputs["with truth"] == outputs["without truth"]
