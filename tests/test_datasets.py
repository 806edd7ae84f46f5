"""Training lists, ImageFolder reading and the decoded-image cache."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from classifier_fixtures import write_image_folder, write_training_list
from dermcan import datasets

MEL, NEV = "malignantmelanoma", "melanocyticnevus"


def test_read_training_lists_filters_split(tmp_path):
    write_training_list(tmp_path, tmp_path / "lists/can.csv", [NEV, MEL], per_class=5, val_per_class=2)
    train = datasets.read_training_lists([tmp_path / "lists/can.csv"], "train", root=tmp_path)
    val = datasets.read_training_lists([tmp_path / "lists/can.csv"], "val", root=tmp_path)
    assert len(train) == 6
    assert len(val) == 4
    assert all(path.is_file() for path, _ in train)


def test_read_training_lists_rejects_unknown_label(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("path,label,split,group\nx.jpg,wart,train,g\n")
    with pytest.raises(ValueError, match="line 2: unknown label 'wart'"):
        datasets.read_training_lists([path], "train")


def test_read_training_lists_rejects_missing_columns(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("path,label\nx.jpg,hemangioma\n")
    with pytest.raises(ValueError, match="lacks columns split, group"):
        datasets.read_training_lists([path], "train")


def test_missing_list_names_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="none.csv"):
        datasets.read_training_lists([tmp_path / "none.csv"], "train")


def test_classes_present_in_canonical_order():
    assert datasets.classes_present([NEV, MEL, NEV, "actinickeratosis"]) == ["actinickeratosis", MEL, NEV]


def test_read_image_folder(tmp_path):
    write_image_folder(tmp_path, ["B", "A"], per_class=2)
    (tmp_path / "A" / "notes.txt").write_text("not an image")
    samples = datasets.read_image_folder(tmp_path)
    assert [folder for _, folder in samples] == ["A", "A", "B", "B"]


def test_decode_and_resize_square(tmp_path):
    from PIL import Image

    path = tmp_path / "wide.png"
    Image.new("RGB", (80, 40), (10, 20, 30)).save(path)
    array = datasets.decode_and_resize(path, 24)
    assert array.shape == (24, 24, 3)
    assert array.dtype == np.uint8
    assert tuple(array[12, 12]) == (10, 20, 30)


def test_disk_cache_reused_and_invalidated(tmp_path):
    (path,) = write_image_folder(tmp_path / "images", [MEL], per_class=1)
    first = datasets.ImageCache(36, tmp_path / "cache")
    array = first.get(path)
    second = datasets.ImageCache(36, tmp_path / "cache")
    assert np.array_equal(second.get(path), array)
    assert second.read_from_disk == 1
    assert second.decoded == 0

    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = datasets.ImageCache(36, tmp_path / "cache")
    third.get(path)
    assert third.decoded == 1


def test_dataset_yields_normalised_tensors(tmp_path):
    paths = write_image_folder(tmp_path, [MEL], per_class=2)
    cache = datasets.ImageCache(datasets.cache_size_for(32, 0.15))
    augmentation = {"crop_scale": [0.6, 1.0], "hflip": True, "vflip": True, "rotation": 10, "color_jitter": 0.2}
    transform = datasets.train_transform(32, augmentation, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    dataset = datasets.ImageDataset([(p, 0) for p in paths], transform, cache)
    image, target = dataset[1]
    assert image.shape == (3, 32, 32)
    assert image.dtype == torch.float32
    assert target == 0
