"""Atomic file writes: a reader sees the old file or the complete new one, never a partial file.

Each writer writes a temporary file in the destination folder, flushes it to disk and renames
it over the destination, which POSIX makes atomic within one file system.

A process killed mid-write (SIGKILL, power loss) leaves its temporary file behind. Its name,
``.<destination name>.<pid>.<random>.tmp``, records the writer's process id, so the next
successful write of the same destination, or :func:`remove_stale_temporaries`, removes it once
that process is gone. A write that fails for want of space raises :class:`DiskFullError`.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Errors that mean the file system has no room left: out of blocks or inodes, or over a quota.
DISK_FULL_ERRNOS: frozenset[int] = frozenset({errno.ENOSPC, errno.EDQUOT})

_TEMPORARY_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")


class DiskFullError(OSError):
    """A write failed because the file system holding ``folder`` is full (or over quota)."""

    def __init__(self, destination: Path, cause: OSError) -> None:
        folder = destination.parent
        try:
            free = f"{shutil.disk_usage(folder).free} bytes free"
        except OSError:
            free = "free space unknown"
        super().__init__(
            cause.errno,
            f"no space left on the device holding {folder} ({free}) while writing "
            f"{destination.name}: free space on that disk or move the folder to a larger one, "
            "then rerun",
        )
        self.filename = str(destination)
        self.folder = folder


def is_disk_full(error: BaseException) -> bool:
    """Return whether ``error`` is an OSError for a full file system or an exceeded quota."""
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; rename it over ``destination`` on success.

    On an exception the temporary file is removed and ``destination`` is left as it was.
    """
    destination = Path(destination)
    try:
        if not destination.parent.is_dir():  # a stat costs far less than mkdir on an existing folder
            destination.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            prefix=f".{destination.name}.{os.getpid()}.", suffix=".tmp", dir=destination.parent
        )
    except OSError as error:
        if is_disk_full(error):
            raise DiskFullError(destination, error) from error
        raise
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
    except OSError as error:
        if is_disk_full(error) and not isinstance(error, DiskFullError):
            raise DiskFullError(destination, error) from error
        raise
    finally:
        if temporary_path.exists():
            temporary_path.unlink()
    prefix = f".{destination.name}."
    with os.scandir(destination.parent) as entries:  # cheaper than a glob on every write
        _remove_stale([Path(entry.path) for entry in entries
                       if entry.name.startswith(prefix) and entry.name.endswith(".tmp")])


@contextlib.contextmanager
def replaced_folder(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty sibling ``<folder>.partial``; on success, swap it in for ``folder``.

    A crash or an exception while the caller writes leaves the previous ``folder`` whole (and
    the partial folder, which the next call clears). Between the two renames of the swap the
    folder is briefly absent, so a reader may find it missing but never half written.
    """
    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    yield partial

    if not folder.exists():
        os.replace(partial, folder)
        return
    previous = folder.with_name(folder.name + ".previous")
    if previous.exists():
        shutil.rmtree(previous)
    os.replace(folder, previous)
    os.replace(partial, folder)
    shutil.rmtree(previous)


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> int:
    """Remove the temporary files that killed writers left anywhere under ``folder``.

    Only files named like :func:`atomic_path`'s temporaries are considered, and only those whose
    writing process no longer runs. Returns how many were removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    return _remove_stale(folder.rglob(".*.tmp"))


def _remove_stale(candidates: Iterable[Path]) -> int:
    removed = 0
    for candidate in candidates:
        match = _TEMPORARY_NAME.match(candidate.name)
        if match is None or not _writer_is_gone(int(match["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()
            removed += 1
            log.info("removed %s, left by an interrupted write", candidate)
    return removed


def _writer_is_gone(pid: int) -> bool:
    # NOTE: a temporary of an earlier process that had this process's id is kept, because it
    # cannot be distinguished from one that another thread of this process is writing.
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a live process of another user
        return False
    return False


def write_bytes(destination: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(destination) as temporary:
        temporary.write_bytes(data)


def write_text(destination: str | os.PathLike[str], text: str) -> None:
    with atomic_path(destination) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_torch(destination: str | os.PathLike[str], obj: Any) -> None:
    """Save ``obj`` with ``torch.save`` to ``destination`` atomically.

    Given a path, ``torch.save`` names the folder inside its zip archive after the file, which
    here would be the random temporary name. Given a file object it uses a fixed name, so equal
    objects give equal bytes and DVC finds the output unchanged. The archive is built in memory
    because torch 2.14 reports a failed write as a RuntimeError without the errno, and written
    as bytes, a full disk raises :class:`DiskFullError`.
    """
    import torch  # slow to import, and most users of this module never need it

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(destination, buffer.getbuffer())


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
