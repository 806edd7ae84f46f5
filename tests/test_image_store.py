"""Image verification, metadata stripping, content-addressed storage and near-duplicate groups."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageCms

from dermcan.image_store import (
    ImageRejected,
    ImageStore,
    decode_image,
    group_near_duplicates,
    hamming_distance,
    publish_images,
)


def _jpeg(image: Image.Image, **save_options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, **save_options)
    return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _textured(seed: int, size: tuple[int, int] = (96, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(8, 12, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BILINEAR)


def _flat_png(width: int, height: int) -> bytes:
    """A grey PNG of any size in a few hundred bytes: the shape of a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\x80" * width
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images", max_pixels=1_000_000, jpeg_quality=90)


def test_store_writes_content_addressed_jpeg(store: ImageStore) -> None:
    data = _png(_textured(1))
    stored = store.store(data)
    expected_sha = hashlib.sha256(data).hexdigest()
    assert stored.sha256 == expected_sha
    path = store.root / expected_sha[:2] / f"{expected_sha}.jpg"
    assert path.is_file()
    with Image.open(path) as written:
        assert written.format == "JPEG"
        assert written.mode == "RGB"
        assert written.size == (96, 64)
    assert (stored.width, stored.height, stored.bytes) == (96, 64, len(data))
    assert len(stored.phash) == 16


def test_same_bytes_stored_once(store: ImageStore) -> None:
    data = _jpeg(_textured(2))
    first = store.store(data)
    path = store.path_for(first.sha256)
    modified = path.stat().st_mtime_ns
    second = store.store(data)
    assert second == first
    assert path.stat().st_mtime_ns == modified
    assert len(list(store.root.rglob("*.jpg"))) == 1


def test_exif_gps_and_icc_removed(store: ImageStore) -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # stored sideways: rotate 90 degrees clockwise to view
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (37.0, 33.0, 59.0)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = _jpeg(_textured(3, size=(80, 40)), exif=exif, icc_profile=srgb, comment=b"patient 17")
    with Image.open(io.BytesIO(data)) as original:
        assert original.getexif().get_ifd(ExifTags.IFD.GPSInfo)  # the input really has GPS

    stored = store.store(data)
    with Image.open(store.path_for(stored.sha256)) as written:
        assert written.getexif().get_ifd(ExifTags.IFD.GPSInfo) == {}
        assert len(written.getexif()) == 0
        assert "exif" not in written.info
        assert "icc_profile" not in written.info
        assert "comment" not in written.info
        assert written.size == (40, 80)  # rotated upright from the EXIF orientation
    assert (stored.width, stored.height) == (40, 80)
    assert b"patient 17" not in store.path_for(stored.sha256).read_bytes()


def test_transparent_png_flattened_on_white(store: ImageStore) -> None:
    image = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    stored = store.store(_png(image))
    with Image.open(store.path_for(stored.sha256)) as written:
        red, green, blue = written.convert("RGB").getpixel((16, 16))
    assert min(red, green, blue) > 240


def test_html_bytes_not_an_image(store: ImageStore) -> None:
    with pytest.raises(ImageRejected) as rejected:
        store.store(b"<!DOCTYPE html><html><body>Please log in</body></html>")
    assert rejected.value.status == "not_an_image"
    assert "HTML" in rejected.value.reason
    assert not store.root.exists() or not list(store.root.rglob("*.jpg"))


def test_truncated_jpeg_corrupt(store: ImageStore) -> None:
    data = _jpeg(_textured(4, size=(200, 150)))
    with pytest.raises(ImageRejected) as rejected:
        store.store(data[: len(data) // 2])
    assert rejected.value.status == "corrupt"


def test_decompression_bomb_too_large(store: ImageStore) -> None:
    # 1500 x 1000 = 1.5 megapixels, above the 1 megapixel limit but below Pillow's own error at 2x.
    with pytest.raises(ImageRejected) as rejected:
        store.store(_flat_png(1500, 1000))
    assert rejected.value.status == "too_large"
    assert "1500000 pixels" in rejected.value.reason


def test_far_over_limit_bomb_names_pixels(store: ImageStore) -> None:
    # Above twice the limit Pillow itself raises while reading the header.
    with pytest.raises(ImageRejected) as rejected:
        store.store(_flat_png(3000, 3000))
    assert rejected.value.status == "too_large"
    assert "9000000 pixels" in rejected.value.reason
    assert Image.MAX_IMAGE_PIXELS == 1_000_000


def test_image_within_pixel_limit_decodes() -> None:
    image = decode_image(_flat_png(1000, 1000), max_pixels=1_000_000)
    assert image.size == (1000, 1000)


def test_near_duplicates_grouped_by_first_member() -> None:
    items = [
        ("a" * 64, "ffffffffffffffff"),
        ("b" * 64, "0000000000000000"),
        ("c" * 64, "fffffffffffffff0"),  # 4 bits from a
        ("d" * 64, "ffffffffffffff00"),  # 4 bits from c, 8 from a: joins through c
    ]
    groups = group_near_duplicates(items, max_distance=4)
    assert groups["a" * 64] == "a" * 64
    assert groups["c" * 64] == "a" * 64
    assert groups["d" * 64] == "a" * 64
    assert groups["b" * 64] == "b" * 64


def test_group_id_follows_item_order() -> None:
    items = [("a" * 64, "ffffffffffffffff"), ("c" * 64, "fffffffffffffff0")]
    assert group_near_duplicates(items[::-1], max_distance=4) == {"a" * 64: "c" * 64, "c" * 64: "c" * 64}
    assert group_near_duplicates(items, max_distance=3) == {"a" * 64: "a" * 64, "c" * 64: "c" * 64}


def test_resized_copy_has_close_phash(store: ImageStore) -> None:
    original = _textured(5, size=(192, 128))
    first = store.store(_jpeg(original))
    resized = store.store(_jpeg(original.resize((120, 80))))
    other = store.store(_jpeg(_textured(6, size=(192, 128))))
    assert hamming_distance(first.phash, resized.phash) <= 6
    assert hamming_distance(first.phash, other.phash) > 10


def test_publish_images_replaces_tree(store: ImageStore, tmp_path: Path) -> None:
    kept = store.store(_jpeg(_textured(7)))
    dropped = store.store(_jpeg(_textured(8)))
    destination = tmp_path / "published"
    publish_images(store, [kept.sha256, dropped.sha256], destination)
    assert len(list(destination.rglob("*.jpg"))) == 2

    count = publish_images(store, [kept.sha256], destination)
    assert count == 1
    published = sorted(path.name for path in destination.rglob("*.jpg"))
    assert published == [f"{kept.sha256}.jpg"]
    assert (destination / kept.sha256[:2] / f"{kept.sha256}.jpg").read_bytes() == store.path_for(kept.sha256).read_bytes()
    assert not list(tmp_path.glob(".published.*"))
