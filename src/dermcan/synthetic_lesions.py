"""Synthetic clinical photographs of skin lesions, with the true lesion bounding boxes.

The demo web, the shifted external test set and the tests draw their images from here. Every
function takes a ``numpy.random.Generator`` and draws all its randomness from it, so the same
generator state gives the same pixels.

API
---
``render_clinical_photo(rng, label, *, width, height, skin_tone=None, n_lesions=None, lighting=None)``
    Returns ``(image, boxes)``: a wide-field RGB ``PIL.Image`` of skin with one (sometimes two)
    lesions of class ``label`` and their bounding boxes as ``(x0, y0, x1, y1)`` pixel tuples,
    ``x1``/``y1`` exclusive. A lesion's mean diameter is 4 to 25 % of the image width, depending
    on the class, and the box of an elongated or ragged lesion can be wider.
``render_close_up(rng, label, *, size, skin_tone=None, lighting=None)``
    Returns a ``size`` x ``size`` RGB close-up in which the lesion's mean diameter is 54 to 76 %
    of the frame, like the Edinburgh Dermofit images.
``render_off_topic(rng, kind, *, width, height)``
    Returns an RGB image that is not a photograph of skin: one of :data:`OFF_TOPIC_KINDS`
    (flat colours, sharp edges, text-like strokes).

``label`` is one of :data:`dermcan.classes.CLASSES`. ``skin_tone`` runs from 0.0 (pale) to 1.0
(dark), and None draws it uniformly from that range. ``lighting`` is one of :data:`LIGHTINGS`,
and None means "neutral" with a small random white-balance error.

A box is the bounding box of the pixels whose lesion opacity is at least 0.5, clipped to the
image. Hair drawn over a lesion and the faint soft edge of an ill-defined lesion can reach
a few pixels past it.

Each diagnosis has its own colour, shape, border and texture, with the usual look-alikes kept
close: melanoma against nevus (melanoma larger, asymmetric, irregular border, several colours
including blue-grey and black), hemangioma against pyogenic granuloma, actinic keratosis
against Bowen's disease, basal against squamous cell carcinoma.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from dermcan.classes import check_class_name

LIGHTINGS: tuple[str, ...] = ("neutral", "warm", "cool", "dim", "flash")
OFF_TOPIC_KINDS: tuple[str, ...] = ("logo", "banner", "diagram", "text", "screenshot")

# Skin colour (RGB in 0..1) at tones 0, 0.25, 0.5, 0.75 and 1, from pale to dark skin.
_TONE_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_TONE_COLOURS = np.array(
    [
        [0.96, 0.80, 0.71],
        [0.90, 0.70, 0.57],
        [0.78, 0.55, 0.40],
        [0.56, 0.37, 0.25],
        [0.34, 0.22, 0.16],
    ]
)

# White balance (RGB gains), overall brightness and sensor noise for each lighting.
_LIGHTING_SETTINGS: dict[str, tuple[tuple[float, float, float], float, float]] = {
    "neutral": ((1.0, 1.0, 1.0), 1.0, 0.010),
    "warm": ((1.07, 0.97, 0.80), 1.0, 0.012),
    "cool": ((0.88, 0.98, 1.12), 1.0, 0.012),
    "dim": ((1.0, 0.98, 0.95), 0.62, 0.030),
    "flash": ((1.0, 1.0, 1.02), 1.12, 0.010),
}

_Array = np.ndarray


@dataclass(frozen=True)
class _LesionGeometry:
    """Local coordinates of the pixels around one lesion, in its own rotated, stretched frame."""

    u: _Array  # along the long axis, in pixels divided by the elongation
    v: _Array  # along the short axis
    rho: _Array  # distance from the centre divided by the border radius: the border is rho == 1
    radius: float  # mean border radius in pixels
    light: tuple[float, float]  # unit vector towards the light, in the lesion's (u, v) frame


@dataclass(frozen=True)
class _ClassStyle:
    """Appearance of one diagnosis: size, outline and the function that paints its colours."""

    diameter: tuple[float, float]  # fraction of the image width in a wide-field photo
    elongation: tuple[float, float]  # ratio of long to short axis
    border_irregularity: tuple[float, float]  # amplitude of the radius harmonics
    harmonics: int  # number of radius harmonics, more for a ragged border
    edge_softness: tuple[float, float]  # width of the opacity ramp at the border, in rho units
    paint: Callable[[np.random.Generator, _LesionGeometry, _Array], _Array]


# ---------------------------------------------------------------------------------------------
# Noise and small helpers


def _smooth_noise(rng: np.random.Generator, height: int, width: int, scale: float) -> _Array:
    """Return a (height, width) float32 field of unit variance whose blobs are about ``scale`` px."""
    scale = max(scale, 1.0)
    grid_h = int(np.ceil(height / scale)) + 2
    grid_w = int(np.ceil(width / scale)) + 2
    grid = rng.standard_normal((grid_h, grid_w), dtype=np.float32)
    field = np.asarray(
        Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32
    )
    field = field - field.mean()
    return field / (field.std() + 1e-6)


def _smoothstep(edge0: float, edge1: float, x: _Array) -> _Array:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _mix(a: _Array, b: _Array | tuple[float, float, float], t: _Array) -> _Array:
    """Blend colour arrays: ``a`` where ``t`` is 0, ``b`` where it is 1 (``t`` broadcasts)."""
    b = np.asarray(b, dtype=np.float32)
    if t.ndim == a.ndim - 1:
        t = t[..., None]
    return a + (b - a) * t


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _colour_between(
    rng: np.random.Generator, first: tuple[float, float, float], second: tuple[float, float, float]
) -> _Array:
    t = rng.uniform()
    return (np.asarray(first) * (1 - t) + np.asarray(second) * t).astype(np.float32)


def skin_colour(tone: float) -> _Array:
    """Return the RGB skin colour (0..1) for ``tone`` from 0.0 (pale) to 1.0 (dark)."""
    tone = float(np.clip(tone, 0.0, 1.0))
    return np.array(
        [np.interp(tone, _TONE_STOPS, _TONE_COLOURS[:, c]) for c in range(3)], dtype=np.float32
    )


def _darker_than_skin(colour: _Array, skin: _Array, ratio: float) -> _Array:
    """Scale a pigment ``colour`` down so that its brightness is at most ``ratio`` times the skin's.

    Keeps brown lesions visible on dark skin, where a fixed brown would match the skin.
    """
    limit = ratio * float(skin.mean())
    brightness = float(np.mean(colour))
    return colour * min(1.0, limit / max(brightness, 1e-3))


def _dome_shading(geometry: _LesionGeometry, strength: float) -> _Array:
    """Brightness factor of a raised dome lit from ``geometry.light``: lit side up, far side down."""
    distance = np.sqrt(geometry.u**2 + geometry.v**2) + 1e-3
    facing = (geometry.u * geometry.light[0] + geometry.v * geometry.light[1]) / distance
    slope = np.clip(geometry.rho, 0.0, 1.0) ** 1.5
    return 1.0 + strength * facing * slope


def _specular(geometry: _LesionGeometry, offset: float, width: float) -> _Array:
    """Return a Gaussian highlight on the lit side of a dome (0..1)."""
    radius = geometry.radius
    highlight_u = geometry.light[0] * offset * radius
    highlight_v = geometry.light[1] * offset * radius
    squared = (geometry.u - highlight_u) ** 2 + (geometry.v - highlight_v) ** 2
    return np.exp(-squared / (2.0 * (width * radius) ** 2)).astype(np.float32)


def _dots(
    rng: np.random.Generator, geometry: _LesionGeometry, count: int, max_rho: float, size: float
) -> _Array:
    """Return a 0..1 mask of ``count`` small round dots placed inside ``rho < max_rho``."""
    mask = np.zeros(geometry.rho.shape, dtype=np.float32)
    inside = np.flatnonzero(geometry.rho.ravel() < max_rho)
    if inside.size == 0 or count <= 0:
        return mask
    picks = rng.choice(inside, size=min(count, inside.size), replace=False)
    height, width = mask.shape
    ys, xs = np.divmod(picks, width)
    radius = max(size, 0.7)
    reach = int(np.ceil(radius)) + 1
    for y, x in zip(ys, xs):
        y0, y1 = max(0, y - reach), min(height, y + reach + 1)
        x0, x1 = max(0, x - reach), min(width, x + reach + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        distance = np.sqrt((yy - y) ** 2 + (xx - x) ** 2)
        mask[y0:y1, x0:x1] = np.maximum(
            mask[y0:y1, x0:x1], np.clip(radius + 0.5 - distance, 0.0, 1.0)
        )
    return mask


# ---------------------------------------------------------------------------------------------
# One paint function per diagnosis. Each returns the lesion's RGB colour (0..1) over the window,
# and the caller blends it over the skin with the border opacity.


def _noise_like(rng: np.random.Generator, geometry: _LesionGeometry, scale: float) -> _Array:
    height, width = geometry.rho.shape
    return _smooth_noise(rng, height, width, scale * geometry.radius)


def _paint_melanoma(rng: np.random.Generator, geometry: _LesionGeometry, skin: _Array) -> _Array:
    base = _darker_than_skin(
        _colour_between(rng, (0.50, 0.32, 0.20), (0.30, 0.18, 0.12)), skin, 0.7
    )
    colour = _mix(skin[None, None, :] * 0.55 + base * 0.45, base, np.ones_like(geometry.rho))
    # An off-centre axis makes the lesion darker on one side: asymmetry in colour.
    angle = rng.uniform(0, 2 * np.pi)
    skew = (geometry.u * np.cos(angle) + geometry.v * np.sin(angle)) / geometry.radius
    dark_weight = _smoothstep(-0.2, 0.9, _noise_like(rng, geometry, 0.35) * 0.6 + skew * 0.8)
    colour = _mix(colour, (0.10, 0.07, 0.07), dark_weight * rng.uniform(0.6, 0.95))
    blue_grey = _smoothstep(0.5, 1.2, _noise_like(rng, geometry, 0.3)) * rng.uniform(0.4, 0.85)
    colour = _mix(colour, (0.36, 0.40, 0.50), blue_grey)
    if rng.uniform() < 0.5:  # regression: pink-white scar-like patch
        regression = _smoothstep(0.9, 1.5, _noise_like(rng, geometry, 0.4)) * 0.7
        colour = _mix(colour, (0.85, 0.68, 0.66), regression)
    light_rim = _smoothstep(0.65, 1.0, geometry.rho) * _smoothstep(
        0.0, 0.8, _noise_like(rng, geometry, 0.2)
    )
    colour = _mix(colour, skin * 0.6 + base * 0.4, light_rim * 0.6)
    return colour * (1.0 + 0.06 * _noise_like(rng, geometry, 0.06))[..., None]


def _paint_nevus(rng: np.random.Generator, geometry: _LesionGeometry, skin: _Array) -> _Array:
    brown = _colour_between(rng, (0.55, 0.36, 0.24), (0.33, 0.21, 0.13))
    brown = _darker_than_skin(skin * 0.35 + brown * 0.65, skin, rng.uniform(0.5, 0.7))
    colour = np.broadcast_to(brown, geometry.rho.shape + (3,)).copy()
    centre = (1.0 - np.clip(geometry.rho, 0, 1)) * rng.uniform(0.05, 0.18)
    colour = colour * (1.0 - centre)[..., None]
    return colour * (1.0 + 0.03 * _noise_like(rng, geometry, 0.2))[..., None]


def _paint_seborrheic_keratosis(
    rng: np.random.Generator, geometry: _LesionGeometry, skin: _Array
) -> _Array:
    base = _darker_than_skin(
        _colour_between(rng, (0.60, 0.47, 0.33), (0.30, 0.22, 0.16)), skin, 0.8
    )
    colour = np.broadcast_to(skin * 0.25 + base * 0.75, geometry.rho.shape + (3,)).copy()
    # Cerebriform surface: dark fissures along the zero lines of a noise field.
    fissures = 1.0 - _smoothstep(0.0, 0.35, np.abs(_noise_like(rng, geometry, 0.12)))
    colour = colour * (1.0 - 0.45 * fissures)[..., None]
    colour = colour * (1.0 + 0.10 * _noise_like(rng, geometry, 0.05))[..., None]
    cysts = _dots(rng, geometry, int(rng.integers(3, 12)), 0.85, 0.045 * geometry.radius)
    colour = _mix(colour, (0.92, 0.88, 0.72), cysts * 0.9)
    rim = _smoothstep(0.85, 1.0, geometry.rho) * 0.25
    colour = colour * (1.0 - rim)[..., None]
    waxy = _specular(geometry, 0.45, 0.35) * 0.12
    return colour + waxy[..., None]


def _paint_hemangioma(rng: np.random.Generator, geometry: _LesionGeometry, skin: _Array) -> _Array:
    red = _colour_between(rng, (0.78, 0.10, 0.20), (0.48, 0.08, 0.30))
    colour = np.broadcast_to(red, geometry.rho.shape + (3,)).copy()
    lobules = _noise_like(rng, geometry, 0.3)
    colour = colour * (1.0 + 0.07 * lobules)[..., None]
    colour = colour * _dome_shading(geometry, 0.25)[..., None]
    shine = _specular(geometry, 0.4, 0.12) * rng.uniform(0.25, 0.5)
    return _mix(colour, (1.0, 0.92, 0.92), shine)


def _paint_pyogenic_granuloma(
    rng: np.random.Generator, geometry: _LesionGeometry, skin: _Array
) -> _Array:
    red = _colour_between(rng, (0.85, 0.16, 0.16), (0.66, 0.10, 0.14))
    colour = np.broadcast_to(red, geometry.rho.shape + (3,)).copy()
    colour = colour * (1.0 + 0.10 * _noise_like(rng, geometry, 0.15))[..., None]
    colour = colour * _dome_shading(geometry, 0.45)[..., None]
    shine = _specular(geometry, 0.35, 0.10) * 0.7 + _specular(geometry, -0.2, 0.06) * 0.3
    shine = shine * (0.8 + 0.2 * _noise_like(rng, geometry, 0.08))
    colour = _mix(colour, (1.0, 0.95, 0.95), np.clip(shine, 0, 1))
    if rng.uniform() < 0.4:  # dark red crust
        crust = _smoothstep(1.0, 1.6, _noise_like(rng, geometry, 0.2)) * (geometry.rho < 0.7)
        colour = _mix(colour, (0.35, 0.08, 0.08), crust * 0.8)
    # Collarette: a pale ring of scale around the base of the nodule.
    collarette = _smoothstep(0.78, 0.86, geometry.rho) * (
        0.75 + 0.25 * _noise_like(rng, geometry, 0.07)
    )
    return _mix(colour, (0.93, 0.88, 0.82), np.clip(collarette, 0, 1))


def _paint_dermatofibroma(
    rng: np.random.Generator, geometry: _LesionGeometry, skin: _Array
) -> _Array:
    brown = _colour_between(rng, (0.55, 0.37, 0.26), (0.38, 0.24, 0.17))
    ring = _darker_than_skin(skin * 0.45 + brown * 0.55, skin, 0.72)
    pale = np.clip(skin * 1.08 + np.array([0.06, 0.05, 0.05], dtype=np.float32), 0, 1)
    centre_size = rng.uniform(0.35, 0.6)
    centre = 1.0 - _smoothstep(
        centre_size * 0.6, centre_size, geometry.rho + 0.12 * _noise_like(rng, geometry, 0.3)
    )
    colour = _mix(np.broadcast_to(ring, geometry.rho.shape + (3,)).copy(), pale, centre)
    network = 1.0 + 0.07 * _noise_like(rng, geometry, 0.06)
    return colour * network[..., None]


def _paint_actinic_keratosis(
    rng: np.random.Generator, geometry: _LesionGeometry, skin: _Array
) -> _Array:
    pink = _colour_between(rng, (0.88, 0.50, 0.48), (0.78, 0.38, 0.38))
    redness = (0.62 + 0.15 * _noise_like(rng, geometry, 0.3)) * (
        1.0 - _smoothstep(0.3, 1.1, geometry.rho) * 0.5
    )
    colour = _mix(
        np.broadcast_to(skin, geometry.rho.shape + (3,)).copy(), pink, np.clip(redness, 0, 1)
    )
    scale = _smoothstep(0.8, 1.6, _noise_like(rng, geometry, 0.05)) * (0.4 + 0.3 * rng.uniform())
    colour = _mix(colour, (0.94, 0.91, 0.84), scale)
    return colour * (1.0 + 0.10 * _noise_like(rng, geometry, 0.03))[..., None]


def _telangiectasia(rng: np.random.Generator, geometry: _LesionGeometry) -> _Array:
    """Return a 0..1 mask of thin branching vessels across the lesion."""
    height, width = geometry.rho.shape
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    centre_y, centre_x = np.unravel_index(int(np.argmin(geometry.rho)), geometry.rho.shape)
    line_width = max(1, int(round(geometry.radius / 28)))
    for _ in range(int(rng.integers(2, 6))):
        x = centre_x + rng.uniform(-0.5, 0.5) * geometry.radius
        y = centre_y + rng.uniform(-0.5, 0.5) * geometry.radius
        heading = rng.uniform(0, 2 * np.pi)
        points = [(x, y)]
        for _ in range(int(rng.integers(3, 7))):
            heading += rng.uniform(-0.9, 0.9)
            step = rng.uniform(0.1, 0.25) * geometry.radius
            x += np.cos(heading) * step
            y += np.sin(heading) * step
            points.append((x, y))
        draw.line(points, fill=int(rng.integers(150, 230)), width=line_width)
    return np.asarray(canvas, dtype=np.float32) / 255.0 * (geometry.rho < 0.95)


def _paint_basal_cell_carcinoma(
    rng: np.random.Generator, geometry: _LesionGeometry, skin: _Array
) -> _Array:
    pearl = _colour_between(rng, (0.96, 0.82, 0.80), (0.88, 0.66, 0.66))
    colour = _mix(
        np.broadcast_to(skin, geometry.rho.shape + (3,)).copy(),
        pearl,
        np.full(geometry.rho.shape, 0.6),
    )
    # Rolled border: a brighter raised ring with its own shading.
    rolled = _smoothstep(0.55, 0.8, geometry.rho) * (1.0 - _smoothstep(0.92, 1.0, geometry.rho))
    colour = _mix(colour, (0.98, 0.90, 0.88), rolled * 0.55)
    colour = colour * (1.0 + 0.18 * (_dome_shading(geometry, 1.0) - 1.0) * rolled)[..., None]
    colour = colour + (_specular(geometry, 0.7, 0.12) * 0.15)[..., None]
    vessels = _telangiectasia(rng, geometry)
    colour = _mix(colour, (0.72, 0.12, 0.18), vessels)
    if rng.uniform() < 0.35:  # central ulcer with crust
        ulcer = 1.0 - _smoothstep(0.2, 0.35, geometry.rho + 0.1 * _noise_like(rng, geometry, 0.15))
        colour = _mix(colour, (0.45, 0.14, 0.10), ulcer * 0.9)
    return colour


def _paint_squamous_cell_carcinoma(
    rng: np.random.Generator, geometry: _LesionGeometry, skin: _Array
) -> _Array:
    base = _colour_between(rng, (0.84, 0.44, 0.40), (0.70, 0.32, 0.30))
    colour = _mix(
        np.broadcast_to(skin, geometry.rho.shape + (3,)).copy(),
        base,
        np.full(geometry.rho.shape, 0.75),
    )
    colour = colour * _dome_shading(geometry, 0.3)[..., None]
    keratin_extent = rng.uniform(0.45, 0.75)
    keratin = 1.0 - _smoothstep(
        keratin_extent - 0.15, keratin_extent, geometry.rho + 0.15 * _noise_like(rng, geometry, 0.2)
    )
    keratin_colour = (0.88, 0.82, 0.62)
    colour = _mix(colour, keratin_colour, keratin * 0.9)
    crust = _smoothstep(0.6, 1.2, _noise_like(rng, geometry, 0.15)) * (geometry.rho < 0.8)
    colour = _mix(colour, (0.34, 0.17, 0.11), crust * 0.85)
    return colour * (1.0 + 0.14 * _noise_like(rng, geometry, 0.04))[..., None]


def _paint_intraepithelial_carcinoma(
    rng: np.random.Generator, geometry: _LesionGeometry, skin: _Array
) -> _Array:
    red = _colour_between(rng, (0.88, 0.42, 0.38), (0.74, 0.28, 0.28))
    colour = np.broadcast_to(skin * 0.2 + red * 0.8, geometry.rho.shape + (3,)).copy()
    colour = colour * (1.0 + 0.06 * _noise_like(rng, geometry, 0.25))[..., None]
    scale = _smoothstep(0.3, 1.0, _noise_like(rng, geometry, 0.12)) * 0.55
    colour = _mix(colour, (0.95, 0.90, 0.86), scale)
    return colour * (1.0 + 0.06 * _noise_like(rng, geometry, 0.03))[..., None]


_STYLES: dict[str, _ClassStyle] = {
    "malignantmelanoma": _ClassStyle(
        (0.12, 0.25), (1.1, 1.6), (0.10, 0.22), 7, (0.04, 0.15), _paint_melanoma
    ),
    "melanocyticnevus": _ClassStyle(
        (0.04, 0.09), (1.0, 1.2), (0.01, 0.04), 3, (0.05, 0.12), _paint_nevus
    ),
    "seborrheickeratosis": _ClassStyle(
        (0.08, 0.18), (1.1, 1.5), (0.03, 0.08), 4, (0.02, 0.05), _paint_seborrheic_keratosis
    ),
    "hemangioma": _ClassStyle(
        (0.04, 0.11), (1.0, 1.2), (0.01, 0.04), 3, (0.05, 0.10), _paint_hemangioma
    ),
    "pyogenicgranuloma": _ClassStyle(
        (0.05, 0.13), (1.0, 1.25), (0.02, 0.06), 4, (0.03, 0.07), _paint_pyogenic_granuloma
    ),
    "dermatofibroma": _ClassStyle(
        (0.06, 0.12), (1.0, 1.3), (0.02, 0.05), 3, (0.15, 0.25), _paint_dermatofibroma
    ),
    "actinickeratosis": _ClassStyle(
        (0.07, 0.18), (1.1, 1.6), (0.06, 0.14), 5, (0.30, 0.45), _paint_actinic_keratosis
    ),
    "basalcellcarcinoma": _ClassStyle(
        (0.06, 0.16), (1.0, 1.35), (0.03, 0.08), 4, (0.04, 0.09), _paint_basal_cell_carcinoma
    ),
    "squamouscellcarcinoma": _ClassStyle(
        (0.07, 0.18), (1.0, 1.4), (0.05, 0.12), 5, (0.06, 0.14), _paint_squamous_cell_carcinoma
    ),
    "intraepithelialcarcinoma": _ClassStyle(
        (0.09, 0.22), (1.1, 1.7), (0.08, 0.16), 8, (0.02, 0.05), _paint_intraepithelial_carcinoma
    ),
}


# ---------------------------------------------------------------------------------------------
# Skin, lesions, hair and the camera


def _render_skin(
    rng: np.random.Generator, height: int, width: int, tone: float
) -> tuple[_Array, _Array]:
    """Return the skin canvas (H, W, 3) in 0..1 and the mean skin colour."""
    colour = skin_colour(tone) * rng.uniform(0.96, 1.04, size=3).astype(np.float32)
    blotches = _smooth_noise(rng, height, width, max(height, width) / 3)
    texture = _smooth_noise(rng, height, width, 3.0)
    canvas = np.empty((height, width, 3), dtype=np.float32)
    canvas[:] = colour
    canvas *= (1.0 + 0.03 * blotches + 0.02 * texture)[..., None]
    canvas[..., 0] += 0.02 * np.clip(blotches, 0, None)  # patchy redness

    # Skin lines: streaky noise along one axis.
    if rng.uniform() < 0.5:
        lines = _smooth_noise(rng, height, width // 12 + 1, 2.0)
        lines = np.asarray(
            Image.fromarray(lines).resize((width, height), Image.Resampling.BILINEAR)
        )
    else:
        lines = _smooth_noise(rng, height // 12 + 1, width, 2.0)
        lines = np.asarray(
            Image.fromarray(lines).resize((width, height), Image.Resampling.BILINEAR)
        )
    canvas *= (1.0 - 0.015 * np.clip(lines, 0, None))[..., None]

    # Pores: sparse single dark pixels.
    n_pores = int(height * width / rng.uniform(150, 400))
    ys = rng.integers(0, height, n_pores)
    xs = rng.integers(0, width, n_pores)
    canvas[ys, xs] *= np.float32(rng.uniform(0.82, 0.92))
    return canvas, colour


def _border_radius(
    rng: np.random.Generator, style: _ClassStyle, theta: _Array, radius: float
) -> _Array:
    amplitude = _uniform(rng, style.border_irregularity)
    result = np.ones_like(theta)
    for k in range(2, style.harmonics + 2):
        weight = amplitude * rng.uniform(0.3, 1.0) / (1.0 + 0.25 * (k - 2))
        result += weight * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return radius * np.clip(result, 0.55, None)


def _paint_lesion(
    rng: np.random.Generator,
    canvas: _Array,
    skin: _Array,
    label: str,
    centre: tuple[float, float],
    radius: float,
    light_angle: float,
) -> tuple[int, int, int, int] | None:
    """Paint one lesion onto ``canvas`` in place and return its bounding box (None if off-frame)."""
    style = _STYLES[label]
    height, width = canvas.shape[:2]
    elongation = _uniform(rng, style.elongation)
    reach = radius * (1.0 + 2.0 * style.border_irregularity[1]) * np.sqrt(elongation) * 1.35
    x0 = max(0, int(np.floor(centre[0] - reach)))
    x1 = min(width, int(np.ceil(centre[0] + reach)) + 1)
    y0 = max(0, int(np.floor(centre[1] - reach)))
    y1 = min(height, int(np.ceil(centre[1] + reach)) + 1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None

    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx - centre[0], yy - centre[1]
    axis = rng.uniform(0, np.pi)
    cos_a, sin_a = np.float32(np.cos(axis)), np.float32(np.sin(axis))
    stretch = np.float32(np.sqrt(elongation))
    u = (dx * cos_a + dy * sin_a) / stretch
    v = (-dx * sin_a + dy * cos_a) * stretch
    theta = np.arctan2(v, u)
    rho = np.sqrt(u**2 + v**2) / _border_radius(rng, style, theta, radius)
    light = (float(np.cos(light_angle - axis)), float(np.sin(light_angle - axis)))
    geometry = _LesionGeometry(u=u, v=v, rho=rho.astype(np.float32), radius=radius, light=light)

    colour = np.clip(style.paint(rng, geometry, skin), 0.0, 1.2)
    softness = _uniform(rng, style.edge_softness)
    opacity = np.clip((1.0 - geometry.rho) / softness + 0.5, 0.0, 1.0)
    window = canvas[y0:y1, x0:x1]
    window += (colour - window) * opacity[..., None]

    rows = np.flatnonzero((opacity >= 0.5).any(axis=1))
    cols = np.flatnonzero((opacity >= 0.5).any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return None
    return (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)


def _draw_hair(rng: np.random.Generator, canvas: _Array, tone: float, density: float) -> None:
    """Draw curved hair strands over ``canvas`` in place, ``density`` times the usual number."""
    if rng.uniform() < 0.35:
        return
    height, width = canvas.shape[:2]
    count = int(rng.integers(1, 25) * density)
    if count == 0:
        return
    mask_image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask_image)
    for _ in range(count):
        start = np.array([rng.uniform(0, width), rng.uniform(0, height)])
        heading = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.1, 0.5) * max(width, height)
        bend = rng.uniform(-1.2, 1.2)
        steps = 8
        points = []
        for i in range(steps + 1):
            angle = heading + bend * i / steps
            points.append(tuple(start))
            start = start + length / steps * np.array([np.cos(angle), np.sin(angle)])
        thickness = 1 if rng.uniform() < 0.8 else 2
        draw.line(points, fill=int(rng.integers(90, 220)), width=thickness)
    mask = np.asarray(mask_image, dtype=np.float32)[..., None] / 255.0
    if tone < 0.3 and rng.uniform() < 0.4:
        hair_colour = np.array([0.55, 0.42, 0.28], dtype=np.float32)  # fair hair
    else:
        hair_colour = np.array([0.10, 0.07, 0.06], dtype=np.float32)
    canvas += (hair_colour - canvas) * mask


def _expose(
    rng: np.random.Generator, canvas: _Array, lighting: str | None, light_angle: float
) -> Image.Image:
    """Apply lighting, white balance, blur and sensor noise, and return the 8-bit photograph."""
    height, width = canvas.shape[:2]
    name = lighting or "neutral"
    gains, brightness, noise_sigma = _LIGHTING_SETTINGS[name]
    gains_array = np.asarray(gains, dtype=np.float32)
    if lighting is None:
        gains_array = gains_array * rng.uniform(0.97, 1.03, size=3).astype(np.float32)

    # Python floats keep the arithmetic in float32 (NumPy 2 promotes on NumPy float64 scalars).
    ys = (np.arange(height, dtype=np.float32) - height / 2) / max(height, width)
    xs = (np.arange(width, dtype=np.float32) - width / 2) / max(height, width)
    slope = float(rng.uniform(0.1, 0.5))
    gradient = xs[None, :] * (slope * float(np.cos(light_angle))) + ys[:, None] * (
        slope * float(np.sin(light_angle))
    )
    vignette_strength = 0.9 if name == "flash" else float(rng.uniform(0.0, 0.4))
    radius_squared = xs[None, :] ** 2 + ys[:, None] ** 2
    light = brightness * (1.0 + gradient - vignette_strength * radius_squared)
    canvas = canvas * light[..., None]
    canvas *= gains_array
    if name == "flash":
        canvas += (np.exp(-radius_squared / 0.02) * 0.12)[..., None]
    np.clip(canvas, 0.0, 1.0, out=canvas)
    canvas *= 255.0
    canvas += 0.5
    image = Image.fromarray(canvas.astype(np.uint8))

    # Slight defocus: a separable 3x3 kernel (1, c, 1), stronger blur for smaller c.
    centre = float(rng.uniform(2.0, 6.0))
    weights = np.outer([1.0, centre, 1.0], [1.0, centre, 1.0]).ravel().tolist()
    image = image.filter(ImageFilter.Kernel((3, 3), weights, scale=sum(weights)))

    # Sensor noise: uniform noise of the lighting's standard deviation (std of U(-a, a) is a/sqrt(3)).
    amplitude = max(1, round(255.0 * noise_sigma * float(rng.uniform(0.7, 1.3)) * np.sqrt(3.0)))
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(
        -amplitude, amplitude + 1, size=(height, width, 3), dtype=np.int16
    )
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _check_options(label: str, skin_tone: float | None, lighting: str | None) -> None:
    check_class_name(label)
    if skin_tone is not None and not 0.0 <= skin_tone <= 1.0:
        raise ValueError(f"skin_tone must be between 0.0 (pale) and 1.0 (dark), got {skin_tone}")
    if lighting is not None and lighting not in LIGHTINGS:
        raise ValueError(f"unknown lighting {lighting!r}. Valid values are: {', '.join(LIGHTINGS)}")


def _overlaps(
    centre: tuple[float, float], radius: float, placed: list[tuple[float, float, float]]
) -> bool:
    for other_x, other_y, other_radius in placed:
        if np.hypot(centre[0] - other_x, centre[1] - other_y) < 1.8 * (radius + other_radius):
            return True
    return False


def render_clinical_photo(
    rng: np.random.Generator,
    label: str,
    *,
    width: int,
    height: int,
    skin_tone: float | None = None,
    n_lesions: int | None = None,
    lighting: str | None = None,
) -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
    """Render a wide-field photograph of skin with lesions of class ``label`` and their boxes.

    ``n_lesions`` None draws one lesion (85 %) or two. A second lesion that finds no free place
    after 30 tries is left out, so ``len(boxes)`` can be less than ``n_lesions``.
    """
    _check_options(label, skin_tone, lighting)
    if width < 32 or height < 32:
        raise ValueError(f"width and height must be at least 32 pixels, got {width}x{height}")
    if n_lesions is None:
        n_lesions = 1 if rng.uniform() < 0.85 else 2
    if n_lesions < 1:
        raise ValueError(f"n_lesions must be at least 1, got {n_lesions}")
    tone = float(rng.uniform(0.0, 1.0)) if skin_tone is None else skin_tone

    canvas, skin = _render_skin(rng, height, width, tone)
    style = _STYLES[label]
    light_angle = float(rng.uniform(0, 2 * np.pi))
    boxes: list[tuple[int, int, int, int]] = []
    placed: list[tuple[float, float, float]] = []
    for index in range(n_lesions):
        diameter = (
            _uniform(rng, style.diameter) * width * (1.0 if index == 0 else rng.uniform(0.6, 1.0))
        )
        diameter = min(diameter, 0.6 * height)
        radius = diameter / 2
        margin = radius * 1.3 + 2
        for _ in range(30):
            centre = (
                float(rng.uniform(margin, max(margin + 1, width - margin))),
                float(rng.uniform(margin, max(margin + 1, height - margin))),
            )
            if not _overlaps(centre, radius, placed):
                break
        else:
            continue
        box = _paint_lesion(rng, canvas, skin, label, centre, radius, light_angle)
        if box is not None:
            boxes.append(box)
            placed.append((centre[0], centre[1], radius))

    _draw_hair(rng, canvas, tone, density=1.0)
    return _expose(rng, canvas, lighting, light_angle), boxes


def render_close_up(
    rng: np.random.Generator,
    label: str,
    *,
    size: int,
    skin_tone: float | None = None,
    lighting: str | None = None,
) -> Image.Image:
    """Render a ``size`` x ``size`` close-up in which one lesion of ``label`` fills most of the frame."""
    _check_options(label, skin_tone, lighting)
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    tone = float(rng.uniform(0.0, 1.0)) if skin_tone is None else skin_tone

    canvas, skin = _render_skin(rng, size, size, tone)
    light_angle = float(rng.uniform(0, 2 * np.pi))
    radius = size * rng.uniform(0.27, 0.38)
    centre = (
        size / 2 + rng.uniform(-0.06, 0.06) * size,
        size / 2 + rng.uniform(-0.06, 0.06) * size,
    )
    _paint_lesion(rng, canvas, skin, label, centre, radius, light_angle)
    _draw_hair(rng, canvas, tone, density=0.5)
    return _expose(rng, canvas, lighting, light_angle)


# ---------------------------------------------------------------------------------------------
# Images that are not photographs of skin

_FLAT_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 255, 255),
    (242, 244, 247),
    (33, 37, 41),
    (0, 86, 179),
    (40, 140, 69),
    (23, 162, 184),
    (108, 117, 125),
    (111, 66, 193),
    (255, 193, 7),
    (0, 48, 87),
)
_WORDS = (
    "clinic",
    "team",
    "contact",
    "news",
    "about",
    "skin",
    "care",
    "health",
    "check",
    "book",
    "visit",
    "open",
    "hours",
    "staff",
    "guide",
    "step",
    "result",
    "data",
    "report",
    "home",
)


def _pick_colour(
    rng: np.random.Generator, avoid: tuple[int, int, int] | None = None
) -> tuple[int, int, int]:
    while True:
        colour = _FLAT_COLOURS[int(rng.integers(len(_FLAT_COLOURS)))]
        if colour != avoid:
            return colour


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(8, size))


def _words(rng: np.random.Generator, count: int) -> str:
    return " ".join(_WORDS[int(i)] for i in rng.integers(0, len(_WORDS), count))


def _text_lines(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    box: tuple[int, int, int, int],
    colour: tuple[int, int, int],
    line_height: int,
) -> None:
    x0, y0, x1, y1 = box
    font = _font(int(line_height * 0.75))
    y = y0
    while y + line_height <= y1:
        draw.text((x0, y), _words(rng, int(rng.integers(3, 9))), fill=colour, font=font)
        y += line_height


def _draw_logo(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    width: int,
    height: int,
    background: tuple[int, int, int],
) -> None:
    mark = _pick_colour(rng, background)
    size = int(min(width, height) * 0.5)
    x0, y0 = int(width * 0.1), (height - size) // 2
    shape = int(rng.integers(3))
    if shape == 0:
        draw.ellipse((x0, y0, x0 + size, y0 + size), fill=mark)
    elif shape == 1:
        draw.rounded_rectangle((x0, y0, x0 + size, y0 + size), radius=size // 5, fill=mark)
    else:
        draw.polygon([(x0, y0 + size), (x0 + size // 2, y0), (x0 + size, y0 + size)], fill=mark)
    draw.text((x0 + size * 0.25, y0 + size * 0.3), "+", fill=background, font=_font(size // 2))
    draw.text(
        (x0 + size + width * 0.05, height * 0.35),
        _words(rng, 2).title(),
        fill=mark,
        font=_font(height // 6),
    )


def _draw_banner(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    width: int,
    height: int,
    background: tuple[int, int, int],
) -> None:
    block = _pick_colour(rng, background)
    split = int(width * rng.uniform(0.5, 0.7))
    draw.rectangle((split, 0, width, height), fill=block)
    text_colour = (255, 255, 255) if sum(background) < 400 else (33, 37, 41)
    draw.text(
        (width * 0.05, height * 0.2),
        _words(rng, 3).upper(),
        fill=text_colour,
        font=_font(height // 7),
    )
    _text_lines(
        draw,
        rng,
        (int(width * 0.05), int(height * 0.45), split - 10, int(height * 0.7)),
        text_colour,
        max(10, height // 12),
    )
    button = _pick_colour(rng, background)
    draw.rounded_rectangle(
        (width * 0.05, height * 0.75, width * 0.3, height * 0.9), radius=6, fill=button
    )


def _draw_diagram(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    width: int,
    height: int,
    background: tuple[int, int, int],
) -> None:
    n_boxes = int(rng.integers(3, 6))
    box_w, box_h = width // (n_boxes + 1), height // 5
    outline = (33, 37, 41)
    fill = _pick_colour(rng, background)
    centres = []
    for i in range(n_boxes):
        x = int(width * (i + 0.5) / n_boxes - box_w / 2)
        y = int(height * (0.25 if i % 2 == 0 else 0.6))
        draw.rectangle((x, y, x + box_w, y + box_h), fill=fill, outline=outline, width=2)
        draw.text((x + 4, y + box_h // 3), _words(rng, 1), fill=outline, font=_font(box_h // 3))
        centres.append((x + box_w // 2, y + box_h // 2))
    for start, end in zip(centres, centres[1:]):
        draw.line([start, end], fill=outline, width=2)
        draw.ellipse((end[0] - 4, end[1] - 4, end[0] + 4, end[1] + 4), fill=outline)
    draw.text(
        (width * 0.05, height * 0.05),
        _words(rng, 4).title(),
        fill=outline,
        font=_font(height // 12),
    )


def _draw_text_page(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    width: int,
    height: int,
    background: tuple[int, int, int],
) -> None:
    ink = (33, 37, 41) if sum(background) > 400 else (255, 255, 255)
    draw.text(
        (width * 0.06, height * 0.05), _words(rng, 3).title(), fill=ink, font=_font(height // 10)
    )
    _text_lines(
        draw,
        rng,
        (int(width * 0.06), int(height * 0.22), width - 10, height - 10),
        ink,
        max(10, height // 16),
    )


def _draw_screenshot(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    width: int,
    height: int,
    background: tuple[int, int, int],
) -> None:
    bar = (108, 117, 125)
    draw.rectangle((0, 0, width, height // 10), fill=bar)
    for i, colour in enumerate(((220, 53, 69), (255, 193, 7), (40, 140, 69))):
        x = 8 + i * (height // 14)
        draw.ellipse((x, height // 40, x + height // 20, height // 40 + height // 20), fill=colour)
    sidebar = _pick_colour(rng, background)
    draw.rectangle((0, height // 10, width // 4, height), fill=sidebar)
    _text_lines(
        draw,
        rng,
        (width // 4 + 10, height // 10 + 10, width - 10, height // 2),
        (33, 37, 41),
        max(10, height // 16),
    )
    n_bars = int(rng.integers(4, 9))
    bar_colour = _pick_colour(rng, background)
    for i in range(n_bars):
        x = width // 4 + 10 + i * (width * 3 // 4 - 20) // n_bars
        top = int(height * rng.uniform(0.55, 0.9))
        draw.rectangle((x, top, x + (width // 2) // n_bars, height - 10), fill=bar_colour)


_OFF_TOPIC_DRAWERS = {
    "logo": _draw_logo,
    "banner": _draw_banner,
    "diagram": _draw_diagram,
    "text": _draw_text_page,
    "screenshot": _draw_screenshot,
}


def render_off_topic(
    rng: np.random.Generator, kind: str, *, width: int, height: int
) -> Image.Image:
    """Render an image that is not a photograph of skin: a logo, banner, diagram, text or screenshot."""
    if kind not in _OFF_TOPIC_DRAWERS:
        raise ValueError(
            f"unknown off-topic kind {kind!r}. Valid kinds are: {', '.join(OFF_TOPIC_KINDS)}"
        )
    if width < 32 or height < 32:
        raise ValueError(f"width and height must be at least 32 pixels, got {width}x{height}")
    light_backgrounds = ((255, 255, 255), (242, 244, 247))
    if kind in ("diagram", "text", "screenshot") or rng.uniform() < 0.5:
        background = light_backgrounds[int(rng.integers(2))]
    else:
        background = _pick_colour(rng)
    image = Image.new("RGB", (width, height), background)
    _OFF_TOPIC_DRAWERS[kind](ImageDraw.Draw(image), rng, width, height, background)
    return image
