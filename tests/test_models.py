"""Classifier construction, pretrained weights and the saved-model format."""

from __future__ import annotations

import pytest
import torch

from dermcan import models

ARCH = "mobilenet_v3_small"


def test_unknown_architecture_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet9'") as raised:
        models.build_classifier("resnet9", 3)
    assert "resnet18" in str(raised.value)
    assert "efficientnet_b0" in str(raised.value)


def test_missing_weights_file_names_path(tmp_path):
    missing = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        models.build_classifier(ARCH, 3, weights=str(missing))


def test_unknown_weights_name_lists_valid_ones():
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        models.build_classifier(ARCH, 3, weights="IMAGENET_FAKE")


def test_local_state_dict_loads_except_head(tmp_path):
    torch.manual_seed(0)
    source = models.build_classifier(ARCH, 5)
    path = tmp_path / "backbone.pth"
    torch.save(source.state_dict(), path)

    target = models.build_classifier(ARCH, 3, weights=str(path))
    first_conv = "features.0.0.weight"
    head = "classifier.3.weight"
    assert torch.equal(target.state_dict()[first_conv], source.state_dict()[first_conv])
    assert target.state_dict()[head].shape == (3, 1024)


def test_weights_of_other_architecture_rejected(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(models.build_classifier("resnet18", 3).state_dict(), path)
    with pytest.raises(ValueError, match="another architecture"):
        models.build_classifier(ARCH, 3, weights=str(path))


def test_save_and_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = models.build_classifier(ARCH, 3).eval()
    path = tmp_path / "model.pt"
    models.save_classifier(
        path, model, arch=ARCH, classes=["a", "b", "c"], input_size=32,
        mean=models.IMAGENET_MEAN, std=models.IMAGENET_STD, train_set="can",
    )
    loaded, metadata = models.load_classifier(path)
    images = torch.rand(2, 3, 32, 32)
    assert not loaded.training
    assert metadata["classes"] == ["a", "b", "c"]
    assert metadata["input_size"] == 32
    assert "state_dict" not in metadata
    with torch.no_grad():
        assert torch.allclose(loaded(images), model(images))


def test_load_rejects_incomplete_file(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"arch": ARCH}, path)
    with pytest.raises(ValueError, match="not a dermcan model"):
        models.load_classifier(path)


def test_load_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.pt"):
        models.load_classifier(tmp_path / "model.pt")
