"""Tests of FID, KID, feature extraction and the classifier check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dermcan.image_quality import (
    FeatureExtractor,
    classifier_extractor,
    compare_image_sets,
    frechet_distance,
    inception_extractor,
    kernel_inception_distance,
    load_images,
)
from dermcan.models import build_classifier, load_classifier, save_classifier

CLASSES = ["hemangioma", "melanocyticnevus"]


def colour_images(colour: tuple[int, int, int], count: int, seed: int) -> np.ndarray:
    """Images of one colour with mild per-pixel noise, uint8 (count, 16, 16, 3)."""
    rng = np.random.default_rng(seed)
    base = np.broadcast_to(np.array(colour, dtype=np.float64), (count, 16, 16, 3))
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def noise_images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 16, 16, 3), dtype=np.uint8)


class TinyClassifier(nn.Module):
    """A small CNN with a 16-d penultimate layer, so FID takes milliseconds."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 16), nn.ReLU(),
        )
        self.head = nn.Linear(16, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    torch.manual_seed(0)
    return FeatureExtractor(TinyClassifier(), name="can_cnn", input_size=16, mean=[0.5] * 3,
                            std=[0.25] * 3, classes=CLASSES)


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny torchvision classifier with random weights, saved in the project's model format."""
    torch.manual_seed(0)
    model = build_classifier("mobilenet_v3_small", len(CLASSES))
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_classifier(path, model, arch="mobilenet_v3_small", classes=CLASSES, input_size=32,
                    mean=[0.5] * 3, std=[0.25] * 3, train_set="can")
    return path


def test_fid_of_identical_gaussians_is_zero() -> None:
    features = np.random.default_rng(0).normal(size=(500, 8))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)


def test_fid_matches_closed_form() -> None:
    """For isotropic Gaussians N(0, I) and N(m, 4I) in d dimensions, FID = |m|^2 + d."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(20000, 4))
    b = rng.normal(loc=1.0, scale=2.0, size=(20000, 4))
    assert frechet_distance(a, b) == pytest.approx(4.0 + 4.0, rel=0.05)


@pytest.mark.parametrize("samples", [30, 200])
def test_fid_svd_matches_sqrtm(samples: int) -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=(samples, 40))
    b = rng.normal(loc=0.3, scale=1.5, size=(samples + 7, 40))
    svd = frechet_distance(a, b, method="svd")
    assert svd == pytest.approx(frechet_distance(a, b, method="sqrtm"), rel=1e-4)
    assert svd == pytest.approx(frechet_distance(a, b), rel=1e-9)


def test_fid_rejects_unknown_method() -> None:
    with pytest.raises(ValueError, match="valid ones are"):
        frechet_distance(np.zeros((3, 2)), np.ones((3, 2)), method="eig")


def test_fid_rejects_single_sample() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))


def test_kid_same_distribution_near_zero() -> None:
    rng = np.random.default_rng(3)
    mean, _ = kernel_inception_distance(rng.normal(size=(400, 16)), rng.normal(size=(400, 16)),
                                        subset_size=100, subsets=20)
    assert abs(mean) < 0.01


def test_kid_shifted_distribution_large() -> None:
    rng = np.random.default_rng(4)
    mean, std = kernel_inception_distance(rng.normal(size=(200, 16)),
                                          rng.normal(loc=1.0, size=(200, 16)),
                                          subset_size=50, subsets=10)
    assert mean > 0.5
    assert std >= 0


def test_kid_rejects_dimension_mismatch() -> None:
    with pytest.raises(ValueError, match="dimensions differ"):
        kernel_inception_distance(np.zeros((4, 3)), np.zeros((4, 2)))


def test_saved_classifier_features_are_penultimate(classifier_file: Path) -> None:
    model, metadata = load_classifier(classifier_file)
    extractor = classifier_extractor(model, metadata)
    features, logits = extractor(colour_images((200, 40, 40), 5, 0), batch_size=2)
    assert extractor.name == "can_cnn"
    assert features.shape == (5, 1024)  # the input of mobilenet_v3_small's last Linear layer
    assert logits.shape == (5, len(CLASSES))


def test_extractor_requires_linear_layer() -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match="no nn.Linear"):
        FeatureExtractor(model, name="conv", input_size=16, mean=[0.5] * 3, std=[0.5] * 3)


def test_set_against_itself_scores_near_zero(extractor: FeatureExtractor) -> None:
    images = {CLASSES[0]: colour_images((200, 40, 40), 30, 1),
              CLASSES[1]: colour_images((70, 40, 30), 30, 2)}
    metrics = compare_image_sets(images, images, extractor, kid_subset_size=20, kid_subsets=10)
    overall = metrics["overall"]
    assert overall["fid_can_cnn"] == pytest.approx(0.0, abs=1e-3)
    assert abs(overall["kid_can_cnn"]) < 1e-3
    assert metrics["per_class"][CLASSES[0]]["fid_can_cnn"] == pytest.approx(0.0, abs=1e-3)


def test_noise_scores_far_above_real(extractor: FeatureExtractor) -> None:
    real = {CLASSES[0]: colour_images((200, 40, 40), 30, 1),
            CLASSES[1]: colour_images((70, 40, 30), 30, 2)}
    similar = {CLASSES[0]: colour_images((200, 40, 40), 30, 3),
               CLASSES[1]: colour_images((70, 40, 30), 30, 4)}
    noise = {CLASSES[0]: noise_images(30, 5), CLASSES[1]: noise_images(30, 6)}
    near = compare_image_sets(real, similar, extractor, kid_subset_size=20, kid_subsets=10)
    far = compare_image_sets(real, noise, extractor, kid_subset_size=20, kid_subsets=10)
    assert far["overall"]["fid_can_cnn"] > 10 * near["overall"]["fid_can_cnn"]
    assert far["overall"]["kid_can_cnn"] > 10 * abs(near["overall"]["kid_can_cnn"])


def test_classifier_agreement_counts_argmax(extractor: FeatureExtractor) -> None:
    images = {name: colour_images((200, 40, 40), 6, i) for i, name in enumerate(CLASSES)}
    _, logits = extractor(np.concatenate(list(images.values())))
    predicted = logits.argmax(axis=1)
    metrics = compare_image_sets(images, images, extractor, kid_subset_size=4, kid_subsets=2)
    for index, name in enumerate(CLASSES):
        expected = float(np.mean(predicted[index * 6:(index + 1) * 6] == index))
        assert metrics["per_class"][name]["classifier_agreement"] == pytest.approx(expected)
    assert metrics["overall"]["classifier_agreement"] == pytest.approx(
        float(np.mean(predicted == np.repeat([0, 1], 6))))


def test_class_with_one_image_gets_null(extractor: FeatureExtractor) -> None:
    real = {CLASSES[0]: colour_images((200, 40, 40), 10, 1), CLASSES[1]: colour_images((9, 9, 9), 1, 2)}
    metrics = compare_image_sets(real, real, extractor, kid_subset_size=5, kid_subsets=2)
    assert metrics["per_class"][CLASSES[1]]["fid_can_cnn"] is None
    assert metrics["per_class"][CLASSES[0]]["fid_can_cnn"] is not None


def test_load_images_square_resized(tmp_path: Path) -> None:
    path = tmp_path / "wide.jpg"
    Image.new("RGB", (40, 20), (10, 200, 30)).save(path)
    images = load_images([path], 16)
    assert images.shape == (1, 16, 16, 3)
    assert images.dtype == np.uint8


def test_load_images_missing_file_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.png"):
        load_images([tmp_path / "absent.png"], 16)


def test_inception_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="inception_weights"):
        inception_extractor(tmp_path / "inception.pt")


@pytest.mark.slow
def test_inception_from_local_state_dict(tmp_path: Path) -> None:
    """A randomly initialised Inception v3 saved as a state_dict yields 2048-d pool3 features."""
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    path = tmp_path / "inception.pt"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), path)
    extractor = inception_extractor(path)
    features, _ = extractor(noise_images(2, 0))
    assert extractor.name == "inception"
    assert features.shape == (2, 2048)
