"""Atomic file writes: a reader sees the old file or the complete new one, never a partial file.

Each writer writes a temporary file in the destination folder, flushes it to disk and renames
it over the destination, which POSIX makes atomic within one file system.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; rename it over ``destination`` on success.

    On an exception the temporary file is removed and ``destination`` is left as it was.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent
    )
    os.close(handle)
    temporary_path = Path(temporary)
    # mkstemp creates the file readable by its owner only; give it the usual umask-based mode.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary_path, 0o666 & ~umask)
    try:
        yield temporary_path
        with open(temporary_path, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary_path, destination)
    finally:
        if temporary_path.exists():
            temporary_path.unlink()


def write_bytes(destination: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(destination) as temporary:
        temporary.write_bytes(data)


def write_text(destination: str | os.PathLike[str], text: str) -> None:
    with atomic_path(destination) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(destination: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON with sorted keys, so equal data gives equal bytes."""
    write_text(destination, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_csv(
    destination: str | os.PathLike[str],
    rows: Iterable[Mapping[str, Any]],
    fieldnames: Sequence[str],
) -> None:
    """Write ``rows`` as CSV with a header; keys missing from a row are written empty."""
    with atomic_path(destination) as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(fieldnames), extrasaction="raise")
            writer.writeheader()
            for row in rows:
                writer.writerow(row)


def read_csv(source: str | os.PathLike[str]) -> list[dict[str, str]]:
    with open(source, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
