"""Tabulate external validation of every training set: ``python src/stages/summary.py``.

Reads every ``metrics/evaluate/*.json`` and writes ``metrics/summary.md`` (one row per
training set and test set: malignancy AUROC with its 95 % CI, melanoma-versus-nevus AUROC,
macro AUROC and top-1 accuracy) and the same numbers as ``metrics/summary.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from dermcan import atomic_io

log = logging.getLogger("summary")

EVALUATION_DIR = Path("metrics/evaluate")
COLUMNS = (
    "Training set", "Test set", "Images", "Malignancy AUROC [95% CI]",
    "Melanoma vs nevus AUROC [95% CI]", "Macro AUROC", "Top-1 accuracy",
)


def format_estimate(estimate: dict[str, Any], with_ci: bool = True) -> str:
    """Format ``{"value", "ci_low", "ci_high", "reason"}`` as ``0.812 [0.770, 0.851]`` or ``n/a (reason)``."""
    value = estimate.get("value")
    if value is None:
        reason = estimate.get("reason")
        return f"n/a ({reason})" if reason else "n/a"
    text = f"{value:.3f}"
    if with_ci and estimate.get("ci_low") is not None:
        text += f" [{estimate['ci_low']:.3f}, {estimate['ci_high']:.3f}]"
    return text


def collect(folder: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Return ``{training set: {test set: summary numbers}}`` from the evaluation JSON files."""
    files = sorted(folder.glob("*.json"))
    if not files:
        raise SystemExit(f"no evaluation results in {folder}: run the evaluate stages first")
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for path in files:
        with open(path, encoding="utf-8") as handle:
            results = json.load(handle)
        table[path.stem] = {
            test_set: {
                "n_images": result["n_images"],
                "malignancy_auroc": result["malignancy"]["auroc"],
                "melanoma_vs_nevus_auroc": result["melanoma_vs_nevus_auroc"],
                "macro_auroc": result["macro_auroc"],
                "top1_accuracy": result["top1_accuracy"],
            }
            for test_set, result in sorted(results.items())
        }
    return table


def markdown(table: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = [
        "# External validation",
        "",
        "Bootstrap 95 % confidence intervals in brackets. Malignancy score: the sum of the",
        "malignant classes' probabilities. Written by `src/stages/summary.py`.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for train_set, tests in table.items():
        for test_set, row in tests.items():
            cells = [
                train_set, test_set, str(row["n_images"]),
                format_estimate(row["malignancy_auroc"]),
                format_estimate(row["melanoma_vs_nevus_auroc"]),
                format_estimate(row["macro_auroc"], with_ci=False),
                format_estimate(row["top1_accuracy"], with_ci=False),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    table = collect(EVALUATION_DIR)

    atomic_io.write_text("metrics/summary.md", markdown(table))
    atomic_io.write_json("metrics/summary.json", table)
    log.info("summarised %d training sets into metrics/summary.md", len(table))


if __name__ == "__main__":
    main()
