"""Annotate stage: crawled photos to verified lesion crops, a table of decisions and a CAN manifest.

Reads data/crawl/manifest.csv and data/crawl/images/, writes data/annotated/ (crops in
ImageFolder layout, annotations.csv, can_manifest.txt) and plots/annotate/*.png.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dermcan.annotation import AnnotateConfig, annotate, contact_sheet_images, write_annotation
from dermcan.atomic_io import atomic_path, read_csv
from dermcan.params import load_stage_params

MANIFEST = Path("data/crawl/manifest.csv")
IMAGES = Path("data/crawl/images")
OUTPUT = Path("data/annotated")
PLOTS = Path("plots/annotate")

log = logging.getLogger("annotate")

MANIFEST_HEADER = (
    "dermcan lesion crops in CAN format: no label x_center y_center width height url",
    "box coordinates are fractions of the source image width and height",
    "labels were checked by algorithm (see data/annotated/annotations.csv for every decision)",
)


def write_plots(sheets: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.png"):
        if stale.name not in sheets:
            stale.unlink()
    for name, image in sheets.items():
        with atomic_path(folder / name) as temporary:
            image.save(temporary, format="PNG")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    params = load_stage_params("annotate")
    config = AnnotateConfig.from_params(params)
    if not MANIFEST.is_file():
        raise SystemExit(f"{MANIFEST} not found: run the crawl stage first (dvc repro crawl)")

    manifest_rows = read_csv(MANIFEST)
    annotation = annotate(manifest_rows, IMAGES, config, output_root=OUTPUT.as_posix())

    write_annotation(annotation, OUTPUT, MANIFEST_HEADER)
    sheet_params = params.get("contact_sheet", {})
    sheets = contact_sheet_images(
        annotation,
        max_thumbnails=int(sheet_params.get("max_thumbnails", 64)),
        columns=int(sheet_params.get("columns", 8)),
    )
    write_plots(sheets, PLOTS)
    log.info("wrote %d rows to %s and %d contact sheets to %s",
             len(annotation.rows), OUTPUT / "annotations.csv", len(sheets), PLOTS)


if __name__ == "__main__":
    main()
