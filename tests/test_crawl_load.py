"""The crawler under load: bounded memory, per-host limits, every URL in the manifest.

A small version of benchmarks/bench_crawl_load.py: two crawls (250 and 1,000 image URLs, 10 ms
latency, 5 % failures) of :class:`image_server.ImageServer` on two loopback ports, each in a
child process whose peak RSS is measured.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_crawl_load import growth_per_url, measure_crawl_load  # noqa: E402
from image_server import generate_jpeg  # noqa: E402

WORKERS = 8
MAX_PER_HOST = 3  # below WORKERS / hosts, so that only the host gate keeps a host at 3
SIZES = (250, 1000)


@pytest.fixture(scope="module")
def load_runs() -> dict[int, dict[str, Any]]:
    return {
        images: measure_crawl_load(
            images, latency_s=0.01, failure_rate=0.05, workers=WORKERS, max_per_host=MAX_PER_HOST, hosts=2,
            timeout_s=300,
        )
        for images in SIZES
    }


@pytest.mark.parametrize("images", SIZES)
def test_every_url_in_manifest(load_runs: dict[int, dict[str, Any]], images: int) -> None:
    run = load_runs[images]
    assert run["manifest_rows"] == images
    assert run["missing_urls"] == []
    assert run["extra_urls"] == []
    assert run["unexpected_statuses"] == []
    assert run["failures_without_reason"] == []


def test_failures_were_injected(load_runs: dict[int, dict[str, Any]]) -> None:
    responses = load_runs[1000]["server"]["responses_by_kind"]
    assert responses.get("503", 0) > 0
    assert responses.get("404", 0) > 0
    assert responses.get("reset", 0) > 0
    assert load_runs[1000]["statuses"]["http_error"] == responses["404"]


@pytest.mark.parametrize("images", SIZES)
def test_per_host_limit_held(load_runs: dict[int, dict[str, Any]], images: int) -> None:
    peaks = load_runs[images]["server"]["peak_in_progress_by_host"]
    assert len(peaks) == 2
    for host, peak in peaks.items():
        assert peak <= MAX_PER_HOST, f"{host} had {peak} requests in progress at once"
    # The limit was reached on some host, so the server's count can see concurrency at all.
    assert max(peaks.values()) >= 2


@pytest.mark.parametrize("images", SIZES)
def test_open_connections_within_host_limit(load_runs: dict[int, dict[str, Any]], images: int) -> None:
    # Idle keep-alive connections count too: a site that limits connections per client sees them.
    peaks = load_runs[images]["server"]["peak_connections_by_host"]
    assert len(peaks) == 2
    for host, peak in peaks.items():
        assert peak <= MAX_PER_HOST, f"{host} had {peak} connections open at once"


def test_memory_does_not_grow_with_images(load_runs: dict[int, dict[str, Any]]) -> None:
    small, large = load_runs[SIZES[0]], load_runs[SIZES[-1]]
    mean_image_bytes = sum(len(generate_jpeg(index)) for index in range(50)) / 50
    growth = growth_per_url(small, large)
    # Keeping each downloaded image's bytes would cost at least mean_image_bytes per URL, and
    # keeping it decoded 256 * 192 * 3 bytes. Manifest rows and journal records cost a few KB.
    assert growth < mean_image_bytes, f"peak RSS grew {growth:.0f} bytes per URL"
    assert large["peak_rss_bytes"] - large["rss_before_crawl_bytes"] < 150 * 2**20
