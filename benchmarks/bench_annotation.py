"""Photos per second through the annotate stage's work, step by step, on generated photos.

Run by hand from the repository root::

    .venv/bin/python benchmarks/bench_annotation.py --photos 300 --runs 3

It writes ``--photos`` photos the way the crawl stage stores them
(``images/<sha256[:2]>/<sha256>.jpg``, JPEG quality ``crawl.jpeg_quality``) with a manifest of
``downloaded`` rows. Most are wide-field photos from
:func:`dermcan.synthetic_lesions.render_clinical_photo` at the demo web's photo size, a share
``--off-topic`` are logos, banners and the like, and ``--wrong-captions`` of the lesion photos
carry another class's keyword label. With the ``annotate`` params of params.yaml it then times,
over all photos:

1. ``decode``: open and convert to RGB;
2. ``photo_filter``: :func:`dermcan.photo_filter.assess_photo`;
3. ``detection``: the configured detector on the accepted photos;
4. ``crop``: square crop box, crop and resize of every detection;
5. ``crop_features``: the label verifier's features of every crop;
6. ``label_verification``: the cross-validated classifier and cleanlab over all crops;
7. ``annotate_total``: :func:`dermcan.annotation.annotate` end to end (steps 1 to 6 as the stage
   runs them), the peer that the steps should add up to;
8. ``write_outputs``: :func:`dermcan.annotation.write_annotation` and the contact sheets.

Each figure is the median of ``--runs`` runs after a warm-up run on 30 photos. The record goes to
benchmarks/results/annotation.json.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dermcan import annotation, synthetic_lesions
from dermcan.classes import CLASSES
from dermcan.label_verification import crop_features
from dermcan.lesion_detection import make_detector, square_box
from dermcan.params import load_params
from dermcan.photo_filter import assess_photo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from records import REPOSITORY_ROOT, median, new_record, write_record  # noqa: E402

STEPS = ("decode", "photo_filter", "detection", "crop", "crop_features", "label_verification",
         "annotate_total", "write_outputs")


def write_photos(
    images_root: Path, count: int, *, width: int, height: int, quality: int, off_topic: float,
    wrong_captions: float, seed: int = 0,
) -> list[dict[str, str]]:
    """Write ``count`` photos in the crawl's image store; return their ``downloaded`` manifest rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        label = CLASSES[index % len(CLASSES)]
        if rng.uniform() < off_topic:
            kind = synthetic_lesions.OFF_TOPIC_KINDS[index % len(synthetic_lesions.OFF_TOPIC_KINDS)]
            image = synthetic_lesions.render_off_topic(rng, kind, width=width, height=height)
        else:
            image, _ = synthetic_lesions.render_clinical_photo(rng, label, width=width, height=height)
            if rng.uniform() < wrong_captions:
                label = CLASSES[(index + 1 + int(rng.integers(len(CLASSES) - 1))) % len(CLASSES)]
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
        data = buffer.getvalue()
        sha256 = hashlib.sha256(data).hexdigest()
        path = annotation.stored_image_path(images_root, sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        url = f"http://bench.test/img/{index:05d}.jpg"
        rows.append({"url": url, "page_url": "http://bench.test/atlas.html", "label": label,
                     "status": "downloaded", "sha256": sha256, "dup_group": sha256,
                     "width": str(width), "height": str(height)})
    return rows


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def run_steps(rows: list[dict[str, str]], images_root: Path, output: Path, config: annotation.AnnotateConfig) -> dict[str, Any]:
    """Time each step once over all photos; return seconds per step and the item counts."""
    detector = make_detector(config.detector)
    paths = [annotation.stored_image_path(images_root, row["sha256"]) for row in rows]
    seconds: dict[str, float] = {}

    def decode() -> list[Image.Image]:
        images = []
        for path in paths:
            with Image.open(path) as opened:
                images.append(opened.convert("RGB"))
        return images

    seconds["decode"], images = timed(decode)
    seconds["photo_filter"], assessments = timed(lambda: [assess_photo(image, config.photo_filter) for image in images])
    accepted = [(row, image) for row, image, verdict in zip(rows, images, assessments) if verdict.is_photo]
    seconds["detection"], detections = timed(lambda: [detector.detect(image) for _, image in accepted])

    def crop() -> list[tuple[dict[str, str], Image.Image]]:
        crops = []
        for (row, image), boxes in zip(accepted, detections):
            for box in boxes:
                crop_box = square_box(box, image.width, image.height, config.box_margin)
                region = image.crop((crop_box.x0, crop_box.y0, crop_box.x1, crop_box.y1))
                crops.append((row, region.resize((config.crop_size, config.crop_size), Image.LANCZOS)))
        return crops

    seconds["crop"], crops = timed(crop)
    seconds["crop_features"], _ = timed(lambda: [crop_features(image) for _, image in crops])
    candidates = [annotation.Candidate(row, 0, None, None, (0, 0), image) for row, image in crops]  # type: ignore[arg-type]
    seconds["label_verification"], _ = timed(lambda: annotation.verify_candidates(candidates, config))

    seconds["annotate_total"], result = timed(
        lambda: annotation.annotate(rows, images_root, config, output_root=output.as_posix()))

    def write_outputs() -> None:
        annotation.write_annotation(result, output, ("bench",))
        annotation.contact_sheet_images(result)

    seconds["write_outputs"], _ = timed(write_outputs)
    decisions = {name: sum(row["decision"] == name for row in result.rows) for name in ("keep", "relabel", "drop", "reject")}
    return {"seconds": seconds, "accepted_photos": len(accepted), "crops": len(crops), "decisions": decisions}


def print_table(photos: int, summary: dict[str, dict[str, float]]) -> None:
    step_sum = sum(summary[step]["median_seconds"] for step in STEPS[:6])
    print("| step | items | median (s) | photos/s | share of steps 1-6 |")
    print("|---|---:|---:|---:|---:|")
    for step in STEPS:
        row = summary[step]
        share = f"{row['median_seconds'] / step_sum:.0%}" if step in STEPS[:6] else ""
        print(f"| {step} | {row['items']} | {row['median_seconds']:.2f} | {photos / row['median_seconds']:.1f} | {share} |")
    print(f"sum of steps 1-6: {step_sum:.2f} s against annotate_total {summary['annotate_total']['median_seconds']:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=300, help="number of generated photos (default 300, the demo's default size)")
    parser.add_argument("--runs", type=int, default=3, help="runs of every step; medians are reported (default 3)")
    parser.add_argument("--off-topic", type=float, default=0.05, help="share of off-topic images (default 0.05)")
    parser.add_argument("--wrong-captions", type=float, default=0.08, help="share of lesion photos with another class's label (default 0.08, as demo_web.wrong_caption_rate)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not write benchmarks/results/annotation.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    params_path = REPOSITORY_ROOT / "params.yaml"
    demo = load_params("demo_web", params_path)
    config = annotation.AnnotateConfig.from_params(load_params("annotate", params_path))
    with tempfile.TemporaryDirectory(prefix="bench-annotation-") as temporary:
        images_root = Path(temporary) / "images"
        started = time.perf_counter()
        rows = write_photos(
            images_root, args.photos, width=demo["photo_width"], height=demo["photo_height"],
            quality=int(load_params("crawl.jpeg_quality", params_path)), off_topic=args.off_topic,
            wrong_captions=args.wrong_captions,
        )
        print(f"wrote {len(rows)} photos of {demo['photo_width']}x{demo['photo_height']} px in "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
        # Warm-up on a few photos: imports (cleanlab, scikit-learn) and first-call costs stay out of the figures.
        run_steps(rows[:30], images_root, Path(temporary) / "warm-up", config)
        runs = [run_steps(rows, images_root, Path(temporary) / f"annotated{i}", config) for i in range(args.runs)]

    items = {"decode": args.photos, "photo_filter": args.photos, "detection": runs[0]["accepted_photos"],
             "crop": runs[0]["crops"], "crop_features": runs[0]["crops"], "label_verification": runs[0]["crops"],
             "annotate_total": args.photos, "write_outputs": sum(runs[0]["decisions"][d] for d in ("keep", "relabel"))}
    summary = {}
    for step in STEPS:
        values = [run["seconds"][step] for run in runs]
        summary[step] = {"items": items[step], "median_seconds": round(median(values), 3),
                         "photos_per_second": round(args.photos / median(values), 2),
                         "runs_seconds": [round(value, 3) for value in values]}
    print(f"{args.photos} photos, {runs[0]['accepted_photos']} accepted, {runs[0]['crops']} crops, "
          f"decisions {runs[0]['decisions']}, median of {args.runs} runs")
    print_table(args.photos, summary)
    slowest = max(STEPS[:6], key=lambda step: summary[step]["median_seconds"])
    print(f"slowest step: {slowest}")

    if not args.no_record:
        record = new_record("annotation", {
            "photos": args.photos, "photo_size": [demo["photo_width"], demo["photo_height"]],
            "off_topic_share": args.off_topic, "wrong_caption_share": args.wrong_captions, "runs": args.runs,
            "detector": dict(config.detector).get("kind"), "verifier": dict(config.verifier).get("kind"),
            "classifier": config.classifier, "folds": config.folds,
        })
        record.update(accepted_photos=runs[0]["accepted_photos"], crops=runs[0]["crops"],
                      decisions=runs[0]["decisions"], steps=summary, slowest_step=slowest)
        print(f"wrote {write_record('annotation', record)}")


if __name__ == "__main__":
    main()
