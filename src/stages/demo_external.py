"""Demo external stage: write the shifted external test set of lesion close-ups.

Reads the demo_external section of params.yaml and writes
data/external/demo_shifted/<Dermofit code>/NNNN.png, an ImageFolder layout that the evaluate
stage maps to project classes with evaluate.externals.demo_shifted.aliases.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dermcan.demo_external import generate_external_set
from dermcan.params import load_stage_params

OUT_DIR = Path("data/external/demo_shifted")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    params = load_stage_params("demo_external")

    generate_external_set(OUT_DIR, params)


if __name__ == "__main__":
    main()
