"""Downloading and cropping released CAN manifest rows from loopback servers and mirrors.

Real CAN2000 lines are served from 127.0.0.1: the crawler's ``connect_to`` maps each of their
origins to a loopback server that serves generated photographs at the same paths.
"""

from __future__ import annotations

import csv
import io
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import conftest
import pytest
import yaml
from PIL import Image

from dermcan import released_manifests as rm
from dermcan.crawling import CrawlConfig
from dermcan.image_store import ImageStore
from dermcan.loopback_server import serve_site
from dermcan.params import load_params
from dermcan.released_manifest_images import (
    BOX_COLUMNS,
    ManifestImages,
    MirrorSettings,
    collect_released_manifest,
    crop_boxes,
    summarize_boxes,
)

CAN2000 = Path("/work/shared/data/manifests/CAN2000.csv")
pytestmark = pytest.mark.skipif(not CAN2000.is_file(), reason="released CAN2000 file not present")

# Rows of CAN2000 that carry the edge cases: spaces and a zero height (00004), spaces (00128),
# a literal \u003d (00094), raw non-ASCII (00116), percent-escapes (00024), a box past the
# top edge (00008), and one URL with five boxes (01351 ...).
REAL_ROWS = ("00004", "00128", "00094", "00116", "00024", "00008", "01351", "01624", "01734", "01889", "01946")

SYNTHETIC_LINES = [
    "90001 malignantmelanoma 1.5 0.5 0.2 0.2 http://photos.example.test/outside.jpg",
    "90002 psoriasis 0.5 0.5 0.2 0.2 http://photos.example.test/psoriasis.jpg",
    "90003 malignantmelanoma 0.5 0.5 0.2",
    "90004 melanocyticnevus 0.5 0.5 0.2 0.2 http://photos.example.test/gone.jpg",
    "90005 melanocyticnevus 0.5 0.5 0.2 0.2 http://photos.example.test/page.jpg",
    "90006 melanocyticnevus 0.5 0.5 0.0004 0.5 http://photos.example.test/sliver.jpg",
    "90007 malignantmelanoma 0.5 0.5 0.5 0.5 http://dermnetnz.org/melanoma.jpg",
]

IMAGE_SIZE = (400, 300)


def _real_lines() -> list[str]:
    wanted = set(REAL_ROWS)
    lines = []
    for line in CAN2000.read_text(encoding="utf-8").splitlines():
        if line.split(" ", 1)[0] in wanted:
            lines.append(line)
    assert len(lines) == len(REAL_ROWS)
    return lines


def _photo(seed: int) -> bytes:
    """A JPEG of IMAGE_SIZE whose colour depends on ``seed``, with a pattern so hashes differ."""
    image = Image.new("RGB", IMAGE_SIZE, ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256))
    for x in range(0, IMAGE_SIZE[0], 20 + seed % 7):
        image.paste((255 - x % 256, seed * 11 % 256, x % 256), (x, 0, x + 5, IMAGE_SIZE[1]))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _write_site(root: Path, urls: list[str]) -> None:
    """Write a photo for each URL at the path the loopback server will look up."""
    for index, url in enumerate(urls):
        path = urllib.parse.unquote(urllib.parse.urlsplit(url).path).lstrip("/")
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_photo(index + 1))


def _config(tmp_path: Path) -> CrawlConfig:
    params: dict[str, Any] = load_params("crawl", Path(__file__).resolve().parents[1] / "params.yaml")
    params = {**params, "workers": 2, "profiles": {}, "allowed_private_networks": ["127.0.0.0/8"]}
    params["politeness"] = {**params["politeness"], "delay_s": 0.0, "max_per_host": 4}
    params["retries"] = {**params["retries"], "max_retries": 0, "max_timeout_retries": 0, "backoff_s": 0.01}
    return CrawlConfig.from_params(params)


def _write_manifest(folder: Path) -> Path:
    path = folder / "subset.txt"
    path.write_text("## subset of CAN2000 and synthetic lines\n" + "\n".join(_real_lines() + SYNTHETIC_LINES) + "\n",
                    encoding="utf-8")  # fmt: skip
    return path


@pytest.fixture()
def manifest_file(tmp_path: Path) -> Path:
    return _write_manifest(tmp_path)


def _origins(report: rm.ManifestReport) -> set[str]:
    origins = set()
    for row in report.rows:
        if row.url:
            parts = urllib.parse.urlsplit(row.url)
            origins.add(f"{parts.scheme}://{parts.netloc}")
    return origins


def _run(tmp_path: Path, manifest_file: Path, *, mirror: Any = None, connect_to: dict[str, str] | None = None):
    config = _config(tmp_path)
    store = ImageStore(tmp_path / "store", max_pixels=config.max_image_pixels, jpeg_quality=config.jpeg_quality)
    result = collect_released_manifest(
        config, {"path": str(manifest_file), "mirror": mirror}, store,
        journal_path=tmp_path / "journal.jsonl", crops_dir=tmp_path / "crops",
        boxes_path=tmp_path / "boxes.csv", connect_to=connect_to,
    )  # fmt: skip
    with open(tmp_path / "boxes.csv", newline="", encoding="utf-8") as handle:
        boxes = {row["row"]: row for row in csv.DictReader(handle)}
    return result, boxes, store


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """Run the manifest source once against a loopback copy of every host in the manifest."""
    tmp_path = tmp_path_factory.mktemp("served")
    manifest_file = _write_manifest(tmp_path)
    report = rm.read_manifest(manifest_file)
    web = tmp_path / "web"
    urls = sorted({row.url for row in report.rows if row.url and "gone.jpg" not in row.url})
    _write_site(web, [url for url in urls if not url.endswith("page.jpg")])
    (web / "page.jpg").write_text("<!doctype html><html><body>Moved</body></html>")
    # The conftest guard is function-scoped, so this module-scoped fixture installs it itself.
    with pytest.MonkeyPatch.context() as patch, serve_site(web) as site:
        patch.setattr(socket.socket, "connect", conftest._guarded_connect)
        patch.setattr(socket.socket, "connect_ex", conftest._guarded_connect_ex)
        connect_to = {origin: site.base_url for origin in _origins(report)}
        result, boxes, store = _run(tmp_path, manifest_file, connect_to=connect_to)
        requests = site.requests
    return result, boxes, store, requests, tmp_path


def test_box_statuses(served) -> None:
    _, boxes, _, _, _ = served
    expected = {
        "00004": "degenerate_box", "00128": "cropped", "00094": "cropped", "00116": "cropped",
        "00024": "cropped", "00008": "cropped", "01351": "cropped", "01624": "cropped",
        "01734": "cropped", "01889": "cropped", "01946": "cropped",
        "90001": "degenerate_box", "90002": "unknown_label", "90003": "malformed",
        "90004": "http_error", "90005": "not_an_image", "90006": "degenerate_box",
        "90007": "blocked_site",
    }  # fmt: skip
    assert {row: boxes[row]["status"] for row in expected} == expected
    assert "HTTP 404" in boxes["90004"]["reason"]
    assert "empty in pixels" in boxes["90006"]["reason"]
    assert boxes["90003"]["line"] == "15"


def test_degenerate_row_keeps_whole_image(served) -> None:
    result, boxes, store, _, _ = served
    row = boxes["00004"]
    assert row["crop_path"] == ""
    assert row["sha256"]
    assert store.path_for(row["sha256"]).is_file()
    manifest_row = next(r for r in result.rows if r["url"] == row["url"])
    assert manifest_row["status"] == "downloaded"
    assert manifest_row["label"] == "melanocyticnevus"


def test_repeated_url_downloaded_once(served) -> None:
    result, boxes, _, requests, _ = served
    path = "/originals/28/d6/92/28d6927c1cb955f44329d01e2dfb1476.jpg"
    assert requests.count(path) == 1
    repeated = [boxes[row] for row in ("01351", "01624", "01734", "01889", "01946")]
    assert len({row["sha256"] for row in repeated}) == 1
    assert len({row["crop_path"] for row in repeated}) == 5
    assert len([r for r in result.rows if r["url"] == repeated[0]["url"]]) == 1


def test_crop_geometry(served) -> None:
    _, boxes, _, _, _ = served
    width, height = IMAGE_SIZE
    row = boxes["01351"]  # 0.551 0.579 0.104 0.158
    assert (int(row["x0"]), int(row["y0"]), int(row["x1"]), int(row["y1"])) == (
        round((0.551 - 0.052) * width), round((0.579 - 0.079) * height),
        round((0.551 + 0.052) * width), round((0.579 + 0.079) * height),
    )  # fmt: skip
    with Image.open(row["crop_path"]) as crop:
        assert crop.size == (int(row["x1"]) - int(row["x0"]), int(row["y1"]) - int(row["y0"]))
        assert crop.format == "JPEG"
    assert Path(row["crop_path"]).parent.name == "malignantmelanoma"


def test_clipped_box_recorded(served) -> None:
    _, boxes, _, _, _ = served
    row = boxes["00008"]  # top edge at -0.0005 of the height
    assert row["clipped"] == "True"
    assert row["y0"] == "0"
    assert boxes["00128"]["clipped"] == "False"


def test_urls_requested_decoded(served) -> None:
    _, boxes, _, requests, _ = served
    assert "/~sumbaug/Borders Complete/Dysplastic Nevus/Dysplastic Nevus Images/Fcl012.jpg" in requests
    assert any(path.startswith("/cdn-cgi/image/f=auto,fit=cover,h=200,onerror=redirect,w=240/") for path in requests)
    assert any(path.endswith("/włókniak-miękki.jpg") for path in requests)
    assert not any("dermnetnz" in path or path == "/melanoma.jpg" for path in requests)
    assert boxes["00094"]["obtained_from"] == "web"


def test_crawl_rows_and_metrics(served) -> None:
    result, boxes, _, _, _ = served
    statuses = {row["url"].rsplit("/", 1)[-1]: row["status"] for row in result.rows}
    assert statuses["outside.jpg"] == "downloaded"
    assert statuses["gone.jpg"] == "http_error"
    assert statuses["melanoma.jpg"] == "blocked_site"
    assert "psoriasis.jpg" not in statuses
    assert [row["url"] for row in result.rows] == sorted(row["url"] for row in result.rows)
    assert boxes["90002"]["url"] not in {row["url"] for row in result.rows}


def test_box_table_columns(served) -> None:
    served_dir = served[4]
    with open(served_dir / "boxes.csv", newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    assert tuple(header) == BOX_COLUMNS


def test_mirror_directory_without_web(tmp_path: Path, manifest_file: Path) -> None:
    report = rm.read_manifest(manifest_file)
    mirror_dir = tmp_path / "mirror"
    mirror_dir.mkdir()
    pinimg = next(row.url for row in report.rows if row.row_id == "01351")
    spaced = next(row.url for row in report.rows if row.row_id == "00128")
    # One file by name, one in the wget layout <host>/<path>, one through a url,filepath log.
    (mirror_dir / "28d6927c1cb955f44329d01e2dfb1476.jpg").write_bytes(_photo(3))
    layout = mirror_dir / "www.siue.edu" / "~sumbaug/Borders Complete/Dysplastic Nevus/Dysplastic Nevus Images/Fcl012.jpg"
    layout.parent.mkdir(parents=True)
    layout.write_bytes(_photo(4))
    (mirror_dir / "000017aGVsbG8=.jpg").write_bytes(_photo(5))
    quizlet = next(row for row in report.rows if row.row_id == "00094")
    mapping = tmp_path / "map.csv"
    mapping.write_text(f"{quizlet.source_url},L:/webdb_2019/images/melanoma_google\\000017aGVsbG8=.jpg\n", encoding="utf-8")

    result, boxes, _ = _run(
        tmp_path, manifest_file,
        mirror={"directory": str(mirror_dir), "mapping_csv": str(mapping), "web_fallback": False},
    )  # fmt: skip
    assert boxes["01351"]["status"] == "cropped"
    assert boxes["01351"]["obtained_from"] == "mirror_file"
    assert boxes["00128"]["status"] == "cropped"
    assert boxes["00094"]["status"] == "cropped"
    assert boxes["00116"]["status"] == "http_error"
    assert "not found in the mirror" in boxes["00116"]["reason"]
    assert {row["url"] for row in result.rows if row["status"] == "downloaded"} == {pinimg, spaced, quizlet.url}
    assert result.hosts == []


def test_mirror_base_url(tmp_path: Path, manifest_file: Path) -> None:
    report = rm.read_manifest(manifest_file)
    mirror_web = tmp_path / "mirror_web"
    row = next(row for row in report.rows if row.row_id == "00116")
    parts = urllib.parse.urlsplit(row.url)
    target = mirror_web / parts.netloc / urllib.parse.unquote(parts.path).lstrip("/")
    target.parent.mkdir(parents=True)
    target.write_bytes(_photo(6))
    with serve_site(mirror_web) as site:
        _, boxes, _ = _run(tmp_path, manifest_file, mirror={"base_url": site.url("/"), "web_fallback": False})
        requests = site.requests
    assert boxes["00116"]["status"] == "cropped"
    assert boxes["00116"]["obtained_from"] == "mirror_url"
    assert boxes["00116"]["url"] == row.url
    assert f"/{parts.netloc}{urllib.parse.unquote(parts.path)}" in requests


def test_summary_counts(served, manifest_file: Path) -> None:
    _, boxes, _, _, _ = served
    report = rm.read_manifest(manifest_file)
    summary = summarize_boxes(report, list(boxes.values()))
    assert summary["manifest_rows"] == len(REAL_ROWS) + len(SYNTHETIC_LINES)
    assert summary["boxes_by_status"]["cropped"] == 10
    assert summary["crops_by_class"] == {"malignantmelanoma": 5, "melanocyticnevus": 5}
    assert summary["clipped_boxes"] == 1


def test_mirror_settings_from_params(tmp_path: Path) -> None:
    assert MirrorSettings.from_params(None) is None
    assert MirrorSettings.from_params("http://127.0.0.1:9/").base_url == "http://127.0.0.1:9/"
    assert MirrorSettings.from_params(str(tmp_path)).directory == tmp_path
    with pytest.raises(ValueError, match="unknown keys"):
        MirrorSettings.from_params({"folder": "x"})
    with pytest.raises(FileNotFoundError, match="nowhere"):
        MirrorSettings.from_params({"directory": str(tmp_path / "nowhere")})


def test_crawl_stage_manifest_source(tmp_path: Path, manifest_file: Path) -> None:
    """The crawl stage with source manifest and a mirror folder; the web is off, so nothing is fetched."""
    report = rm.read_manifest(manifest_file)
    mirror_dir = tmp_path / "mirror"
    _write_site(mirror_dir, sorted({row.url for row in report.rows if row.url}))
    # _write_site lays files out by path; the mirror's wget layout wants <host>/<path>.
    for row in report.rows:
        if not row.url:
            continue
        parts = urllib.parse.urlsplit(row.url)
        relative = urllib.parse.unquote(parts.path).lstrip("/")
        target = mirror_dir / parts.netloc / relative
        if (mirror_dir / relative).is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((mirror_dir / relative).read_bytes())

    repository = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((repository / "params.yaml").read_text(encoding="utf-8"))
    params["crawl"].update(source="manifest", manifest={
        "path": str(manifest_file), "aliases": {},
        "mirror": {"directory": str(mirror_dir), "web_fallback": False},
    })  # fmt: skip
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    completed = subprocess.run(
        [sys.executable, str(repository / "src" / "stages" / "crawl.py")],
        cwd=workdir, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]

    with open(workdir / "data" / "crawl" / "manifest_boxes.csv", newline="", encoding="utf-8") as handle:
        boxes = {row["row"]: row for row in csv.DictReader(handle)}
    assert boxes["01946"]["status"] == "cropped"
    assert (workdir / boxes["01946"]["crop_path"]).is_file()
    assert boxes["90007"]["status"] == "blocked_site"
    with open(workdir / "data" / "crawl" / "manifest.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len({row.url for row in report.rows if row.status in ("ok", "degenerate_box")})
    assert sum(row["status"] == "downloaded" for row in rows) >= 9


def test_missing_stored_image_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "one.txt"
    path.write_text("00001 malignantmelanoma 0.5 0.5 0.5 0.5 http://127.0.0.1/a.jpg\n", encoding="utf-8")
    report = rm.read_manifest(path)
    store = ImageStore(tmp_path / "store", max_pixels=1_000_000, jpeg_quality=90)
    image_row = {"url": "http://127.0.0.1/a.jpg", "status": "downloaded", "reason": "",
                 "sha256": "ab" * 32, "width": 10, "height": 10}  # fmt: skip
    images = ManifestImages([image_row], {"http://127.0.0.1/a.jpg": "web"}, [], 0)
    boxes = crop_boxes(report, images, store, tmp_path / "crops", jpeg_quality=90)
    assert boxes[0]["status"] == "corrupt"
    assert "cannot be read" in boxes[0]["reason"]
    assert boxes[0]["crop_path"] == ""
