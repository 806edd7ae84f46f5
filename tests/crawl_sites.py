"""Small websites and crawl settings for the crawler tests.

:func:`write_noise_site` writes a site with one image per manifest status, so one crawl of it
exercises every outcome. Its pages use root-relative links; tests crawl it under the canonical
origin :data:`ORIGIN` and map that origin to the loopback server with ``connect_to``.
"""

from __future__ import annotations

import copy
import html
import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dermcan.params import load_params

REPO = Path(__file__).resolve().parents[1]
ORIGIN = "http://site.test"
LOOPBACK_NETWORKS = ["127.0.0.0/8", "::1/128"]
BLOCKED_ORIGIN = "http://blocked.test"

# Image path -> the status a crawl of write_noise_site must give it.
EXPECTED_STATUS: dict[str, str] = {
    "/img/a-copy.jpg": "downloaded",  # first of two identical files by URL
    "/img/b-original.jpg": "duplicate",
    "/img/ko.jpg": "downloaded",
    "/img/full.jpg": "downloaded",  # reached through its thumbnail's link
    "/img/hop.jpg": "downloaded",  # redirects twice to /img/target.jpg
    "/img/deep.jpg": "downloaded",  # on a page one link away
    "/img/html.jpg": "not_an_image",
    "/img/truncated.jpg": "corrupt",
    "/img/bomb.png": "too_large",
    "/img/big.jpg": "too_large",
    "/img/missing.jpg": "http_error",
    "/img/busy.jpg": "http_error",
    "/private/secret.jpg": "disallowed_by_robots",
    "/img/slow.jpg": "timeout",
    "/img/loop-a.jpg": "too_many_redirects",
    "/img/staff.jpg": "no_keyword",
}
BLOCKED_IMAGE = BLOCKED_ORIGIN + "/img/elsewhere.jpg"  # blocked_site

SLOW_DELAY_S = 1.5
MAX_IMAGE_BYTES = 60_000
MAX_IMAGE_PIXELS = 500_000


def textured_image(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def flat_png(width: int, height: int) -> bytes:
    """A grey PNG of ``width`` x ``height`` pixels in a few hundred bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\x80" * width
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def figure(src: str, caption: str, *, href: str | None = None, alt: str = "") -> str:
    image = f'<img src="{html.escape(src)}" alt="{html.escape(alt)}">'
    if href is not None:
        image = f'<a href="{html.escape(href)}">{image}</a>'
    return f"<figure>{image}<figcaption>{html.escape(caption)}</figcaption></figure>\n"


def page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title></head><body>\n{body}</body></html>\n"
    )


def write_noise_site(root: Path) -> None:
    """Write the site whose images end in every manifest status (see EXPECTED_STATUS)."""
    images = {
        "img/a-copy.jpg": jpeg_bytes(textured_image(1)),
        "img/b-original.jpg": jpeg_bytes(textured_image(1)),
        "img/ko.jpg": jpeg_bytes(textured_image(2)),
        "img/full.jpg": jpeg_bytes(textured_image(3)),
        "img/thumb.jpg": jpeg_bytes(textured_image(3, size=(40, 30))),
        "img/target.jpg": jpeg_bytes(textured_image(4)),
        "img/deep.jpg": jpeg_bytes(textured_image(5)),
        "img/deeper.jpg": jpeg_bytes(textured_image(6)),
        "img/html.jpg": b"<!DOCTYPE html><html><body>Please log in</body></html>",
        "img/truncated.jpg": jpeg_bytes(textured_image(7, size=(400, 300)))[:4000],
        "img/bomb.png": flat_png(1000, 1000),
        "img/big.jpg": jpeg_bytes(textured_image(8, size=(2000, 1500)), quality=100),
        "img/slow.jpg": jpeg_bytes(textured_image(9)),
        "img/staff.jpg": jpeg_bytes(textured_image(10)),
        "private/secret.jpg": jpeg_bytes(textured_image(11)),
    }
    assert len(images["img/big.jpg"]) > MAX_IMAGE_BYTES
    for relative, data in images.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)

    figures = "".join([
        figure("/img/a-copy.jpg", "Melanoma on the back, case 1"),
        figure("/img/b-original.jpg", "Malignant melanoma, case 1 again"),
        figure("/img/ko.jpg", "등의 흑색종, 증례 2"),
        figure("/img/thumb.jpg", "", href="/img/full.jpg", alt="Hämangiom am Rücken"),
        figure("/img/hop.jpg", "Dermatofibroma of the shin"),
        figure("/img/html.jpg", "Basal cell carcinoma"),
        figure("/img/truncated.jpg", "Actinic keratosis"),
        figure("/img/bomb.png", "Seborrheic keratosis"),
        figure("/img/big.jpg", "Pyogenic granuloma"),
        figure("/img/missing.jpg", "Squamous cell carcinoma"),
        figure("/img/busy.jpg", "Bowen's disease"),
        figure("/private/secret.jpg", "Melanocytic nevus"),
        figure("/img/slow.jpg", "Cherry angioma"),
        figure("/img/loop-a.jpg", "Basaliom"),
        figure("/img/staff.jpg", "Our clinic team"),
        figure(BLOCKED_IMAGE, "Melanoma elsewhere"),
    ])
    links = '<a href="/page-1.html">more</a> <a href="/private/page.html">members</a>\n'
    (root / "index.html").write_text(page("Skin atlas", figures + links), encoding="utf-8")
    (root / "page-1.html").write_text(
        page("Atlas page 1", figure("/img/deep.jpg", "Dermatofibrom") + '<a href="/page-2.html">next</a>'),
        encoding="utf-8",
    )
    (root / "page-2.html").write_text(
        page("Atlas page 2", figure("/img/deeper.jpg", "Dermatofibrom")), encoding="utf-8"
    )
    (root / "private" / "page.html").write_text(page("Members", figure("/img/ko.jpg", "x")), encoding="utf-8")
    (root / "robots.txt").write_text("User-agent: *\nDisallow: /private/\n", encoding="utf-8")
    routes = {
        "redirects": {
            "/img/hop.jpg": "/img/hop-2.jpg",
            "/img/hop-2.jpg": "/img/target.jpg",
            "/img/loop-a.jpg": "/img/loop-b.jpg",
            "/img/loop-b.jpg": "/img/loop-a.jpg",
        },
        "content_types": {"/img/html.jpg": "image/jpeg"},
        "statuses": {"/img/busy.jpg": 503},
        "delays": {"/img/slow.jpg": SLOW_DELAY_S},
    }
    (root / "_routes.json").write_text(json.dumps(routes), encoding="utf-8")


def crawl_params(**overrides: Any) -> dict[str, Any]:
    """Return the repository's ``crawl`` params with fast timeouts and a ``test`` profile.

    The profile crawls :data:`ORIGIN` to depth 1; ``blocked.test`` is blocklisted; loopback
    addresses may be contacted.
    """
    params = copy.deepcopy(load_params("crawl", REPO / "params.yaml"))
    params.update(
        workers=4,
        timeouts={"connect_s": 2.0, "read_s": 0.4, "total_s": 10.0},
        retries={
            "max_retries": 2, "max_timeout_retries": 1, "backoff_s": 0.01, "max_backoff_s": 0.1,
            "statuses": [500, 502, 503, 504],
        },
        max_redirects=3,
        blocked_hosts=["blocked.test"],
        max_image_bytes=MAX_IMAGE_BYTES,
        max_image_pixels=MAX_IMAGE_PIXELS,
        allowed_private_networks=LOOPBACK_NETWORKS,  # the test sites are served from 127.0.0.1
    )
    params["profiles"] = {
        "test": {
            "start_urls": [ORIGIN + "/index.html"],
            "allowed_hosts": ["site.test"],
            "max_depth": 1,
            "delay_s": 0.0,
            "max_per_host": 4,
        }
    }
    params.update(overrides)
    return params
