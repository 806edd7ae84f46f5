"""Tests of the conditional GAN: training, checkpoint resumption, generation and the stages."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageDraw

from dermcan.gan_generation import generate_images, plot_sample_grid, write_generated_set
from dermcan.gan_models import Discriminator, Generator, channels_per_level, diff_augment
from dermcan.gan_training import (
    CHECKPOINT_NAME,
    GENERATOR_NAME,
    GanConfig,
    load_generator,
    load_training_images,
    mode_seeking_penalty,
    train_gan,
    training_code_digest,
)

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["hemangioma", "melanocyticnevus"]

TINY = {
    "seed": 3,
    "resolution": 16,
    "latent_dim": 8,
    "generator_width": 4,
    "discriminator_width": 4,
    "max_channels": 16,
    "batch_size": 4,
    "iterations": 6,
    "checkpoint_every": 2,
    "log_every": 2,
    "device": "cpu",
}


def write_crops(root: Path, per_class: int = 4) -> list[dict[str, str]]:
    """Write JPEG crops of two classes (red discs, dark squares) of varied sizes; return list rows."""
    rng = np.random.default_rng(0)
    rows = []
    for class_index, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            width, height = (int(v) for v in rng.integers(20, 40, size=2))
            image = Image.new("RGB", (width, height), (220, 180, 160))
            draw = ImageDraw.Draw(image)
            box = (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
            if class_index == 0:
                draw.ellipse(box, fill=(200, 30, 40))
            else:
                draw.rectangle(box, fill=(70, 40, 30))
            path = root / name / f"{i}.jpg"
            image.save(path, quality=90)
            rows.append({"path": str(path), "label": name, "split": "train", "group": f"{name}{i}"})
    return rows


def write_split_list(root: Path, extra_rows: list[dict[str, str]] | None = None) -> None:
    """Write crops under root/data/annotated and list them in root/data/split/can.csv, as the split stage does."""
    rows = write_crops(root / "data" / "annotated")
    for row in rows:
        row["path"] = Path(row["path"]).relative_to(root).as_posix()
    (root / "data" / "split").mkdir(parents=True)
    with open(root / "data" / "split" / "can.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "split", "group"])
        writer.writeheader()
        writer.writerows(rows + list(extra_rows or []))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.Tensor, torch.Tensor]:
    rows = write_crops(tmp_path_factory.mktemp("crops"))
    return load_training_images(rows, CLASSES, 16)


@pytest.fixture(scope="module")
def trained_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_data: tuple[torch.Tensor, torch.Tensor]
) -> Path:
    output = tmp_path_factory.mktemp("gan")
    images, labels = tiny_data
    train_gan(images, labels, classes=CLASSES, config=GanConfig.from_params(TINY), output_dir=output)
    return output


def test_training_images_shape_and_labels(tiny_data: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = tiny_data
    assert images.shape == (8, 3, 16, 16)
    assert images.dtype == torch.uint8
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_training_images_reject_unknown_label(tmp_path: Path) -> None:
    rows = write_crops(tmp_path, per_class=1)
    with pytest.raises(ValueError, match="not one of"):
        load_training_images(rows, CLASSES[:1], 16)


def test_training_images_missing_file_named(tmp_path: Path) -> None:
    rows = [{"path": str(tmp_path / "gone.jpg"), "label": CLASSES[0], "split": "train"}]
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        load_training_images(rows, CLASSES, 16)


def test_training_writes_checkpoint_and_generator(trained_dir: Path) -> None:
    checkpoint = torch.load(trained_dir / CHECKPOINT_NAME, weights_only=False)
    assert checkpoint["step"] == TINY["iterations"]
    assert checkpoint["classes"] == CLASSES
    for key in ("generator", "generator_ema", "discriminator", "generator_optimizer",
                "discriminator_optimizer", "rng_states"):
        assert key in checkpoint
    generator, metadata = load_generator(trained_dir / GENERATOR_NAME)
    assert metadata["step"] == TINY["iterations"]
    assert metadata["classes"] == CLASSES
    assert not generator.training


def test_resumed_run_matches_uninterrupted(
    tmp_path: Path, tiny_data: tuple[torch.Tensor, torch.Tensor], trained_dir: Path
) -> None:
    images, labels = tiny_data
    first = GanConfig.from_params({**TINY, "iterations": 4})
    train_gan(images, labels, classes=CLASSES, config=first, output_dir=tmp_path)
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)["step"] == 4

    train_gan(images, labels, classes=CLASSES, config=GanConfig.from_params(TINY),
              output_dir=tmp_path)
    resumed = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)
    uninterrupted = torch.load(trained_dir / CHECKPOINT_NAME, weights_only=False)
    assert resumed["step"] == TINY["iterations"]
    for network in ("generator", "generator_ema", "discriminator"):
        for name, tensor in uninterrupted[network].items():
            assert torch.equal(resumed[network][name], tensor), f"{network}.{name} differs"


def test_checkpoint_for_other_data_restarts(
    tmp_path: Path, tiny_data: tuple[torch.Tensor, torch.Tensor], trained_dir: Path
) -> None:
    images, labels = tiny_data
    (tmp_path / CHECKPOINT_NAME).write_bytes((trained_dir / CHECKPOINT_NAME).read_bytes())
    config = GanConfig.from_params({**TINY, "iterations": 2})
    summary = train_gan(images.flip(3), labels, classes=CLASSES, config=config,
                        output_dir=tmp_path)
    assert summary["step"] == 2


def test_finished_run_is_not_retrained(
    tiny_data: tuple[torch.Tensor, torch.Tensor], trained_dir: Path
) -> None:
    images, labels = tiny_data
    before = torch.load(trained_dir / CHECKPOINT_NAME, weights_only=False)
    summary = train_gan(images, labels, classes=CLASSES, config=GanConfig.from_params(TINY),
                        output_dir=trained_dir)
    after = torch.load(trained_dir / CHECKPOINT_NAME, weights_only=False)
    assert summary["step"] == TINY["iterations"]
    assert torch.equal(before["generator"]["to_rgb.weight"], after["generator"]["to_rgb.weight"])


def test_changing_class_changes_output(trained_dir: Path) -> None:
    generator, _ = load_generator(trained_dir / GENERATOR_NAME)
    z = torch.randn(1, generator.latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first = generator(z, torch.tensor([0]))
        second = generator(z, torch.tensor([1]))
        again = generator(z, torch.tensor([0]))
    assert torch.equal(first, again)
    assert (first - second).abs().max() > 1e-3


def test_generation_is_plain_generator_output(trained_dir: Path) -> None:
    """Generated images equal the generator's own output for the seeded noise, so no random
    augmentation reaches them."""
    generator, _ = load_generator(trained_dir / GENERATOR_NAME)
    images = generate_images(generator, 1, 5, seed=11, batch_size=2)
    z = torch.randn(5, generator.latent_dim, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        expected = generator(z, torch.ones(5, dtype=torch.long))
    expected = ((expected + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(images, expected)
    assert np.array_equal(images, generate_images(generator, 1, 5, seed=11))


def test_generated_set_pngs_and_index(tmp_path: Path, trained_dir: Path) -> None:
    generator, metadata = load_generator(trained_dir / GENERATOR_NAME)
    (tmp_path / CLASSES[0]).mkdir()
    stale = tmp_path / CLASSES[0] / "00099.png"
    stale.write_bytes(b"old")
    rows = write_generated_set(generator, classes=metadata["classes"], images_per_class=3,
                               seed=0, output_dir=tmp_path)
    assert len(rows) == 6
    assert not stale.exists()
    for name in CLASSES:
        files = sorted((tmp_path / name).glob("*.png"))
        assert [path.name for path in files] == ["00000.png", "00001.png", "00002.png"]
        for path in files:
            with Image.open(path) as image:
                assert image.format == "PNG"
                assert image.mode == "RGB"
                assert image.size == (16, 16)
    assert {row["split"] for row in rows} == {"train"}
    assert len({row["group"] for row in rows}) == 6
    assert [row["label"] for row in rows] == [CLASSES[0]] * 3 + [CLASSES[1]] * 3


def test_sample_grid_written(tmp_path: Path, trained_dir: Path) -> None:
    generator, _ = load_generator(trained_dir / GENERATOR_NAME)
    destination = tmp_path / "plots" / "samples.png"
    plot_sample_grid(generator, classes=CLASSES, columns=4, seed=0, destination=destination)
    with Image.open(destination) as image:
        assert image.format == "PNG"
        assert image.width > image.height


def test_diffaugment_shapes_and_gradient() -> None:
    images = (torch.rand(4, 3, 16, 16) * 2 - 1).requires_grad_(True)
    augmented = diff_augment(images, ["color", "translation", "cutout"],
                             generator=torch.Generator().manual_seed(0))
    augmented.sum().backward()
    assert augmented.shape == images.shape
    assert images.grad is not None
    assert images.grad.abs().sum() > 0


def test_diffaugment_cutout_zeroes_quarter() -> None:
    images = torch.ones(3, 3, 16, 16)
    augmented = diff_augment(images, ["cutout"], generator=torch.Generator().manual_seed(0))
    zero_share = (augmented == 0).float().mean(dim=(1, 2, 3))
    assert torch.allclose(zero_share, torch.full((3,), 0.25))


def test_diffaugment_rejects_unknown_operation() -> None:
    with pytest.raises(ValueError, match="valid ones are"):
        GanConfig.from_params({"diffaugment": ["rotation"]})


def test_mode_seeking_penalty_punishes_collapse() -> None:
    z_a, z_b = torch.zeros(2, 8), torch.ones(2, 8)
    same = torch.zeros(2, 3, 4, 4)
    different = torch.ones(2, 3, 4, 4)
    collapsed = mode_seeking_penalty(same, same, z_a, z_b)
    diverse = mode_seeking_penalty(same, different, z_a, z_b)
    assert collapsed > 1000
    assert diverse == pytest.approx(1.0, rel=1e-3)


def test_training_with_mode_seeking_runs(
    tmp_path: Path, tiny_data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    images, labels = tiny_data
    config = GanConfig.from_params({**TINY, "iterations": 2, "mode_seeking_weight": 1.0})
    summary = train_gan(images, labels, classes=CLASSES, config=config, output_dir=tmp_path)
    assert summary["step"] == 2
    assert np.isfinite(summary["losses"]["generator_loss"])


def test_checkpoint_without_new_setting_restarts(
    tmp_path: Path, tiny_data: tuple[torch.Tensor, torch.Tensor], trained_dir: Path
) -> None:
    images, labels = tiny_data
    checkpoint = torch.load(trained_dir / CHECKPOINT_NAME, weights_only=False)
    del checkpoint["config"]["mode_seeking_weight"]
    torch.save(checkpoint, tmp_path / CHECKPOINT_NAME)
    config = GanConfig.from_params({**TINY, "iterations": 2})
    summary = train_gan(images, labels, classes=CLASSES, config=config, output_dir=tmp_path)
    assert summary["step"] == 2


def test_networks_output_shapes() -> None:
    assert channels_per_level(64, 16, 128) == [128, 128, 64, 32, 16]
    generator = Generator(num_classes=3, resolution=32, latent_dim=8, width=4, max_channels=16)
    discriminator = Discriminator(num_classes=3, resolution=32, width=4, max_channels=16)
    images = generator(torch.randn(2, 8), torch.tensor([0, 2]))
    assert images.shape == (2, 3, 32, 32)
    assert images.abs().max() <= 1
    assert discriminator(images, torch.tensor([0, 2])).shape == (2,)


def test_invalid_resolution_rejected() -> None:
    with pytest.raises(ValueError, match="power of two"):
        GanConfig.from_params({"resolution": 48})


@pytest.mark.slow
def test_stages_run_end_to_end(tmp_path: Path) -> None:
    """gan_train, gan_generate and gan_metrics run as scripts from a repository root."""
    from dermcan.models import build_classifier, save_classifier

    # A validation row whose file is absent: the GAN stages must never read it.
    absent = {"path": "data/annotated/val.jpg", "label": CLASSES[0], "split": "val", "group": "val"}
    write_split_list(tmp_path, extra_rows=[absent])
    torch.manual_seed(0)
    classifier = build_classifier("mobilenet_v3_small", len(CLASSES))
    save_classifier(tmp_path / "models" / "can" / "model.pt", classifier, arch="mobilenet_v3_small",
                    classes=CLASSES, input_size=32, mean=[0.5] * 3, std=[0.25] * 3,
                    train_set="can")
    gan_params = {**TINY, "images_per_class": 4, "grid_columns": 3,
                  "metrics": {"inception_weights": None, "kid_subset_size": 4, "kid_subsets": 5}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"gan": gan_params}), encoding="utf-8")

    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    for stage in ("gan_train", "gan_generate", "gan_metrics"):
        result = subprocess.run([sys.executable, str(REPO / "src" / "stages" / f"{stage}.py")],
                                cwd=tmp_path, env=environment, capture_output=True, text=True)
        assert result.returncode == 0, f"{stage} failed:\n{result.stderr[-3000:]}"

    with open(tmp_path / "data" / "gan" / "index.csv", newline="", encoding="utf-8") as handle:
        index = list(csv.DictReader(handle))
    assert len(index) == 8
    assert all((tmp_path / row["path"]).is_file() for row in index)
    assert (tmp_path / "plots" / "gan" / "samples.png").is_file()
    metrics = yaml.safe_load((tmp_path / "metrics" / "gan.json").read_text(encoding="utf-8"))
    assert metrics["features"] == "can_cnn"
    assert metrics["overall"]["generated_images"] == 8
    assert metrics["overall"]["real_images"] == 8
    assert 0 <= metrics["overall"]["classifier_agreement"] <= 1
    assert set(metrics["per_class"]) == set(CLASSES)
    assert metrics["per_class"][CLASSES[0]]["fid_can_cnn"] >= 0


def test_checkpoint_from_other_code_restarts(
    tmp_path: Path, tiny_data: tuple[torch.Tensor, torch.Tensor], trained_dir: Path
) -> None:
    images, labels = tiny_data
    checkpoint = torch.load(trained_dir / CHECKPOINT_NAME, weights_only=False)
    assert checkpoint["code"] == training_code_digest()
    checkpoint["code"] = "0" * 64  # as written by an earlier version of the training code
    torch.save(checkpoint, tmp_path / CHECKPOINT_NAME)
    config = GanConfig.from_params({**TINY, "iterations": 2})

    summary = train_gan(images, labels, classes=CLASSES, config=config, output_dir=tmp_path)

    assert summary["step"] == 2
