"""Tests of local folder ingest on real clinical photographs (a small subset, copied to tmp)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from dermcan import folder_ingest
from dermcan.image_store import ImageStore
from dermcan.released_manifest_images import BOX_COLUMNS

REAL = Path("/work/shared/data/real-clinical")
pytestmark = pytest.mark.skipif(not (REAL / "files.csv").is_file(), reason="real clinical photos not present")

ALIASES = {"Melanocytic naevus": "melanocyticnevus", "Angioma": "hemangioma"}


def _real_files(source: str, class_name: str, count: int) -> list[Path]:
    return sorted((REAL / source / class_name).glob("*.jpg"))[:count]


def _store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store", max_pixels=40_000_000, jpeg_quality=90)


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    """An ImageFolder tree with display-name folders, aliases and the usual junk."""
    root = tmp_path / "photos"
    layout = {
        "Malignant melanoma": _real_files("dermnetnz", "malignantmelanoma", 3),
        "Melanocytic naevus": _real_files("dermnetnz", "melanocyticnevus", 2),
        "Angioma": _real_files("sd198", "hemangioma", 2),
        "psoriasis": _real_files("sd198", "dermatofibroma", 1),
    }
    for folder, files in layout.items():
        (root / folder).mkdir(parents=True)
        for file in files:
            shutil.copyfile(file, root / folder / file.name)

    melanoma = layout["Malignant melanoma"][0]
    # The same photo filed again under another class: an exact duplicate.
    shutil.copyfile(melanoma, root / "Melanocytic naevus" / "zz-copy.jpg")
    # A downscaled re-encode of the same photo: a near duplicate, not an exact one.
    with Image.open(melanoma) as image:
        smaller = image.resize((image.width // 2, image.height // 2))
        buffer = io.BytesIO()
        smaller.save(buffer, format="JPEG", quality=80)
    (root / "Malignant melanoma" / "zz-smaller.jpg").write_bytes(buffer.getvalue())
    (root / "Malignant melanoma" / "page.jpg").write_text("<html><body>moved</body></html>")
    data = melanoma.read_bytes()
    (root / "Malignant melanoma" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "Malignant melanoma" / "nested").mkdir()
    nested_source = _real_files("sd198", "pyogenicgranuloma", 1)[0]
    shutil.copyfile(nested_source, root / "Malignant melanoma" / "nested" / "x.jpg")
    (root / "loose.jpg").write_bytes(layout["Angioma"][1].read_bytes())
    (root / "Angioma" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return root


def _by_url(rows: list[dict]) -> dict[str, dict]:
    return {row["url"]: row for row in rows}


def test_image_folder_statuses(image_folder: Path, tmp_path: Path) -> None:
    rows = folder_ingest.ingest_folder(
        image_folder, _store(tmp_path), aliases=ALIASES, max_bytes=10_000_000, near_duplicate_distance=8
    ).rows
    by_url = _by_url(rows)
    assert len(rows) == 14
    assert [row["url"] for row in rows] == sorted(by_url)
    assert by_url["Malignant melanoma/page.jpg"]["status"] == "not_an_image"
    assert "HTML" in by_url["Malignant melanoma/page.jpg"]["reason"]
    assert by_url["Malignant melanoma/truncated.jpg"]["status"] == "corrupt"
    assert by_url["loose.jpg"]["status"] == "no_keyword"
    assert "not in a class folder" in by_url["loose.jpg"]["reason"]
    psoriasis = [row for url, row in by_url.items() if url.startswith("psoriasis/")]
    assert [row["status"] for row in psoriasis] == ["no_keyword"]
    assert "'psoriasis' matches no class" in psoriasis[0]["reason"]
    assert not any(url.endswith(".DS_Store") for url in by_url)


def test_image_folder_class_mapping(image_folder: Path, tmp_path: Path) -> None:
    rows = folder_ingest.ingest_folder(
        image_folder, _store(tmp_path), aliases=ALIASES, max_bytes=10_000_000, near_duplicate_distance=8
    ).rows
    labels = {row["caption"]: row["label"] for row in rows if row["label"]}
    assert labels == {
        "Malignant melanoma": "malignantmelanoma",
        "Melanocytic naevus": "melanocyticnevus",
        "Angioma": "hemangioma",
    }
    nested = _by_url(rows)["Malignant melanoma/nested/x.jpg"]
    assert nested["label"] == "malignantmelanoma"
    assert nested["status"] == "downloaded"


def test_image_folder_without_aliases(image_folder: Path, tmp_path: Path) -> None:
    rows = folder_ingest.ingest_folder(
        image_folder, _store(tmp_path), max_bytes=10_000_000, near_duplicate_distance=8
    ).rows
    naevus = [row for row in rows if row["caption"] == "Melanocytic naevus"]
    assert {row["status"] for row in naevus} == {"no_keyword"}


def test_image_folder_dedup(image_folder: Path, tmp_path: Path) -> None:
    store = _store(tmp_path)
    rows = folder_ingest.ingest_folder(
        image_folder, store, aliases=ALIASES, max_bytes=10_000_000, near_duplicate_distance=8
    ).rows
    by_url = _by_url(rows)
    first_name = _real_files("dermnetnz", "malignantmelanoma", 1)[0].name
    original = by_url[f"Malignant melanoma/{first_name}"]
    copy = by_url["Melanocytic naevus/zz-copy.jpg"]
    smaller = by_url["Malignant melanoma/zz-smaller.jpg"]
    assert original["status"] == "downloaded"
    assert copy["status"] == "duplicate"
    assert copy["sha256"] == original["sha256"]
    assert smaller["status"] == "downloaded"
    assert smaller["sha256"] != original["sha256"]
    assert smaller["dup_group"] == original["dup_group"]
    angioma = by_url["Angioma/" + _real_files("sd198", "hemangioma", 1)[0].name]
    assert angioma["dup_group"] != original["dup_group"]
    assert store.path_for(original["sha256"]).is_file()


def test_stored_copy_is_clean_jpeg(image_folder: Path, tmp_path: Path) -> None:
    store = _store(tmp_path)
    rows = folder_ingest.ingest_folder(
        image_folder, store, aliases=ALIASES, max_bytes=10_000_000, near_duplicate_distance=8
    ).rows
    row = next(row for row in rows if row["status"] == "downloaded")
    with Image.open(store.path_for(row["sha256"])) as stored:
        assert stored.format == "JPEG"
        assert stored.mode == "RGB"
        assert "icc_profile" not in stored.info
        assert stored.size == (int(row["width"]), int(row["height"]))


def test_size_limit(image_folder: Path, tmp_path: Path) -> None:
    rows = folder_ingest.ingest_folder(
        image_folder, _store(tmp_path), aliases=ALIASES, max_bytes=1_000, near_duplicate_distance=8
    ).rows
    statuses = {row["status"] for row in rows if row["label"] and row["url"] != "Malignant melanoma/page.jpg"}
    assert statuses == {"too_large"}


def test_labels_csv_on_real_folder(tmp_path: Path) -> None:
    with open(REAL / "files.csv", newline="", encoding="utf-8") as handle:
        listing = list(csv.DictReader(handle))
    chosen = [row for row in listing if row["original_label"] in
              ("Melanoma in situ", "Pyogenic_Granuloma", "Cherry angioma", "Melanocytic naevus")]  # fmt: skip
    picked: dict[str, dict] = {}
    for row in chosen:
        picked.setdefault(row["original_label"], row)
    labels_csv = tmp_path / "labels.csv"
    with open(labels_csv, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label"])
        for row in picked.values():
            writer.writerow([f"{row['source']}/{row['class']}/{row['file']}", row["original_label"]])
        writer.writerow(["dermnetnz/melanocyticnevus/not-there.jpg", "Melanocytic naevus"])

    aliases = {"Melanoma in situ": "malignantmelanoma", "Melanocytic naevus": "melanocyticnevus"}
    ingest = folder_ingest.ingest_folder(
        REAL, _store(tmp_path), labels_csv=labels_csv, aliases=aliases,
        max_bytes=10_000_000, near_duplicate_distance=8,
    )  # fmt: skip
    rows = ingest.rows
    by_url = _by_url(rows)
    expected = {
        "Melanoma in situ": "malignantmelanoma",
        "Pyogenic_Granuloma": "pyogenicgranuloma",
        "Cherry angioma": "hemangioma",
        "Melanocytic naevus": "melanocyticnevus",
    }
    for original_label, row in picked.items():
        manifest_row = by_url[f"{row['source']}/{row['class']}/{row['file']}"]
        assert manifest_row["label"] == expected[original_label]
        assert manifest_row["status"] == "downloaded"
        assert int(manifest_row["width"]) == int(row["width"])
    assert len(ingest.missing_files) == 1
    assert ingest.missing_files[0].startswith("dermnetnz/melanocyticnevus/not-there.jpg")
    assert "dermnetnz/melanocyticnevus/not-there.jpg" not in by_url
    assert by_url["files.csv"]["status"] == "no_keyword"
    assert sum(row["status"] == "no_keyword" for row in rows) == 818 + 1 - 4


def test_labels_csv_conflict_and_header(tmp_path: Path) -> None:
    root = tmp_path / "any"
    root.mkdir()
    source = _real_files("sd198", "dermatofibroma", 1)[0]
    shutil.copyfile(source, root / "a.jpg")
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("file,label\na.jpg,dermatofibroma\na.jpg,melanoma\n", encoding="utf-8")
    rows = folder_ingest.ingest_folder(
        root, _store(tmp_path), labels_csv=labels_csv, max_bytes=10_000_000, near_duplicate_distance=8
    ).rows
    assert [(row["url"], row["status"]) for row in rows] == [("a.jpg", "no_keyword")]
    assert "different labels" in rows[0]["reason"]

    labels_csv.write_text("path,class\na.jpg,dermatofibroma\n", encoding="utf-8")
    with pytest.raises(ValueError, match="needs a header"):
        folder_ingest.list_labelled_files(root, labels_csv)


def test_missing_root_names_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        folder_ingest.list_image_folder(tmp_path / "nowhere")


def _run_crawl_stage(workdir: Path, crawl_overrides: dict) -> subprocess.CompletedProcess[str]:
    repository = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((repository / "params.yaml").read_text(encoding="utf-8"))
    params["crawl"].update(crawl_overrides)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(repository / "src" / "stages" / "crawl.py")],
        cwd=workdir, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_crawl_stage_folder_source(image_folder: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "run"
    workdir.mkdir()
    aliases = {"Melanocytic naevus": "melanocyticnevus", "Angioma": "hemangioma"}
    completed = _run_crawl_stage(
        workdir, {"source": "folder", "folder": {"path": str(image_folder), "labels_csv": None, "aliases": aliases}}
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    with open(workdir / "data" / "crawl" / "manifest.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 14
    downloaded = [row for row in rows if row["status"] == "downloaded"]
    assert len(downloaded) == 9
    for row in downloaded:
        published = workdir / "data" / "crawl" / "images" / row["sha256"][:2] / f"{row['sha256']}.jpg"
        assert published.is_file(), row["url"]
    metrics = json.loads((workdir / "metrics" / "crawl.json").read_text(encoding="utf-8"))
    assert metrics["downloaded_by_class"]["malignantmelanoma"] == 5
    # The manifest source's outputs exist, empty, so DVC finds every declared output.
    boxes_text = (workdir / "data" / "crawl" / "manifest_boxes.csv").read_text(encoding="utf-8")
    assert boxes_text.splitlines() == [",".join(BOX_COLUMNS)]
    assert list((workdir / "data" / "crawl" / "crops").iterdir()) == []
