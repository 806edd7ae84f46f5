"""Image verification and content-addressed storage of crawled photographs.

:meth:`ImageStore.store` takes the bytes a server sent and either rejects them with a manifest
status (``not_an_image``, ``corrupt``, ``too_large``, ``too_small``, ``bad_aspect_ratio``) or
stores a clean copy:

* decoded with Pillow, accepting only the raster formats in :data:`ACCEPTED_FORMATS`; bytes
  that start with the signature of one of them but cannot be read are ``corrupt``, and so is
  a PNG with a chunk whose CRC does not match;
* rejected as a decompression bomb when width x height exceeds ``max_pixels`` (Pillow's own
  ``Image.MAX_IMAGE_PIXELS`` is set to the same value), as ``too_small`` when its shorter side
  is under ``min_side`` pixels, and as ``bad_aspect_ratio`` when the longer side is more than
  ``max_aspect_ratio`` times the shorter (banners, strips); all three are decided from the
  header, before the pixels are decoded;
* of an animated GIF or WebP, only the first frame is stored;
* rotated upright from its EXIF orientation, scaled from 16 bits per sample to 8, converted
  to sRGB through an embedded ICC profile, flattened onto white if it has transparency,
  converted to RGB (CMYK without a profile by Pillow's plain formula);
* written as JPEG with no metadata at all: no EXIF (so no GPS position), no ICC profile (the
  pixels are sRGB after the conversion), no XMP, no comment.

The stored file is ``<root>/<sha256[:2]>/<sha256>.jpg`` where sha256 is of the downloaded
bytes, so the same download is stored once. :func:`group_near_duplicates` groups images whose
perceptual hashes (``imagehash.phash``, 64 bits) are within a Hamming distance.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import struct
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from dermcan import atomic_io

log = logging.getLogger(__name__)

# Raster formats seen on web pages (Pillow's JPEG plugin also opens MPO). Everything else is
# rejected before decoding, which keeps out plugins that run external programs (EPS runs
# Ghostscript).
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")

# Image.open(formats=...) raises KeyError for a format whose plugin is not registered yet, and
# Pillow registers TIFF and WEBP only on first need.
Image.init()

_SRGB_PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


class ImageRejected(Exception):
    """Downloaded bytes that are not a usable image; ``status`` is a manifest status."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class StoredImage:
    """A verified image in the store."""

    sha256: str  # of the downloaded bytes
    phash: str  # 16 hex digits
    width: int  # after EXIF rotation
    height: int
    bytes: int  # size of the download


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_image(
    data: bytes, *, max_pixels: int, min_side: int = 1, max_aspect_ratio: float | None = None
) -> Image.Image:
    """Decode ``data`` fully and return the image; raise :class:`ImageRejected` if unusable.

    ``min_side`` (pixels) and ``max_aspect_ratio`` (longer side / shorter side, ``None`` for
    no limit) are checked on the header's size, which EXIF rotation does not change.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        signature = _matching_signature(data)
        if signature is None:
            raise ImageRejected("not_an_image", _describe_non_image(data)) from None
        raise ImageRejected(
            "corrupt",
            f"starts with a {signature} signature but its header cannot be read: "
            f"{_header_error(signature, data)}",
        ) from None
    except Image.DecompressionBombError as error:
        # Pillow checks twice MAX_IMAGE_PIXELS while reading the header; its message has the count.
        found = re.search(r"\((\d+) pixels\)", str(error))
        pixels = found.group(1) if found else "more than twice that many"
        raise ImageRejected(
            "too_large",
            f"decompression bomb: {pixels} pixels exceeds the limit of {max_pixels} pixels",
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageRejected("corrupt", f"cannot read the image header: {error}") from None

    pixels = image.width * image.height
    if pixels > max_pixels:
        raise ImageRejected(
            "too_large",
            f"decompression bomb: {image.width}x{image.height} = {pixels} pixels "
            f"exceeds the limit of {max_pixels} pixels",
        )
    _check_shape(image.width, image.height, min_side=min_side, max_aspect_ratio=max_aspect_ratio)
    if image.format == "PNG":
        _verify_png_checksums(data)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageRejected("corrupt", f"{image.format} data cannot be decoded: {error}") from None
    return image


def _check_shape(width: int, height: int, *, min_side: int, max_aspect_ratio: float | None) -> None:
    shorter, longer = min(width, height), max(width, height)
    if shorter < min_side:
        raise ImageRejected(
            "too_small",
            f"{width}x{height} pixels: the shorter side of {shorter} is under the minimum of "
            f"{min_side} pixels",
        )
    if max_aspect_ratio is not None and longer > max_aspect_ratio * shorter:
        raise ImageRejected(
            "bad_aspect_ratio",
            f"{width}x{height} pixels: aspect ratio {longer / shorter:.2f} exceeds the maximum "
            f"of {max_aspect_ratio:g}",
        )


def _verify_png_checksums(data: bytes) -> None:
    # Pillow checks the CRCs of IDAT and later chunks only in verify(), which needs a fresh
    # image object. A bad CRC means the file was damaged on its way, even where the pixels
    # still decompress.
    try:
        with Image.open(io.BytesIO(data), formats=("PNG",)) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageRejected("corrupt", f"PNG chunk check failed: {error}") from None


def _matching_signature(data: bytes) -> str | None:
    """Return the accepted format whose signature starts ``data``, or None."""
    prefix = data[:16]
    for name in ACCEPTED_FORMATS:
        _, accept = Image.OPEN[name]
        if accept is not None and accept(prefix):
            return name
    return None


def _header_error(format_name: str, data: bytes) -> str:
    # Image.open hides the plugin's own error behind UnidentifiedImageError; calling the
    # plugin directly recovers it.
    factory, _ = Image.OPEN[format_name]
    try:
        factory(io.BytesIO(data), "")
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, struct.error) as error:
        return str(error) or type(error).__name__
    return "Pillow could not identify it"


def _describe_non_image(data: bytes) -> str:
    if not data:
        return "empty body (0 bytes)"
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in head:
        return f"HTML document of {len(data)} bytes, not an image"
    if b"<svg" in head:
        return f"SVG vector image of {len(data)} bytes; only raster formats are accepted"
    if head.startswith((b"{", b"[")) and _is_json(data):
        return f"JSON document of {len(data)} bytes, not an image"
    if head.startswith(b"<?xml"):
        return f"XML document of {len(data)} bytes, not an image"
    return f"{len(data)} bytes in no accepted image format ({', '.join(ACCEPTED_FORMATS)})"


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
        return False
    return True


def normalize_image(image: Image.Image) -> Image.Image:
    """Return an upright sRGB RGB copy of ``image`` with no metadata in ``info``."""
    try:
        upright = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError) as error:
        log.warning("ignoring unreadable EXIF orientation: %s", error)
        upright = image
    if upright is None:  # exif_transpose returns None only with in_place=True
        upright = image
    if upright.mode in _WIDE_GREY_MODES:
        upright = _to_8_bit_grey(upright)

    icc_profile = upright.info.get("icc_profile")
    if icc_profile:
        upright = _to_srgb(upright, icc_profile)

    if upright.mode in ("RGBA", "LA", "PA") or (
        upright.mode == "P" and "transparency" in upright.info
    ):
        rgba = upright.convert("RGBA")
        flattened = Image.new("RGB", rgba.size, (255, 255, 255))
        flattened.paste(rgba, mask=rgba.getchannel("A"))
        rgb = flattened
    else:
        try:
            rgb = upright.convert("RGB")
        except (ValueError, OSError) as error:
            raise ImageRejected(
                "corrupt", f"cannot convert mode {upright.mode} to RGB: {error}"
            ) from None
    rgb.info = {}
    return rgb


# Greyscale modes with more than 8 bits per sample: 16-bit PNG and TIFF open as I;16*, and
# some decoders give 16-bit samples in mode I. Pillow's convert("RGB") clips them at 255 rather
# than scaling them, which turns most of a 16-bit photo white.
_WIDE_GREY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def _to_8_bit_grey(image: Image.Image) -> Image.Image:
    # NOTE: mode I is taken to hold 16-bit samples (0..65535); a 32-bit TIFF with larger values
    # saturates at white.
    samples = np.asarray(image).astype(np.int64)
    scaled = (np.clip(samples, 0, 65535) >> 8).astype(np.uint8)
    converted = Image.fromarray(scaled, mode="L")
    converted.info = dict(image.info)
    return converted


def _to_srgb(image: Image.Image, icc_profile: bytes) -> Image.Image:
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        output_mode = "RGBA" if image.mode in ("RGBA", "LA", "PA") else "RGB"
        if image.mode not in ("RGB", "RGBA", "CMYK", "L"):
            image = image.convert("RGBA" if output_mode == "RGBA" else "RGB")
        converted = ImageCms.profileToProfile(
            image, source, _SRGB_PROFILE, outputMode=output_mode
        )
    except (ImageCms.PyCMSError, OSError, ValueError) as error:
        log.warning("ignoring an ICC profile that cannot be applied: %s", error)
        return image
    return converted if converted is not None else image


def encode_jpeg(image: Image.Image, *, quality: int) -> bytes:
    """Encode an RGB image as baseline JPEG without any metadata segment."""
    buffer = io.BytesIO()
    # info is emptied by normalize_image; Pillow copies "comment" (and in some versions XMP)
    # from info into the file, so clear it again for callers that skip normalize_image.
    image.info = {}
    image.save(buffer, format="JPEG", quality=quality, optimize=False, progressive=False)
    return buffer.getvalue()


class ImageStore:
    """Content-addressed store of verified JPEGs under ``root``; safe to share between threads."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        max_pixels: int,
        jpeg_quality: int,
        min_side: int = 1,
        max_aspect_ratio: float | None = None,
    ) -> None:
        """``min_side`` is in pixels; ``max_aspect_ratio`` (longer / shorter side) None means no limit."""
        if max_pixels <= 0:
            raise ValueError(f"max_pixels must be positive, got {max_pixels}")
        if not 1 <= jpeg_quality <= 95:
            raise ValueError(f"jpeg_quality must be in 1..95, got {jpeg_quality}")
        if min_side < 1:
            raise ValueError(f"min_side must be at least 1 pixel, got {min_side}")
        if max_aspect_ratio is not None and not max_aspect_ratio >= 1.0:
            raise ValueError(f"max_aspect_ratio must be at least 1.0 or None, got {max_aspect_ratio}")
        self.root = Path(root)
        self.max_pixels = max_pixels
        self.jpeg_quality = jpeg_quality
        self.min_side = min_side
        self.max_aspect_ratio = max_aspect_ratio
        # Pillow raises DecompressionBombError above twice this limit while reading the header,
        # and warns above the limit itself. decode_image rejects those images with the pixel
        # count anyway, so the warning is silenced.
        Image.MAX_IMAGE_PIXELS = max_pixels
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}.jpg"

    def store(self, data: bytes) -> StoredImage:
        """Verify ``data`` and store it; raise :class:`ImageRejected` when it is unusable.

        Storing the same bytes again rewrites nothing and returns the same record.
        """
        sha256 = sha256_hex(data)
        decoded = decode_image(
            data,
            max_pixels=self.max_pixels,
            min_side=self.min_side,
            max_aspect_ratio=self.max_aspect_ratio,
        )
        image = normalize_image(decoded)
        phash = str(imagehash.phash(image))
        destination = self.path_for(sha256)
        if not destination.exists():
            atomic_io.write_bytes(destination, encode_jpeg(image, quality=self.jpeg_quality))
        return StoredImage(
            sha256=sha256, phash=phash, width=image.width, height=image.height, bytes=len(data)
        )


def publish_images(store: ImageStore, sha256s: Iterable[str], destination: str | os.PathLike[str]) -> int:
    """Make ``destination`` hold exactly the stored images ``sha256s``, in the store's layout.

    Files are hard links into the store where the file system allows, copies otherwise. The
    new tree is built beside ``destination`` and swapped in, so an interruption leaves the old
    tree or the new one. Returns the number of images published.
    """
    destination = Path(destination)
    building = destination.with_name(f".{destination.name}.building")
    retired = destination.with_name(f".{destination.name}.retired")
    for leftover in (building, retired):
        if leftover.exists():
            shutil.rmtree(leftover)

    count = 0
    try:
        for sha256 in sorted(set(sha256s)):
            source = store.path_for(sha256)
            target = building / sha256[:2] / f"{sha256}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
            count += 1
        building.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        # A copy cut short (a full disk) must not stay behind as a half-written JPEG.
        shutil.rmtree(building, ignore_errors=True)
        if atomic_io.is_disk_full(error):
            raise atomic_io.DiskFullError(building, error) from error
        raise

    if destination.exists():
        destination.rename(retired)
    building.rename(destination)
    if retired.exists():
        shutil.rmtree(retired)
    return count


def hamming_distance(first: str, second: str) -> int:
    return (int(first, 16) ^ int(second, 16)).bit_count()


def group_near_duplicates(items: Sequence[tuple[str, str]], *, max_distance: int) -> dict[str, str]:
    """Group images whose perceptual hashes differ in at most ``max_distance`` bits.

    ``items`` are ``(sha256, phash hex)`` pairs in a fixed order (the manifest's). Groups are
    the connected components of the "within distance" relation (union-find), so a chain of
    close pairs joins images whose own distance is larger. Returns sha256 -> group id, the
    sha256 of the group's first member in ``items``; an image with no near duplicate is its
    own group.
    """
    if max_distance < 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    keys = [sha256 for sha256, _ in items]
    if len(set(keys)) != len(keys):
        raise ValueError("group_near_duplicates needs each sha256 once")
    parent = list(range(len(items)))

    def find(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    hashes = np.array([int(phash, 16) for _, phash in items], dtype=np.uint64)
    for index in range(len(items) - 1):
        distances = np.bitwise_count(hashes[index + 1 :] ^ hashes[index])
        for offset in np.flatnonzero(distances <= max_distance):
            first, second = find(index), find(index + 1 + int(offset))
            if first != second:
                # The root is always the earlier item, so it names the group.
                parent[max(first, second)] = min(first, second)

    return {sha256: keys[find(index)] for index, sha256 in enumerate(keys)}
