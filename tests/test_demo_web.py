"""The demo web generator: determinism, noise counts, truth, reachability and real HTTP behaviour."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from lxml import html as lxml_html
from PIL import Image
from protego import Protego

from dermcan.classes import CLASSES
from dermcan.demo_web import NOISE_COUNT_KEYS, generate_site
from dermcan.loopback_server import serve_site

REPO_ROOT = Path(__file__).resolve().parents[1]

SMALL_PARAMS: dict[str, Any] = {
    "seed": 3,
    "photos_per_class": 3,
    "photo_width": 96,
    "photo_height": 72,
    "thumb_width": 40,
    "photos_per_atlas_page": 2,
    "blog_share": 0.2,
    "blog_posts": 4,
    "wrong_caption_rate": 0.1,
    "noise": {key: 1 for key in NOISE_COUNT_KEYS} | {"near_duplicates": 3, "redirect_chains": 2},
    "oversized_pixels_size": [9000, 8000],
    "oversized_bytes_min": 60000,
    "slow_delay_s": 3.0,
    "redirect_hops": 3,
}


def _hash_listing(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _generate(root: Path, params: dict[str, Any]) -> tuple[Path, Path]:
    site, truth = root / "site", root / "truth.json"
    generate_site(site, truth, params)
    return site, truth


@pytest.fixture(scope="module")
def small_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Any]]]:
    site, truth_path = _generate(tmp_path_factory.mktemp("demo_web"), SMALL_PARAMS)
    return site, json.loads(truth_path.read_text(encoding="utf-8"))


def _of_kind(truth: dict[str, dict[str, Any]], kind: str) -> list[str]:
    return sorted(path for path, entry in truth.items() if entry["kind"] == kind)


def test_same_seed_byte_identical(small_site, tmp_path: Path) -> None:
    site, _ = small_site
    second_site, second_truth = _generate(tmp_path, SMALL_PARAMS)
    assert _hash_listing(second_site) == _hash_listing(site)
    first_truth_bytes = (site.parent / "truth.json").read_bytes()
    assert second_truth.read_bytes() == first_truth_bytes


def test_different_seed_differs(small_site, tmp_path: Path) -> None:
    site, _ = small_site
    other_site, _ = _generate(tmp_path, SMALL_PARAMS | {"seed": 4})
    first, second = _hash_listing(site), _hash_listing(other_site)
    photo_hashes = {digest for name, digest in first.items() if name.startswith("img/photos/")}
    other_photo_hashes = {
        digest for name, digest in second.items() if name.startswith("img/photos/")
    }
    assert photo_hashes
    assert not photo_hashes & other_photo_hashes
    assert first["index.html"] != second["index.html"]


@pytest.mark.parametrize(
    ("kind", "noise_key"),
    [
        ("broken", "broken_links"),
        ("html_as_image", "html_as_image"),
        ("truncated", "truncated"),
        ("redirect", "redirect_chains"),
        ("redirect_target", "redirect_chains"),
        ("redirect_loop", "redirect_loops"),
        ("disallowed", "disallowed"),
        ("slow", "slow"),
        ("unavailable", "unavailable"),
    ],
)
def test_truth_counts_noise_kind(small_site, kind: str, noise_key: str) -> None:
    _, truth = small_site
    assert len(_of_kind(truth, kind)) == SMALL_PARAMS["noise"][noise_key]


def test_truth_counts_oversized(small_site) -> None:
    _, truth = small_site
    oversize = Counter(truth[path]["oversize"] for path in _of_kind(truth, "oversized"))
    assert oversize["pixels"] == SMALL_PARAMS["noise"]["oversized_pixels"]
    assert oversize["bytes"] == SMALL_PARAMS["noise"]["oversized_bytes"]


def test_truth_counts_off_topic(small_site) -> None:
    _, truth = small_site
    off_topic = [truth[path] for path in _of_kind(truth, "off_topic")]
    assert (
        sum(entry["caption_label"] is not None for entry in off_topic)
        == SMALL_PARAMS["noise"]["off_topic_with_keyword"]
    )
    assert (
        sum(entry["caption_label"] is None for entry in off_topic)
        == SMALL_PARAMS["noise"]["off_topic_without_keyword"]
    )
    assert all(entry["true_label"] is None for entry in off_topic)


def test_truth_counts_duplicates(small_site) -> None:
    site, truth = small_site
    lesions = [truth[path] | {"path": path} for path in _of_kind(truth, "lesion")]
    by_kind = Counter(entry["duplicate_kind"] for entry in lesions if entry["duplicate_kind"])
    assert by_kind["exact"] == SMALL_PARAMS["noise"]["exact_duplicates"]
    assert (
        by_kind["resized"] + by_kind["reencoded"] + by_kind["cropped"]
        == SMALL_PARAMS["noise"]["near_duplicates"]
    )
    assert by_kind["cropped"] == 1
    for entry in lesions:
        if entry["duplicate_kind"] == "exact":
            copy = (site / entry["path"].lstrip("/")).read_bytes()
            assert copy == (site / entry["duplicate_of"].lstrip("/")).read_bytes()
        elif entry["duplicate_kind"]:
            copy = (site / entry["path"].lstrip("/")).read_bytes()
            assert copy != (site / entry["duplicate_of"].lstrip("/")).read_bytes()


def test_truth_counts_wrong_captions(small_site) -> None:
    _, truth = small_site
    photos = [
        entry
        for entry in truth.values()
        if entry["kind"] == "lesion" and not entry["duplicate_kind"]
    ]
    wrong = [entry for entry in photos if entry["caption_label"] != entry["true_label"]]
    assert len(wrong) == round(
        SMALL_PARAMS["wrong_caption_rate"] * len(CLASSES) * SMALL_PARAMS["photos_per_class"]
    )
    assert all(entry["caption_label"] in CLASSES for entry in wrong)


def test_truth_outside_served_folder(small_site, tmp_path: Path) -> None:
    site, truth = small_site
    served_names = {path.name for path in site.rglob("*")}
    assert "truth.json" not in served_names
    truth_bytes = (site.parent / "truth.json").read_bytes()
    assert all(path.read_bytes() != truth_bytes for path in site.rglob("*") if path.is_file())
    with pytest.raises(ValueError, match="must not be inside the served folder"):
        generate_site(tmp_path / "site", tmp_path / "site" / "truth.json", SMALL_PARAMS)


def test_boxes_inside_served_images(small_site) -> None:
    site, truth = small_site
    checked = 0
    for path, entry in truth.items():
        file_path = site / path.lstrip("/")
        if not entry["boxes"] or not file_path.is_file():
            continue
        with Image.open(file_path) as image:
            width, height = image.size  # header only, so truncated files work too
        for x0, y0, x1, y1 in entry["boxes"]:
            assert 0 <= x0 < x1 <= width, (path, entry["boxes"], width)
            assert 0 <= y0 < y1 <= height, (path, entry["boxes"], height)
        checked += 1
    assert checked >= len(CLASSES) * SMALL_PARAMS["photos_per_class"]


def _crop_offset(original: Image.Image, copy: Image.Image) -> tuple[int, int]:
    """Find where ``copy`` was cut out of ``original`` by trying every offset of a few pixels."""
    source = np.asarray(original.convert("RGB"), dtype=float)
    target = np.asarray(copy.convert("RGB"), dtype=float)
    height, width = target.shape[:2]
    errors = {
        (dx, dy): np.abs(source[dy : dy + height, dx : dx + width] - target).mean()
        for dx in range(original.width - width + 1)
        for dy in range(original.height - height + 1)
    }
    return min(errors, key=errors.get)


def test_duplicate_boxes_follow_transform(small_site) -> None:
    site, truth = small_site
    compared = Counter()
    for path, entry in truth.items():
        if not entry["duplicate_of"]:
            continue
        original_boxes = truth[entry["duplicate_of"]]["boxes"]
        with (
            Image.open(site / path.lstrip("/")) as copy,
            Image.open(site / entry["duplicate_of"].lstrip("/")) as original,
        ):
            if entry["duplicate_kind"] in ("exact", "reencoded"):
                assert entry["boxes"] == original_boxes, path
            elif entry["duplicate_kind"] == "resized":
                scale_x, scale_y = copy.width / original.width, copy.height / original.height
                expected = [
                    [x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y]
                    for x0, y0, x1, y1 in original_boxes
                ]
                assert len(entry["boxes"]) == len(expected), path
                assert np.abs(np.asarray(entry["boxes"]) - np.asarray(expected)).max() <= 1.0, path
            else:
                dx, dy = _crop_offset(original, copy)
                expected = [
                    [
                        max(0, x0 - dx),
                        max(0, y0 - dy),
                        min(copy.width, x1 - dx),
                        min(copy.height, y1 - dy),
                    ]
                    for x0, y0, x1, y1 in original_boxes
                ]
                expected = [box for box in expected if box[2] > box[0] and box[3] > box[1]]
                assert entry["boxes"] == expected, path
        compared[entry["duplicate_kind"]] += 1
    assert compared["resized"] >= len(CLASSES)  # thumbnails and resized copies
    assert compared["cropped"] == 1
    assert compared["exact"] == 1


def test_photo_boxes_lie_on_lesion(small_site) -> None:
    site, truth = small_site
    ratios = []
    for path in _of_kind(truth, "lesion"):
        with Image.open(site / path.lstrip("/")) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=float)
        for x0, y0, x1, y1 in truth[path]["boxes"]:
            margin_x, margin_y = (x1 - x0) // 2, (y1 - y0) // 2
            ring = np.zeros(pixels.shape[:2], dtype=bool)
            ring[max(0, y0 - margin_y) : y1 + margin_y, max(0, x0 - margin_x) : x1 + margin_x] = (
                True
            )
            ring[y0:y1, x0:x1] = False
            skin = pixels[ring].mean(axis=0)
            inside = np.linalg.norm(pixels[y0:y1, x0:x1] - skin, axis=2).mean()
            around = np.linalg.norm(pixels[ring] - skin, axis=1).mean()
            ratios.append(inside / around)
    assert len(ratios) >= len(CLASSES) * SMALL_PARAMS["photos_per_class"]
    assert float(np.median(ratios)) > 1.8
    assert np.mean(np.asarray(ratios) > 1.2) > 0.85


def test_lesion_photos_have_boxes_and_labels(small_site) -> None:
    _, truth = small_site
    for path in _of_kind(truth, "lesion") + _of_kind(truth, "thumbnail"):
        assert truth[path]["true_label"] in CLASSES, path
        assert truth[path]["boxes"], path


def _page_links(site: Path, page: str) -> list[str]:
    """Return the absolute URL paths that ``page`` links to or embeds."""
    document = lxml_html.fromstring((site / page.lstrip("/")).read_bytes())
    targets = document.xpath("//a/@href") + document.xpath("//img/@src")
    return [urllib.parse.urljoin(page, target) for target in targets]


def test_images_reachable_from_index(small_site) -> None:
    site, truth = small_site
    depth = {"/index.html": 0}
    queue = ["/index.html"]
    while queue:
        page = queue.pop(0)
        for target in _page_links(site, page):
            if target in depth:
                continue
            depth[target] = depth[page] + 1
            if target.endswith(".html"):
                queue.append(target)
    linked = [path for path, entry in truth.items() if entry["kind"] != "redirect_target"]
    assert all(path in depth for path in linked), sorted(set(linked) - set(depth))
    assert max(depth[path] for path in linked) <= 4


def test_pages_in_five_languages(small_site) -> None:
    site, _ = small_site
    languages = set()
    for page in site.rglob("*.html"):
        languages.update(lxml_html.fromstring(page.read_bytes()).xpath("/html/@lang"))
    assert languages == {"en", "ko", "es", "de", "ja"}


def test_served_site_behaves_as_truth_says(small_site) -> None:
    site, truth = small_site
    routes = json.loads((site / "_routes.json").read_text(encoding="utf-8"))
    with serve_site(site) as server, requests.Session() as session:
        session.max_redirects = 6

        for start in _of_kind(truth, "redirect"):
            response = session.get(server.url(start), timeout=5)
            assert response.status_code == 200
            assert len(response.history) == SMALL_PARAMS["redirect_hops"]
            assert urllib.parse.urlsplit(response.url).path == truth[start]["redirect_to"]
            assert response.content == (site / truth[start]["redirect_to"].lstrip("/")).read_bytes()

        for loop in _of_kind(truth, "redirect_loop"):
            with pytest.raises(requests.TooManyRedirects):
                session.get(server.url(loop), timeout=5)

        for broken in _of_kind(truth, "broken"):
            assert session.get(server.url(broken), timeout=5).status_code == 404

        for unavailable in _of_kind(truth, "unavailable"):
            assert session.get(server.url(unavailable), timeout=5).status_code == 503
            assert session.get(server.url(unavailable), timeout=5).status_code == 503

        for fake in _of_kind(truth, "html_as_image"):
            response = session.get(server.url(fake), timeout=5)
            assert response.status_code == 200
            assert response.headers["Content-Type"] == "image/jpeg"
            assert response.content.lstrip().lower().startswith(b"<!doctype html")

        robots = Protego.parse(session.get(server.url("/robots.txt"), timeout=5).text)
        for private in _of_kind(truth, "disallowed"):
            assert not robots.can_fetch(server.url(private), "dermcan")
        for public in _of_kind(truth, "lesion")[:3]:
            assert robots.can_fetch(server.url(public), "dermcan")

        assert session.get(server.url("/_routes.json"), timeout=5).status_code == 404
    for slow in _of_kind(truth, "slow"):
        assert routes["delays"][slow] == SMALL_PARAMS["slow_delay_s"]


def test_invalid_params_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown demo_web params"):
        generate_site(tmp_path / "site", tmp_path / "truth.json", {"photos": 3})
    with pytest.raises(ValueError, match="unknown demo_web.noise key"):
        generate_site(tmp_path / "site", tmp_path / "truth.json", {"noise": {"typos": 2}})
    assert not (tmp_path / "site").exists()


def test_stage_script_writes_outputs(tmp_path: Path) -> None:
    import yaml

    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"demo_web": SMALL_PARAMS | {"seed": 5}}), encoding="utf-8"
    )
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "src/stages/demo_web.py")],
        cwd=tmp_path,
        check=True,
        timeout=120,
    )
    assert (tmp_path / "data/demo/site/index.html").is_file()
    assert (tmp_path / "data/demo/site/robots.txt").is_file()
    assert json.loads((tmp_path / "data/demo/truth.json").read_text(encoding="utf-8"))
