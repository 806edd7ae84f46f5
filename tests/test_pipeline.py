"""The DVC pipeline end to end, in a temporary git repository, at a tiny size.

The first test runs `dvc repro` on the whole graph. The others change one parameter each,
run `dvc repro` again, and check which stages ran: a change must rerun only the stages
downstream of it.
"""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline_repo import make_pipeline_repo, run, update_params

pytestmark = pytest.mark.slow


def _stages_run_by_repro(repo) -> set[str]:
    """Run `dvc repro` without the run cache and return the names of the stages it ran."""
    output = run(["dvc", "repro", "--no-run-cache"], repo).stdout
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def _stage_names(repo) -> set[str]:
    output = run(["dvc", "stage", "list", "--names-only"], repo).stdout
    return {line.strip() for line in output.splitlines() if line.strip()}


def _commit(repo, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "--allow-empty", "-m", message], repo)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    path = make_pipeline_repo(tmp_path_factory.mktemp("pipeline") / "repo")
    run(["dvc", "repro"], path)
    _commit(path, "tiny run")
    return path


@pytest.fixture
def restore_params(repo):
    yield
    run(["git", "checkout", "--", "params.yaml"], repo)
    run(["dvc", "repro"], repo)


def test_repro_writes_every_result(repo):
    for name in ("crawl.json", "annotate.json", "split.json", "gan.json", "summary.json", "summary.md"):
        assert (repo / "metrics" / name).is_file(), name
    summary = json.loads((repo / "metrics" / "summary.json").read_text(encoding="utf-8"))
    assert summary, "metrics/summary.json is empty"
    for stage in _stage_names(repo):
        if stage.startswith("evaluate@"):
            training_set = stage.split("@", 1)[1]
            assert (repo / "metrics" / "evaluate" / f"{training_set}.json").is_file(), stage
    assert (repo / "models" / "can" / "model.pt").is_file()
    assert any((repo / "data" / "annotated").rglob("*.jpg"))


def test_repro_leaves_pipeline_up_to_date(repo):
    status = run(["dvc", "status"], repo).stdout
    assert "up to date" in status, status
    assert _stages_run_by_repro(repo) == set()


def test_truth_is_a_dependency_of_measurement_only(repo):
    stages = yaml.safe_load((repo / "dvc.lock").read_text(encoding="utf-8"))["stages"]
    readers = {
        name
        for name, stage in stages.items()
        if any(dep["path"].startswith("data/demo/truth.json") for dep in stage.get("deps", []))
    }
    assert readers == {"measure_annotation"}


def test_evaluate_param_reruns_evaluate_only(repo, restore_params):
    update_params(repo, {"evaluate.bootstrap.iterations": 31})
    ran = _stages_run_by_repro(repo)
    assert ran, "nothing reran after an evaluate param change"
    assert all(name.startswith("evaluate@") or name == "summary" for name in ran), ran


def test_train_param_keeps_crawl_and_annotate(repo, restore_params):
    update_params(repo, {"train.label_smoothing": 0.05})
    ran = _stages_run_by_repro(repo)
    assert "train@can" in ran
    assert "evaluate@can" in ran
    for upstream in ("demo_web", "crawl", "annotate", "split", "gan_train"):
        assert upstream not in ran, upstream


def test_annotate_param_reruns_downstream_not_crawl(repo, restore_params):
    update_params(repo, {"annotate.box_margin": 0.2})
    ran = _stages_run_by_repro(repo)
    assert "annotate" in ran
    assert "split" in ran
    assert "train@can" in ran
    assert "crawl" not in ran
    assert "demo_web" not in ran


def test_gan_param_reruns_only_gan_side(repo, restore_params):
    if "gan_train" not in _stage_names(repo):
        pytest.skip("the pipeline has no GAN stages")
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    update_params(repo, {"gan.iterations": int(params["gan"]["iterations"]) + 2})
    ran = _stages_run_by_repro(repo)
    assert "gan_train" in ran
    assert "gan_generate" in ran
    for untouched in ("train@can", "train@keyword", "evaluate@can", "evaluate@keyword", "split"):
        assert untouched not in ran, untouched
    gan_sets = {name for name in _stage_names(repo) if name.startswith("train@") and "gan" in name}
    assert gan_sets <= ran


def test_metrics_diff_reports_a_change(repo, restore_params):
    update_params(repo, {"evaluate.bootstrap.iterations": 17})
    run(["dvc", "repro"], repo)
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], repo).stdout)
    changed = {
        path: values
        for path, values in diff.items()
        if path.startswith("metrics/evaluate/") and values
    }
    assert changed, diff
