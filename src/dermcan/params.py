"""Loading and checking params.yaml, the single source of every stage's settings.

Stage scripts call :func:`load_stage_params`, which checks their section against
:data:`SCHEMAS` before any work starts and exits with a message that names params.yaml, the
line and the key path of each invalid value. A schema checks only the keys that are present, so
a key left out keeps the default of the code that reads it.
"""

from __future__ import annotations

import difflib
import importlib
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from dermcan.classes import CLASSES

DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(ValueError):
    """An invalid params.yaml: bad YAML syntax, a missing section or an invalid value."""


def load_params(section: str | None = None, path: str | os.PathLike[str] = DEFAULT_PARAMS) -> Any:
    """Return ``section`` of the YAML file at ``path``, or the whole file when ``section`` is None.

    A dotted ``section`` ("train.sets") walks nested mappings. Raises ``FileNotFoundError``
    for a missing file, ``ParamsError`` naming the line for invalid YAML and ``KeyError`` for a
    missing section.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: run stages from the repository root, where params.yaml is"
        )
    params = _parse_yaml(path)
    if section is None:
        return params
    value: Any = params
    walked: list[str] = []
    for key in section.split("."):
        walked.append(key)
        if not isinstance(value, dict) or key not in value:
            raise KeyError(f"{path} has no section {'.'.join(walked)!r}")
        value = value[key]
    return value


def load_stage_params(section: str, path: str | os.PathLike[str] = DEFAULT_PARAMS) -> Any:
    """Load ``section`` for a stage script and check its top-level section against :data:`SCHEMAS`.

    Meant to be the first call of a stage's ``main``, so nothing has been written yet when it
    fails. On a missing file, invalid YAML, a missing section or an invalid value it exits with
    status 1 and the message, as ``argparse`` does for an invalid command line.
    """
    path = Path(path)
    top = section.split(".", 1)[0]
    try:
        value = load_params(section, path)
        errors = check_section(top, load_params(top, path), path)
    except (FileNotFoundError, ParamsError) as error:
        raise SystemExit(f"error: {error}") from None
    except KeyError as error:
        raise SystemExit(f"error: {error.args[0]}: add it (the repository's params.yaml has every section)") from None
    if len(errors) == 1:
        raise SystemExit(f"error: {errors[0]}")
    if errors:
        raise SystemExit("\n  ".join([f"error: {path} has {len(errors)} invalid values:", *errors]))
    return value


def _parse_yaml(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    try:
        params = yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        raise ParamsError(_describe_yaml_error(path, error)) from None
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ParamsError(f"{path} must be a mapping of stage sections, not a {type(params).__name__}")
    return params


def _describe_yaml_error(path: Path, error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "an unknown line"
    message = f"{path} is not valid YAML: {error.problem} at {where}"
    context = error.context_mark
    if error.context and context and (mark is None or context.line != mark.line):
        message += f" ({error.context} at line {context.line + 1})"
    return message + ". Correct the syntax there and rerun the stage."


# --- value checks ------------------------------------------------------------------------------
# A check returns None for a valid value, or what is wrong with it ("must be ..."). A problem
# that ends with a full stop already states what to do. Others get "Correct KEY in params.yaml."

Check = Callable[[Any], "str | None"]


_YAML_KINDS = {str: "a string", bool: "a boolean", int: "an integer", float: "a float", list: "a list",
               dict: "a mapping"}


def _shown(value: Any) -> str:
    """Show ``value`` with its YAML kind, so that a quoted number reads as a string."""
    if value is None:
        return "null"
    return f"{value!r} ({_YAML_KINDS.get(type(value), type(value).__name__)})"


def integer(minimum: int | None = None, maximum: int | None = None) -> Check:
    """Check for a whole number (not a bool, not a quoted string) in ``[minimum, maximum]``."""

    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be {_range_text('an integer', minimum, maximum)}, got {_shown(value)}"
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            return f"must be {_range_text('an integer', minimum, maximum)}, got {value}"
        return None

    return check


def number(minimum: float | None = None, maximum: float | None = None, *, above: float | None = None,
           below: float | None = None) -> Check:
    """Check for a finite int or float in ``[minimum, maximum]`` and in ``(above, below)``."""

    def check(value: Any) -> str | None:
        expected = _range_text("a number", minimum, maximum, above, below)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"must be {expected}, got {_shown(value)}"
        if (
            (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)
            or (above is not None and value <= above)
            or (below is not None and value >= below)
        ):
            return f"must be {expected}, got {value}"
        return None

    return check


def _range_text(kind: str, minimum: float | None, maximum: float | None,
                above: float | None = None, below: float | None = None) -> str:
    bounds = [f">= {minimum}" if minimum is not None else "", f"> {above}" if above is not None else "",
              f"<= {maximum}" if maximum is not None else "", f"< {below}" if below is not None else ""]
    bounds = [bound for bound in bounds if bound]
    return f"{kind} {' and '.join(bounds)}" if bounds else kind


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, got {_shown(value)}"


def text(value: Any) -> str | None:
    return None if isinstance(value, str) and value else f"must be a non-empty string, got {_shown(value)}"


def optional(check: Check) -> Check:
    """Allow null as well as what ``check`` accepts."""
    return lambda value: None if value is None else check(value)


def list_of(check: Check, length: int | None = None) -> Check:
    def check_list(value: Any) -> str | None:
        if not isinstance(value, list):
            return f"must be a list, got {_shown(value)}"
        if length is not None and len(value) != length:
            return f"must be a list of {length} items, got {len(value)}"
        for index, item in enumerate(value):
            problem = check(item)
            if problem:
                return f"item {index} {problem}"
        return None

    return check_list


def choice(*values: str) -> Check:
    def check(value: Any) -> str | None:
        if value in values:
            return None
        return f"must be one of {', '.join(values)}, got {_shown(value)}{_close_matches(value, values)}"

    return check


def choice_from(module: str, attribute: str) -> Check:
    """:func:`choice` over a tuple of valid values defined in ``module``, imported when checked."""
    return lambda value: choice(*getattr(importlib.import_module(module), attribute))(value)


def class_name(value: Any) -> str | None:
    """Check for one of :data:`dermcan.classes.CLASSES`, suggesting close matches."""
    if value in CLASSES:
        return None
    return (
        f"names {_shown(value)}, which is not a class{_close_matches(value, CLASSES)}. "
        f"Valid classes (dermcan.classes.CLASSES) are: {', '.join(CLASSES)}"
    )


def _close_matches(value: Any, valid: tuple[str, ...] | list[str]) -> str:
    matches = difflib.get_close_matches(str(value), list(valid), n=3) if isinstance(value, str) else []
    return f" (did you mean {' or '.join(matches)}?)" if matches else ""


def power_of_two(minimum: int) -> Check:
    def check(value: Any) -> str | None:
        problem = integer(minimum)(value)
        if problem is None and value & (value - 1):
            return f"must be a power of two >= {minimum}, got {value}"
        return problem

    return check


def architecture(value: Any) -> str | None:
    """Check for a torchvision classification model name (imports torchvision when called)."""
    if not isinstance(value, str):
        return f"must be a torchvision model name, got {_shown(value)}"
    from dermcan.models import check_architecture

    try:
        check_architecture(value)
    except ValueError as error:
        return f"is invalid: {error}"
    return None


def existing_directory(advice: str) -> Check:
    """Check for a path of an existing folder, relative to the working directory."""

    def check(value: Any) -> str | None:
        if not isinstance(value, str) or not value:
            return f"must be a folder path, got {_shown(value)}"
        if not Path(value).is_dir():
            return f"names folder {value}, which is not found. {advice}"
        return None

    return check


def mapping(value: Any) -> str | None:
    return None if isinstance(value, dict) else f"must be a mapping, got {_shown(value)}"


# --- schemas -----------------------------------------------------------------------------------
# Keys are dotted paths inside the section. ``*`` stands for every key of a mapping.

FRACTION = number(0.0, 1.0)
SECONDS = number(0.0)
COUNT = integer(0)
POSITIVE = integer(1)
SEED = integer(0)
JPEG_QUALITY = integer(1, 100)

EXTERNAL_SET_ADVICE = (
    "Place a test set there in ImageFolder layout (one subfolder of images per class, named "
    "like a class or an alias), run `dvc repro demo_external` to write the demo set "
    "data/external/demo_shifted, or set the path to another folder."
)

SCHEMAS: dict[str, dict[str, Check]] = {
    "demo_web": {
        "seed": SEED, "photos_per_class": POSITIVE, "photo_width": POSITIVE, "photo_height": POSITIVE,
        "thumb_width": POSITIVE, "jpeg_quality": JPEG_QUALITY, "skin_tone_range": list_of(FRACTION, 2),
        "photos_per_atlas_page": POSITIVE, "blog_share": FRACTION, "blog_posts": COUNT,
        "wrong_caption_rate": FRACTION, "noise.*": COUNT, "oversized_pixels_size": list_of(POSITIVE, 2),
        "oversized_bytes_min": POSITIVE, "slow_delay_s": SECONDS, "redirect_hops": COUNT,
    },
    "demo_external": {
        "seed": SEED, "images_per_class": POSITIVE, "size": POSITIVE, "skin_tone_range": list_of(FRACTION, 2),
        "lightings": list_of(text),
    },
    "crawl": {
        "workers": POSITIVE, "user_agent": text, "robots_user_agent": text,
        "timeouts.connect_s": number(above=0.0), "timeouts.read_s": number(above=0.0),
        "timeouts.total_s": number(above=0.0), "max_redirects": COUNT,
        "retries.max_retries": COUNT, "retries.max_timeout_retries": COUNT, "retries.backoff_s": SECONDS,
        "retries.max_backoff_s": SECONDS, "retries.statuses": list_of(integer(100, 599)),
        "politeness.delay_s": SECONDS, "politeness.max_per_host": POSITIVE, "politeness.max_crawl_delay_s": SECONDS,
        "max_page_bytes": POSITIVE, "max_image_bytes": POSITIVE, "max_image_pixels": POSITIVE,
        "jpeg_quality": JPEG_QUALITY, "phash_max_distance": integer(0, 64),
        "min_image_side": POSITIVE, "max_aspect_ratio": number(1.0), "max_url_length": POSITIVE,
        "allowed_private_networks": list_of(text),
        "profiles.*.max_depth": COUNT, "profiles.*.delay_s": SECONDS, "profiles.*.max_per_host": POSITIVE,
        "manifest.aliases": optional(mapping), "manifest.aliases.*": class_name,
        "folder.aliases": optional(mapping), "folder.aliases.*": class_name,
        "keywords.*": mapping,
    },
    "annotate": {
        "seed": SEED, "photo_filter.work_size": POSITIVE, "detector.kind": choice("colour", "torchvision"),
        "detector.score_threshold": FRACTION, "detector.work_size": POSITIVE, "detector.max_boxes": POSITIVE,
        "detector.nms_iou": FRACTION, "box_margin": number(0.0), "crop_size": POSITIVE,
        "verifier.kind": choice("cleanlab", "classifier"), "verifier.min_confidence": FRACTION,
        "folds": integer(2), "classifier": choice("random_forest", "logistic"),
        "label_issues": choice("drop", "relabel"), "relabel_min_confidence": FRACTION,
        "contact_sheet.max_thumbnails": POSITIVE, "contact_sheet.columns": POSITIVE,
        "measure.iou_threshold": number(above=0.0, maximum=1.0),
    },
    "split": {
        "seed": SEED, "val_fraction": number(above=0.0, below=1.0), "group_by": choice("photo", "page", "host"),
        "min_per_split": COUNT, "small_classes": choice("error", "drop"),
    },
    "train": {
        "seed": SEED, "sets": mapping, "sets.*.train": list_of(text), "sets.*.val": list_of(text),
        "model.arch": architecture, "model.weights": optional(text), "model.input_size": POSITIVE,
        "epochs": POSITIVE, "batch_size": POSITIVE, "resume": boolean,
        "optimizer.name": choice_from("dermcan.training", "OPTIMIZERS"), "optimizer.lr": number(above=0.0),
        "optimizer.weight_decay": number(0.0), "optimizer.momentum": number(0.0, below=1.0),
        "schedule.name": choice_from("dermcan.training", "SCHEDULES"), "schedule.warmup_epochs": number(0.0),
        "schedule.step_size": POSITIVE, "schedule.gamma": number(above=0.0),
        "label_smoothing": number(0.0, below=1.0), "bn_momentum": optional(FRACTION),
        "balance": choice_from("dermcan.training", "BALANCING"),
        "augmentation.crop_scale": optional(list_of(number(above=0.0, maximum=1.0), 2)),
        "augmentation.hflip": boolean, "augmentation.vflip": boolean, "augmentation.rotation": number(0.0),
        "augmentation.color_jitter": number(0.0), "cache.margin": number(0.0), "cache.dir": optional(text),
        "deterministic": boolean, "num_workers": COUNT, "select": choice_from("dermcan.training", "SELECTIONS"),
    },
    "evaluate": {
        "seed": SEED, "bootstrap.iterations": POSITIVE, "malignant": optional(list_of(class_name)),
        "high_sensitivity": number(above=0.0, maximum=1.0), "batch_size": POSITIVE, "num_workers": COUNT,
        "top_errors": COUNT, "cache.margin": number(0.0), "cache.dir": optional(text),
        "externals": mapping, "externals.*.path": existing_directory(EXTERNAL_SET_ADVICE),
        "externals.*.aliases": optional(mapping), "externals.*.aliases.*": class_name,
        "externals.*.classes": optional(list_of(class_name)),
    },
    "gan": {
        "seed": SEED, "resolution": power_of_two(8), "latent_dim": POSITIVE, "generator_width": POSITIVE,
        "discriminator_width": POSITIVE, "max_channels": POSITIVE, "iterations": POSITIVE, "batch_size": POSITIVE,
        "generator_lr": number(above=0.0), "discriminator_lr": number(above=0.0),
        "betas": list_of(number(0.0, below=1.0), 2), "r1_gamma": number(0.0), "r1_interval": POSITIVE,
        "mode_seeking_weight": number(0.0), "ema_decay": number(0.0, below=1.0), "xflip": boolean, "amp": boolean,
        "checkpoint_every": POSITIVE, "log_every": POSITIVE, "images_per_class": POSITIVE, "grid_columns": POSITIVE,
        "metrics.inception_weights": optional(text), "metrics.kid_subset_size": integer(2),
        "metrics.kid_subsets": POSITIVE,
    },
}


def check_section(section: str, values: Any, path: str | os.PathLike[str] = DEFAULT_PARAMS) -> list[str]:
    """Check top-level ``section`` (its parsed ``values``) against :data:`SCHEMAS`.

    Returns one message per invalid value in schema order, each naming ``path``, the line and
    the key path. The list is empty when every present value is valid.
    """
    if not isinstance(values, dict):
        return [f"{_locate(path, [section])}{section} must be a mapping, got {_shown(values)}"]
    errors: list[str] = []
    for pattern, check in SCHEMAS.get(section, {}).items():
        for keys, value in _present_values(values, pattern.split(".")):
            problem = check(value)
            if problem:
                name = _key_path([section, *keys])
                advice = "" if problem.endswith(".") else f". Correct {name} in {path}."
                errors.append(f"{_locate(path, [section, *keys])}{name} {problem}{advice}")
    return errors


def _present_values(node: Any, pattern: list[str], walked: tuple[str, ...] = ()) -> Iterator[tuple[list[str], Any]]:
    """Yield (key path, value) for every key of ``node`` that ``pattern`` matches and that is present."""
    if not pattern:
        yield list(walked), node
        return
    if not isinstance(node, dict):
        return
    head, rest = pattern[0], pattern[1:]
    if head == "*":
        keys = list(node)
    else:
        keys = [head] if head in node else []
    for key in keys:
        yield from _present_values(node[key], rest, (*walked, str(key)))


def _key_path(keys: list[str]) -> str:
    parts = [keys[0]]
    for key in keys[1:]:
        parts.append(f".{key}" if key.isidentifier() else f"[{key!r}]")
    return "".join(parts)


def _locate(path: str | os.PathLike[str], keys: list[str]) -> str:
    """Return "params.yaml line N: " for the key at ``keys``, or "params.yaml: " when not found."""
    try:
        node: Any = yaml.compose(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        node = None
    line = None
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            line = None
            break
        found = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key), None)
        if found is None:
            line = None
            break
        line = found[0].start_mark.line + 1
        node = found[1]
    return f"{path} line {line}: " if line else f"{path}: "

