"""`dvc plots show` renders every plot that dvc.yaml declares, from the committed results.

Runs real DVC in a temporary git + DVC repository holding copies of dvc.yaml, params.yaml,
metrics/ and plots/, never in the checkout itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from pipeline_repo import run

REPO = Path(__file__).resolve().parents[1]
TRAINING_SETS = ("can", "keyword", "gan", "can+gan")


@pytest.fixture(scope="module")
def shown(tmp_path_factory: pytest.TempPathFactory) -> dict:
    repo = tmp_path_factory.mktemp("plots_repo")
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, repo / name)
    for folder in ("metrics", "plots"):
        shutil.copytree(REPO / folder, repo / folder)
    result = run(["dvc", "plots", "show", "--json"], repo)
    return json.loads(result.stdout)


def _declared_plots() -> list[str]:
    """Return the ids of the top-level plots in dvc.yaml: a file or folder path, or a title."""
    declared = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["plots"]
    return [entry if isinstance(entry, str) else next(iter(entry)) for entry in declared]


def test_plots_show_without_errors(shown: dict) -> None:
    assert shown.get("errors") in (None, [])


@pytest.mark.parametrize("plot", _declared_plots())
def test_declared_plot_has_data(shown: dict, plot: str) -> None:
    rendered = [name for name, entries in shown["data"].items() if (name == plot or name.startswith(plot + "/")) and entries]
    assert rendered, f"{plot} declared in dvc.yaml but not rendered"


def test_roc_comparison_shows_every_training_set(shown: dict) -> None:
    for title in ("Malignancy ROC on demo_shifted", "Melanoma vs nevus ROC on demo_shifted"):
        values = shown["data"][title][0]["content"]["data"]["values"]
        # DVC names each curve by the part of its file path that differs between the files.
        sets = {row["filename"].split("/")[0] for row in values}
        assert sets == set(TRAINING_SETS), title


def test_training_curves_rendered(shown: dict) -> None:
    for training_set in TRAINING_SETS:
        curves = [name for name, entries in shown["data"].items()
                  if name.startswith(f"metrics/train/{training_set}/plots/metrics") and entries]
        assert curves, training_set
