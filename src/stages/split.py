"""Split stage: leak-free stratified train/validation lists for the CAN and keyword training sets.

Reads data/crawl/manifest.csv and data/annotated/annotations.csv, writes data/split/can.csv,
data/split/keyword.csv and metrics/split.json.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dermcan.atomic_io import read_csv, write_csv, write_json
from dermcan.params import load_stage_params
from dermcan.splitting import SPLIT_COLUMNS, split_lists

MANIFEST = Path("data/crawl/manifest.csv")
ANNOTATIONS = Path("data/annotated/annotations.csv")
OUTPUT = Path("data/split")
METRICS = Path("metrics/split.json")

log = logging.getLogger("split")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    params = load_stage_params("split")
    for path, stage in ((MANIFEST, "crawl"), (ANNOTATIONS, "annotate")):
        if not path.is_file():
            raise SystemExit(f"{path} not found: run the {stage} stage first (dvc repro {stage})")

    keyword_rows, can_rows, metrics = split_lists(
        read_csv(MANIFEST),
        read_csv(ANNOTATIONS),
        val_fraction=float(params["val_fraction"]),
        seed=int(params["seed"]),
        group_by=params["group_by"],
        min_per_split=int(params["min_per_split"]),
        small_classes=params.get("small_classes", "error"),
    )

    write_csv(OUTPUT / "can.csv", can_rows, SPLIT_COLUMNS)
    write_csv(OUTPUT / "keyword.csv", keyword_rows, SPLIT_COLUMNS)
    write_json(METRICS, metrics)
    log.info("wrote %d CAN rows and %d keyword rows to %s", len(can_rows), len(keyword_rows), OUTPUT)


if __name__ == "__main__":
    main()
