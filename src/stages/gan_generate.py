"""GAN generation stage: sample the trained generator into a training set and a sample grid.

Reads models/cgan/generator.pt and writes data/gan/<class>/NNNNN.png, data/gan/index.csv
(path,label,split,group; every row split=train) and plots/gan/samples.png.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dermcan.atomic_io import write_csv
from dermcan.gan_generation import INDEX_COLUMNS, plot_sample_grid, write_generated_set
from dermcan.gan_training import GENERATOR_NAME, load_generator
from dermcan.params import load_stage_params

GENERATOR = Path("models/cgan") / GENERATOR_NAME
OUTPUT = Path("data/gan")
GRID = Path("plots/gan/samples.png")

log = logging.getLogger("gan_generate")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    params = load_stage_params("gan")
    generator, metadata = load_generator(GENERATOR)
    classes = metadata["classes"]
    seed = int(params["seed"])

    rows = write_generated_set(
        generator,
        classes=classes,
        images_per_class=int(params["images_per_class"]),
        seed=seed,
        output_dir=OUTPUT,
    )
    plot_sample_grid(generator, classes=classes, columns=int(params["grid_columns"]),
                     seed=seed, destination=GRID)

    write_csv(OUTPUT / "index.csv", rows, INDEX_COLUMNS)
    log.info("wrote %d generated images of %d classes (generator step %d) and %s",
             len(rows), len(classes), metadata["step"], GRID)


if __name__ == "__main__":
    main()
