"""The demo web: a small static dermatology website with known noise, and its truth file.

``generate_site(site_dir, truth_path, params)`` writes a deterministic website of "atlas" and
"blog" pages that show synthetic clinical photographs of the ten diagnoses
(:mod:`dermcan.synthetic_lesions`), and ``truth_path``, a JSON file that records for every
image URL path what it really is. The crawler starts at ``/index.html``. Every image is at most
three links away from it: index, first atlas page, another atlas page, photo, or index, blog
post, image.

Site layout::

    index.html                      links to every first atlas page, the blog index and every post
    atlas/<class>/page-N.html       thumbnails linking to full-size photos, with pagination
    blog/index.html, blog/post-NN.html
                                    inline <figure><img><figcaption> photos and noise
    img/photos/<id>.jpg             full-size photos, with thumbnails at img/thumbs/<id>.jpg
    img/media/<id>.{jpg,png}        blog images and every kind of noise
    img/private/<id>.jpg            disallowed by robots.txt
    robots.txt, _routes.json        (_routes.json is read by the loopback server, never served)

Captions, alt texts and page titles name the diagnosis in one of five languages
(:data:`dermcan.classes.NAMES_BY_LANGUAGE`). The noise, with counts set in params: photos
captioned with the wrong diagnosis, off-topic images (with and without a diagnosis in the
caption), exact and near duplicates, broken links (404), HTML served as ``image/jpeg``,
truncated JPEGs, images over the pixel limit or large in bytes, redirect chains that end at a
photo, redirect loops, paths disallowed by robots.txt, a slow endpoint and a permanent 503.

Truth entries (keyed by URL path) carry ``kind``, ``true_label``, ``caption_label``, ``boxes``
(pixels in the served image, x1/y1 exclusive), ``duplicate_of`` and ``duplicate_kind`` as
docs/ARCHITECTURE.md describes, plus ``page`` (the first page that shows the image),
``language`` (of that page), ``redirect_to`` (redirects only) and ``oversize`` ("pixels" or
"bytes", oversized images only). Kinds: ``lesion``, ``thumbnail``, ``off_topic``, ``broken``,
``html_as_image``, ``truncated``, ``oversized``, ``redirect``, ``redirect_target``,
``redirect_loop``, ``disallowed``, ``slow``, ``unavailable``.

The same params give byte-identical files: no timestamps, sorted JSON, one fixed JPEG encoder
setting per image.
"""

from __future__ import annotations

import html
import io
import json
import logging
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from dermcan import atomic_io
from dermcan.atomic_io import write_json
from dermcan.classes import CLASSES, LANGUAGES, NAMES_BY_LANGUAGE
from dermcan.synthetic_lesions import OFF_TOPIC_KINDS, render_clinical_photo, render_off_topic

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]

# The diagnosis a careless caption writer puts on a photo of each class.
CONFUSED_WITH: dict[str, tuple[str, ...]] = {
    "actinickeratosis": ("intraepithelialcarcinoma", "squamouscellcarcinoma"),
    "basalcellcarcinoma": ("squamouscellcarcinoma", "melanocyticnevus"),
    "dermatofibroma": ("melanocyticnevus",),
    "hemangioma": ("pyogenicgranuloma",),
    "intraepithelialcarcinoma": ("actinickeratosis",),
    "malignantmelanoma": ("melanocyticnevus", "seborrheickeratosis"),
    "melanocyticnevus": ("malignantmelanoma",),
    "pyogenicgranuloma": ("hemangioma",),
    "seborrheickeratosis": ("malignantmelanoma",),
    "squamouscellcarcinoma": ("basalcellcarcinoma", "actinickeratosis"),
}

NOISE_COUNT_KEYS: tuple[str, ...] = (
    "off_topic_with_keyword",
    "off_topic_without_keyword",
    "exact_duplicates",
    "near_duplicates",
    "broken_links",
    "html_as_image",
    "truncated",
    "oversized_pixels",
    "oversized_bytes",
    "redirect_chains",
    "redirect_loops",
    "disallowed",
    "slow",
    "unavailable",
)
NEAR_DUPLICATE_KINDS: tuple[str, ...] = ("resized", "reencoded", "cropped")
ROBOTS_DISALLOWED_PREFIX = "/img/private/"


@dataclass(frozen=True)
class DemoWebSettings:
    """Settings from the ``demo_web`` section of params.yaml, which documents units and defaults."""

    seed: int = 7
    photos_per_class: int = 30
    photo_width: int = 384
    photo_height: int = 288
    thumb_width: int = 128
    jpeg_quality: int = 90
    skin_tone_range: tuple[float, float] = (0.0, 0.7)
    photos_per_atlas_page: int = 6
    blog_share: float = 0.2
    blog_posts: int = 12
    wrong_caption_rate: float = 0.08
    noise: dict[str, int] = field(default_factory=dict)
    oversized_pixels_size: tuple[int, int] = (16000, 12000)
    oversized_bytes_min: int = 12_000_000
    slow_delay_s: float = 6.0
    redirect_hops: int = 3

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "DemoWebSettings":
        """Build settings from a params dict, raising ``ValueError`` on unknown or invalid keys."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown demo_web params {unknown}. Valid keys are: {sorted(known)}")
        values = dict(params)
        noise = {key: 0 for key in NOISE_COUNT_KEYS}
        for key, count in (values.pop("noise", None) or {}).items():
            if key not in noise:
                raise ValueError(
                    f"unknown demo_web.noise key {key!r}. Valid keys are: {', '.join(NOISE_COUNT_KEYS)}"
                )
            if int(count) < 0:
                raise ValueError(f"demo_web.noise.{key} must be >= 0, got {count}")
            noise[key] = int(count)
        for key in ("skin_tone_range", "oversized_pixels_size"):
            if key in values:
                values[key] = tuple(values[key])
        settings = cls(noise=noise, **values)
        settings._validate()
        return settings

    def _validate(self) -> None:
        if self.photos_per_class < 1:
            raise ValueError(f"demo_web.photos_per_class must be >= 1, got {self.photos_per_class}")
        if min(self.photo_width, self.photo_height) < 32:
            raise ValueError("demo_web.photo_width and photo_height must be at least 32 pixels")
        if not 0.0 <= self.wrong_caption_rate < 1.0:
            raise ValueError(
                f"demo_web.wrong_caption_rate must be in [0, 1), got {self.wrong_caption_rate}"
            )
        if not 0.0 <= self.blog_share < 1.0:
            raise ValueError(f"demo_web.blog_share must be in [0, 1), got {self.blog_share}")
        if self.blog_posts < 1 or self.photos_per_atlas_page < 1:
            raise ValueError("demo_web.blog_posts and photos_per_atlas_page must be >= 1")
        low, high = self.skin_tone_range
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(
                f"demo_web.skin_tone_range must lie within [0, 1], got {self.skin_tone_range}"
            )
        if self.redirect_hops < 1:
            raise ValueError(f"demo_web.redirect_hops must be >= 1, got {self.redirect_hops}")


# ---------------------------------------------------------------------------------------------
# Words of the pages, per language

_TEXT: dict[str, dict[str, str]] = {
    "en": {
        "site": "Skin Atlas Online",
        "atlas": "Dermatology atlas",
        "blog": "Skin health blog",
        "page": "page {n} of {total}",
        "next": "next",
        "previous": "previous",
        "home": "Home",
        "caption": "{name} on the {body_site}, case {n}",
        "post": "What to know about {name}",
        "post_plain": "Notes from the clinic",
        "graphic": "Information graphic about {name}",
        "no_keyword": "Our clinic team",
        "body": "Photographs from our outpatient clinic, shared with consent.",
    },
    "ko": {
        "site": "피부 아틀라스",
        "atlas": "피부과 아틀라스",
        "blog": "피부 건강 블로그",
        "page": "{total}쪽 중 {n}쪽",
        "next": "다음",
        "previous": "이전",
        "home": "홈",
        "caption": "{body_site}의 {name}, 증례 {n}",
        "post": "{name}에 대해 알아야 할 것",
        "post_plain": "진료실 이야기",
        "graphic": "{name} 안내 그림",
        "no_keyword": "우리 병원 의료진",
        "body": "동의를 받아 공유하는 외래 진료 사진입니다.",
    },
    "es": {
        "site": "Atlas de la piel",
        "atlas": "Atlas de dermatología",
        "blog": "Blog de salud de la piel",
        "page": "página {n} de {total}",
        "next": "siguiente",
        "previous": "anterior",
        "home": "Inicio",
        "caption": "{name} en {body_site}, caso {n}",
        "post": "Lo que hay que saber sobre {name}",
        "post_plain": "Notas de la consulta",
        "graphic": "Gráfico informativo sobre {name}",
        "no_keyword": "Nuestro equipo",
        "body": "Fotografías de nuestra consulta, compartidas con consentimiento.",
    },
    "de": {
        "site": "Hautatlas",
        "atlas": "Dermatologie-Atlas",
        "blog": "Blog zur Hautgesundheit",
        "page": "Seite {n} von {total}",
        "next": "weiter",
        "previous": "zurück",
        "home": "Start",
        "caption": "{name}, {body_site}, Fall {n}",
        "post": "Was man über {name} wissen sollte",
        "post_plain": "Aus der Sprechstunde",
        "graphic": "Infografik zu {name}",
        "no_keyword": "Unser Praxisteam",
        "body": "Fotos aus unserer Sprechstunde, mit Einwilligung geteilt.",
    },
    "ja": {
        "site": "皮膚アトラス",
        "atlas": "皮膚科アトラス",
        "blog": "皮膚の健康ブログ",
        "page": "{total}ページ中{n}ページ",
        "next": "次へ",
        "previous": "前へ",
        "home": "ホーム",
        "caption": "{body_site}の{name}（症例{n}）",
        "post": "{name}について知っておきたいこと",
        "post_plain": "外来からのお知らせ",
        "graphic": "{name}の解説図",
        "no_keyword": "当院のスタッフ",
        "body": "同意を得て掲載している外来の写真です。",
    },
}
_BODY_SITES: dict[str, tuple[str, ...]] = {
    "en": ("back", "cheek", "forearm", "shin", "scalp"),
    "ko": ("등", "뺨", "팔뚝", "정강이", "두피"),
    "es": ("la espalda", "la mejilla", "el antebrazo", "la espinilla", "el cuero cabelludo"),
    "de": ("Rücken", "Wange", "Unterarm", "Schienbein", "Kopfhaut"),
    "ja": ("背中", "頬", "前腕", "すね", "頭皮"),
}


# ---------------------------------------------------------------------------------------------
# Images and their encodings


@dataclass
class _Photo:
    """A rendered lesion photograph with its labels."""

    true_label: str
    caption_label: str
    image: Image.Image
    boxes: list[Box]


@dataclass
class _Figure:
    """One image shown on a page: what the page links and which label its caption names."""

    src: str  # URL path of the <img src>
    href: str | None  # URL path the image links to (atlas thumbnails), else None
    caption_label: str | None  # None: the caption names no diagnosis
    graphic: bool = False  # True: an off-topic graphic whose caption names caption_label


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    """Encode ``image`` as a baseline JPEG without metadata, so equal pixels give equal bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(quality), optimize=False, progressive=False)
    return buffer.getvalue()


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def flat_png(width: int, height: int) -> bytes:
    """Return a 1-bit white PNG of ``width`` x ``height``: many pixels in a few kilobytes.

    Written by hand row by row, so a 16000 x 12000 image never exists in memory.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" + b"\xff" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row) for _ in range(height)]
    parts.append(compressor.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )


def _scale_boxes(boxes: list[Box], sx: float, sy: float, width: int, height: int) -> list[Box]:
    scaled = []
    for x0, y0, x1, y1 in boxes:
        box = (
            max(0, int(np.floor(x0 * sx))),
            max(0, int(np.floor(y0 * sy))),
            min(width, int(np.ceil(x1 * sx))),
            min(height, int(np.ceil(y1 * sy))),
        )
        if box[2] > box[0] and box[3] > box[1]:
            scaled.append(box)
    return scaled


def _resize(image: Image.Image, boxes: list[Box], width: int) -> tuple[Image.Image, list[Box]]:
    height = max(1, round(image.height * width / image.width))
    resized = image.resize((width, height), Image.Resampling.LANCZOS)
    return resized, _scale_boxes(boxes, width / image.width, height / image.height, width, height)


def _crop(image: Image.Image, boxes: list[Box], margins: Box) -> tuple[Image.Image, list[Box]]:
    left, top, right, bottom = margins
    cropped = image.crop((left, top, image.width - right, image.height - bottom))
    shifted = []
    for x0, y0, x1, y1 in boxes:
        box = (
            max(0, x0 - left),
            max(0, y0 - top),
            min(cropped.width, x1 - left),
            min(cropped.height, y1 - top),
        )
        if box[2] > box[0] and box[3] > box[1]:
            shifted.append(box)
    return cropped, shifted


def _large_jpeg(
    rng: np.random.Generator, photo: _Photo, min_bytes: int
) -> tuple[bytes, list[Box], tuple[int, int]]:
    """Return an upscaled, grainy JPEG of ``photo`` of at least ``min_bytes`` bytes, with its boxes and size."""
    # A grainy 4:4:4 JPEG at quality 98 takes about 2 bytes per pixel (measured with Pillow 13);
    # the loop grows the image until it is large enough.
    pixels = max(min_bytes / 2.0, photo.image.width * photo.image.height)
    for _ in range(6):
        scale = float(np.sqrt(pixels / (photo.image.width * photo.image.height)))
        width, height = round(photo.image.width * scale), round(photo.image.height * scale)
        upscaled = np.asarray(
            photo.image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.int16
        )
        grain = rng.integers(-40, 41, size=upscaled.shape, dtype=np.int16)
        image = Image.fromarray(np.clip(upscaled + grain, 0, 255).astype(np.uint8))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=98, subsampling=0, optimize=False)
        if buffer.tell() >= min_bytes:
            boxes = _scale_boxes(
                photo.boxes, width / photo.image.width, height / photo.image.height, width, height
            )
            return buffer.getvalue(), boxes, (width, height)
        pixels *= 1.5 * min_bytes / buffer.tell()
    raise RuntimeError(
        f"failed to make a JPEG of at least {min_bytes} bytes in 6 tries: lower demo_web.oversized_bytes_min"
    )


# ---------------------------------------------------------------------------------------------
# The site builder


class _SiteBuilder:
    """Collects the site's files, routes, truth and pages while the generator draws them."""

    def __init__(self, settings: DemoWebSettings, rng: np.random.Generator) -> None:
        self.settings = settings
        self.rng = rng
        self.files: dict[str, bytes] = {}  # URL path -> body
        self.truth: dict[str, dict[str, Any]] = {}
        self.routes: dict[str, dict[str, Any]] = {
            "redirects": {},
            "delays": {},
            "content_types": {},
            "statuses": {},
        }
        self._names: set[str] = set()

    def new_path(self, folder: str, suffix: str) -> str:
        """Return an unused URL path ``/img/<folder>/<random hex>.<suffix>``."""
        while True:
            name = f"{int(self.rng.integers(0, 2**32)):08x}"
            if name not in self._names:
                self._names.add(name)
                return f"/img/{folder}/{name}.{suffix}"

    def add_image(
        self,
        path: str,
        body: bytes | None,
        kind: str,
        *,
        true_label: str | None,
        caption_label: str | None,
        boxes: list[Box] | None = None,
        duplicate_of: str | None = None,
        duplicate_kind: str | None = None,
        **extra: Any,
    ) -> str:
        if body is not None:
            self.files[path] = body
        self.truth[path] = {
            "kind": kind,
            "true_label": true_label,
            "caption_label": caption_label,
            "boxes": [list(box) for box in boxes or []],
            "duplicate_of": duplicate_of,
            "duplicate_kind": duplicate_kind,
            "page": None,
            "language": None,
            **extra,
        }
        return path

    def place(self, path: str, page: str, language: str) -> None:
        """Record the first page that shows the image at ``path``."""
        entry = self.truth.get(path)
        if entry is not None and entry["page"] is None:
            entry["page"] = page
            entry["language"] = language


def _render_photos(rng: np.random.Generator, settings: DemoWebSettings) -> list[_Photo]:
    photos = []
    labels = [label for label in CLASSES for _ in range(settings.photos_per_class)]
    for label in tqdm(labels, desc="rendering photos", disable=None, leave=False):
        tone = float(rng.uniform(*settings.skin_tone_range))
        image, boxes = render_clinical_photo(
            rng, label, width=settings.photo_width, height=settings.photo_height, skin_tone=tone
        )
        photos.append(_Photo(true_label=label, caption_label=label, image=image, boxes=boxes))
    order = rng.permutation(len(photos))
    photos = [photos[int(i)] for i in order]

    n_wrong = round(settings.wrong_caption_rate * len(photos))
    for index in rng.choice(len(photos), size=n_wrong, replace=False):
        photo = photos[int(index)]
        if rng.uniform() < 0.75:
            partners = CONFUSED_WITH[photo.true_label]
            photo.caption_label = partners[int(rng.integers(len(partners)))]
        else:
            others = [label for label in CLASSES if label != photo.true_label]
            photo.caption_label = others[int(rng.integers(len(others)))]
    return photos


def _add_atlas_photo(site: _SiteBuilder, photo: _Photo) -> _Figure:
    """Store a full-size photo and its thumbnail, and return the atlas figure that links them."""
    settings = site.settings
    full_path = site.new_path("photos", "jpg")
    thumb_path = full_path.replace("/img/photos/", "/img/thumbs/")
    site.add_image(
        full_path,
        encode_jpeg(photo.image, settings.jpeg_quality),
        "lesion",
        true_label=photo.true_label,
        caption_label=photo.caption_label,
        boxes=photo.boxes,
    )
    thumb, thumb_boxes = _resize(photo.image, photo.boxes, settings.thumb_width)
    site.add_image(
        thumb_path,
        encode_jpeg(thumb, 80),
        "thumbnail",
        true_label=photo.true_label,
        caption_label=photo.caption_label,
        boxes=thumb_boxes,
        duplicate_of=full_path,
        duplicate_kind="resized",
    )
    return _Figure(src=thumb_path, href=full_path, caption_label=photo.caption_label)


def _add_blog_photo(site: _SiteBuilder, photo: _Photo) -> _Figure:
    path = site.new_path("media", "jpg")
    site.add_image(
        path,
        encode_jpeg(photo.image, site.settings.jpeg_quality),
        "lesion",
        true_label=photo.true_label,
        caption_label=photo.caption_label,
        boxes=photo.boxes,
    )
    return _Figure(src=path, href=None, caption_label=photo.caption_label)


def _add_duplicates(site: _SiteBuilder, originals: list[tuple[str, _Photo]]) -> list[_Figure]:
    """Add exact and near duplicates of atlas photos for the blog, and return their figures."""
    settings, rng = site.settings, site.rng
    figures = []
    n_exact, n_near = settings.noise["exact_duplicates"], settings.noise["near_duplicates"]
    if not originals or n_exact + n_near == 0:
        return figures
    picks = rng.choice(
        len(originals), size=n_exact + n_near, replace=n_exact + n_near > len(originals)
    )
    for position, index in enumerate(picks):
        original_path, photo = originals[int(index)]
        labels = {"true_label": photo.true_label, "caption_label": photo.caption_label}
        path = site.new_path("media", "jpg")
        if position < n_exact:
            site.add_image(
                path,
                site.files[original_path],
                "lesion",
                boxes=photo.boxes,
                duplicate_of=original_path,
                duplicate_kind="exact",
                **labels,
            )
        else:
            kind = NEAR_DUPLICATE_KINDS[(position - n_exact) % len(NEAR_DUPLICATE_KINDS)]
            if kind == "resized":
                width = round(photo.image.width * rng.uniform(0.5, 0.8))
                image, boxes = _resize(photo.image, photo.boxes, width)
                body = encode_jpeg(image, settings.jpeg_quality)
            elif kind == "reencoded":
                body = encode_jpeg(photo.image, int(rng.integers(55, 76)))
                boxes = photo.boxes
            else:
                margins = tuple(
                    int(rng.uniform(0.03, 0.08) * side)
                    for side in (photo.image.width, photo.image.height) * 2
                )
                image, boxes = _crop(
                    photo.image, photo.boxes, (margins[0], margins[1], margins[2], margins[3])
                )
                body = encode_jpeg(image, settings.jpeg_quality)
            site.add_image(
                path,
                body,
                "lesion",
                boxes=boxes,
                duplicate_of=original_path,
                duplicate_kind=kind,
                **labels,
            )
        figures.append(_Figure(src=path, href=None, caption_label=photo.caption_label))
    return figures


def _add_off_topic(site: _SiteBuilder) -> list[_Figure]:
    settings, rng = site.settings, site.rng
    figures = []
    total = settings.noise["off_topic_with_keyword"] + settings.noise["off_topic_without_keyword"]
    for index in range(total):
        kind = OFF_TOPIC_KINDS[index % len(OFF_TOPIC_KINDS)]
        width = settings.photo_width if kind != "banner" else settings.photo_width * 2
        height = settings.photo_height if kind != "banner" else settings.photo_height // 2
        image = render_off_topic(rng, kind, width=width, height=height)
        with_keyword = index < settings.noise["off_topic_with_keyword"]
        caption_label = CLASSES[int(rng.integers(len(CLASSES)))] if with_keyword else None
        if kind == "logo":
            path, body = site.new_path("media", "png"), encode_png(image)
        else:
            path, body = site.new_path("media", "jpg"), encode_jpeg(image, settings.jpeg_quality)
        site.add_image(
            path,
            body,
            "off_topic",
            true_label=None,
            caption_label=caption_label,
            off_topic_kind=kind,
        )
        figures.append(
            _Figure(src=path, href=None, caption_label=caption_label, graphic=with_keyword)
        )
    return figures


def _add_broken_and_unreadable(site: _SiteBuilder, photos: list[_Photo]) -> list[_Figure]:
    """Add 404s, HTML served as JPEG, truncated JPEGs, oversized images and 503s."""
    settings, rng, noise = site.settings, site.rng, site.settings.noise
    figures = []

    def claimed_label() -> str:
        return CLASSES[int(rng.integers(len(CLASSES)))]

    for _ in range(noise["broken_links"]):
        label = claimed_label()
        figures.append(
            _Figure(
                site.add_image(
                    site.new_path("media", "jpg"),
                    None,
                    "broken",
                    true_label=None,
                    caption_label=label,
                ),
                None,
                label,
            )
        )
    for _ in range(noise["unavailable"]):
        label = claimed_label()
        path = site.add_image(
            site.new_path("media", "jpg"), None, "unavailable", true_label=None, caption_label=label
        )
        site.routes["statuses"][path] = 503
        figures.append(_Figure(path, None, label))
    for _ in range(noise["html_as_image"]):
        label = claimed_label()
        body = (
            b"<!DOCTYPE html>\n<html><head><title>Image not available</title></head>"
            b"<body><h1>Please log in to view this image</h1></body></html>\n"
        )
        path = site.add_image(
            site.new_path("media", "jpg"),
            body,
            "html_as_image",
            true_label=None,
            caption_label=label,
        )
        site.routes["content_types"][path] = "image/jpeg"
        figures.append(_Figure(path, None, label))
    for _ in range(noise["oversized_pixels"]):
        label = claimed_label()
        width, height = settings.oversized_pixels_size
        path = site.add_image(
            site.new_path("media", "png"),
            flat_png(width, height),
            "oversized",
            true_label=None,
            caption_label=label,
            oversize="pixels",
        )
        figures.append(_Figure(path, None, label))

    photo_iter = iter(photos)
    for _ in range(noise["truncated"]):
        photo = next(photo_iter)
        body = encode_jpeg(photo.image, settings.jpeg_quality)
        path = site.add_image(
            site.new_path("media", "jpg"),
            body[: int(len(body) * 0.55)],
            "truncated",
            true_label=photo.true_label,
            caption_label=photo.caption_label,
            boxes=photo.boxes,
        )
        figures.append(_Figure(path, None, photo.caption_label))
    for _ in range(noise["oversized_bytes"]):
        photo = next(photo_iter)
        body, boxes, _size = _large_jpeg(rng, photo, settings.oversized_bytes_min)
        path = site.add_image(
            site.new_path("media", "jpg"),
            body,
            "oversized",
            true_label=photo.true_label,
            caption_label=photo.caption_label,
            boxes=boxes,
            oversize="bytes",
        )
        figures.append(_Figure(path, None, photo.caption_label))
    return figures


def _add_unreachable_photos(site: _SiteBuilder, photos: list[_Photo]) -> list[_Figure]:
    """Add photos behind redirects, robots.txt, a slow endpoint, and redirect loops."""
    settings, rng, noise = site.settings, site.rng, site.settings.noise
    figures = []
    photo_iter = iter(photos)

    def store(photo: _Photo, folder: str, kind: str, **extra: Any) -> str:
        return site.add_image(
            site.new_path(folder, "jpg"),
            encode_jpeg(photo.image, settings.jpeg_quality),
            kind,
            true_label=photo.true_label,
            caption_label=photo.caption_label,
            boxes=photo.boxes,
            **extra,
        )

    for _ in range(noise["redirect_chains"]):
        photo = next(photo_iter)
        target = store(photo, "media", "redirect_target")
        start = site.new_path("media", "jpg")
        hops = (
            [start]
            + [site.new_path("go", "jpg") for _ in range(settings.redirect_hops - 1)]
            + [target]
        )
        for source, destination in zip(hops, hops[1:]):
            site.routes["redirects"][source] = destination
        site.add_image(
            start,
            None,
            "redirect",
            true_label=photo.true_label,
            caption_label=photo.caption_label,
            boxes=photo.boxes,
            redirect_to=target,
        )
        figures.append(_Figure(start, None, photo.caption_label))
    for _ in range(noise["disallowed"]):
        photo = next(photo_iter)
        figures.append(_Figure(store(photo, "private", "disallowed"), None, photo.caption_label))
    for _ in range(noise["slow"]):
        photo = next(photo_iter)
        path = store(photo, "media", "slow")
        site.routes["delays"][path] = float(settings.slow_delay_s)
        figures.append(_Figure(path, None, photo.caption_label))
    for _ in range(noise["redirect_loops"]):
        label = CLASSES[int(rng.integers(len(CLASSES)))]
        start, middle = site.new_path("media", "jpg"), site.new_path("go", "jpg")
        site.routes["redirects"][start] = middle
        site.routes["redirects"][middle] = start
        site.add_image(start, None, "redirect_loop", true_label=None, caption_label=label)
        figures.append(_Figure(start, None, label))
    return figures


def _special_photo_count(noise: dict[str, int]) -> int:
    return sum(
        noise[key]
        for key in ("truncated", "oversized_bytes", "redirect_chains", "disallowed", "slow")
    )


# ---------------------------------------------------------------------------------------------
# HTML


def _name(rng: np.random.Generator, label: str, language: str) -> str:
    names = NAMES_BY_LANGUAGE[label][language]
    return names[int(rng.integers(len(names)))]


def _relative(page: str, target: str) -> str:
    """Return the URL of ``target`` relative to ``page`` (both absolute URL paths)."""
    return os.path.relpath(target, os.path.dirname(page)).replace(os.sep, "/")


def _html_page(language: str, title: str, body: str, page: str) -> bytes:
    text = _TEXT[language]
    home = html.escape(_relative(page, "/index.html"))
    document = (
        "<!DOCTYPE html>\n"
        f'<html lang="{language}">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n</head>\n<body>\n"
        f'<header><a href="{home}">{html.escape(text["site"])}</a> | '
        f'<a href="{home}">{html.escape(text["home"])}</a></header>\n'
        f"<h1>{html.escape(title)}</h1>\n{body}</body>\n</html>\n"
    )
    return document.encode("utf-8")


def _figure_html(
    site: _SiteBuilder, figure: _Figure, page: str, language: str, case_number: int
) -> str:
    rng = site.rng
    text = _TEXT[language]
    if figure.caption_label is None:
        caption = text["no_keyword"]
    elif figure.graphic:
        caption = text["graphic"].format(name=_name(rng, figure.caption_label, language))
    else:
        body_sites = _BODY_SITES[language]
        caption = text["caption"].format(
            name=_name(rng, figure.caption_label, language),
            body_site=body_sites[int(rng.integers(len(body_sites)))],
            n=case_number,
        )
    alt = caption if figure.caption_label is None else _name(rng, figure.caption_label, language)
    site.place(figure.src, page, language)
    if figure.href is not None:
        site.place(figure.href, page, language)
        href = html.escape(_relative(page, figure.href))
        src = html.escape(_relative(page, figure.src))
        image = f'<a href="{href}"><img src="{src}" alt="{html.escape(alt)}"></a>'
    else:
        image = f'<img src="{html.escape(figure.src)}" alt="{html.escape(alt)}">'
    return f"<figure>{image}<figcaption>{html.escape(caption)}</figcaption></figure>\n"


def _atlas_pages(
    site: _SiteBuilder, figures_by_label: dict[str, list[_Figure]]
) -> list[tuple[str, str, str]]:
    """Write the atlas pages and return (label, language, URL path) of each class's first page."""
    per_page = site.settings.photos_per_atlas_page
    first_pages = []
    for class_index, label in enumerate(CLASSES):
        figures = figures_by_label.get(label, [])
        chunks = [figures[i : i + per_page] for i in range(0, len(figures), per_page)] or [[]]
        paths = [f"/atlas/{label}/page-{n}.html" for n in range(1, len(chunks) + 1)]
        for number, (chunk, page) in enumerate(zip(chunks, paths), start=1):
            language = LANGUAGES[(class_index + number - 1) % len(LANGUAGES)]
            text = _TEXT[language]
            name = _name(site.rng, label, language)
            pagination = text["page"].format(n=number, total=len(chunks))
            title = f"{text['atlas']}: {name} ({pagination})"
            links = []
            if number > 1:
                links.append(
                    f'<a href="{_relative(page, paths[number - 2])}">{html.escape(text["previous"])}</a>'
                )
            links += [
                f'<a href="{_relative(page, other)}">{n}</a>'
                for n, other in enumerate(paths, start=1)
            ]
            if number < len(chunks):
                links.append(
                    f'<a href="{_relative(page, paths[number])}" rel="next">{html.escape(text["next"])}</a>'
                )
            body = "".join(
                _figure_html(site, figure, page, language, (number - 1) * per_page + i + 1)
                for i, figure in enumerate(chunk)
            )
            nav = f"<nav>{' '.join(links)}</nav>\n"
            site.files[page] = _html_page(language, title, f"<main>\n{body}</main>\n{nav}", page)
            if number == 1:
                first_pages.append((label, language, page))
    return first_pages


def _blog_pages(site: _SiteBuilder, figures: list[_Figure]) -> list[tuple[str, str]]:
    """Write the blog posts and the blog index, and return (title, URL path) of each post."""
    rng = site.rng
    n_posts = site.settings.blog_posts
    order = rng.permutation(len(figures))
    shuffled = [figures[int(i)] for i in order]
    posts = []
    for index in range(n_posts):
        post_figures = shuffled[index::n_posts]
        language = LANGUAGES[index % len(LANGUAGES)]
        text = _TEXT[language]
        page = f"/blog/post-{index + 1:02d}.html"
        labels = [
            figure.caption_label
            for figure in post_figures
            if figure.caption_label and not figure.graphic
        ]
        title = (
            text["post"].format(name=_name(rng, labels[0], language))
            if labels
            else text["post_plain"]
        )
        body = (
            f"<article>\n<p>{html.escape(text['body'])}</p>\n"
            + "".join(
                _figure_html(site, figure, page, language, i + 1)
                for i, figure in enumerate(post_figures)
            )
            + "</article>\n"
        )
        site.files[page] = _html_page(language, title, body, page)
        posts.append((title, page))
    items = "".join(
        f'<li><a href="{_relative("/blog/index.html", page)}">{html.escape(title)}</a></li>\n'
        for title, page in posts
    )
    site.files["/blog/index.html"] = _html_page(
        "en", _TEXT["en"]["blog"], f"<ul>\n{items}</ul>\n", "/blog/index.html"
    )
    return posts


def _index_page(
    site: _SiteBuilder, first_pages: list[tuple[str, str, str]], latest_posts: list[tuple[str, str]]
) -> None:
    items = "".join(
        f'<li><a href="{page[1:]}">{html.escape(_name(site.rng, label, language))}</a></li>\n'
        for label, language, page in first_pages
    )
    posts = "".join(
        f'<li><a href="{page[1:]}">{html.escape(title)}</a></li>\n' for title, page in latest_posts
    )
    body = (
        f"<h2>{html.escape(_TEXT['en']['atlas'])}</h2>\n<ul>\n{items}</ul>\n"
        f'<h2><a href="blog/index.html">{html.escape(_TEXT["en"]["blog"])}</a></h2>\n<ul>\n{posts}</ul>\n'
    )
    site.files["/index.html"] = _html_page("en", _TEXT["en"]["site"], body, "/index.html")


# ---------------------------------------------------------------------------------------------
# Writing


def write_folder_atomically(folder: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (relative path -> bytes) into ``folder``, replacing it as a whole."""
    with atomic_io.replaced_folder(folder) as partial:
        for path in sorted(files):
            destination = partial / path.lstrip("/")
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(files[path])


def _routes_json(routes: dict[str, dict[str, Any]]) -> bytes:
    return (json.dumps(routes, indent=2, sort_keys=True) + "\n").encode("utf-8")


def build_site(params: dict[str, Any]) -> tuple[dict[str, bytes], dict[str, dict[str, Any]]]:
    """Draw the whole site in memory and return (files keyed by URL path, truth keyed by image path)."""
    settings = DemoWebSettings.from_params(params)
    rng = np.random.default_rng(settings.seed)
    site = _SiteBuilder(settings, rng)

    photos = _render_photos(rng, settings)
    n_special = _special_photo_count(settings.noise)
    extra_photos = []
    for label_index in range(n_special):
        label = CLASSES[label_index % len(CLASSES)]
        image, boxes = render_clinical_photo(
            rng,
            label,
            width=settings.photo_width,
            height=settings.photo_height,
            skin_tone=float(rng.uniform(*settings.skin_tone_range)),
        )
        extra_photos.append(_Photo(true_label=label, caption_label=label, image=image, boxes=boxes))

    n_blog = round(settings.blog_share * len(photos))
    blog_figures = [_add_blog_photo(site, photo) for photo in photos[:n_blog]]
    atlas_by_label: dict[str, list[_Figure]] = {label: [] for label in CLASSES}
    originals = []
    for photo in photos[n_blog:]:
        figure = _add_atlas_photo(site, photo)
        atlas_by_label[photo.caption_label].append(figure)
        originals.append((figure.href, photo))

    blog_figures += _add_duplicates(site, originals)
    blog_figures += _add_off_topic(site)
    n_unreadable = settings.noise["truncated"] + settings.noise["oversized_bytes"]
    blog_figures += _add_broken_and_unreadable(site, extra_photos[:n_unreadable])
    blog_figures += _add_unreachable_photos(site, extra_photos[n_unreadable:])

    first_pages = _atlas_pages(site, atlas_by_label)
    posts = _blog_pages(site, blog_figures)
    _index_page(site, first_pages, posts)
    site.files["/robots.txt"] = f"User-agent: *\nDisallow: {ROBOTS_DISALLOWED_PREFIX}\n".encode()
    site.files["/_routes.json"] = _routes_json(site.routes)
    return site.files, site.truth


def count_kinds(truth: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Count truth entries by kind, with duplicates counted by ``duplicate_kind`` and wrong captions apart."""
    counts: dict[str, int] = {}
    for entry in truth.values():
        keys = [entry["kind"]]
        if entry["kind"] == "lesion" and entry["duplicate_kind"]:
            keys.append(f"duplicate_{entry['duplicate_kind']}")
        if (
            entry["kind"] in ("lesion", "thumbnail")
            and entry["caption_label"] != entry["true_label"]
        ):
            keys.append(f"{entry['kind']}_wrong_caption")
        if entry["kind"] == "off_topic":
            keys.append(
                "off_topic_with_keyword" if entry["caption_label"] else "off_topic_without_keyword"
            )
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def generate_site(
    site_dir: str | os.PathLike[str], truth_path: str | os.PathLike[str], params: dict[str, Any]
) -> None:
    """Write the demo website to ``site_dir`` and its truth file to ``truth_path``.

    Raises ``ValueError`` for invalid params or a ``truth_path`` inside ``site_dir`` (the truth
    must never be served).
    """
    site_dir, truth_path = Path(site_dir), Path(truth_path)
    if truth_path.resolve().is_relative_to(site_dir.resolve()):
        raise ValueError(
            f"the truth file {truth_path} must not be inside the served folder {site_dir}"
        )
    files, truth = build_site(params)
    write_folder_atomically(site_dir, files)
    write_json(truth_path, truth)
    log.info(
        "wrote %d files to %s and %d truth entries to %s",
        len(files),
        site_dir,
        len(truth),
        truth_path,
    )
    log.info("image kinds: %s", count_kinds(truth))
