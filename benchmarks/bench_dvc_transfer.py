"""Time `dvc add`, `dvc push`, `dvc pull` and `dvc status -c` for many small images, per file and sharded.

Run by hand from the repository root. It took 9.5 minutes on 2 shared CPU cores, about 4 of
them deleting its temporary repositories::

    .venv/bin/python benchmarks/bench_dvc_transfer.py --images 10000

It generates small JPEGs (about 5 KB each, seeded noise), then for each remote (a local
folder and moto's S3 server on 127.0.0.1) and each layout it times the DVC commands in a
fresh temporary git + DVC repository:

- per-file: the images folder tracked as it is (one DVC object per image);
- sharded: the folder packed by ``dermcan.shards`` into tar files plus an index CSV, the
  packing and the unpacking after the pull included in the times.

``pull`` starts from an empty cache and workspace. It prints a Markdown table for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY_ROOT / "tests"))

from s3_server import dvc_environment, running_s3_server  # noqa: E402

from dermcan import shards  # noqa: E402


def generate_images(folder: Path, count: int, seed: int = 0) -> int:
    """Write ``count`` 84x84 noise JPEGs (about 5 KB) into ten class folders; return their total bytes."""
    rng = np.random.default_rng(seed)
    total = 0
    for index in range(count):
        pixels = rng.integers(0, 256, size=(84, 84, 3), dtype=np.uint8)
        target = folder / f"class{index % 10}" / f"{index:06d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(target, quality=75)
        total += target.stat().st_size
    return total


def run(repository: Path, *arguments: str, environment: dict[str, str]) -> None:
    completed = subprocess.run(
        arguments, cwd=repository, env=environment, capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(arguments)} failed in {repository}:\n{completed.stderr}")


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def measure(
    images: Path,
    work: Path,
    layout: str,
    remote: str,
    remote_url: str,
    endpoint_url: str | None,
) -> dict[str, float]:
    """Time add, push, pull and status for one layout against one remote."""
    environment = dvc_environment()
    repository = work / f"repo-{layout}-{remote}"
    repository.mkdir()
    dvc = [sys.executable, "-m", "dvc"]

    def dvc_run(*arguments: str) -> None:
        run(repository, *dvc, *arguments, environment=environment)

    run(repository, "git", "init", "-q", environment=environment)
    dvc_run("init", "-q")
    dvc_run("remote", "add", "-d", "bench", remote_url)
    if endpoint_url:
        dvc_run("remote", "modify", "bench", "endpointurl", endpoint_url)

    data = repository / "data"
    tracked = data / ("images" if layout == "per-file" else "shards")
    shutil.copytree(images, data / "images")

    def add() -> None:
        if layout == "sharded":
            shards.write_shards(data / "images", tracked)
            shutil.rmtree(data / "images")
        dvc_run("add", str(tracked.relative_to(repository)))

    times = {"add": timed(add)}
    times["push"] = timed(lambda: dvc_run("push"))

    # Start the pull from nothing, but keep the .dvc file beside the tracked folder.
    shutil.rmtree(repository / ".dvc" / "cache")
    shutil.rmtree(tracked)
    shutil.rmtree(data / "images", ignore_errors=True)

    def pull() -> None:
        dvc_run("pull")
        if layout == "sharded":
            shards.extract_shards(tracked, data / "images")

    times["pull"] = timed(pull)
    times["status -c"] = timed(lambda: dvc_run("status", "-c"))

    pulled = sum(1 for path in (data / "images").rglob("*") if path.is_file())
    expected = sum(1 for path in images.rglob("*") if path.is_file())
    if pulled != expected:
        raise RuntimeError(f"{layout} on {remote}: pulled {pulled} images, expected {expected}")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="number of JPEGs (default 10000)")
    parser.add_argument(
        "--remotes",
        nargs="+",
        choices=["local", "s3"],
        default=["local", "s3"],
        help="remotes to measure (default: both)",
    )
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-dvc-") as temporary:
        work = Path(temporary)
        started = time.perf_counter()
        total_bytes = generate_images(work / "images", arguments.images)
        print(
            f"generated {arguments.images} JPEGs, {total_bytes / arguments.images / 1024:.1f} KiB "
            f"each on average, in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )

        rows = []
        for remote in arguments.remotes:
            for layout in ("per-file", "sharded"):
                if remote == "local":
                    remote_folder = work / f"remote-{layout}"
                    times = measure(
                        work / "images", work, layout, remote, str(remote_folder), None
                    )
                else:
                    with running_s3_server(bucket="bench") as server:
                        times = measure(
                            work / "images",
                            work,
                            layout,
                            remote,
                            f"s3://bench/{layout}",
                            server.endpoint_url,
                        )
                rows.append((remote, layout, times))
                print(f"{remote} {layout}: {times}", file=sys.stderr)

    print(f"{arguments.images} JPEGs, {os.cpu_count()} CPUs, Python {platform.python_version()}\n")
    print("| remote | layout | add (s) | push (s) | pull (s) | status -c (s) |")
    print("|---|---|---:|---:|---:|---:|")
    for remote, layout, times in rows:
        print(
            f"| {remote} | {layout} | {times['add']:.1f} | {times['push']:.1f} | "
            f"{times['pull']:.1f} | {times['status -c']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
