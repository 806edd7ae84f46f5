"""Loading params.yaml, the single source of every stage's settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PARAMS = Path("params.yaml")


def load_params(section: str | None = None, path: str | os.PathLike[str] = DEFAULT_PARAMS) -> Any:
    """Return ``section`` of the YAML file at ``path``, or the whole file when ``section`` is None.

    A dotted ``section`` ("train.sets") walks nested mappings.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: run stages from the repository root, where params.yaml is"
        )
    with open(path, encoding="utf-8") as handle:
        params = yaml.safe_load(handle) or {}
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
