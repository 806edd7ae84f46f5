"""The ten diagnoses of the Edinburgh Dermofit set, as used by the CAN data sets.

Class names are lower-case words without spaces, the folder names of an ImageFolder
layout (``data/annotated/malignantmelanoma/...``). Display names are for plots and tables.
"""

from __future__ import annotations

import difflib

CLASSES: tuple[str, ...] = (
    "actinickeratosis",
    "basalcellcarcinoma",
    "dermatofibroma",
    "hemangioma",
    "intraepithelialcarcinoma",
    "malignantmelanoma",
    "melanocyticnevus",
    "pyogenicgranuloma",
    "seborrheickeratosis",
    "squamouscellcarcinoma",
)

DISPLAY_NAMES: dict[str, str] = {
    "actinickeratosis": "Actinic keratosis",
    "basalcellcarcinoma": "Basal cell carcinoma",
    "dermatofibroma": "Dermatofibroma",
    "hemangioma": "Hemangioma",
    "intraepithelialcarcinoma": "Intraepithelial carcinoma",
    "malignantmelanoma": "Malignant melanoma",
    "melanocyticnevus": "Melanocytic nevus",
    "pyogenicgranuloma": "Pyogenic granuloma",
    "seborrheickeratosis": "Seborrheic keratosis",
    "squamouscellcarcinoma": "Squamous cell carcinoma",
}

# Default malignancy set for the malignancy AUROC; params.yaml may override it.
MALIGNANT: tuple[str, ...] = (
    "basalcellcarcinoma",
    "intraepithelialcarcinoma",
    "malignantmelanoma",
    "squamouscellcarcinoma",
)

# Diagnosis names in five languages. The demo web writes captions from this table, and
# params.yaml carries the crawler's own keyword lists, which start from the same names.
NAMES_BY_LANGUAGE: dict[str, dict[str, list[str]]] = {
    "actinickeratosis": {
        "en": ["actinic keratosis", "solar keratosis"],
        "ko": ["광선각화증"],
        "es": ["queratosis actínica"],
        "de": ["aktinische Keratose"],
        "ja": ["日光角化症"],
    },
    "basalcellcarcinoma": {
        "en": ["basal cell carcinoma", "basal cell cancer"],
        "ko": ["기저세포암"],
        "es": ["carcinoma basocelular"],
        "de": ["Basalzellkarzinom", "Basaliom"],
        "ja": ["基底細胞癌"],
    },
    "dermatofibroma": {
        "en": ["dermatofibroma"],
        "ko": ["피부섬유종"],
        "es": ["dermatofibroma cutáneo"],
        "de": ["Dermatofibrom"],
        "ja": ["皮膚線維腫"],
    },
    "hemangioma": {
        "en": ["hemangioma", "cherry angioma"],
        "ko": ["혈관종"],
        "es": ["hemangioma cutáneo"],
        "de": ["Hämangiom"],
        "ja": ["血管腫"],
    },
    "intraepithelialcarcinoma": {
        "en": ["intraepithelial carcinoma", "Bowen's disease"],
        "ko": ["보웬병"],
        "es": ["enfermedad de Bowen"],
        "de": ["Morbus Bowen"],
        "ja": ["ボーエン病"],
    },
    "malignantmelanoma": {
        "en": ["malignant melanoma", "melanoma"],
        "ko": ["흑색종"],
        "es": ["melanoma maligno"],
        "de": ["malignes Melanom"],
        "ja": ["悪性黒色腫"],
    },
    "melanocyticnevus": {
        "en": ["melanocytic nevus", "mole"],
        "ko": ["멜라닌세포모반"],
        "es": ["nevus melanocítico"],
        "de": ["Muttermal", "Nävus"],
        "ja": ["色素性母斑"],
    },
    "pyogenicgranuloma": {
        "en": ["pyogenic granuloma"],
        "ko": ["화농성육아종"],
        "es": ["granuloma piógeno"],
        "de": ["Granuloma pyogenicum"],
        "ja": ["化膿性肉芽腫"],
    },
    "seborrheickeratosis": {
        "en": ["seborrheic keratosis", "seborrhoeic keratosis"],
        "ko": ["지루각화증"],
        "es": ["queratosis seborreica"],
        "de": ["seborrhoische Keratose"],
        "ja": ["脂漏性角化症"],
    },
    "squamouscellcarcinoma": {
        "en": ["squamous cell carcinoma"],
        "ko": ["편평세포암"],
        "es": ["carcinoma espinocelular"],
        "de": ["Plattenepithelkarzinom"],
        "ja": ["有棘細胞癌"],
    },
}

LANGUAGES: tuple[str, ...] = ("en", "ko", "es", "de", "ja")


def check_class_name(name: str) -> str:
    """Return ``name`` if it is one of :data:`CLASSES`, else raise ``ValueError`` listing them."""
    if name not in CLASSES:
        matches = difflib.get_close_matches(name, CLASSES, n=3) if isinstance(name, str) else []
        suggestion = f" (did you mean {' or '.join(matches)}?)" if matches else ""
        raise ValueError(f"unknown class {name!r}{suggestion}; valid classes are: {', '.join(CLASSES)}")
    return name
