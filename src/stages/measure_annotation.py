"""Measure annotation stage: precision and recall of the kept crops against the demo truth.

The only stage that reads data/demo/truth.json. Writes metrics/annotate.json.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dermcan.annotation_truth import load_truth, measure_annotation
from dermcan.atomic_io import read_csv, write_json
from dermcan.params import load_stage_params

ANNOTATIONS = Path("data/annotated/annotations.csv")
MANIFEST = Path("data/crawl/manifest.csv")
TRUTH = Path("data/demo/truth.json")
METRICS = Path("metrics/annotate.json")

log = logging.getLogger("measure_annotation")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    iou_threshold = float(load_stage_params("annotate.measure.iou_threshold"))
    for path, stage in ((ANNOTATIONS, "annotate"), (MANIFEST, "crawl"), (TRUTH, "demo_web")):
        if not path.is_file():
            raise SystemExit(f"{path} not found: run the {stage} stage first (dvc repro {stage})")

    metrics = measure_annotation(
        read_csv(ANNOTATIONS), read_csv(MANIFEST), load_truth(TRUTH), iou_threshold=iou_threshold
    )

    write_json(METRICS, metrics)
    log.info("precision %s, recall %s, mean box IoU %s (IoU threshold %s); wrote %s",
             metrics["precision"], metrics["recall"], metrics["mean_box_iou"], iou_threshold, METRICS)


if __name__ == "__main__":
    main()
