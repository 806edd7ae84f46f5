"""The real-mode site profiles in params.yaml, run against hand-written saved pages on 127.0.0.1.

The crawler's ``connect_to`` sends every canonical origin (www.bing.com, the image hosts, the
atlas) to a loopback server that serves tests/fixtures/saved_pages/ plus photographs written
here, so the profiles run unchanged except for their politeness delays.
"""

from __future__ import annotations

import copy
import io
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from dermcan.crawling import CrawlConfig, Crawler, open_journal
from dermcan.image_store import ImageStore
from dermcan.keyword_matching import KeywordMatcher
from dermcan.loopback_server import serve_site
from dermcan.page_parsing import parse_page
from dermcan.params import load_params

REPOSITORY = Path(__file__).resolve().parents[1]
SAVED_PAGES = REPOSITORY / "tests" / "fixtures" / "saved_pages"
BING_PAGE_URL = "https://www.bing.com/images/search?q=malignant+melanoma&form=HDRSC2&first=1"


def _crawl_params() -> dict[str, Any]:
    params = copy.deepcopy(load_params("crawl", REPOSITORY / "params.yaml"))
    params["workers"] = 2
    params["politeness"]["delay_s"] = 0.0
    params["allowed_private_networks"] = ["127.0.0.0/8"]  # every origin is served from 127.0.0.1
    params["retries"].update(max_retries=0, max_timeout_retries=0, backoff_s=0.01)
    for profile in params["profiles"].values():
        profile["delay_s"] = 0.0
    return params


def _photo(seed: int) -> bytes:
    image = Image.new("RGB", (320, 240), ((seed * 71) % 256, (seed * 29) % 256, (seed * 113) % 256))
    for y in range(0, 240, 12 + seed):
        image.paste((seed * 40 % 256, 255 - y, y), (0, y, 320, y + 4))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _write_photos(root: Path, urls: list[str]) -> None:
    for seed, url in enumerate(urls, start=1):
        target = root / urllib.parse.unquote(urllib.parse.urlsplit(url).path).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_photo(seed))


def _crawl(tmp_path: Path, profile_name: str, site_root: Path, origins: list[str]):
    config = CrawlConfig.from_params(_crawl_params())
    profile = config.profile(profile_name)
    store = ImageStore(tmp_path / "store", max_pixels=config.max_image_pixels, jpeg_quality=config.jpeg_quality)
    journal = open_journal(tmp_path / "journal.jsonl", config, [profile], store)
    with serve_site(site_root) as site:
        try:
            crawler = Crawler(config, store=store, journal=journal,
                              connect_to={origin: site.base_url for origin in origins})  # fmt: skip
            result = crawler.crawl([profile])
        finally:
            journal.close()
        requests = site.requests
    return result, requests, store


# -- Bing Images ------------------------------------------------------------------------------

BING_PHOTOS = [
    "https://images.dermclinic.test/gallery/melanoma-back.jpg",
    "https://cdn.skinhealth.test/uploads/2019/05/compound%20nevus.jpg",
    "https://img.newsportal.test/resize",
    "https://blog.kr-clinic.test/files/%ED%9D%91%EC%83%89%EC%A2%85.jpg",
    "https://www.travelblog.test/photos/beach-sunset.jpg",
]
BING_ORIGINS = [
    "https://www.bing.com", "https://images.dermclinic.test", "https://cdn.skinhealth.test",
    "https://img.newsportal.test", "https://www.travelblog.test", "https://www.healthsite.test",
    "https://blog.kr-clinic.test", "https://dermnetnz.org",
]  # fmt: skip


@pytest.fixture()
def bing_site(tmp_path: Path) -> Path:
    root = tmp_path / "bing"
    shutil.copytree(SAVED_PAGES / "bing", root)
    _write_photos(root, BING_PHOTOS)
    (root / "articles").mkdir()
    (root / "articles" / "acral-melanoma.jpg").write_text("<!DOCTYPE html><html><head><title>Acral melanoma</title></head></html>")
    return root


def test_bing_page_parse() -> None:
    config = CrawlConfig.from_params(_crawl_params())
    rules = config.profile("bing_images").rules
    html = (SAVED_PAGES / "bing" / "images" / "search" / "index.html").read_text(encoding="utf-8")
    parsed = parse_page(html, BING_PAGE_URL, rules, KeywordMatcher(config.keywords))
    urls = [image.url for image in parsed.images]
    assert urls == [
        "https://images.dermclinic.test/gallery/melanoma-back.jpg",
        "https://cdn.skinhealth.test/uploads/2019/05/compound%20nevus.jpg",
        "https://img.newsportal.test/resize?src=lesion-nose.jpg&w=800",
        "https://dermnetnz.org/assets/Uploads/melanoma-12.jpg",
        "https://www.travelblog.test/photos/beach-sunset.jpg",
        "https://www.healthsite.test/wp-content/uploads/2018/02/sk-closeup.jpg",
        "https://blog.kr-clinic.test/files/%ED%9D%91%EC%83%89%EC%A2%85.jpg",
        "https://www.healthsite.test/articles/acral-melanoma.jpg",
    ]
    assert parsed.links == ()
    captions = {image.url.rsplit("/", 1)[-1]: image.caption for image in parsed.images}
    assert captions["resize?src=lesion-nose.jpg&w=800"] == 'Basal cell carcinoma on the nose: "pearly" papule'
    assert captions["melanoma-back.jpg"] == "Malignant melanoma on the upper back"
    assert not any("bing.net" in url for url in urls)


def test_bing_profile_crawl(tmp_path: Path, bing_site: Path) -> None:
    result, requests, store = _crawl(tmp_path, "bing_images", bing_site, BING_ORIGINS)
    rows = {row["url"]: row for row in result.rows}
    assert len(rows) == 8
    expected = {
        "https://images.dermclinic.test/gallery/melanoma-back.jpg": ("downloaded", "malignantmelanoma"),
        "https://cdn.skinhealth.test/uploads/2019/05/compound%20nevus.jpg": ("downloaded", "melanocyticnevus"),
        "https://img.newsportal.test/resize?src=lesion-nose.jpg&w=800": ("downloaded", "basalcellcarcinoma"),
        "https://blog.kr-clinic.test/files/%ED%9D%91%EC%83%89%EC%A2%85.jpg": ("downloaded", "malignantmelanoma"),
        "https://dermnetnz.org/assets/Uploads/melanoma-12.jpg": ("blocked_site", "malignantmelanoma"),
        "https://www.travelblog.test/photos/beach-sunset.jpg": ("no_keyword", ""),
        "https://www.healthsite.test/wp-content/uploads/2018/02/sk-closeup.jpg": ("http_error", "seborrheickeratosis"),
        "https://www.healthsite.test/articles/acral-melanoma.jpg": ("not_an_image", "malignantmelanoma"),
    }
    assert {url: (row["status"], row["label"]) for url, row in rows.items()} == expected
    korean = rows["https://blog.kr-clinic.test/files/%ED%9D%91%EC%83%89%EC%A2%85.jpg"]
    assert korean["language"] == "ko"
    assert korean["page_url"] == BING_PAGE_URL  # the first start URL serves the same page first
    assert store.path_for(korean["sha256"]).is_file()
    assert "/photos/beach-sunset.jpg" not in requests
    assert requests.count("/images/search") == 2
    assert result.pages_fetched == 2


# -- Hellenic Dermatological Atlas -------------------------------------------------------------

ATLAS_ORIGIN = "http://www.hellenicdermatlas.com"
ATLAS_IDS = {292: "malignantmelanoma", 1133: "melanocyticnevus", 2204: "basalcellcarcinoma",
             3310: "seborrheickeratosis", 4021: ""}  # fmt: skip


def _standalone(picture_id: int) -> str:
    return f"{ATLAS_ORIGIN}/photos/{picture_id // 10000:04d}/{picture_id:04d}/{picture_id:08d}_standalone.jpg"


@pytest.fixture()
def atlas_site(tmp_path: Path) -> Path:
    root = tmp_path / "atlas"
    shutil.copytree(SAVED_PAGES / "hellenicdermatlas", root)
    _write_photos(root, [_standalone(picture_id) for picture_id in ATLAS_IDS])
    return root


def test_atlas_profile_crawl(tmp_path: Path, atlas_site: Path) -> None:
    result, requests, _ = _crawl(tmp_path, "hellenic_atlas", atlas_site, [ATLAS_ORIGIN])
    rows = {row["url"]: row for row in result.rows}
    assert set(rows) == {_standalone(picture_id) for picture_id in ATLAS_IDS}
    for picture_id, label in ATLAS_IDS.items():
        row = rows[_standalone(picture_id)]
        assert row["label"] == label, picture_id
        assert row["status"] == ("downloaded" if label else "no_keyword"), picture_id
        assert row["page_url"] == f"{ATLAS_ORIGIN}/en/viewpicture/{picture_id}", picture_id
    assert rows[_standalone(2204)]["caption"] == "Basal cell carcinoma, nodular"


def test_atlas_profile_pages(tmp_path: Path, atlas_site: Path) -> None:
    result, requests, _ = _crawl(tmp_path, "hellenic_atlas", atlas_site, [ATLAS_ORIGIN])
    assert "/robots.txt" in requests
    assert "/en/search/quick/2/" in requests
    assert not any(path.startswith("/en/admin/") for path in requests)
    assert not any(path.endswith(("_thumb.jpg", "_medium.jpg")) for path in requests)
    assert not any(path == "/images/logo_en.png" for path in requests)
    # Two start pages (one file served for both queries), page 2 and five picture pages.
    assert result.pages_fetched == 8
    assert result.pages_failed == {}


def test_dermnet_on_blocklist() -> None:
    config = CrawlConfig.from_params(_crawl_params())
    assert config.is_blocked("https://dermnetnz.org/topics/melanoma")
    assert config.is_blocked("https://www.dermnetnz.org/assets/x.jpg")


def test_blocklist_matches_idn_either_way() -> None:
    params = _crawl_params()
    params["blocked_hosts"] = ["bücher.example", "xn--mnchen-3ya.example", "ÄRZTE.example:8080"]
    config = CrawlConfig.from_params(params)

    assert config.is_blocked("http://xn--bcher-kva.example/a.jpg")
    assert config.is_blocked("http://www.BÜCHER.example/a.jpg")
    assert config.is_blocked("http://münchen.example/")
    assert config.is_blocked("http://xn--rzte-koa.example:8080/")
    assert not config.is_blocked("http://ärzte.example/")  # another port
    assert not config.is_blocked("http://buecher.example/")


def test_blocklist_rejects_invalid_idn() -> None:
    params = _crawl_params()
    params["blocked_hosts"] = ["a..b\u0301.example"]
    with pytest.raises(ValueError, match="crawl.blocked_hosts"):
        CrawlConfig.from_params(params)
