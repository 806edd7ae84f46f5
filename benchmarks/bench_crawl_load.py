"""Load-test the crawler against a loopback image server: memory, per-host limits, manifest coverage.

Run by hand from the repository root::

    .venv/bin/python benchmarks/bench_crawl_load.py --images 10000 2500

For each image count it starts :class:`image_server.ImageServer` on two hosts. The server
waits ``--latency-ms`` before every response, and ``--failure-rate`` of the image URLs fail
with 503 once, 404, or a connection reset once. A child process crawls it from its index page
with ``dermcan.crawling.Crawler``, with the repository's crawl params except for the worker
count and a ``load`` profile (``--workers``, ``--max-per-host``, no delay between requests).
Then the script checks three properties:

* memory: the child's peak RSS, and how much it grows per image URL between the smallest and
  the largest count;
* per-host limits: the peak number of requests in progress on each host, counted by the
  server, is at most ``--max-per-host``;
* coverage: every image URL has one manifest row, ``downloaded`` or with a failure status and
  reason, and its status is the one the server's failure plan predicts.

It prints the figures and writes them to benchmarks/results/crawl_load.json.
tests/test_crawl_load.py runs the same checks at a small size.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

BENCHMARKS = Path(__file__).resolve().parent
REPOSITORY_ROOT = BENCHMARKS.parent
sys.path.insert(0, str(BENCHMARKS))

from image_server import ImageServer, latency_from_milliseconds  # noqa: E402

RESULTS_PATH = BENCHMARKS / "results" / "crawl_load.json"


# -- measuring a child process ------------------------------------------------------------


def run_with_peak_rss(command: list[str], *, timeout_s: float, interval_s: float = 0.05) -> dict[str, Any]:
    """Run ``command``; return its exit code, wall time, CPU time and the peak summed RSS of its process tree.

    The tree's RSS (the process and all its descendants) is sampled every ``interval_s``
    seconds, so a peak shorter than that can be missed. CPU time is user plus system time of
    the process and of the descendants it waited for.
    """
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPOSITORY_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        parent = psutil.Process(process.pid)
        while not done.is_set():
            try:
                tree = [parent, *parent.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for member in tree:
                try:
                    total += member.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            peak = max(peak, total)
            done.wait(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise RuntimeError(f"{command[:3]} timed out after {timeout_s:g} s; output:\n{output.decode(errors='replace')[-3000:]}")
    finally:
        done.set()
        sampler.join()
    usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "returncode": process.returncode,
        "wall_s": time.perf_counter() - started,
        "cpu_s": (usage_after.ru_utime + usage_after.ru_stime) - (usage_before.ru_utime + usage_before.ru_stime),
        "peak_tree_rss_bytes": peak,
        "output": output.decode(errors="replace"),
    }


# -- the crawl, in the child process ------------------------------------------------------


def crawl_in_child(settings: dict[str, Any]) -> None:
    """Crawl ``settings["index_url"]`` and write the manifest and memory figures into ``settings["work"]``."""
    import logging

    from dermcan import atomic_io
    from dermcan.crawl_manifest import MANIFEST_COLUMNS
    from dermcan.crawling import CrawlConfig, Crawler, open_journal
    from dermcan.image_store import ImageStore
    from dermcan.params import load_params

    logging.basicConfig(level=logging.WARNING)
    work = Path(settings["work"])
    params = load_params("crawl", REPOSITORY_ROOT / "params.yaml")
    params["workers"] = settings["workers"]
    params["allowed_private_networks"] = ["127.0.0.0/8"]  # the crawler rejects loopback addresses by default
    params["profiles"] = {
        "load": {
            "start_urls": [settings["index_url"]],
            "allowed_hosts": ["127.0.0.1"],  # every port of the loopback server
            "max_depth": 1,
            "delay_s": 0.0,
            "max_per_host": settings["max_per_host"],
        }
    }
    config = CrawlConfig.from_params(params)
    profiles = [config.profile("load")]
    store = ImageStore(work / "images", max_pixels=config.max_image_pixels, jpeg_quality=config.jpeg_quality)
    journal = open_journal(work / "journal.jsonl", config, profiles, store)
    rss_before = psutil.Process().memory_info().rss

    started = time.perf_counter()
    try:
        result = Crawler(config, store=store, journal=journal).crawl(profiles)
    finally:
        journal.close()
    crawl_s = time.perf_counter() - started

    rss_after = psutil.Process().memory_info().rss
    atomic_io.write_csv(work / "manifest.csv", result.rows, MANIFEST_COLUMNS)
    atomic_io.write_json(work / "child.json", {
        "crawl_s": crawl_s,
        "rss_before_crawl_bytes": rss_before,
        "rss_after_crawl_bytes": rss_after,
        "peak_rss_bytes": _peak_rss_bytes(),
        "pages_fetched": result.pages_fetched,
    })


def _peak_rss_bytes() -> int:
    """Return this process's peak RSS since it started its program (VmHWM in /proc/self/status).

    Linux carries ru_maxrss over exec, so in a child of a large process it reports the
    parent's size from before the exec; VmHWM starts afresh with the new program.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # the value is in kB
    raise RuntimeError("/proc/self/status has no VmHWM line: the peak RSS is measured on Linux only")


# -- one load test, in the parent process -------------------------------------------------


def measure_crawl_load(
    images: int,
    *,
    latency_s: float | tuple[float, float],
    failure_rate: float,
    workers: int,
    max_per_host: int,
    hosts: int = 2,
    seed: int = 0,
    timeout_s: float = 3600,
) -> dict[str, Any]:
    """Crawl a fresh :class:`ImageServer` of ``images`` images in a child process and return the figures.

    Raises RuntimeError when the child fails. The coverage and limit checks are returned as
    figures (``missing_urls``, ``unexpected_statuses``, ``peak_in_progress_by_host``), not
    raised, so that the caller decides what to assert.
    """
    with ImageServer(images, hosts=hosts, latency_s=latency_s, failure_rate=failure_rate, seed=seed) as server, \
            tempfile.TemporaryDirectory(prefix="crawl-load-") as temporary:  # fmt: skip
        server.prepare()
        settings = {"work": temporary, "index_url": server.index_url, "workers": workers, "max_per_host": max_per_host}
        command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(settings)]
        run = run_with_peak_rss(command, timeout_s=timeout_s)
        if run["returncode"] != 0:
            raise RuntimeError(f"the crawl child exited with {run['returncode']}:\n{run['output'][-3000:]}")
        child = json.loads((Path(temporary) / "child.json").read_text())
        with open(Path(temporary) / "manifest.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        stats = server.stats.as_dict()
        expected = _expected_statuses(server)

    by_url = {row["url"]: row for row in rows}
    missing = sorted(set(expected) - set(by_url))
    unexpected = sorted(
        url for url, status in expected.items() if url in by_url and by_url[url]["status"] != status
    )
    without_reason = sorted(
        row["url"] for row in rows if row["status"] not in ("downloaded", "duplicate") and not row["reason"]
    )
    return {
        "images": images,
        "latency_s": latency_s,
        "failure_rate": failure_rate,
        "workers": workers,
        "max_per_host": max_per_host,
        "hosts": hosts,
        "manifest_rows": len(rows),
        "statuses": dict(Counter(row["status"] for row in rows)),
        "missing_urls": missing,
        "extra_urls": sorted(set(by_url) - set(expected)),
        "unexpected_statuses": unexpected,
        "failures_without_reason": without_reason,
        "server": stats,
        "crawl_s": child["crawl_s"],
        "process_wall_s": run["wall_s"],
        "process_cpu_s": run["cpu_s"],
        "rss_before_crawl_bytes": child["rss_before_crawl_bytes"],
        "rss_after_crawl_bytes": child["rss_after_crawl_bytes"],
        "peak_rss_bytes": child["peak_rss_bytes"],
        "peak_tree_rss_bytes": run["peak_tree_rss_bytes"],
    }


def _expected_statuses(server: ImageServer) -> dict[str, str]:
    """Return image URL -> manifest status: ``http_error`` for the 404 kind, else ``downloaded``."""
    failing = server.permanently_failing()
    return {url: "http_error" if url in failing else "downloaded" for url in server.image_urls()}


def growth_per_url(small: dict[str, Any], large: dict[str, Any]) -> float:
    """Return the peak RSS growth in bytes per image URL between two runs of different sizes."""
    return (large["peak_rss_bytes"] - small["peak_rss_bytes"]) / (large["images"] - small["images"])


def machine_description() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg(),
    }


def _mib(value: float) -> str:
    return f"{value / 2**20:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[2500, 10000],
                        help="image counts to crawl, one server and one crawl each (default 2500 10000)")
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[50.0],
                        help="latency before each response: one value, or low and high of a uniform range (default 50)")
    parser.add_argument("--failure-rate", type=float, default=0.05, help="share of failing image URLs (default 0.05)")
    parser.add_argument("--workers", type=int, default=16, help="crawl.workers (default 16)")
    parser.add_argument("--max-per-host", type=int, default=4, help="the load profile's max_per_host (default 4)")
    parser.add_argument("--hosts", type=int, default=2, help="server ports, each a host (default 2)")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help=f"JSON record (default {RESULTS_PATH.relative_to(REPOSITORY_ROOT)})")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        crawl_in_child(json.loads(arguments.child))
        return 0

    from dermcan import atomic_io

    machine = machine_description()
    latency = latency_from_milliseconds(arguments.latency_ms)
    runs = []
    for images in sorted(arguments.images):
        print(f"crawling {images} images ...", file=sys.stderr, flush=True)
        run = measure_crawl_load(
            images, latency_s=latency, failure_rate=arguments.failure_rate, workers=arguments.workers,
            max_per_host=arguments.max_per_host, hosts=arguments.hosts,
        )
        runs.append(run)

    print(f"{machine['nproc']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
          f"load average {machine['load_average_at_start'][0]:.1f} at the start")
    print(f"latency {arguments.latency_ms} ms, failure rate {arguments.failure_rate}, "
          f"{arguments.workers} workers, max_per_host {arguments.max_per_host}, {arguments.hosts} hosts\n")
    print("| image URLs | crawl (s) | URLs/s | RSS before crawl (MiB) | peak RSS (MiB) | peak in progress per host | peak open connections per host | manifest rows | missing | wrong status |")
    print("|---:|---:|---:|---:|---:|---|---|---:|---:|---:|")
    for run in runs:
        in_progress = ", ".join(str(value) for value in sorted(run["server"]["peak_in_progress_by_host"].values()))
        connections = ", ".join(str(value) for value in sorted(run["server"]["peak_connections_by_host"].values()))
        print(
            f"| {run['images']} | {run['crawl_s']:.1f} | {run['images'] / run['crawl_s']:.0f} | "
            f"{_mib(run['rss_before_crawl_bytes'])} | {_mib(run['peak_rss_bytes'])} | {in_progress} | {connections} | "
            f"{run['manifest_rows']} | {len(run['missing_urls'])} | {len(run['unexpected_statuses'])} |"
        )
    growth = growth_per_url(runs[0], runs[-1]) if len(runs) > 1 else None
    if growth is not None:
        print(f"\npeak RSS grows {growth:.0f} bytes per image URL between {runs[0]['images']} and {runs[-1]['images']} URLs")
    for run in runs:
        print(f"{run['images']} URLs: statuses {run['statuses']}; server responses {run['server']['responses_by_kind']}")

    limit_held = all(
        peak <= arguments.max_per_host for run in runs for peak in run["server"]["peak_in_progress_by_host"].values()
    )
    complete = all(not run["missing_urls"] and not run["unexpected_statuses"] and not run["failures_without_reason"] for run in runs)
    record = {
        "date": datetime.date.today().isoformat(),
        "command": " ".join([".venv/bin/python", "benchmarks/bench_crawl_load.py", *sys.argv[1:]]),
        "machine": machine,
        "runs": [{**run, "missing_urls": run["missing_urls"][:20], "unexpected_statuses": run["unexpected_statuses"][:20]} for run in runs],
        "peak_rss_growth_bytes_per_url": growth,
        "per_host_limit_held": limit_held,
        "every_url_in_manifest_with_expected_status": complete,
    }
    atomic_io.write_json(arguments.output, record)
    print(f"\nper-host limit held: {limit_held}; every URL in the manifest with the expected status: {complete}")
    print(f"wrote {arguments.output}")
    return 0 if limit_held and complete else 1


if __name__ == "__main__":
    sys.exit(main())
