"""The shifted external test set: lesion close-ups in an ImageFolder layout with Dermofit codes.

``generate_external_set(out_dir, params)`` writes ``out_dir/<CODE>/NNNN.png``: close-ups from
:func:`dermcan.synthetic_lesions.render_close_up` in which the lesion fills most of the frame,
like the Edinburgh Dermofit images. The set is shifted on purpose against the demo web: it has
another seed, darker skin tones by default and lighting other than the web's neutral light. A
model that learnt the web's skin or light instead of the lesion scores lower here.

Class folders carry the Dermofit codes (:data:`DERMOFIT_CODES`), not the project's class names,
so an evaluator has to map them with its alias map.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dermcan.classes import CLASSES
from dermcan.demo_web import encode_png, write_folder_atomically
from dermcan.synthetic_lesions import LIGHTINGS, render_close_up

log = logging.getLogger(__name__)

# Edinburgh Dermofit folder codes of the ten classes.
DERMOFIT_CODES: dict[str, str] = {
    "actinickeratosis": "AK",
    "basalcellcarcinoma": "BCC",
    "dermatofibroma": "DF",
    "hemangioma": "VASC",
    "intraepithelialcarcinoma": "IEC",
    "malignantmelanoma": "MEL",
    "melanocyticnevus": "ML",
    "pyogenicgranuloma": "PYO",
    "seborrheickeratosis": "SK",
    "squamouscellcarcinoma": "SCC",
}


@dataclass(frozen=True)
class ExternalSetSettings:
    """Settings from the ``demo_external`` section of params.yaml, which documents units and defaults."""

    seed: int = 1234
    images_per_class: int = 20
    size: int = 160
    skin_tone_range: tuple[float, float] = (0.45, 1.0)
    lightings: tuple[str, ...] = ("warm", "cool", "dim", "flash")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "ExternalSetSettings":
        """Build settings from a params dict, raising ``ValueError`` on unknown or invalid keys."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(
                f"unknown demo_external params {unknown}. Valid keys are: {sorted(known)}"
            )
        values = dict(params)
        for key in ("skin_tone_range", "lightings"):
            if key in values:
                values[key] = tuple(values[key])
        settings = cls(**values)
        if settings.images_per_class < 1:
            raise ValueError(
                f"demo_external.images_per_class must be >= 1, got {settings.images_per_class}"
            )
        if settings.size < 32:
            raise ValueError(f"demo_external.size must be at least 32 pixels, got {settings.size}")
        low, high = settings.skin_tone_range
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(
                f"demo_external.skin_tone_range must lie within [0, 1], got {settings.skin_tone_range}"
            )
        invalid = [name for name in settings.lightings if name not in LIGHTINGS]
        if invalid or not settings.lightings:
            raise ValueError(
                f"invalid demo_external.lightings {list(settings.lightings)}. Choose from: {', '.join(LIGHTINGS)}"
            )
        return settings


def generate_external_set(
    out_dir: str | os.PathLike[str], params: dict[str, Any]
) -> dict[str, int]:
    """Write the shifted close-ups to ``out_dir/<CODE>/NNNN.png`` and return the image count per code.

    The folder is replaced as a whole, so a failed run leaves the previous set in place.
    """
    settings = ExternalSetSettings.from_params(params)
    rng = np.random.default_rng(settings.seed)
    files: dict[str, bytes] = {}
    counts: dict[str, int] = {}
    jobs = [(label, index) for label in CLASSES for index in range(settings.images_per_class)]
    for label, index in tqdm(jobs, desc="rendering close-ups", disable=None, leave=False):
        code = DERMOFIT_CODES[label]
        lighting = settings.lightings[int(rng.integers(len(settings.lightings)))]
        image = render_close_up(
            rng,
            label,
            size=settings.size,
            skin_tone=float(rng.uniform(*settings.skin_tone_range)),
            lighting=lighting,
        )
        files[f"{code}/{index:04d}.png"] = encode_png(image)
        counts[code] = counts.get(code, 0) + 1
    write_folder_atomically(Path(out_dir), files)
    log.info("wrote %d close-ups in %d class folders to %s", len(files), len(counts), out_dir)
    return counts
