"""The training loop: options, schedules, sampling, and the train stage alone and under torchrun."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from classifier_fixtures import write_image_folder, write_training_list
from dermcan import datasets, models, training, training_checkpoints

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["basalcellcarcinoma", "malignantmelanoma", "melanocyticnevus"]


def test_unknown_optimizer_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown optimizer 'adam'; valid values are: adamw, radam, sgd"):
        training.make_optimizer("adam", iter([torch.nn.Parameter(torch.zeros(1))]), lr=0.1, weight_decay=0.0)


@pytest.mark.parametrize("name", ["AdamW", "radam", "sgd"])
def test_optimizer_names(name):
    optimizer = training.make_optimizer(name, iter([torch.nn.Parameter(torch.zeros(1))]), lr=0.1, weight_decay=0.0)
    assert optimizer.param_groups[0]["lr"] == 0.1


def test_config_rejects_unknown_choices():
    with pytest.raises(ValueError, match="valid values are: cosine, step, none"):
        training.TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="unknown model 'mobilenet'"):
        training.TrainConfig(arch="mobilenet")


def test_lr_factor_warmup_and_cosine():
    kwargs = dict(schedule="cosine", total_steps=10, warmup_steps=2, step_size_steps=1, gamma=0.1)
    assert training.lr_factor(0, **kwargs) == pytest.approx(1 / 3)
    assert training.lr_factor(2, **kwargs) == pytest.approx(1.0)
    assert training.lr_factor(6, **kwargs) == pytest.approx(0.5)
    assert training.lr_factor(10, **kwargs) == pytest.approx(0.0)


def test_lr_factor_step():
    kwargs = dict(schedule="step", total_steps=100, warmup_steps=0, step_size_steps=10, gamma=0.1)
    assert training.lr_factor(9, **kwargs) == pytest.approx(1.0)
    assert training.lr_factor(25, **kwargs) == pytest.approx(0.01)


def test_inverse_frequency_weights():
    weights = training.inverse_frequency_weights([0, 0, 0, 1], 3)
    assert weights[0] == pytest.approx(4 / 6)
    assert weights[1] == pytest.approx(2.0)
    assert weights[2] == 0.0


def test_balanced_sampler_splits_ranks():
    weights = [1.0] * 10
    ranks = [training.BalancedDistributedSampler(weights, rank=r, world_size=2, seed=3) for r in (0, 1)]
    single = training.BalancedDistributedSampler(weights, seed=3)
    assert len(ranks[0]) == 5
    assert sorted(list(ranks[0]) + list(ranks[1])) == sorted(single)


def test_balanced_sampler_balances_classes():
    weights = training.inverse_frequency_weights([0] * 90 + [1] * 10, 2)
    sampler = training.BalancedDistributedSampler([weights[0]] * 90 + [weights[1]] * 10, seed=0)
    drawn = np.array(list(sampler))
    minority_fraction = (drawn >= 90).mean()
    assert 0.35 < minority_fraction < 0.65


def test_train_classifier_in_process(tmp_path):
    write_training_list(tmp_path, tmp_path / "can.csv", CLASSES[:2], per_class=6, val_per_class=2)
    train = datasets.read_training_lists([tmp_path / "can.csv"], "train", root=tmp_path)
    val = datasets.read_training_lists([tmp_path / "can.csv"], "val", root=tmp_path)
    config = training.TrainConfig(input_size=32, epochs=2, batch_size=4, balance="loss", select="last")
    records = []
    result = training.train_classifier(config, train, val, on_epoch_end=records.append)
    assert result.classes == CLASSES[:2]
    assert result.steps_per_epoch == 2
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[0]["val_accuracy"] is not None
    assert result.selected_epoch == 2


def test_deterministic_mode_repeats_weights(tmp_path):
    write_training_list(tmp_path, tmp_path / "can.csv", CLASSES[:2], per_class=5, val_per_class=1)
    train = datasets.read_training_lists([tmp_path / "can.csv"], "train", root=tmp_path)
    augmentation = {"crop_scale": [0.6, 1.0], "hflip": True, "rotation": 10, "color_jitter": 0.2}
    config = training.TrainConfig(input_size=32, epochs=1, batch_size=4, augmentation=augmentation, deterministic=True)
    try:
        first = training.train_classifier(config, train, []).model.state_dict()
        second = training.train_classifier(config, train, []).model.state_dict()
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_training_needs_two_classes(tmp_path):
    write_training_list(tmp_path, tmp_path / "can.csv", CLASSES[:1], per_class=3, val_per_class=1)
    train = datasets.read_training_lists([tmp_path / "can.csv"], "train", root=tmp_path)
    with pytest.raises(ValueError, match="at least 2 classes"):
        training.train_classifier(training.TrainConfig(input_size=32, epochs=1), train, [])


# Stage runs: a tiny repository with 24 training images (8 per class) and 6 validation images.
TRAIN_PER_CLASS, VAL_PER_CLASS, BATCH = 8, 2, 4


def _write_repo(repo: Path, batch_size: int) -> None:
    write_training_list(repo, repo / "data/split/can.csv", CLASSES, per_class=TRAIN_PER_CLASS + VAL_PER_CLASS, val_per_class=VAL_PER_CLASS)
    params = {
        "train": {
            "seed": 0,
            "sets": {"can": {"train": ["data/split/can.csv"], "val": ["data/split/can.csv"]}},
            "model": {"arch": "mobilenet_v3_small", "weights": None, "input_size": 32},
            "epochs": 1,
            "batch_size": batch_size,
            "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.05},
            "schedule": {"name": "cosine", "warmup_epochs": 0},
            "augmentation": {"crop_scale": [0.6, 1.0], "hflip": True},
            "cache": {"margin": 0.15, "dir": ".cache/images"},
            "device": "cpu",
        }
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params))


def _environment() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"), DVCLIVE_OPEN="0", DVC_NO_ANALYTICS="1")


@pytest.fixture(scope="module")
def single_process_repo(tmp_path_factory):
    """A train stage run in one process with twice the per-process batch of the torchrun test."""
    repo = tmp_path_factory.mktemp("single")
    _write_repo(repo, batch_size=2 * BATCH)
    completed = subprocess.run(
        [sys.executable, str(REPO / "src/stages/train.py"), "can"], cwd=repo, env=_environment(),
        capture_output=True, text=True, timeout=180,
    )
    assert completed.returncode == 0, completed.stderr
    return repo


def test_train_stage_model_predicts_alone(single_process_repo, tmp_path):
    model, metadata = models.load_classifier(single_process_repo / "models/can/model.pt")
    assert metadata["classes"] == CLASSES
    assert metadata["train_set"] == "can"
    # Predict from the model file alone: no params.yaml in this folder.
    images = write_image_folder(tmp_path, ["x"], per_class=2, seed=9)
    transform = datasets.eval_transform(metadata["input_size"], metadata["mean"], metadata["std"])
    batch = torch.stack([transform(torch.from_numpy(datasets.decode_and_resize(p, 36)).permute(2, 0, 1)) for p in images])
    with torch.no_grad():
        probabilities = torch.softmax(model(batch), dim=1)
    assert probabilities.shape == (2, 3)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(2))


def test_train_stage_writes_dvclive_log(single_process_repo):
    log_dir = single_process_repo / "metrics/train/can"
    assert (log_dir / "metrics.json").is_file()
    assert (log_dir / "plots/metrics/train/loss.tsv").is_file()
    assert (log_dir / "plots/metrics/val/macro_auroc.tsv").is_file()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_two_processes_match_steps(single_process_repo, tmp_path):
    _write_repo(tmp_path, batch_size=BATCH)
    torchrun = Path(sys.executable).with_name("torchrun")
    completed = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", str(REPO / "src/stages/train.py"), "can"],
        cwd=tmp_path, env=_environment(), capture_output=True, text=True, timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    _, ddp = models.load_classifier(tmp_path / "models/can/model.pt")
    _, single = models.load_classifier(single_process_repo / "models/can/model.pt")
    assert ddp["world_size"] == 2
    assert single["world_size"] == 1
    assert ddp["steps_per_epoch"] == single["steps_per_epoch"]
    assert ddp["steps_per_epoch"] == math.ceil(len(CLASSES) * TRAIN_PER_CLASS / (2 * BATCH))


def test_checkpoint_resumes_only_matching_run(tmp_path, caplog):
    write_training_list(tmp_path, tmp_path / "can.csv", CLASSES[:2], per_class=5, val_per_class=1)
    train = datasets.read_training_lists([tmp_path / "can.csv"], "train", root=tmp_path)
    val = datasets.read_training_lists([tmp_path / "can.csv"], "val", root=tmp_path)
    checkpoint = tmp_path / "state" / "checkpoint.pt"
    config = training.TrainConfig(input_size=32, epochs=1, batch_size=4, num_workers=0)
    caplog.set_level(logging.INFO)
    first = training.train_classifier(config, train, val, checkpoint_path=checkpoint)
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["epoch"] == 1
    assert saved["dvclive_step"] == 1
    assert "resuming from" not in caplog.text

    # Same data and settings: the epoch is restored from the checkpoint, not trained again.
    caplog.clear()
    replayed = []
    again = training.train_classifier(config, train, val, checkpoint_path=checkpoint, on_epoch_end=replayed.append)
    assert "resuming from" in caplog.text
    assert replayed == first.history
    for key, tensor in first.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[key], tensor), key

    # Other settings (a second epoch changes the LR schedule): training starts at epoch 1.
    caplog.clear()
    longer = []
    training.train_classifier(dataclasses.replace(config, epochs=2), train, val, checkpoint_path=checkpoint, on_epoch_end=longer.append)
    assert "other data, settings or training code" in caplog.text
    assert [record["epoch"] for record in longer] == [1, 2]
    assert longer[0] != first.history[0]

    # resume false ignores a checkpoint that matches.
    caplog.clear()
    restarted = []
    training.train_classifier(dataclasses.replace(config, epochs=2, resume=False), train, val, checkpoint_path=checkpoint, on_epoch_end=restarted.append)
    assert "train.resume is false" in caplog.text
    assert "resuming from" not in caplog.text
    assert [record["epoch"] for record in restarted] == [1, 2]


def test_unreadable_checkpoint_restarts(tmp_path):
    write_training_list(tmp_path, tmp_path / "can.csv", CLASSES[:2], per_class=4, val_per_class=1)
    train = datasets.read_training_lists([tmp_path / "can.csv"], "train", root=tmp_path)
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(b"PK\x03\x04 cut short")
    records = []
    config = training.TrainConfig(input_size=32, epochs=1, batch_size=4, num_workers=0)
    training.train_classifier(config, train, [], checkpoint_path=checkpoint, on_epoch_end=records.append)
    assert [record["epoch"] for record in records] == [1]
    assert torch.load(checkpoint, weights_only=False)["epoch"] == 1


def test_checkpoint_from_other_code_restarts(tmp_path, caplog, monkeypatch):
    write_training_list(tmp_path, tmp_path / "can.csv", CLASSES[:2], per_class=4, val_per_class=1)
    train = datasets.read_training_lists([tmp_path / "can.csv"], "train", root=tmp_path)
    val = datasets.read_training_lists([tmp_path / "can.csv"], "val", root=tmp_path)
    checkpoint = tmp_path / "checkpoint.pt"
    config = training.TrainConfig(input_size=32, epochs=1, batch_size=4, num_workers=0)
    training.train_classifier(config, train, val, checkpoint_path=checkpoint)
    edited = tmp_path / "training.py"
    edited.write_text((REPO / "src/dermcan/training.py").read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
    sources = training_checkpoints._training_sources()
    monkeypatch.setattr(training_checkpoints, "_training_sources", lambda: [edited, *sources[1:]])
    caplog.set_level(logging.INFO)

    records = []
    training.train_classifier(config, train, val, checkpoint_path=checkpoint, on_epoch_end=records.append)

    assert "other data, settings or training code" in caplog.text
    assert "resuming from" not in caplog.text
    assert [record["epoch"] for record in records] == [1]
