"""The release command, its checks and its datasheet, on a local-directory DVC remote.

The release runs on the demo pipeline at tiny params (data stages only), built once per test
session and copied for each test. The exact datasheet counts are checked on the stand-in pipeline.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml
from pipeline_repo import update_params
from release_pipeline import (
    DATA_STAGES,
    add_remotes,
    build_stand_in_pipeline,
    copy_demo_pipeline,
    init_repository,
    run_dvc,
    run_git,
    run_release,
)

from dermcan import atomic_io, shards
from dermcan.datasheet import NOT_AVAILABLE, render_datasheet


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo pipeline with its data stages run and committed, and a default remote `storage`."""
    return copy_demo_pipeline(
        tmp_path_factory,
        tmp_path_factory.mktemp("template") / "repo",
        {"storage": {"url": "/nonexistent/replaced-per-test"}},
        default="storage",
    )


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with the stand-in pipeline run and committed."""
    repository = tmp_path_factory.mktemp("stand-in") / "repo"
    init_repository(repository)
    build_stand_in_pipeline(repository)
    return repository


@pytest.fixture
def repository(template: Path, tmp_path: Path) -> Path:
    """A copy of the template whose `storage` remote is an empty folder of its own (set in config.local)."""
    copy = tmp_path / "repo"
    shutil.copytree(template, copy, symlinks=True)
    (tmp_path / "remote").mkdir()
    add_remotes(copy, {"storage": {"url": str(tmp_path / "remote")}}, default="", local=True)
    return copy


def remote_files(repository: Path) -> list[Path]:
    return [path for path in (repository.parent / "remote").rglob("*") if path.is_file()]


def tags(repository: Path) -> list[str]:
    return run_git(repository, "tag", "--list").stdout.split()


def test_no_push_release_with_shards(repository, tmp_path):
    run_release(repository, "v1", "--no-push")

    assert "dataset-v1" in tags(repository)
    assert remote_files(repository) == []

    shard_folder = repository / "data/release/shards/annotated"
    restored = tmp_path / "restored"
    shards.extract_shards(shard_folder, restored)
    original = {
        path.relative_to(repository / "data/annotated"): path.read_bytes()
        for path in (repository / "data/annotated").rglob("*")
        if path.is_file()
    }
    extracted = {path.relative_to(restored): path.read_bytes() for path in restored.rglob("*") if path.is_file()}
    assert extracted == original
    index = {row["path"]: row for row in shards.read_index(shard_folder)}
    crop = next(path for path in index if path.endswith(".jpg"))
    assert index[crop]["decision"] == "keep"
    assert index[crop]["split"] in ("train", "val")
    assert index[crop]["source_sha256"] in (repository / "data/crawl/manifest.csv").read_text()
    crawl_index = shards.read_index(repository / "data/release/shards/crawl")
    image_rows = [row for row in crawl_index if row["path"].startswith("images/")]
    assert image_rows
    assert all(row["url"].startswith("http://") for row in image_rows)
    # The manifest's sha256 is of the downloaded bytes, which names the stored (re-encoded) file.
    assert all(Path(row["path"]).stem == row["source_sha256"] for row in image_rows)


def test_dry_run_changes_nothing(repository):
    # The template never ran train, evaluate or the GAN stages; a data release does not need them.
    whole_status = run_dvc(repository, "status", "--json").stdout
    head = run_git(repository, "rev-parse", "HEAD").stdout
    completed = run_release(repository, "v1", "--dry-run")

    assert "# dermcan data set v1" in completed.stdout
    assert "train@can" in whole_status
    assert "gan_train" in whole_status
    assert "dvc.lock has no entry for demo_external, train, evaluate" in completed.stderr
    assert "`dvc pull --allow-missing`" in completed.stderr
    assert not (repository / "data/release").exists()
    assert tags(repository) == []
    assert run_git(repository, "rev-parse", "HEAD").stdout == head
    assert run_git(repository, "status", "--porcelain").stdout == ""
    assert "frozen" not in (repository / "dvc.yaml").read_text()


def test_dirty_tree_rejected(repository):
    (repository / "params.yaml").write_text(
        (repository / "params.yaml").read_text() + "# edited\n", encoding="utf-8"
    )
    completed = run_release(repository, "v1", check=False)

    assert completed.returncode == 1
    assert "uncommitted changes" in completed.stderr
    assert "params.yaml" in completed.stderr
    assert tags(repository) == []


def test_stale_data_stage_rejected(repository):
    update_params(repository, {"annotate.box_margin": 0.2})
    run_git(repository, "commit", "-q", "-am", "Widen the crop margin")
    completed = run_release(repository, "v1", check=False)

    assert completed.returncode == 1
    assert "not up to date" in completed.stderr
    assert "annotate:" in completed.stderr
    assert "annotate.box_margin" in completed.stderr
    assert "run `dvc repro crawl annotate split measure_annotation`" in completed.stderr
    assert tags(repository) == []


def test_freeze_keeps_comments_and_plots(repository):
    before_text = (repository / "dvc.yaml").read_text()
    run_dvc(repository, "freeze", "crawl")
    after_text = (repository / "dvc.yaml").read_text()
    before = yaml.safe_load(before_text)
    after = yaml.safe_load(after_text)
    # Unfrozen, a changed crawl param would rerun the crawl and everything downstream.
    update_params(repository, {"crawl.jpeg_quality": 80})
    repro = run_dvc(repository, "repro", *DATA_STAGES).stdout

    comments = [line.strip() for line in before_text.splitlines() if line.strip().startswith("#")]
    assert comments
    assert comments == [line.strip() for line in after_text.splitlines() if line.strip().startswith("#")]
    assert after["plots"] == before["plots"]
    assert after["stages"]["train"] == before["stages"]["train"]
    assert after["stages"]["evaluate"] == before["stages"]["evaluate"]
    assert after["stages"]["crawl"]["frozen"] is True
    # dvc freeze writes the frozen stage's lists sorted by name, so they are compared as sets.
    for key in ("deps", "params", "outs", "metrics"):
        assert sorted(map(str, after["stages"]["crawl"][key])) == sorted(
            map(str, before["stages"]["crawl"][key])
        ), key
    assert "Running stage 'crawl'" not in repro
    assert "Running stage" not in repro


def test_bad_version_tag_and_remote_rejected(repository):
    invalid = run_release(repository, "1.0", check=False)
    run_git(repository, "tag", "-a", "dataset-v3", "-m", "taken")
    existing_tag = run_release(repository, "v3", check=False)
    unknown = run_release(repository, "v4", "--remote", "nowhere", check=False)

    assert invalid.returncode == 1
    assert "invalid version '1.0'" in invalid.stderr
    assert existing_tag.returncode == 1
    assert "tag dataset-v3 already exists" in existing_tag.stderr
    assert unknown.returncode == 1
    assert "remote 'nowhere' is not configured" in unknown.stderr
    assert "storage" in unknown.stderr


def test_release_after_failed_push(repository, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    (repository / ".dvc" / "config.local").unlink()
    add_remotes(repository, {"storage": {"url": str(blocker / "remote")}}, default="", local=True)
    failed = run_release(repository, "v1", check=False)
    commits_after_failure = run_git(repository, "rev-list", "--count", "HEAD").stdout

    assert failed.returncode == 1
    assert "dvc push" in failed.stderr
    assert "not tagged" in failed.stderr
    assert tags(repository) == []

    (repository / ".dvc" / "config.local").unlink()
    add_remotes(repository, {"storage": {"url": str(tmp_path / "remote")}}, default="", local=True)
    completed = run_release(repository, "v1")

    assert tags(repository) == ["dataset-v1"]
    assert run_git(repository, "cat-file", "-t", "dataset-v1").stdout.strip() == "tag"
    assert run_git(repository, "rev-list", "--count", "HEAD").stdout == commits_after_failure
    assert run_git(repository, "status", "--porcelain").stdout == ""
    release = repository / "data/release"
    assert (release / "DATASHEET.md").read_text().startswith("# dermcan data set v1")
    assert (release / "can_manifest.txt").read_bytes() == (
        repository / "data/annotated/can_manifest.txt"
    ).read_bytes()
    assert (repository / "data/release.dvc").is_file()
    assert yaml.safe_load((repository / "dvc.yaml").read_text())["stages"]["crawl"]["frozen"] is True
    assert remote_files(repository), completed.stderr
    assert run_dvc(repository, "status", "--cloud", "--json").stdout.strip() in ("", "{}")


def test_datasheet_of_demo_pipeline(template):
    text = render_datasheet(template, "v9", tag="dataset-v9")
    split_rows = atomic_io.read_csv(template / "data/split/can.csv")
    train = sum(row["split"] == "train" for row in split_rows)
    val = sum(row["split"] == "val" for row in split_rows)
    decisions = [row["decision"] for row in atomic_io.read_csv(template / "data/annotated/annotations.csv")]

    assert f"| **total** | {train} | {val} | {len(split_rows)} |" in text
    assert f"| keep | {decisions.count('keep')} |" in text
    assert "| demo-web.test |" in text
    assert "| precision | " in text
    assert "| recall | " in text
    assert "box_margin: 0.1" in text
    assert "blocked_hosts" in text
    assert "- Crawl dates: finished_at: " in text


def test_datasheet_counts_and_sources(stand_in):
    text = render_datasheet(stand_in, "v9", tag="dataset-v9")

    assert "| basalcellcarcinoma | 3 | 1 | 4 |" in text
    assert "| **total** | 3 | 2 | 5 |" in text
    assert "| derm.example | 4 | 4 |" in text
    assert "| blocked_site | 1 |" in text
    assert "started: 2026-01-02T03:04:05Z" in text
    assert "| crop.precision | 0.9 |" in text
    assert "- CC-BY-4.0" in text
    assert "- blocked.example" in text
    assert "threshold: 0.3" in text
    assert NOT_AVAILABLE not in text


def test_datasheet_without_inputs(tmp_path):
    text = render_datasheet(tmp_path, "v1", tag="dataset-v1")

    assert text.startswith("# dermcan data set v1")
    for section in ("Training lists", "Crawl dates", "Crawl manifest", "Method", "Decisions",
                    "Measured precision and recall", "Licences", "Site blocklist"):
        assert section in text
    assert text.count(NOT_AVAILABLE) >= 9


def test_shards_deterministic_and_local(tmp_path):
    source = tmp_path / "images"
    for index in range(40):
        path = source / f"class{index % 3}" / f"{index:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(hashlib.sha256(str(index).encode()).digest() * (index + 1))
    shards.write_shards(source, tmp_path / "first", num_shards=4)
    shards.write_shards(source, tmp_path / "second", num_shards=4)
    first = {path.name: path.read_bytes() for path in (tmp_path / "first").iterdir()}
    second = {path.name: path.read_bytes() for path in (tmp_path / "second").iterdir()}

    assert first == second
    assert len([name for name in first if name.endswith(".tar")]) == 4

    (source / "class1" / "001.jpg").write_bytes(b"changed")
    shards.write_shards(source, tmp_path / "second", num_shards=4)
    changed = [
        name
        for name in first
        if name.endswith(".tar") and (tmp_path / "second" / name).read_bytes() != first[name]
    ]
    assert len(changed) == 1
    assert shards.assign_shard("class1/001.jpg", 4) == int(changed[0][6:11])


def test_shard_member_checked(tmp_path):
    source = tmp_path / "images"
    source.mkdir()
    (source / "a.jpg").write_bytes(b"a" * 1000)
    shards.write_shards(source, tmp_path / "out", num_shards=1)
    row = shards.read_index(tmp_path / "out")[0]

    assert shards.read_member(tmp_path / "out", row) == b"a" * 1000

    shard = tmp_path / "out" / row["shard"]
    data = bytearray(shard.read_bytes())
    data[int(row["offset"])] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        shards.read_member(tmp_path / "out", row)
