"""Fault injection on the real stage scripts, run as subprocesses.

Crawl: repeated SIGKILL at random moments, and a disk that fills mid-crawl (a small tmpfs).
Classifier and GAN training: SIGKILL mid-run, then a rerun that resumes from the checkpoint.
Each case ends with a comparison against an uninterrupted run of the same inputs.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image

from dermcan.demo_web import generate_site

REPO = Path(__file__).resolve().parents[1]
STAGES = REPO / "src" / "stages"

# A demo web of 2 photos per class with one or two images of every kind of noise.
DEMO_NOISE = {
    "off_topic_with_keyword": 1, "off_topic_without_keyword": 1, "exact_duplicates": 1,
    "near_duplicates": 2, "broken_links": 1, "html_as_image": 1, "truncated": 1,
    "oversized_pixels": 1, "oversized_bytes": 1, "redirect_chains": 1, "redirect_loops": 1,
    "disallowed": 1, "slow": 1, "unavailable": 1,
}
DEMO_WEB = {
    "photos_per_class": 2, "blog_posts": 3, "noise": DEMO_NOISE, "slow_delay_s": 2.0,
    "oversized_pixels_size": [3000, 2000], "oversized_bytes_min": 600_000,
}
# Seconds every image waits before it is served, so that a crawl lasts long enough to be killed
# several times.
IMAGE_DELAY_S = 0.15
KILLS = 4


def start_stage(root: Path, script: str, *arguments: str) -> subprocess.Popen[str]:
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(STAGES / script), *arguments], cwd=root, env=environment, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )


def finish_stage(process: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def run_stage(root: Path, script: str, *arguments: str) -> str:
    returncode, output = finish_stage(start_stage(root, script, *arguments))
    assert returncode == 0, output[-6000:]
    return output


def kill_stage(process: subprocess.Popen[str]) -> str:
    assert process.poll() is None, "the stage finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    returncode, output = finish_stage(process, timeout=60)
    assert returncode == -signal.SIGKILL, output[-3000:]
    return output


def wait_for(condition: Any, process: subprocess.Popen[str], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the stage exited before {what}:\n{process.communicate()[0][-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def kill_writer_mid_write(destination: Path, data: bytes) -> None:
    """Run a process that writes half of ``data`` through atomic_io and is SIGKILLed mid-write."""
    script = (
        "import os, signal, sys\n"
        "from dermcan import atomic_io\n"
        "with atomic_io.atomic_path(sys.argv[1]) as temporary:\n"
        "    temporary.write_bytes(bytes.fromhex(sys.argv[2]))\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    half = data[: len(data) // 2].hex()
    completed = subprocess.run([sys.executable, "-c", script, str(destination), half], check=False)
    assert completed.returncode == -signal.SIGKILL


def test_killed_write_keeps_old_file(tmp_path: Path) -> None:
    from dermcan import atomic_io

    destination = tmp_path / "data" / "manifest.csv"
    atomic_io.write_text(destination, "url,status\n")

    kill_writer_mid_write(destination, b"url,status\nhttp://a.test/x.jpg,downloaded\n")

    assert destination.read_text(encoding="utf-8") == "url,status\n"
    leftovers = list(destination.parent.glob(".manifest.csv.*.tmp"))
    assert len(leftovers) == 1
    atomic_io.write_text(destination, "url,status,reason\n")
    assert not list(destination.parent.glob("*.tmp")), "the next write did not remove the leftover"
    assert destination.read_text(encoding="utf-8") == "url,status,reason\n"


def test_stale_temporaries_removed_under_folder(tmp_path: Path) -> None:
    from dermcan import atomic_io

    nested = tmp_path / "state" / "images" / "ab" / "ab12.jpg"
    kill_writer_mid_write(nested, b"\xff\xd8" + bytes(100))
    live = tmp_path / "state" / f".other.jpg.{os.getpid()}.abc123.tmp"  # this process's: kept
    live.write_bytes(b"")

    removed = atomic_io.remove_stale_temporaries(tmp_path / "state")

    assert removed == 1
    assert not nested.exists()
    assert [path.name for path in (tmp_path / "state").rglob("*.tmp")] == [live.name]


# -- crawl ------------------------------------------------------------------------------------


def write_demo_repo(root: Path, *, image_delay_s: float = 0.0) -> None:
    """Write the demo web and crawl params of a repository at ``root``."""
    site = root / "data" / "demo" / "site"
    generate_site(site, root / "data" / "demo" / "truth.json", DEMO_WEB)
    if image_delay_s:
        routes_path = site / "_routes.json"
        routes = json.loads(routes_path.read_text(encoding="utf-8"))
        for path in site.rglob("*"):
            served = "/" + path.relative_to(site).as_posix()
            if path.is_file() and served.startswith("/img/"):
                routes["delays"].setdefault(served, image_delay_s)
        routes_path.write_text(json.dumps(routes), encoding="utf-8")
    crawl = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["crawl"]
    crawl.update(
        source="demo",
        timeouts={"connect_s": 2.0, "read_s": 0.5, "total_s": 10.0},
        retries={**crawl["retries"], "backoff_s": 0.01},
        max_image_bytes=500_000,
        max_image_pixels=5_000_000,
    )
    (root / "params.yaml").write_text(yaml.safe_dump({"crawl": crawl}, allow_unicode=True), encoding="utf-8")


@pytest.fixture(scope="module")
def uninterrupted_crawl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("uninterrupted_crawl")
    write_demo_repo(root)
    run_stage(root, "crawl.py")
    return root


def journal_lines(root: Path) -> list[dict[str, Any]]:
    """Parse every line of the crawl journal; a line cut short fails the test."""
    path = root / "data" / "crawl_state" / "journal.jsonl"
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    parsed = []
    for number, line in enumerate(lines, start=1):
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise AssertionError(f"line {number} of the journal is cut short: {line[:80]!r}") from error
    return parsed


def finished_records(root: Path) -> int:
    return sum(1 for record in journal_lines(root) if record.get("type") != "header" and not record.get("transient"))


def published_images(root: Path) -> dict[str, bytes]:
    images = root / "data" / "crawl" / "images"
    return {path.relative_to(images).as_posix(): path.read_bytes() for path in sorted(images.rglob("*.jpg"))}


def assert_no_partial_files(root: Path) -> None:
    """Check that no temporary file or build folder is left under data/ and every JPEG decodes."""
    data = root / "data"
    leftovers = [path for path in data.rglob("*") if path.name.endswith(".tmp")]
    leftovers += [path for path in data.rglob(".*") if path.name.endswith((".building", ".retired"))]
    assert not leftovers, f"partial files left behind: {leftovers}"
    for crawled in ("crawl", "crawl_state"):
        for path in (data / crawled).rglob("*.jpg"):
            with Image.open(path) as image:
                image.load()  # raises on a truncated file


def assert_journal_images_stored(root: Path) -> None:
    """Check that every image the journal records as downloaded is in the store, whole."""
    store = root / "data" / "crawl_state" / "images"
    for record in journal_lines(root):
        outcome = record.get("outcome") or {}
        if record.get("type") == "image" and outcome.get("status") == "downloaded":
            path = store / outcome["sha256"][:2] / f"{outcome['sha256']}.jpg"
            assert path.is_file(), f"journal lists {record['url']} but {path} is missing"
            with Image.open(path) as image:
                image.load()


def assert_same_crawl(root: Path, reference: Path) -> None:
    for name in ("data/crawl/manifest.csv", "metrics/crawl.json"):
        assert (root / name).read_bytes() == (reference / name).read_bytes(), f"{name} differs"
    images, expected = published_images(root), published_images(reference)
    assert sorted(images) == sorted(expected)
    for name, content in expected.items():
        assert images[name] == content, f"published image {name} differs"


def test_crawl_killed_repeatedly_resumes(tmp_path: Path, uninterrupted_crawl: Path) -> None:
    write_demo_repo(tmp_path, image_delay_s=IMAGE_DELAY_S)
    delays = random.Random(20240611)
    progress = []

    for _ in range(KILLS):
        done_before = finished_records(tmp_path)
        process = start_stage(tmp_path, "crawl.py")
        wait_for(lambda: finished_records(tmp_path) > done_before, process, "the crawl made progress")
        time.sleep(delays.uniform(0.0, 0.4))
        kill_stage(process)
        progress.append(finished_records(tmp_path))

        assert not (tmp_path / "data" / "crawl" / "manifest.csv").exists()
        assert_journal_images_stored(tmp_path)
        stored = tmp_path / "data" / "crawl_state" / "images"
        for path in stored.rglob("*.jpg"):
            with Image.open(path) as image:
                image.load()

    assert progress == sorted(progress), f"journal records after each kill: {progress}"
    # A kill inside an image write is too short a window to hit by timing, so one is staged:
    # a writer killed while rewriting an image the store already has.
    stored_image = next((tmp_path / "data" / "crawl_state" / "images").rglob("*.jpg"))
    kill_writer_mid_write(stored_image, stored_image.read_bytes())
    output = run_stage(tmp_path, "crawl.py")

    assert "resuming from" in output
    info = json.loads((tmp_path / "data" / "crawl" / "crawl_info.json").read_text(encoding="utf-8"))
    assert info["resumed_images"] > 0
    assert_same_crawl(tmp_path, uninterrupted_crawl)
    assert_no_partial_files(tmp_path)
    assert_journal_images_stored(tmp_path)


def file_system_pages(folder: Path) -> int:
    """Return the 4 KiB pages that the files under ``folder`` take on a tmpfs (hard links once)."""
    seen, pages = set(), 0
    for path in folder.rglob("*"):
        if path.is_file():
            stat = path.stat()
            if stat.st_ino not in seen:
                seen.add(stat.st_ino)
                pages += -(-stat.st_size // 4096)
    return pages


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """Mount a tmpfs at tmp_path/disk (needs root and a kernel that lets this process mount)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and the mount command")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
        capture_output=True, text=True, check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def resize_tmpfs(mount_point: Path, size_bytes: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_bytes}", str(mount_point)], check=True)


def test_crawl_on_full_disk_stops_and_resumes(
    tmp_path: Path, uninterrupted_crawl: Path, small_tmpfs: Path
) -> None:
    repo = tmp_path / "repo"
    write_demo_repo(repo)
    # The crawl writes only under data/crawl_state and data/crawl; both live on the small disk.
    for name in ("crawl_state", "crawl"):
        (small_tmpfs / name).mkdir()
        (repo / "data" / name).symlink_to(small_tmpfs / name, target_is_directory=True)
    needed = file_system_pages(uninterrupted_crawl / "data" / "crawl_state")
    needed += file_system_pages(uninterrupted_crawl / "data" / "crawl")
    resize_tmpfs(small_tmpfs, needed // 2 * 4096)

    returncode, output = finish_stage(start_stage(repo, "crawl.py"))

    assert returncode != 0, output[-3000:]
    assert "disk is full" in output, output[-3000:]
    assert str((small_tmpfs / "crawl_state").resolve()) in output  # the full disk is named
    assert "rerun" in output
    # The stage ends with its message, not an uncaught exception. (The loopback server may print
    # a traceback of its own when the stopped crawl resets a connection.)
    assert "disk is full" in output.strip().splitlines()[-1], output[-3000:]
    assert "DiskFullError" not in output, output[-3000:]
    stored_before = len(list((repo / "data" / "crawl_state" / "images").rglob("*.jpg")))
    assert stored_before > 0, "the disk filled before any image was stored: the test disk is too small"
    assert finished_records(repo) > 0
    assert not (repo / "data" / "crawl" / "manifest.csv").exists()
    assert_no_partial_files(repo)
    assert_journal_images_stored(repo)

    resize_tmpfs(small_tmpfs, needed * 4 * 4096)
    output = run_stage(repo, "crawl.py")

    assert "resuming from" in output
    assert_same_crawl(repo, uninterrupted_crawl)
    assert_no_partial_files(repo)


# -- classifier training ----------------------------------------------------------------------

TRAIN_EPOCHS = 4
TRAIN_CHECKPOINT = Path(".cache/train_state/can/checkpoint.pt")
MODEL = Path("models/can/model.pt")


def write_training_repo(root: Path, *, resume: bool = True) -> None:
    """Write 24 training and 6 validation images of 3 classes and deterministic train params."""
    from classifier_fixtures import write_training_list

    classes = ["basalcellcarcinoma", "malignantmelanoma", "melanocyticnevus"]
    write_training_list(root, root / "data/split/can.csv", classes, per_class=10, val_per_class=2)
    set_train_params(root, resume=resume)


def set_train_params(root: Path, *, resume: bool) -> None:
    params = {
        "train": {
            "seed": 0,
            "sets": {"can": {"train": ["data/split/can.csv"], "val": ["data/split/can.csv"]}},
            "model": {"arch": "mobilenet_v3_small", "weights": None, "input_size": 32},
            "epochs": TRAIN_EPOCHS,
            "batch_size": 4,
            "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.05},
            "schedule": {"name": "cosine", "warmup_epochs": 1},
            "augmentation": {"crop_scale": [0.6, 1.0], "hflip": True, "rotation": 10, "color_jitter": 0.2},
            "cache": {"margin": 0.15, "dir": ".cache/images"},
            "deterministic": True,
            "num_workers": 0,
            "device": "cpu",
            "resume": resume,
        }
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")


def checkpoint_epoch(root: Path) -> int:
    path = root / TRAIN_CHECKPOINT
    if not path.exists():
        return 0
    return int(torch.load(path, weights_only=False)["epoch"])


def kill_after_first_checkpoint(root: Path) -> int:
    """Start the train stage, SIGKILL it once it has written a checkpoint; return that epoch."""
    process = start_stage(root, "train.py", "can")
    wait_for(lambda: (root / TRAIN_CHECKPOINT).exists(), process, "the first checkpoint")
    kill_stage(process)
    epoch = checkpoint_epoch(root)  # torch.load fails on a partial file
    assert 1 <= epoch < TRAIN_EPOCHS
    return epoch


def dvclive_values(root: Path) -> dict[str, list[tuple[str, str]]]:
    """Return (step, value) rows of every dvclive metric file, without the timestamps."""
    plots = root / "metrics/train/can/plots/metrics"
    values = {}
    for path in sorted(plots.rglob("*.tsv")):
        with open(path, newline="", encoding="utf-8") as handle:
            values[path.relative_to(plots).as_posix()] = [(row["step"], row[path.stem]) for row in csv.DictReader(handle, delimiter="\t")]
    return values


def assert_same_model(path: Path, reference: Path) -> None:
    state = torch.load(path, weights_only=False)
    expected = torch.load(reference, weights_only=False)
    assert state["selected_epoch"] == expected["selected_epoch"]
    for key, tensor in expected["state_dict"].items():
        assert torch.allclose(state["state_dict"][key].float(), tensor.float(), rtol=0, atol=1e-6), key


def assert_no_temporaries(root: Path) -> None:
    leftovers = [path for path in root.rglob("*.tmp")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


@pytest.fixture(scope="module")
def uninterrupted_training(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("uninterrupted_training")
    write_training_repo(root)
    run_stage(root, "train.py", "can")
    return root


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_training_killed_resumes_to_same_model(tmp_path: Path, uninterrupted_training: Path) -> None:
    write_training_repo(tmp_path)

    epoch = kill_after_first_checkpoint(tmp_path)

    assert not (tmp_path / MODEL).exists()
    output = run_stage(tmp_path, "train.py", "can")
    assert f"after epoch {epoch} of {TRAIN_EPOCHS}" in output
    assert f"epoch {epoch}/{TRAIN_EPOCHS}:" not in output  # the finished epochs are not trained again
    assert f"epoch {TRAIN_EPOCHS}/{TRAIN_EPOCHS}:" in output
    assert_same_model(tmp_path / MODEL, uninterrupted_training / MODEL)
    assert dvclive_values(tmp_path) == dvclive_values(uninterrupted_training)
    assert not (tmp_path / TRAIN_CHECKPOINT).exists(), "the checkpoint outlived the published model"
    assert_no_temporaries(tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_training_without_resume_restarts(tmp_path: Path, uninterrupted_training: Path) -> None:
    write_training_repo(tmp_path)
    # A model from an earlier complete run: a killed run must leave it as it was.
    (tmp_path / MODEL).parent.mkdir(parents=True)
    shutil.copyfile(uninterrupted_training / MODEL, tmp_path / MODEL)
    previous = (tmp_path / MODEL).read_bytes()

    kill_after_first_checkpoint(tmp_path)

    assert (tmp_path / MODEL).read_bytes() == previous
    set_train_params(tmp_path, resume=False)
    output = run_stage(tmp_path, "train.py", "can")
    assert "train.resume is false" in output
    assert "resuming from" not in output
    assert f"epoch 1/{TRAIN_EPOCHS}:" in output
    assert_same_model(tmp_path / MODEL, uninterrupted_training / MODEL)
    assert_no_temporaries(tmp_path)


# -- GAN training -----------------------------------------------------------------------------

GAN_ITERATIONS = 200
GAN_CHECKPOINT_EVERY = 25
GAN_CHECKPOINT = Path("models/cgan/checkpoint.pt")


def write_gan_repo(root: Path) -> None:
    from test_gan import TINY, write_split_list

    write_split_list(root)
    gan = {**TINY, "iterations": GAN_ITERATIONS, "checkpoint_every": GAN_CHECKPOINT_EVERY, "log_every": GAN_CHECKPOINT_EVERY}
    (root / "params.yaml").write_text(yaml.safe_dump({"gan": gan}), encoding="utf-8")


def gan_step(root: Path) -> int:
    path = root / GAN_CHECKPOINT
    return int(torch.load(path, weights_only=False)["step"]) if path.exists() else 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gan_training_killed_resumes(tmp_path: Path) -> None:
    reference, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    for root in (reference, killed):
        write_gan_repo(root)
    run_stage(reference, "gan_train.py")

    steps = []
    for _ in range(2):
        before = gan_step(killed)
        process = start_stage(killed, "gan_train.py")
        # gan_step loads the checkpoint: a partial file would raise here.
        wait_for(lambda: gan_step(killed) > before, process, "a new checkpoint")
        kill_stage(process)
        step = gan_step(killed)
        assert step % GAN_CHECKPOINT_EVERY == 0
        assert 0 < step < GAN_ITERATIONS
        steps.append(step)

    output = run_stage(killed, "gan_train.py")
    assert f"at step {steps[-1]}" in output
    assert steps[0] < steps[1]
    assert gan_step(killed) == GAN_ITERATIONS
    resumed = torch.load(killed / GAN_CHECKPOINT, weights_only=False)
    expected = torch.load(reference / GAN_CHECKPOINT, weights_only=False)
    for network in ("generator", "generator_ema", "discriminator"):
        for name, tensor in expected[network].items():
            assert torch.allclose(resumed[network][name], tensor, rtol=0, atol=1e-6), f"{network}.{name}"
    assert_no_temporaries(killed / "models")


def test_journal_append_on_full_disk_keeps_whole_lines(small_tmpfs: Path) -> None:
    from dermcan.crawl_manifest import CrawlJournal

    journal = CrawlJournal(small_tmpfs / "journal.jsonl", fingerprint="f")
    journal.record({"type": "page", "profile": "p", "url": "http://a.test/", "transient": False})
    # Fill the disk, so the next append finds no free page.
    filler = small_tmpfs / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass
    long_url = "http://a.test/" + "x" * 8000

    with pytest.raises(OSError) as raised:
        journal.record({"type": "image", "url": long_url, "transient": False, "outcome": {}})
    journal.close()

    assert raised.value.errno == 28  # ENOSPC
    lines = (small_tmpfs / "journal.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["header", "page"]


def test_model_write_on_full_disk_keeps_old_model(small_tmpfs: Path) -> None:
    from dermcan.atomic_io import DiskFullError, write_torch

    path = small_tmpfs / "models" / "model.pt"
    write_torch(path, {"state_dict": {"weight": torch.zeros(4)}})
    old = path.read_bytes()

    with pytest.raises(DiskFullError) as raised:
        write_torch(path, {"state_dict": {"weight": torch.zeros(1 << 20)}})

    assert "model.pt" in str(raised.value)
    assert "free space" in str(raised.value)
    assert path.read_bytes() == old
    assert sorted(entry.name for entry in path.parent.iterdir()) == ["model.pt"]
