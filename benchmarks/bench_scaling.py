"""Wall time of crawl, annotate and one training epoch as the demo web grows, with a linear fit.

Run by hand from the repository root. At 1x, 4x and 16x the demo's default size
(``demo_web.photos_per_class`` 30, 120, 480)::

    .venv/bin/python benchmarks/bench_scaling.py --scales 1 4 16

At 1x and 4x of the pipeline tests' tiny size, for development (about a minute)::

    .venv/bin/python benchmarks/bench_scaling.py --tiny --scales 1 4 --no-record

Below 1x the tiny size leaves a class too few images to split; raise
``demo_web.photos_per_class`` with ``--params`` first, as docs/benchmarks.md shows.

For each scale it clones this repository (committed files only) into a temporary folder. It
multiplies ``demo_web.photos_per_class``, ``demo_web.blog_posts`` and every ``demo_web.noise``
count by the scale, rounded and at least 1 where the base is at least 1, so the mix of noise
stays the same. ``--noise fixed`` keeps the noise counts instead. It then runs the stage scripts in
order with this virtual environment's python and ``PYTHONPATH`` set to the clone's ``src/``:
``demo_web`` (not timed), ``crawl``, ``annotate``, ``split`` (not timed) and ``train can`` with
``train.epochs`` forced to 1, so the train time is one epoch plus model setup, the image cache
fill and one validation pass.

Per stage it reports the wall time, the time per image, a least-squares line
``seconds = fixed + per_image * images`` over the scales, and the time per image at each scale
divided by that at the smallest scale. Images are candidate URLs in the crawl manifest for
crawl, distinct downloaded photos for annotate and training rows of data/split/can.csv for
train. With ``--runs`` above 1, every scale is run that often and the medians are used. The
record goes to benchmarks/results/scaling.json.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_pipeline import clone, parse_overrides  # noqa: E402
from pipeline_repo import TINY_PARAMS, dvc_environment, update_params  # noqa: E402
from records import median, new_record, write_record  # noqa: E402

TIMED_STAGES = ("crawl", "annotate", "train")
STAGE_COMMANDS = (
    ("demo_web", ["python", "src/stages/demo_web.py"]),
    ("crawl", ["python", "src/stages/crawl.py"]),
    ("annotate", ["python", "src/stages/annotate.py"]),
    ("split", ["python", "src/stages/split.py"]),
    ("train", ["python", "src/stages/train.py", "can"]),
)


def scaled_demo_params(demo: dict[str, Any], scale: float, scale_noise: bool) -> dict[str, Any]:
    """Return the dotted ``demo_web`` overrides for ``scale`` times the size in ``demo``."""

    def times_scale(value: int) -> int:
        return max(1, round(value * scale)) if value >= 1 else 0

    overrides: dict[str, Any] = {
        "demo_web.photos_per_class": times_scale(int(demo["photos_per_class"])),
        "demo_web.blog_posts": times_scale(int(demo["blog_posts"])),
    }
    if scale_noise:
        noise = demo.get("noise") or {}
        overrides["demo_web.noise"] = {key: times_scale(int(count)) for key, count in noise.items()}
    return overrides


def image_counts(repo: Path) -> dict[str, int]:
    """Count the images each timed stage handled: crawl candidates, distinct downloads, training rows."""
    with open(repo / "data/crawl/manifest.csv", newline="", encoding="utf-8") as handle:
        manifest = list(csv.DictReader(handle))
    with open(repo / "data/split/can.csv", newline="", encoding="utf-8") as handle:
        split = list(csv.DictReader(handle))
    downloaded = {row["sha256"] for row in manifest if row["status"] == "downloaded" and row["sha256"]}
    return {
        "crawl": len(manifest),
        "annotate": len(downloaded),
        "train": sum(row["split"] == "train" for row in split),
    }


def run_scale(work: Path, overrides: dict[str, Any], environment: dict[str, str]) -> dict[str, Any]:
    """Clone, apply ``overrides`` and run the stage scripts; return seconds and image counts per stage."""
    repo = clone(work / "repo", environment)
    update_params(repo, overrides)
    environment = {**environment, "PYTHONPATH": str(repo / "src")}
    seconds = {}
    for name, command in STAGE_COMMANDS:
        log_path = work / f"{name}.log"
        started = time.perf_counter()
        with open(log_path, "w", encoding="utf-8") as log:
            completed = subprocess.run(command, cwd=repo, env=environment, stdout=log, stderr=subprocess.STDOUT, check=False)
        seconds[name] = round(time.perf_counter() - started, 2)
        if completed.returncode != 0:
            tail = log_path.read_text(encoding="utf-8")[-3000:]
            raise SystemExit(f"stage {name} failed with exit code {completed.returncode} in {repo}:\n{tail}")
    return {"seconds": seconds, "images": image_counts(repo)}


def fit(images: list[int], seconds: list[float]) -> dict[str, float]:
    """Fit ``seconds = fixed + per_image * images`` by least squares; also return R^2."""
    per_image, fixed = np.polyfit(np.asarray(images, dtype=float), np.asarray(seconds, dtype=float), 1)
    predicted = fixed + per_image * np.asarray(images, dtype=float)
    residual = float(np.sum((np.asarray(seconds) - predicted) ** 2))
    total = float(np.sum((np.asarray(seconds) - np.mean(seconds)) ** 2))
    return {"fixed_seconds": round(float(fixed), 3), "seconds_per_image": round(float(per_image), 5),
            "r_squared": round(1 - residual / total, 4) if total > 0 else 1.0}


def summarise(scales: list[float], results: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for stage in TIMED_STAGES:
        images = [result["images"][stage] for result in results]
        seconds = [result["seconds"][stage] for result in results]
        per_image = [s / n for s, n in zip(seconds, images)]
        summary[stage] = {
            "images": images,
            "seconds": seconds,
            "seconds_per_image": [round(value, 5) for value in per_image],
            "per_image_ratio_to_smallest": [round(value / per_image[0], 3) for value in per_image],
            "fit": fit(images, seconds) if len(scales) >= 2 else None,
        }
    return summary


def print_table(scales: list[float], photos: list[int], summary: dict[str, Any]) -> None:
    print("| stage | scale | photos per class | images | wall time (s) | ms per image | per image / smallest scale |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for stage, row in summary.items():
        for i, scale in enumerate(scales):
            print(f"| {stage} | {scale:g}x | {photos[i]} | {row['images'][i]} | {row['seconds'][i]:.1f} | "
                  f"{1000 * row['seconds_per_image'][i]:.1f} | {row['per_image_ratio_to_smallest'][i]:.2f} |")
    print("\n| stage | fixed (s) | per image (ms) | R^2 |")
    print("|---|---:|---:|---:|")
    for stage, row in summary.items():
        if row["fit"]:
            print(f"| {stage} | {row['fit']['fixed_seconds']:.1f} | {1000 * row['fit']['seconds_per_image']:.1f} | {row['fit']['r_squared']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=float, nargs="+", default=[1, 4, 16], help="size multipliers (default 1 4 16)")
    parser.add_argument("--noise", choices=["scaled", "fixed"], default="scaled", help="scale the demo_web.noise counts too, or keep them (default scaled)")
    parser.add_argument("--params", nargs="+", default=[], metavar="KEY=VALUE", help="params.yaml overrides applied before scaling, dotted keys and YAML values")
    parser.add_argument("--tiny", action="store_true", help="start from TINY_PARAMS of tests/pipeline_repo.py (before --params)")
    parser.add_argument("--runs", type=int, default=1, help="runs per scale; medians are reported (default 1)")
    parser.add_argument("--cpus", type=int, help="restrict the benchmark and its children to this many CPUs (default: all)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not write benchmarks/results/scaling.json")
    args = parser.parse_args()

    scales = sorted(args.scales)
    base = {**(TINY_PARAMS if args.tiny else {}), **parse_overrides(args.params), "train.epochs": 1}
    if args.cpus:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cpus])
    environment = dvc_environment()

    results, photos = [], []
    for scale in scales:
        runs = []
        for run in range(args.runs):
            with tempfile.TemporaryDirectory(prefix=f"bench-scaling-{scale:g}x-") as temporary:
                work = Path(temporary)
                probe = clone(work / "probe", environment)
                update_params(probe, base)
                demo = yaml.safe_load((probe / "params.yaml").read_text(encoding="utf-8"))["demo_web"]
                shutil.rmtree(probe)
                overrides = {**base, **scaled_demo_params(demo, scale, args.noise == "scaled")}
                runs.append(run_scale(work, overrides, environment))
            print(f"{scale:g}x run {run + 1}: {runs[-1]}", file=sys.stderr)
        photos.append(overrides["demo_web.photos_per_class"])
        results.append({
            "scale": scale,
            "photos_per_class": overrides["demo_web.photos_per_class"],
            "noise": overrides.get("demo_web.noise", "fixed"),
            "images": runs[0]["images"],
            "seconds": {name: median([run["seconds"][name] for run in runs]) for name in runs[0]["seconds"]},
            "runs_seconds": [run["seconds"] for run in runs],
        })

    summary = summarise(scales, results)
    print_table(scales, photos, summary)
    if not args.no_record:
        record = new_record("scaling", {"scales": scales, "noise": args.noise, "base_overrides": base,
                                        "tiny": args.tiny, "runs": args.runs, "cpus": len(os.sched_getaffinity(0))})
        record.update(size="tiny base (TINY_PARAMS of tests/pipeline_repo.py)" if args.tiny else "default demo base",
                      per_scale=results, stages=summary)
        print(f"wrote {write_record('scaling', record)}")


if __name__ == "__main__":
    main()
