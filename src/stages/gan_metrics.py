"""GAN metrics stage: FID, KID and the classifier check of the generated images.

Compares data/gan/index.csv with the train rows of data/split/can.csv, per class and overall,
and writes metrics/gan.json. Features always come from the penultimate layer of the classifier
trained on the real crops (models/can/model.pt, keys fid_can_cnn and kid_can_cnn). When
gan.metrics.inception_weights names a local weights file, torchvision's Inception v3 adds
fid_inception and kid_inception. The classifier check uses models/can/model.pt.

NOTE: the Inception weights file is not a dvc dependency, so replacing it in place does not
rerun this stage.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

from dermcan.atomic_io import read_csv, write_json
from dermcan.image_quality import (
    classifier_extractor,
    compare_image_sets,
    inception_extractor,
    load_images,
)
from dermcan.models import load_classifier
from dermcan.params import load_stage_params

REAL_LIST = Path("data/split/can.csv")
GENERATED_LIST = Path("data/gan/index.csv")
CLASSIFIER = Path("models/can/model.pt")
METRICS = Path("metrics/gan.json")

log = logging.getLogger("gan_metrics")


def read_images_by_class(list_path: Path, resolution: int) -> dict:
    if not list_path.is_file():
        raise SystemExit(f"{list_path} not found: run the stage that writes it first")
    paths = defaultdict(list)
    for row in read_csv(list_path):
        if row["split"] == "train":
            paths[row["label"]].append(row["path"])
    return {label: load_images(label_paths, resolution) for label, label_paths in paths.items()}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    params = load_stage_params("gan")
    settings = params["metrics"]
    resolution = int(params["resolution"])

    generated = read_images_by_class(GENERATED_LIST, resolution)
    real = {label: images for label, images in read_images_by_class(REAL_LIST, resolution).items()
            if label in generated}
    model, metadata = load_classifier(CLASSIFIER)
    options = {"kid_subset_size": int(settings["kid_subset_size"]),
               "kid_subsets": int(settings["kid_subsets"]), "seed": int(params["seed"])}

    metrics = compare_image_sets(real, generated, classifier_extractor(model, metadata), **options)
    if settings.get("inception_weights"):
        inception = compare_image_sets(
            real, generated, inception_extractor(settings["inception_weights"]), **options)
        metrics["overall"].update(inception["overall"])
        for name, entry in inception["per_class"].items():
            metrics["per_class"][name].update(entry)
        metrics["features"] = "inception, can_cnn"

    write_json(METRICS, metrics)
    overall = metrics["overall"]
    log.info("overall: %s", ", ".join(f"{key} {value:.4g}" for key, value in overall.items()))


if __name__ == "__main__":
    main()
