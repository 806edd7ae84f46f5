"""Bad and unusual image inputs: each gets a manifest status and reason, or an upright RGB copy.

Every input is generated here. The same table of cases runs through :class:`ImageStore`
directly, through a crawl of a loopback site that lists them all, and through folder ingest.
The store uses the repository's ``crawl.min_image_side`` and ``crawl.max_aspect_ratio``.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from crawl_sites import ORIGIN, REPO, crawl_params, figure, page
from dermcan.crawling import CrawlConfig, Crawler, open_journal
from dermcan.demo_web import generate_site
from dermcan.folder_ingest import ingest_entries, list_image_folder
from dermcan.image_store import ImageRejected, ImageStore, StoredImage
from dermcan.loopback_server import serve_site
from dermcan.params import load_params

CRAWL_PARAMS = load_params("crawl", REPO / "params.yaml")
MIN_SIDE = int(CRAWL_PARAMS["min_image_side"])
MAX_ASPECT_RATIO = float(CRAWL_PARAMS["max_aspect_ratio"])
MAX_PIXELS = 500_000  # the same as crawl_sites.crawl_params, so direct and crawled cases agree
JPEG_QUALITY = 95

PHOTO_SIZE = (120, 90)  # width, height; not square, so a 90-degree turn changes the shape
MARKER = (slice(8, 30), slice(8, 48))  # rows, columns of a red block near the top left corner
ORIENTATION_TAG = 0x0112


# -- generated inputs ------------------------------------------------------------------------


def upright_pixels(width: int = PHOTO_SIZE[0], height: int = PHOTO_SIZE[1]) -> np.ndarray:
    """Return an RGB array with no symmetry: red rises to the right, green downwards, a red block."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack(
        [40 + x * 180 // max(width - 1, 1), 30 + y * 200 // max(height - 1, 1), np.full_like(x, 90)],
        axis=-1,
    ).astype(np.uint8)
    pixels[MARKER] = (230, 20, 20)
    return pixels


def encode(image: Image.Image, image_format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_from_chunks(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def png_rgb_16_bit(pixels: np.ndarray) -> bytes:
    """Return a 16-bit-per-sample RGB PNG (colour type 2) of 8-bit ``pixels`` scaled by 257."""
    wide = pixels.astype(">u2") * 257
    rows = b"".join(b"\x00" + wide[row].tobytes() for row in range(wide.shape[0]))
    return png_from_chunks(wide.shape[1], wide.shape[0], 16, 2, zlib.compress(rows))


def grey_16_bit() -> np.ndarray:
    return np.tile(np.linspace(0, 65535, PHOTO_SIZE[0]).astype(np.uint16), (PHOTO_SIZE[1], 1))


def flip_crc(png: bytes, chunk_type: bytes) -> bytes:
    """Return ``png`` with the CRC of its first ``chunk_type`` chunk inverted in one byte."""
    start = png.index(chunk_type)
    (length,) = struct.unpack(">I", png[start - 4 : start])
    crc_at = start + 4 + length
    return png[:crc_at] + bytes([png[crc_at] ^ 0xFF]) + png[crc_at + 1 :]


def png_bomb() -> bytes:
    """Return a PNG of 100000 x 100000 declared pixels in under 100 bytes."""
    return png_from_chunks(100_000, 100_000, 8, 0, zlib.compress(b""))


def gif_with_size(width: int, height: int) -> bytes:
    """Return a GIF whose screen and one image are ``width`` x ``height``, with almost no data."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    image = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return screen + image + b";"


def jpeg_with_size(width: int, height: int) -> bytes:
    """Return a small JPEG whose SOF0 header declares ``width`` x ``height``."""
    data = bytearray(encode(Image.fromarray(upright_pixels(16, 16)), "JPEG", quality=80))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def palette_image() -> tuple[Image.Image, np.ndarray]:
    """Return a four-colour palette image and the RGB pixels it shows."""
    colours = np.array([[200, 40, 40], [40, 160, 60], [30, 60, 200], [220, 200, 80]], dtype=np.uint8)
    y, x = np.mgrid[0 : PHOTO_SIZE[1], 0 : PHOTO_SIZE[0]]
    indices = ((x // 30) + 2 * (y // 45)) % 4
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette(colours.flatten().tolist())
    return image, colours[indices]


def with_alpha_bands(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``pixels`` with alpha 0 in columns 0-29 and 128 in 30-59, and the flattened result."""
    alpha = np.full(pixels.shape[:2], 255, dtype=np.uint8)
    alpha[:, :30] = 0
    alpha[:, 30:60] = 128
    rgba = np.dstack([pixels, alpha])
    weight = alpha[..., None] / 255.0
    flattened = np.rint(pixels * weight + 255 * (1 - weight)).astype(np.uint8)
    return rgba, flattened


def animated_gif() -> bytes:
    frames = [Image.new("RGB", PHOTO_SIZE, colour) for colour in ((220, 30, 30), (30, 200, 30), (30, 30, 220))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def rgba_png() -> bytes:
    rgba, _ = with_alpha_bands(upright_pixels())
    return encode(Image.fromarray(rgba, mode="RGBA"), "PNG")


def la_png() -> bytes:
    grey = np.asarray(Image.fromarray(upright_pixels()).convert("L"))
    alpha = np.full(grey.shape, 255, dtype=np.uint8)
    alpha[:, :30] = 0
    return encode(Image.fromarray(np.dstack([grey, alpha]), mode="LA"), "PNG")


def la_expected() -> np.ndarray:
    grey = np.asarray(Image.fromarray(upright_pixels()).convert("L")).copy()
    grey[:, :30] = 255
    return np.repeat(grey[..., None], 3, axis=-1)


# How EXIF orientation N (tag 0x0112) lays out the upright picture in the stored pixels, given as
# where the stored row 0 and column 0 lie in the upright picture. The store must undo it.
EXIF_LAYOUTS: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda upright: upright,  # row 0 top, column 0 left
    2: lambda upright: upright[:, ::-1],  # row 0 top, column 0 right
    3: lambda upright: upright[::-1, ::-1],  # row 0 bottom, column 0 right
    4: lambda upright: upright[::-1],  # row 0 bottom, column 0 left
    5: lambda upright: upright.transpose(1, 0, 2),  # row 0 left, column 0 top
    6: lambda upright: np.rot90(upright, 1),  # row 0 right, column 0 top
    7: lambda upright: np.rot90(upright, 1)[:, ::-1],  # row 0 right, column 0 bottom
    8: lambda upright: np.rot90(upright, -1),  # row 0 left, column 0 bottom
}


def oriented_jpeg(orientation: int) -> bytes:
    layout = np.ascontiguousarray(EXIF_LAYOUTS[orientation](upright_pixels()))
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    return encode(Image.fromarray(layout), "JPEG", quality=JPEG_QUALITY, exif=exif)


@dataclass(frozen=True)
class InputCase:
    """One generated input and the outcome every ingest path must give it."""

    name: str
    suffix: str  # file name extension on the loopback site and in the folder
    make: Callable[[], bytes]
    status: str  # "downloaded" or a rejection status
    reason_parts: tuple[str, ...] = ()  # substrings the reason must contain
    expected: Callable[[], np.ndarray] | None = None  # stored RGB pixels, for stored cases
    tolerance: float = 4.0  # mean absolute difference allowed against ``expected``
    content_type: str | None = None  # served instead of the guessed type


def _truncated_jpeg() -> bytes:
    data = encode(Image.fromarray(upright_pixels(400, 300)), "JPEG", quality=90)
    return data[: len(data) // 2]


REJECTED_CASES: tuple[InputCase, ...] = (
    InputCase("truncated-jpeg", "jpg", _truncated_jpeg, "corrupt", ("JPEG", "truncated")),
    InputCase(
        "png-bad-idat-crc", "png", lambda: flip_crc(encode(Image.fromarray(upright_pixels()), "PNG"), b"IDAT"),
        "corrupt", ("PNG", "checksum", "IDAT"),
    ),
    InputCase(
        "png-bad-ihdr-crc", "png", lambda: flip_crc(encode(Image.fromarray(upright_pixels()), "PNG"), b"IHDR"),
        "corrupt", ("PNG signature", "checksum", "IHDR"),
    ),
    InputCase("zero-bytes", "jpg", lambda: b"", "not_an_image", ("empty", "0 bytes"), content_type="image/jpeg"),
    InputCase(
        "html-as-jpeg", "jpg", lambda: b"<!DOCTYPE html><html><body>Sign in to view</body></html>",
        "not_an_image", ("HTML document",), content_type="image/jpeg",
    ),
    InputCase(
        "json-as-jpeg", "jpg", lambda: json.dumps({"error": "image not found", "code": 404}).encode(),
        "not_an_image", ("JSON document",), content_type="image/jpeg",
    ),
    InputCase("png-bomb", "png", png_bomb, "too_large", ("decompression bomb", "10000000000 pixels")),
    InputCase("gif-bomb", "gif", lambda: gif_with_size(65535, 65535), "too_large", ("decompression bomb",)),
    InputCase("jpeg-bomb", "jpg", lambda: jpeg_with_size(65000, 65000), "too_large", ("decompression bomb",)),
    InputCase(
        "small-icon", "png", lambda: encode(Image.fromarray(upright_pixels(48, 48)), "PNG"),
        "too_small", ("48x48", f"minimum of {MIN_SIDE}"),
    ),
    InputCase(
        "one-pixel-strip", "png", lambda: encode(Image.new("RGB", (400, 1), (200, 100, 50)), "PNG"),
        "too_small", ("400x1", "shorter side of 1"),
    ),
    InputCase(
        "banner", "jpg", lambda: encode(Image.fromarray(upright_pixels(768, 144)), "JPEG"),
        "bad_aspect_ratio", ("768x144", "5.33", f"{MAX_ASPECT_RATIO:g}"),
    ),
    InputCase(
        "tall-strip", "png", lambda: encode(Image.fromarray(upright_pixels(70, 400)), "PNG"),
        "bad_aspect_ratio", ("70x400", "5.71"),
    ),
)

STORED_CASES: tuple[InputCase, ...] = (
    InputCase(
        "cmyk-jpeg", "jpg", lambda: encode(Image.fromarray(upright_pixels()).convert("CMYK"), "JPEG", quality=95),
        "downloaded", expected=upright_pixels,
    ),
    InputCase(
        "grey-16-bit-png", "png", lambda: encode(Image.fromarray(grey_16_bit()), "PNG"), "downloaded",
        expected=lambda: np.repeat((grey_16_bit() >> 8).astype(np.uint8)[..., None], 3, axis=-1),
    ),
    InputCase(
        "rgb-16-bit-png", "png", lambda: png_rgb_16_bit(upright_pixels()), "downloaded", expected=upright_pixels,
    ),
    InputCase(
        "palette-png", "png", lambda: encode(palette_image()[0], "PNG"), "downloaded",
        expected=lambda: palette_image()[1],
    ),
    InputCase(
        "palette-png-transparent", "png", lambda: encode(palette_image()[0], "PNG", transparency=0),
        "downloaded",
        expected=lambda: np.where(
            (palette_image()[1] == (200, 40, 40)).all(axis=-1, keepdims=True), 255, palette_image()[1]
        ).astype(np.uint8),
    ),
    InputCase("rgba-png", "png", rgba_png, "downloaded", expected=lambda: with_alpha_bands(upright_pixels())[1]),
    InputCase("la-png", "png", la_png, "downloaded", expected=la_expected),
    InputCase(
        "animated-gif", "gif", animated_gif, "downloaded",
        expected=lambda: np.full((PHOTO_SIZE[1], PHOTO_SIZE[0], 3), (220, 30, 30), dtype=np.uint8),
    ),
    InputCase(
        "webp-lossy", "webp", lambda: encode(Image.fromarray(upright_pixels()), "WEBP", quality=90),
        "downloaded", expected=upright_pixels, tolerance=6.0,
    ),
    InputCase(
        "webp-lossless-alpha", "webp",
        lambda: encode(Image.fromarray(with_alpha_bands(upright_pixels())[0], mode="RGBA"), "WEBP", lossless=True),
        "downloaded", expected=lambda: with_alpha_bands(upright_pixels())[1],
    ),
) + tuple(
    InputCase(f"exif-orientation-{n}", "jpg", lambda n=n: oriented_jpeg(n), "downloaded", expected=upright_pixels)
    for n in EXIF_LAYOUTS
)

ALL_CASES = REJECTED_CASES + STORED_CASES


def _case_id(case: InputCase) -> str:
    return case.name


# -- checks ----------------------------------------------------------------------------------


def _store(root: Path) -> ImageStore:
    return ImageStore(
        root, max_pixels=MAX_PIXELS, jpeg_quality=JPEG_QUALITY, min_side=MIN_SIDE, max_aspect_ratio=MAX_ASPECT_RATIO
    )


def _assert_stored_copy(store: ImageStore, stored: StoredImage, case: InputCase) -> None:
    assert case.expected is not None
    expected = case.expected()
    with Image.open(store.path_for(stored.sha256)) as image:
        assert image.format == "JPEG"
        assert image.mode == "RGB"
        assert ORIENTATION_TAG not in image.getexif(), "an orientation tag would turn the copy again"
        pixels = np.asarray(image).astype(np.int16)
    assert (stored.width, stored.height) == (expected.shape[1], expected.shape[0])
    assert pixels.shape == expected.shape
    difference = np.abs(pixels - expected.astype(np.int16)).mean()
    assert difference < case.tolerance, f"{case.name}: mean difference {difference:.2f}"


def _assert_reason(reason: str, case: InputCase) -> None:
    for part in case.reason_parts:
        assert part in reason, f"{case.name}: {part!r} missing from {reason!r}"


@pytest.mark.parametrize("case", REJECTED_CASES, ids=_case_id)
def test_store_rejects_input(tmp_path: Path, case: InputCase) -> None:
    store = _store(tmp_path / "store")
    with pytest.raises(ImageRejected) as raised:
        store.store(case.make())
    assert raised.value.status == case.status, raised.value.reason
    _assert_reason(raised.value.reason, case)
    assert not list(tmp_path.rglob("*.jpg")), "a rejected input must not be stored"


@pytest.mark.parametrize("case", STORED_CASES, ids=_case_id)
def test_store_keeps_upright_rgb(tmp_path: Path, case: InputCase) -> None:
    store = _store(tmp_path / "store")
    stored = store.store(case.make())
    _assert_stored_copy(store, stored, case)


@pytest.mark.parametrize("name", ["png-bomb", "gif-bomb", "jpeg-bomb"])
def test_bombs_are_tiny_files(name: str) -> None:
    case = next(case for case in REJECTED_CASES if case.name == name)
    assert len(case.make()) < 1000


def test_orientation_marker_top_left(tmp_path: Path) -> None:
    store = _store(tmp_path / "store")
    for orientation in EXIF_LAYOUTS:
        stored = store.store(oriented_jpeg(orientation))
        with Image.open(store.path_for(stored.sha256)) as image:
            pixels = np.asarray(image)
        red, green, _ = pixels[MARKER].reshape(-1, 3).mean(axis=0)
        assert red > 200, f"orientation {orientation}: the red block is not at the top left"
        assert green < 60, f"orientation {orientation}: the red block is not at the top left"


def test_animated_gif_has_three_frames() -> None:
    with Image.open(io.BytesIO(animated_gif())) as image:
        assert image.n_frames == 3  # so the first-frame check above means something


def test_grey_16_bit_opens_as_16_bit() -> None:
    with Image.open(io.BytesIO(encode(Image.fromarray(grey_16_bit()), "PNG"))) as image:
        assert image.mode == "I;16"


def test_rgb_16_bit_png_is_16_bit() -> None:
    data = png_rgb_16_bit(upright_pixels())
    bit_depth, colour_type = data[24], data[25]
    assert (bit_depth, colour_type) == (16, 2)


def test_shape_limits_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min_side"):
        ImageStore(tmp_path, max_pixels=100, jpeg_quality=90, min_side=0)
    with pytest.raises(ValueError, match="max_aspect_ratio"):
        ImageStore(tmp_path, max_pixels=100, jpeg_quality=90, max_aspect_ratio=0.5)


def test_crawl_config_wires_shape_limits(tmp_path: Path) -> None:
    config = CrawlConfig.from_params(crawl_params(min_image_side=100, max_aspect_ratio=2.5))
    store = config.open_image_store(tmp_path / "store")
    assert (store.min_side, store.max_aspect_ratio) == (100, 2.5)
    with pytest.raises(ImageRejected) as raised:
        store.store(encode(Image.fromarray(upright_pixels(300, 90)), "JPEG"))
    assert raised.value.status == "too_small"


def test_crawl_config_rejects_bad_limits() -> None:
    with pytest.raises(ValueError, match="crawl.max_aspect_ratio"):
        CrawlConfig.from_params(crawl_params(max_aspect_ratio=0.8))


# -- the same inputs through a crawl of a loopback site and through folder ingest -------------


def _write_input_site(root: Path) -> None:
    figures = []
    content_types = {}
    for index, case in enumerate(ALL_CASES):
        path = f"/img/{case.name}.{case.suffix}"
        (root / "img").mkdir(parents=True, exist_ok=True)
        (root / path.lstrip("/")).write_bytes(case.make())
        figures.append(figure(path, f"Malignant melanoma of the back, case {index}"))
        if case.content_type:
            content_types[path] = case.content_type
    (root / "index.html").write_text(page("Melanoma atlas", "".join(figures)), encoding="utf-8")
    (root / "_routes.json").write_text(json.dumps({"content_types": content_types}), encoding="utf-8")


def test_crawl_gives_each_input_its_outcome(tmp_path: Path) -> None:
    _write_input_site(tmp_path / "site")
    config = CrawlConfig.from_params(crawl_params())
    profiles = [config.profile("test")]
    store = config.open_image_store(tmp_path / "state" / "images")
    journal = open_journal(tmp_path / "state" / "journal.jsonl", config, profiles, store)
    with serve_site(tmp_path / "site") as site:
        try:
            result = Crawler(config, store=store, journal=journal, connect_to={ORIGIN: site.base_url}).crawl(profiles)
        finally:
            journal.close()

    rows = {row["url"].removeprefix(ORIGIN): row for row in result.rows}
    assert set(rows) == {f"/img/{case.name}.{case.suffix}" for case in ALL_CASES}
    for case in ALL_CASES:
        row = rows[f"/img/{case.name}.{case.suffix}"]
        assert row["label"] == "malignantmelanoma", case.name
        assert row["status"] == case.status, f"{case.name}: {row['reason']}"
        _assert_reason(row["reason"], case)
        if case.content_type:
            assert f"served as {case.content_type}" in row["reason"], case.name
        if case.status == "downloaded":
            assert row["reason"] == "", case.name
            stored = StoredImage(row["sha256"], row["phash"], int(row["width"]), int(row["height"]), int(row["bytes"]))
            _assert_stored_copy(store, stored, case)

    oriented = {rows[f"/img/exif-orientation-{n}.jpg"]["dup_group"] for n in EXIF_LAYOUTS}
    assert len(oriented) == 1, "all eight orientations must store the same upright picture"


def test_folder_ingest_gives_each_input_its_outcome(tmp_path: Path) -> None:
    folder = tmp_path / "photos" / "malignantmelanoma"
    folder.mkdir(parents=True)
    for case in ALL_CASES:
        (folder / f"{case.name}.{case.suffix}").write_bytes(case.make())
    store = _store(tmp_path / "store")

    ingest = ingest_entries(
        tmp_path / "photos", list_image_folder(tmp_path / "photos"), store,
        max_bytes=1_000_000, near_duplicate_distance=8,
    )

    rows = {row["url"]: row for row in ingest.rows}
    for case in ALL_CASES:
        row = rows[f"malignantmelanoma/{case.name}.{case.suffix}"]
        assert row["status"] == case.status, f"{case.name}: {row['reason']}"
        _assert_reason(row["reason"], case)


# -- the demo web against the repository's limits -------------------------------------------


@pytest.mark.timeout(180)
def test_demo_web_images_pass_shape_limits(tmp_path: Path) -> None:
    demo = load_params("demo_web", REPO / "params.yaml")
    demo.update(photos_per_class=2, blog_posts=3, oversized_pixels_size=[3000, 2000], oversized_bytes_min=600_000)
    demo["noise"] = {**{key: 1 for key in demo["noise"]}, "off_topic_with_keyword": 5, "off_topic_without_keyword": 0}
    generate_site(tmp_path / "site", tmp_path / "truth.json", demo)
    truth = json.loads((tmp_path / "truth.json").read_text(encoding="utf-8"))
    # The demo's oversized PNG has 6 MP, its photos far less.
    store = ImageStore(
        tmp_path / "store", max_pixels=5_000_000, jpeg_quality=JPEG_QUALITY,
        min_side=MIN_SIDE, max_aspect_ratio=MAX_ASPECT_RATIO,
    )

    outcomes: dict[str, str] = {}
    for path, entry in truth.items():
        file = tmp_path / "site" / path.lstrip("/")
        if not file.is_file():  # 404s, 503s and redirect starts have no file
            continue
        try:
            store.store(file.read_bytes())
            outcomes[path] = "downloaded"
        except ImageRejected as rejected:
            outcomes[path] = rejected.status
        kind = entry["kind"]
        if kind == "off_topic" and entry["off_topic_kind"] == "banner":
            expected = "bad_aspect_ratio"
        elif kind == "oversized" and entry["oversize"] == "pixels":
            expected = "too_large"
        elif kind == "html_as_image":
            expected = "not_an_image"
        elif kind == "truncated":
            expected = "corrupt"
        else:  # the byte limit that rejects an oversize "bytes" JPEG is the fetcher's, not the store's
            expected = "downloaded"
        assert outcomes[path] == expected, f"{path} ({kind})"
    kinds = {truth[path]["kind"] for path in outcomes}
    assert {"lesion", "thumbnail", "off_topic"} <= kinds
