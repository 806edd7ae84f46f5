"""Demo web stage: write the generated dermatology website and its truth file.

Reads the demo_web section of params.yaml, writes data/demo/site/ (served by the crawl stage
in demo mode) and data/demo/truth.json (outside the served folder, read only by
measure_annotation).
"""

from __future__ import annotations

import logging
from pathlib import Path

from dermcan.demo_web import generate_site
from dermcan.params import load_stage_params

SITE_DIR = Path("data/demo/site")
TRUTH_PATH = Path("data/demo/truth.json")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    params = load_stage_params("demo_web")

    generate_site(SITE_DIR, TRUTH_PATH, params)


if __name__ == "__main__":
    main()
