"""Compare the crawl stage's downloader with img2dataset on one URL list from a loopback image server.

Run by hand from the repository root, after creating img2dataset's own virtual environment::

    python3.11 -m venv .venv-img2dataset
    .venv-img2dataset/bin/pip install -r benchmarks/requirements-img2dataset.txt
    .venv/bin/python benchmarks/bench_download.py --images 5000 --concurrency 16 --runs 3

:class:`image_server.ImageServer` serves ``--images`` generated 256x192 JPEGs (about 13 KB
each) on one host, waits a uniform ``--latency-ms`` range before every response, and fails
``--failure-rate`` of the URLs (503 once, 404, or a reset connection once). Each run
downloads the whole list with both tools, in alternating order, in child processes:

* dermcan: ``Crawler.download_images`` (the downloader of the crawl stage's manifest source)
  with ``crawl.workers`` and ``max_per_host`` equal to the concurrency, no delay between
  requests, then ``finalize_rows`` and the manifest CSV. The other crawl params are the
  repository's;
* img2dataset, from ``.venv-img2dataset``: ``processes_count=1``, ``thread_count`` equal to
  the concurrency, ``resize_mode="no"``, ``output_format="files"``, the same retry count.

Both tools do different work per image, so the comparison is of the whole downloader, not
of HTTP alone. dermcan robots-checks the host, verifies each image with Pillow, rotates it
upright, strips its metadata, re-encodes it at ``crawl.jpeg_quality``, computes a
perceptual hash, writes a resume journal and a content-addressed store, and waits
``crawl.retries.backoff_s`` (doubled each time) before a retry. It retries only 5xx, 429 and
failed connections. img2dataset decodes and re-encodes each image with OpenCV, computes a
SHA-256, extracts EXIF, retries every failure (404 included) at once, and opens a new
connection per request.

Figures per tool are medians over the runs. Images per second are counted over the server's
image window (first image request to last image response), which leaves out process
start-up. URLs per second are counted over the child's whole wall time. CPU time is that of
the child and its descendants, and peak RSS is summed over the child's process tree
(sampled every 50 ms). The ratio dermcan/img2dataset is computed within each run, then the
median is taken. Results go to benchmarks/results/download.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
REPOSITORY_ROOT = BENCHMARKS.parent
sys.path.insert(0, str(BENCHMARKS))

from bench_crawl_load import machine_description, run_with_peak_rss  # noqa: E402
from image_server import ImageServer, latency_from_milliseconds  # noqa: E402

RESULTS_PATH = BENCHMARKS / "results" / "download.json"
IMG2DATASET_VENV = REPOSITORY_ROOT / ".venv-img2dataset"


# -- dermcan, in the child process --------------------------------------------------------


def download_in_child(settings: dict[str, Any]) -> None:
    """Download the URLs in ``settings["url_list"]`` with ``Crawler.download_images``; write figures to ``settings["work"]``."""
    import logging

    from dermcan import atomic_io
    from dermcan.crawl_manifest import MANIFEST_COLUMNS, finalize_rows
    from dermcan.crawling import CrawlConfig, Crawler, open_journal
    from dermcan.image_store import ImageStore
    from dermcan.page_parsing import ImageCandidate
    from dermcan.params import load_params

    logging.basicConfig(level=logging.WARNING)
    work = Path(settings["work"])
    params = load_params("crawl", REPOSITORY_ROOT / "params.yaml")
    params["workers"] = settings["workers"]
    params["politeness"] = {**params["politeness"], "delay_s": 0.0, "max_per_host": settings["concurrency"]}
    params["retries"] = {**params["retries"], "max_retries": settings["retries"]}
    params["allowed_private_networks"] = ["127.0.0.0/8"]  # the crawler rejects loopback addresses by default
    params["profiles"] = {}
    config = CrawlConfig.from_params(params)
    store = ImageStore(work / "images", max_pixels=config.max_image_pixels, jpeg_quality=config.jpeg_quality)
    journal = open_journal(work / "journal.jsonl", config, [], store)
    urls = Path(settings["url_list"]).read_text().split()
    candidates = [
        ImageCandidate(url=url, page_url="", caption="", keyword="", language="", label="malignantmelanoma")
        for url in urls
    ]

    profiler = None
    if settings.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
    started = time.perf_counter()
    try:
        if profiler is not None:
            rows, _ = profiler.runcall(_download_profiled, Crawler(config, store=store, journal=journal), candidates)
        else:
            rows, _ = Crawler(config, store=store, journal=journal).download_images(candidates)
    finally:
        journal.close()
    download_s = time.perf_counter() - started
    rows = finalize_rows(rows, phash_max_distance=config.phash_max_distance)
    atomic_io.write_csv(work / "manifest.csv", rows, MANIFEST_COLUMNS)
    if profiler is not None:
        profiler.dump_stats(settings["profile"])

    statuses: dict[str, int] = {}
    for row in rows:
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    atomic_io.write_json(work / "child.json", {"download_s": download_s, "statuses": statuses})


def _download_profiled(crawler: Any, candidates: list[Any]) -> Any:
    """Process ``candidates`` one after another in the calling thread.

    cProfile records only the thread it was started in, so the profile skips the worker pool.
    """
    return [crawler._image(candidate) for candidate in candidates], 0


# -- one run of each tool, in the parent process ------------------------------------------


def run_dermcan(
    server: ImageServer, url_list: Path, *, concurrency: int, retries: int, workers: int | None = None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-dermcan-") as temporary:
        settings = {
            "work": temporary, "url_list": str(url_list), "concurrency": concurrency, "retries": retries,
            "workers": workers or concurrency,
        }  # fmt: skip
        command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(settings)]
        server.reset_stats()
        run = run_with_peak_rss(command, timeout_s=3600)
        if run["returncode"] != 0:
            raise RuntimeError(f"the dermcan child exited with {run['returncode']}:\n{run['output'][-3000:]}")
        child = json.loads((Path(temporary) / "child.json").read_text())
    downloaded = child["statuses"].get("downloaded", 0) + child["statuses"].get("duplicate", 0)
    return _figures("dermcan", run, server, downloaded, child["statuses"])


def run_img2dataset(
    server: ImageServer, url_list: Path, *, concurrency: int, retries: int, workers: int | None = None
) -> dict[str, Any]:
    del workers  # img2dataset downloads in thread_count threads and processes in its main thread
    executable = IMG2DATASET_VENV / "bin" / "img2dataset"
    if not executable.exists():
        raise FileNotFoundError(
            f"{executable} not found: create it with `python3.11 -m venv .venv-img2dataset && "
            ".venv-img2dataset/bin/pip install -r benchmarks/requirements-img2dataset.txt`"
        )
    with tempfile.TemporaryDirectory(prefix="bench-img2dataset-") as temporary:
        output = Path(temporary) / "out"
        command = [
            str(executable), "--url_list", str(url_list), "--input_format", "txt", "--output_folder", str(output),
            "--processes_count", "1", "--thread_count", str(concurrency), "--resize_mode", "no",
            "--output_format", "files", "--retries", str(retries), "--timeout", "10",
            "--enable_wandb", "False", "--number_sample_per_shard", str(server.image_count),
        ]  # fmt: skip
        server.reset_stats()
        run = run_with_peak_rss(command, timeout_s=3600)
        if run["returncode"] != 0:
            raise RuntimeError(f"img2dataset exited with {run['returncode']}:\n{run['output'][-3000:]}")
        stats_files = sorted(output.glob("*_stats.json"))
        if not stats_files:
            raise RuntimeError(f"img2dataset wrote no stats file in {output}:\n{run['output'][-3000:]}")
        shards = [json.loads(path.read_text()) for path in stats_files]
    downloaded = sum(shard["successes"] for shard in shards)
    statuses: dict[str, int] = {}
    for shard in shards:
        for error, count in shard.get("status_dict", {}).items():
            statuses[error] = statuses.get(error, 0) + count
    return _figures("img2dataset", run, server, downloaded, statuses)


def _figures(tool: str, run: dict[str, Any], server: ImageServer, downloaded: int, statuses: dict[str, int]) -> dict[str, Any]:
    stats = server.stats.as_dict()
    window = stats["image_window_s"]
    return {
        "tool": tool,
        "downloaded": downloaded,
        "outcomes": statuses,
        "image_window_s": window,
        "images_per_s": downloaded / window if window else None,
        "process_wall_s": run["wall_s"],
        "urls_per_s_wall": server.image_count / run["wall_s"],
        "cpu_ms_per_url": 1000 * run["cpu_s"] / server.image_count,
        "peak_tree_rss_bytes": run["peak_tree_rss_bytes"],
        "image_requests": sum(stats["image_requests_by_host"].values()),
        "peak_in_progress": max(stats["peak_in_progress_by_host"].values(), default=0),
        "server_responses": stats["responses_by_kind"],
    }


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {name: metadata.version(name) for name in ("requests", "urllib3", "Pillow", "ImageHash", "numpy")}
    pip = IMG2DATASET_VENV / "bin" / "pip"
    if pip.exists():
        frozen = subprocess.run([str(pip), "freeze"], capture_output=True, text=True, check=False).stdout.split()
        for line in frozen:
            name, _, version = line.partition("==")
            if name.lower() in ("img2dataset", "opencv-python-headless", "pyarrow", "pandas"):
                versions[f"{name} (img2dataset venv)"] = version
    return versions


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000, help="image URLs in the list (default 5000)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="dermcan crawl.workers and max_per_host; img2dataset thread_count (default 16)")
    parser.add_argument("--dermcan-workers", type=int,
                        help="dermcan crawl.workers when it should differ from the concurrency; max_per_host stays "
                             "at the concurrency, so requests in progress never exceed it (default: the concurrency)")
    parser.add_argument("--retries", type=int, default=2, help="retries of a failed download, both tools (default 2)")
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[20.0, 100.0],
                        help="latency before each response: one value, or low and high of a uniform range (default 20 100)")
    parser.add_argument("--failure-rate", type=float, default=0.03, help="share of failing image URLs (default 0.03)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each tool; figures are medians (default 3)")
    parser.add_argument("--profile", type=Path,
                        help="instead of the comparison, profile dermcan's per-image work (downloads one after "
                             "another in one thread, under cProfile) and write pstats to this file")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH,
                        help=f"JSON record (default {RESULTS_PATH.relative_to(REPOSITORY_ROOT)})")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        download_in_child(json.loads(arguments.child))
        return 0

    from dermcan import atomic_io

    machine = machine_description()
    latency = latency_from_milliseconds(arguments.latency_ms)
    with ImageServer(arguments.images, latency_s=latency, failure_rate=arguments.failure_rate) as server, \
            tempfile.TemporaryDirectory(prefix="bench-download-") as temporary:  # fmt: skip
        started = time.perf_counter()
        server.prepare()
        print(f"generated {arguments.images} images in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        url_list = Path(temporary) / "urls.txt"
        url_list.write_text("\n".join(server.image_urls()) + "\n")

        if arguments.profile:
            return _profile(server, url_list, arguments)

        runs = []
        for number in range(arguments.runs):
            order = [run_dermcan, run_img2dataset] if number % 2 == 0 else [run_img2dataset, run_dermcan]
            results = {}
            for runner in order:
                result = runner(
                    server, url_list, concurrency=arguments.concurrency, retries=arguments.retries,
                    workers=arguments.dermcan_workers,
                )
                results[result["tool"]] = result
                print(f"run {number + 1} {result['tool']}: {result['images_per_s']:.1f} images/s, "
                      f"{result['urls_per_s_wall']:.1f} URLs/s over the process, "
                      f"{result['cpu_ms_per_url']:.1f} CPU ms per URL, peak RSS {result['peak_tree_rss_bytes'] / 2**20:.0f} MiB, "
                      f"at most {result['peak_in_progress']} requests in progress, "
                      f"{result['outcomes']}",
                      file=sys.stderr, flush=True)
            results["ratio_images_per_s"] = results["dermcan"]["images_per_s"] / results["img2dataset"]["images_per_s"]
            results["ratio_urls_per_s_wall"] = results["dermcan"]["urls_per_s_wall"] / results["img2dataset"]["urls_per_s_wall"]
            runs.append(results)

    summary = {}
    for tool in ("dermcan", "img2dataset"):
        tool_runs = [run[tool] for run in runs]
        summary[tool] = {
            "images_per_s": _median(tool_runs, "images_per_s"),
            "urls_per_s_wall": _median(tool_runs, "urls_per_s_wall"),
            "peak_tree_rss_mib": _median(tool_runs, "peak_tree_rss_bytes") / 2**20,
            "cpu_ms_per_url": _median(tool_runs, "cpu_ms_per_url"),
            "downloaded": _median(tool_runs, "downloaded"),
            "peak_in_progress": max(run["peak_in_progress"] for run in tool_runs),
        }
    summary["ratio_images_per_s"] = statistics.median(run["ratio_images_per_s"] for run in runs)
    summary["ratio_urls_per_s_wall"] = statistics.median(run["ratio_urls_per_s_wall"] for run in runs)

    versions = _versions()
    print(f"\n{machine['nproc']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
          f"load average {machine['load_average_at_start'][0]:.1f} at the start; {versions}")
    print(f"{arguments.images} URLs, latency {arguments.latency_ms} ms, failure rate {arguments.failure_rate}, "
          f"concurrency {arguments.concurrency}, dermcan workers {arguments.dermcan_workers or arguments.concurrency}, "
          f"retries {arguments.retries}, median of {arguments.runs} runs\n")
    print("| downloader | images/s (server window) | URLs/s (whole process) | CPU ms per URL | peak RSS, process tree (MiB) | images downloaded | max requests in progress |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for tool in ("dermcan", "img2dataset"):
        figures = summary[tool]
        print(f"| {tool} | {figures['images_per_s']:.1f} | {figures['urls_per_s_wall']:.1f} | {figures['cpu_ms_per_url']:.1f} | "
              f"{figures['peak_tree_rss_mib']:.0f} | {figures['downloaded']:.0f} | {figures['peak_in_progress']} |")
    print(f"\nratio dermcan/img2dataset: {summary['ratio_images_per_s']:.2f} (images/s), "
          f"{summary['ratio_urls_per_s_wall']:.2f} (URLs/s over the whole process)")
    print("dermcan does more per image than img2dataset: robots.txt, verification with Pillow, upright "
          "rotation, metadata stripping, re-encoding, a perceptual hash, a resume journal and provenance rows.")

    atomic_io.write_json(arguments.output, {
        "date": datetime.date.today().isoformat(),
        "command": " ".join([".venv/bin/python", "benchmarks/bench_download.py", *sys.argv[1:]]),
        "machine": {**machine, "versions": versions},
        "settings": {
            "images": arguments.images, "concurrency": arguments.concurrency, "retries": arguments.retries,
            "dermcan_workers": arguments.dermcan_workers or arguments.concurrency,
            "latency_ms": arguments.latency_ms, "failure_rate": arguments.failure_rate, "runs": arguments.runs,
        },
        "summary": summary,
        "runs": runs,
    })
    print(f"wrote {arguments.output}")
    return 0


def _profile(server: ImageServer, url_list: Path, arguments: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as temporary:
        settings = {
            "work": temporary, "url_list": str(url_list), "concurrency": 1, "workers": 1, "retries": arguments.retries,
            "profile": str(arguments.profile.resolve()),
        }
        command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(settings)]
        completed = subprocess.run(command, cwd=REPOSITORY_ROOT, check=False)
    if completed.returncode != 0:
        return completed.returncode
    import pstats

    pstats.Stats(str(arguments.profile)).sort_stats("cumulative").print_stats(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
