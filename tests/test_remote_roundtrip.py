"""Released versions survive the trip to a DVC remote and back: moto's S3 server and a local folder.

One module-scoped repository runs the data stages of the demo pipeline at tiny params and is
released twice to an S3 remote `storage` on moto's server: dataset-v1, then dataset-v2 after
annotate.box_margin changes. The v1 data also goes to a local-directory remote `backup`. Each
test then works in its own fresh clone. Training, evaluation and GAN stages never run, so clones
pull with `--allow-missing` and check the status of the data stages only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from pipeline_repo import update_params
from release_pipeline import (
    DATA_STAGES,
    add_remotes,
    copy_demo_pipeline,
    clone,
    data_status,
    hash_tree,
    init_repository,
    pull_data,
    run_dvc,
    run_git,
    run_release,
    workspace_files,
)
from s3_server import S3Server, TEST_CREDENTIALS, running_s3_server

from dermcan import shards


@dataclass
class Released:
    """The released repository, its remotes and the file hashes of each released version."""

    repository: Path
    backup: Path
    v1: dict[str, str]
    v2: dict[str, str]
    v2_repro_output: str


@pytest.fixture(scope="module")
def s3() -> S3Server:
    with running_s3_server(bucket="dermcan-releases") as server:
        yield server


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory, s3: S3Server) -> Released:
    base = tmp_path_factory.mktemp("released")
    repository = base / "repo"
    backup = base / "backup-remote"
    copy_demo_pipeline(
        tmp_path_factory,
        repository,
        {
            "storage": {"url": f"s3://{s3.bucket}/dermcan", "endpointurl": s3.endpoint_url},
            "backup": {"url": str(backup)},
        },
        default="storage",
    )

    run_release(repository, "v1")
    run_dvc(repository, "push", "-r", "backup")
    v1 = workspace_files(repository)

    update_params(repository, {"annotate.box_margin": 0.2})
    repro = run_dvc(repository, "repro", *DATA_STAGES)
    run_git(repository, "add", "-A")
    run_git(repository, "commit", "-q", "-m", "Widen the crop margin")
    run_release(repository, "v2")
    v2 = workspace_files(repository)
    return Released(repository=repository, backup=backup, v1=v1, v2=v2, v2_repro_output=repro.stdout)


def checkout_clone(released: Released, destination: Path, tag: str) -> Path:
    repository = clone(released.repository, destination)
    run_git(repository, "checkout", "-q", tag)
    return repository


def only(hashes: dict[str, str], prefix: str) -> dict[str, str]:
    return {path: digest for path, digest in hashes.items() if path.startswith(prefix)}


def test_config_has_no_credentials(released):
    config = (released.repository / ".dvc" / "config").read_text()

    assert "endpointurl" in config
    # The test repository runs `dvc init` afresh, so the project's own default remote is absent.
    assert "dermcan-datasets" not in config
    assert TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in config
    assert TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"] not in config


def test_second_release_reuses_frozen_crawl(released):
    assert "Running stage 'annotate'" in released.v2_repro_output
    assert "Running stage 'crawl'" not in released.v2_repro_output
    assert "Running stage 'demo_web'" not in released.v2_repro_output
    assert only(released.v1, "data/crawl") == only(released.v2, "data/crawl")
    assert only(released.v1, "data/annotated") != only(released.v2, "data/annotated")
    assert only(released.v1, "data/release") != only(released.v2, "data/release")


@dataclass
class PulledClone:
    """What a fresh clone showed after checking out a tag and pulling it."""

    files: dict[str, str]
    git_status: str
    data_status: str
    repro: subprocess.CompletedProcess[str]


def pull_clone_state(repository: Path, *pull_arguments: str) -> PulledClone:
    """Pull into ``repository``, then record its files, `git status`, data-stage status and repro."""
    pull_data(repository, *pull_arguments)
    files = workspace_files(repository)
    git_status = run_git(repository, "status", "--porcelain").stdout
    status = data_status(repository)
    repro = run_dvc(repository, "repro", *DATA_STAGES, check=False)
    return PulledClone(files=files, git_status=git_status, data_status=status, repro=repro)


@pytest.fixture(scope="module")
def local_clone(released, tmp_path_factory) -> PulledClone:
    """A fresh clone at dataset-v1, pulled from the local-directory remote."""
    destination = tmp_path_factory.mktemp("local-clone") / "clone"
    repository = checkout_clone(released, destination, "dataset-v1")
    return pull_clone_state(repository, "-r", "backup")


@pytest.fixture(scope="module")
def s3_clone(released, tmp_path_factory) -> tuple[PulledClone, PulledClone]:
    """One fresh clone pulled from S3 at dataset-v2, then checked out and pulled at dataset-v1."""
    destination = tmp_path_factory.mktemp("s3-clone") / "clone"
    repository = checkout_clone(released, destination, "dataset-v2")
    v2 = pull_clone_state(repository)
    run_git(repository, "checkout", "-q", "dataset-v1")
    v1 = pull_clone_state(repository, "--force")
    return v2, v1


def test_round_trip_local_remote(released, local_clone):
    assert local_clone.files == released.v1
    assert local_clone.git_status == ""


def test_round_trip_s3_both_tags(released, s3_clone):
    v2, v1 = s3_clone

    assert v2.files == released.v2
    assert v1.files == released.v1


def test_local_clone_status_clean(local_clone):
    assert local_clone.data_status in ("", "{}")
    assert local_clone.repro.returncode == 0, local_clone.repro.stderr
    assert "Running stage" not in local_clone.repro.stdout


def test_s3_clone_status_clean_both_tags(s3_clone):
    for clone_state in s3_clone:
        assert clone_state.data_status in ("", "{}")
        assert clone_state.repro.returncode == 0, clone_state.repro.stderr
        assert "Running stage" not in clone_state.repro.stdout


def test_dvc_get_at_tag(released, tmp_path):
    # A clone without a DVC cache, so the data can only come from the remote.
    source = clone(released.repository, tmp_path / "source")
    run_dvc(
        tmp_path,
        "get",
        str(source),
        "data/annotated",
        "--rev",
        "dataset-v1",
        "-o",
        str(tmp_path / "annotated"),
    )
    fetched = hash_tree(tmp_path, "annotated")

    assert fetched
    assert {"data/" + path: digest for path, digest in fetched.items()} == only(released.v1, "data/annotated")


def test_dvc_get_release_shards(released, tmp_path):
    source = clone(released.repository, tmp_path / "source")
    run_dvc(tmp_path, "get", str(source), "data/release", "--rev", "dataset-v1", "-o", str(tmp_path / "release"))
    shards.extract_shards(tmp_path / "release" / "shards" / "annotated", tmp_path / "annotated")
    unpacked = hash_tree(tmp_path, "annotated")

    assert (tmp_path / "release" / "DATASHEET.md").read_text().startswith("# dermcan data set v1")
    assert {"data/" + path: digest for path, digest in unpacked.items()} == only(released.v1, "data/annotated")


def test_dvc_import_at_tag(released, tmp_path):
    source = clone(released.repository, tmp_path / "source")
    project = tmp_path / "project"
    init_repository(project)
    run_dvc(project, "import", str(source), "data/annotated", "--rev", "dataset-v1", "-o", "annotated")
    imported = hash_tree(project, "annotated")
    stage = yaml.safe_load((project / "annotated.dvc").read_text())
    tag_commit = run_git(released.repository, "rev-list", "-n", "1", "dataset-v1").stdout.strip()

    assert {"data/" + path: digest for path, digest in imported.items()} == only(released.v1, "data/annotated")
    assert stage["deps"][0]["repo"]["rev"] == "dataset-v1"
    assert stage["deps"][0]["repo"]["rev_lock"] == tag_commit


def partial_workspace(released: Released, destination: Path) -> tuple[Path, dict[str, str]]:
    """Clone dataset-v1 with everything but data/annotated in the workspace and an empty cache."""
    repository = checkout_clone(released, destination, "dataset-v1")
    pull_data(repository, "-r", "backup")
    shutil.rmtree(repository / ".dvc" / "cache")
    shutil.rmtree(repository / "data" / "annotated")
    return repository, workspace_files(repository)


def assert_workspace_kept(repository: Path, before: dict[str, str], released: Released) -> None:
    after = workspace_files(repository)
    for path, digest in before.items():
        assert after.get(path) == digest, f"{path} changed or vanished after the failed pull"
    for path in set(after) - set(before):
        assert after[path] == released.v1[path], f"{path} was written with wrong content"


def test_pull_from_stopped_server_fails_cleanly(released, tmp_path):
    repository, before = partial_workspace(released, tmp_path / "clone")
    with running_s3_server(bucket="gone") as gone:
        endpoint = gone.endpoint_url
    add_remotes(
        repository,
        {"gone": {"url": "s3://gone/dermcan", "endpointurl": endpoint}},
        default="",
        local=True,
    )
    # One attempt per request instead of botocore's default retries keeps the test short.
    completed = run_dvc(
        repository, "pull", "-r", "gone", check=False, extra_environment={"AWS_MAX_ATTEMPTS": "1"}
    )

    assert completed.returncode != 0
    assert "failed to connect to s3" in completed.stderr
    assert endpoint.split("//")[1] in completed.stderr
    assert "failed to pull data from the cloud" in completed.stderr
    assert_workspace_kept(repository, before, released)


def test_pull_with_object_missing_fails_cleanly(released, tmp_path):
    damaged = tmp_path / "damaged-remote"
    shutil.copytree(released.backup, damaged)
    # dvc.lock in the workspace is v2's; the tag has v1's.
    lock_v1 = yaml.safe_load(run_git(released.repository, "show", "dataset-v1:dvc.lock").stdout)
    directory_md5 = next(
        out["md5"] for out in lock_v1["stages"]["annotate"]["outs"] if out["path"] == "data/annotated"
    )
    listing = json.loads((damaged / "files" / "md5" / directory_md5[:2] / directory_md5[2:]).read_text())
    lost = next(entry for entry in listing if entry["relpath"].endswith(".jpg"))
    (damaged / "files" / "md5" / lost["md5"][:2] / lost["md5"][2:]).unlink()

    repository, before = partial_workspace(released, tmp_path / "clone")
    add_remotes(repository, {"damaged": {"url": str(damaged)}}, default="", local=True)
    completed = run_dvc(repository, "pull", "-r", "damaged", check=False)
    output = completed.stdout + completed.stderr

    assert completed.returncode != 0
    assert "failed to pull data from the cloud" in output
    # DVC names the missing object by its MD5; the .dir listing maps it to the file.
    assert lost["md5"] in output
    assert_workspace_kept(repository, before, released)
