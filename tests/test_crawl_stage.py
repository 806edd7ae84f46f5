"""The crawl stage as a subprocess: outputs, resume after SIGKILL, the demo web, bad params."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from crawl_sites import ORIGIN, REPO, crawl_params, figure, jpeg_bytes, page, textured_image
from dermcan.atomic_io import read_csv
from dermcan.demo_web import generate_site
from dermcan.loopback_server import serve_site

STAGE = REPO / "src" / "stages" / "crawl.py"

# Truth kind of the demo web -> manifest status of its URL; None: the URL is no candidate
# (a thumbnail is replaced by the full-size photo it links to, a redirect target is reached
# only through its redirect).
DEMO_KIND_STATUS: dict[str, str | None] = {
    "lesion": "downloaded",
    "thumbnail": None,
    "off_topic": "downloaded",  # with a keyword; without one it is no_keyword (checked apart)
    "broken": "http_error",
    "html_as_image": "not_an_image",
    "truncated": "corrupt",
    "oversized": "too_large",
    "redirect": "downloaded",
    "redirect_target": None,
    "redirect_loop": "too_many_redirects",
    "disallowed": "disallowed_by_robots",
    "slow": "timeout",
    "unavailable": "http_error",
}


def _write_repo(root: Path, crawl: dict[str, Any]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump({"crawl": crawl}, allow_unicode=True), encoding="utf-8")


def _stage(root: Path, **options: Any) -> subprocess.Popen[str]:
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(STAGE)], cwd=root, env=environment, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **options,
    )


def _run_stage(root: Path) -> str:
    process = _stage(root)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    return output


def _slow_site_params(site: Path) -> dict[str, Any]:
    """Write a demo-mode site of 16 photos, each served after 0.2 s, and return crawl params."""
    (site / "img").mkdir(parents=True)
    figures = ""
    delays = {}
    for index in range(16):
        (site / "img" / f"{index:02d}.jpg").write_bytes(jpeg_bytes(textured_image(100 + index)))
        figures += figure(f"/img/{index:02d}.jpg", f"Melanoma, case {index}")
        delays[f"/img/{index:02d}.jpg"] = 0.2
    (site / "img" / "dup.jpg").write_bytes(jpeg_bytes(textured_image(100)))
    figures += figure("/img/dup.jpg", "Melanoma, case 0 again")
    (site / "index.html").write_text(page("Melanoma", figures), encoding="utf-8")
    (site / "_routes.json").write_text(json.dumps({"delays": delays}), encoding="utf-8")
    params = crawl_params(source="demo", demo={"origin": ORIGIN, "profile": "test"})
    params["profiles"]["test"]["max_per_host"] = 2
    return params


def test_killed_crawl_resumes_to_same_manifest(tmp_path: Path) -> None:
    killed, uninterrupted = tmp_path / "killed", tmp_path / "uninterrupted"
    for root in (killed, uninterrupted):
        params = _slow_site_params(root / "data" / "demo" / "site")
        _write_repo(root, params)

    _run_stage(uninterrupted)

    process = _stage(killed, start_new_session=True)
    stored = killed / "data" / "crawl_state" / "images"
    deadline = time.monotonic() + 60
    while len(list(stored.rglob("*.jpg"))) < 4 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "data" / "crawl" / "manifest.csv").exists()

    output = _run_stage(killed)
    assert "resuming from" in output
    info = json.loads((killed / "data" / "crawl" / "crawl_info.json").read_text(encoding="utf-8"))
    assert info["resumed_images"] >= 4
    for name in ("data/crawl/manifest.csv", "metrics/crawl.json"):
        assert (killed / name).read_bytes() == (uninterrupted / name).read_bytes(), name
    published = sorted(path.name for path in (killed / "data/crawl/images").rglob("*.jpg"))
    expected = sorted(path.name for path in (uninterrupted / "data/crawl/images").rglob("*.jpg"))
    assert published == expected
    assert len(published) == 16


def test_stage_outputs(tmp_path: Path) -> None:
    _write_repo(tmp_path, _slow_site_params(tmp_path / "data" / "demo" / "site"))
    output = _run_stage(tmp_path)
    rows = read_csv(tmp_path / "data" / "crawl" / "manifest.csv")
    metrics = json.loads((tmp_path / "metrics" / "crawl.json").read_text(encoding="utf-8"))
    info = json.loads((tmp_path / "data" / "crawl" / "crawl_info.json").read_text(encoding="utf-8"))
    assert len(rows) == 17
    assert metrics["by_status"]["downloaded"] == 16
    assert metrics["by_status"]["duplicate"] == 1
    assert metrics["downloaded_by_class"]["malignantmelanoma"] == 16
    assert info["hosts"] == ["site.test"]
    assert info["started_at"] <= info["finished_at"]
    assert "'downloaded': 16, 'duplicate': 1" in output
    for row in rows:
        if row["status"] == "downloaded":
            assert (tmp_path / "data/crawl/images" / row["sha256"][:2] / f"{row['sha256']}.jpg").is_file()


def test_sites_source_crawls_profiles(tmp_path: Path) -> None:
    site_root = tmp_path / "web"
    (site_root / "img").mkdir(parents=True)
    (site_root / "img" / "a.jpg").write_bytes(jpeg_bytes(textured_image(40)))
    (site_root / "index.html").write_text(page("Atlas", figure("/img/a.jpg", "Basal cell carcinoma")), encoding="utf-8")
    with serve_site(site_root) as site:
        params = crawl_params(source="sites", sites=["test"])
        params["profiles"]["test"].update(start_urls=[site.url("/index.html")], allowed_hosts=["127.0.0.1"])
        _write_repo(tmp_path / "repo", params)
        _run_stage(tmp_path / "repo")
        requested = site.requests
    rows = read_csv(tmp_path / "repo" / "data" / "crawl" / "manifest.csv")
    assert [(row["url"], row["status"], row["label"]) for row in rows] == [
        (site.url("/img/a.jpg"), "downloaded", "basalcellcarcinoma")
    ]
    assert requested.count("/img/a.jpg") == 1


def test_sites_source_needs_profiles(tmp_path: Path) -> None:
    _write_repo(tmp_path, crawl_params(source="sites", sites=[]))
    process = _stage(tmp_path)
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "crawl.sites lists no profile" in output


def test_unknown_source_lists_valid(tmp_path: Path) -> None:
    _write_repo(tmp_path, crawl_params(source="ftp"))
    process = _stage(tmp_path)
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "unknown crawl.source 'ftp'" in output
    valid = output.rsplit("valid sources are: ", 1)[1].splitlines()[0].split(", ")
    assert {"demo", "sites"} <= set(valid)


def test_missing_demo_site_explained(tmp_path: Path) -> None:
    _write_repo(tmp_path, crawl_params(source="demo", demo={"origin": ORIGIN, "profile": "test"}))
    process = _stage(tmp_path)
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "dvc repro demo_web" in output


@pytest.mark.timeout(180)
def test_demo_web_noise_statuses(tmp_path: Path) -> None:
    noise = {
        "off_topic_with_keyword": 1, "off_topic_without_keyword": 1, "exact_duplicates": 1,
        "near_duplicates": 3, "broken_links": 1, "html_as_image": 1, "truncated": 1,
        "oversized_pixels": 1, "oversized_bytes": 1, "redirect_chains": 1, "redirect_loops": 1,
        "disallowed": 1, "slow": 1, "unavailable": 1,
    }
    demo_params = {
        "photos_per_class": 2, "blog_posts": 3, "noise": noise, "slow_delay_s": 2.0,
        "oversized_pixels_size": [3000, 2000], "oversized_bytes_min": 600_000,
    }
    generate_site(tmp_path / "data/demo/site", tmp_path / "data/demo/truth.json", demo_params)
    repo_crawl = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["crawl"]
    crawl = {
        **repo_crawl,
        "source": "demo",
        "timeouts": {"connect_s": 2.0, "read_s": 0.5, "total_s": 10.0},
        "retries": {**repo_crawl["retries"], "backoff_s": 0.01},
        "max_image_bytes": 500_000,
        "max_image_pixels": 5_000_000,
    }
    _write_repo(tmp_path, crawl)
    _run_stage(tmp_path)

    truth = json.loads((tmp_path / "data/demo/truth.json").read_text(encoding="utf-8"))
    origin = repo_crawl["demo"]["origin"]
    rows = {row["url"].removeprefix(origin): row for row in read_csv(tmp_path / "data/crawl/manifest.csv")}
    assert set(DEMO_KIND_STATUS) >= {entry["kind"] for entry in truth.values()}
    # Of two identical files, the one with the smaller URL is downloaded and the other a duplicate.
    exact_pairs = {path for path, entry in truth.items() if entry["duplicate_kind"] == "exact"}
    exact_pairs |= {truth[path]["duplicate_of"] for path in exact_pairs}
    for path, entry in truth.items():
        expected = DEMO_KIND_STATUS[entry["kind"]]
        if entry["kind"] == "off_topic" and entry["caption_label"] is None:
            expected = "no_keyword"
        if path in exact_pairs:
            expected = "downloaded or duplicate"
        if expected is None:
            assert path not in rows, f"{path} ({entry['kind']}) should not be a candidate"
            continue
        assert path in rows, f"{path} ({entry['kind']}) is missing from the manifest"
        assert rows[path]["status"] in expected.split(" or "), f"{path} ({entry['kind']}): {rows[path]}"
        if expected != "no_keyword" and entry["caption_label"]:
            assert rows[path]["label"] == entry["caption_label"], path
    assert set(rows) <= set(truth)

    # NOTE: phash is sensitive to cropping: crops by 3-8 % per side of demo photos lie 2 to 14
    # bits from their original, so only some of them join its group at phash_max_distance 8.
    for path, entry in truth.items():
        if entry["kind"] != "lesion" or entry["duplicate_kind"] not in ("exact", "resized", "reencoded"):
            continue
        copy, original = rows[path], rows[entry["duplicate_of"]]
        assert copy["dup_group"] == original["dup_group"], f"{entry['duplicate_kind']} copy {path}"
        if entry["duplicate_kind"] == "exact":
            assert {copy["status"], original["status"]} == {"downloaded", "duplicate"}
