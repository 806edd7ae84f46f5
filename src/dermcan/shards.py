"""Deterministic tar shards of an image folder, with an index CSV that keeps per-image provenance.

Moving ten thousand small files to or from a DVC remote costs one request per file. Packing
them into a few tar files gives DVC a few large objects to move instead. The index makes the
shards usable without unpacking. Each row names an image's relative path and its shard, the
byte offset and size of its data inside the tar, and its SHA-256. Provenance columns that the
caller adds (source URL, label, split) follow.

Shards are deterministic: the same folder and the same ``num_shards`` give byte-identical tar
files and index. Every member gets mtime 0, uid and gid 0, no owner names and mode 0644. An
image is assigned to a shard by a hash of its relative path, not by its position in a sorted
list. Adding or changing one image therefore rewrites one shard, and DVC uploads only that one.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import sys
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dermcan import atomic_io

log = logging.getLogger(__name__)

INDEX_NAME = "index.csv"
INDEX_COLUMNS = ("path", "shard", "offset", "size", "sha256")
DEFAULT_NUM_SHARDS = 16


@dataclass(frozen=True)
class ShardMember:
    """One image inside a shard: where its bytes are and what they hash to."""

    path: str
    shard: str
    offset: int
    size: int
    sha256: str


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.tar"


def assign_shard(relative_path: str, num_shards: int) -> int:
    """Return the shard number of ``relative_path``: a hash of the path, stable across runs."""
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


def _list_files(source: Path) -> list[str]:
    files = []
    for root, directories, names in os.walk(source):
        directories.sort()
        for name in names:
            relative = (Path(root) / name).relative_to(source).as_posix()
            files.append(relative)
    return sorted(files)


def _tar_info(relative_path: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(relative_path)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_shards(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    num_shards: int = DEFAULT_NUM_SHARDS,
    provenance: Mapping[str, Mapping[str, str]] | None = None,
    provenance_columns: Sequence[str] = (),
) -> list[ShardMember]:
    """Pack every file under ``source`` into ``num_shards`` tar files and an index in ``destination``.

    ``provenance`` maps a file's path relative to ``source`` (POSIX separators) to extra
    index columns, named in ``provenance_columns``; files it does not list get empty values.
    Shards that would be empty are not written. ``destination`` must not be inside ``source``.
    Returns the index rows in path order. Raises ``FileNotFoundError`` when ``source`` is not a
    folder and ``ValueError`` when ``num_shards`` is below 1 or a column name clashes with the index.
    """
    source = Path(source)
    destination = Path(destination)
    if not source.is_dir():
        raise FileNotFoundError(f"shard source {source} is not a folder")
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}")
    clashing = set(provenance_columns) & set(INDEX_COLUMNS)
    if clashing:
        raise ValueError(f"provenance_columns {sorted(clashing)} clash with the index columns")
    provenance = provenance or {}

    files = _list_files(source)
    by_shard: dict[int, list[str]] = {}
    for relative in files:
        by_shard.setdefault(assign_shard(relative, num_shards), []).append(relative)

    destination.mkdir(parents=True, exist_ok=True)
    # Shards of an earlier run that this run leaves empty would otherwise linger beside the index.
    for stale in destination.glob("shard-*.tar"):
        if stale.name not in {shard_name(number) for number in by_shard}:
            stale.unlink()
    members: list[ShardMember] = []
    for number in sorted(by_shard):
        name = shard_name(number)
        with atomic_io.atomic_path(destination / name) as temporary:
            digests: dict[str, str] = {}
            with tarfile.open(temporary, "w", format=tarfile.PAX_FORMAT) as archive:
                for relative in by_shard[number]:
                    data = (source / relative).read_bytes()
                    archive.addfile(_tar_info(relative, len(data)), io.BytesIO(data))
                    digests[relative] = hashlib.sha256(data).hexdigest()
            # addfile() works on a copy of the TarInfo, so the data offsets are read back here.
            with tarfile.open(temporary, "r") as archive:
                for info in archive.getmembers():
                    members.append(
                        ShardMember(
                            path=info.name,
                            shard=name,
                            offset=info.offset_data,
                            size=info.size,
                            sha256=digests[info.name],
                        )
                    )
        log.info("wrote %s with %d files", destination / name, len(by_shard[number]))

    members.sort(key=lambda member: member.path)
    rows = []
    for member in members:
        row: dict[str, object] = {
            "path": member.path,
            "shard": member.shard,
            "offset": member.offset,
            "size": member.size,
            "sha256": member.sha256,
        }
        extra = provenance.get(member.path, {})
        for column in provenance_columns:
            row[column] = extra.get(column, "")
        rows.append(row)
    atomic_io.write_csv(destination / INDEX_NAME, rows, [*INDEX_COLUMNS, *provenance_columns])
    log.info("indexed %d files in %d shards under %s", len(members), len(by_shard), destination)
    return members


def read_index(shard_folder: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Return the index rows of a shard folder written by :func:`write_shards`."""
    index = Path(shard_folder) / INDEX_NAME
    if not index.exists():
        raise FileNotFoundError(f"{index} not found: is {shard_folder} a shard folder?")
    return atomic_io.read_csv(index)


def read_member(shard_folder: str | os.PathLike[str], row: Mapping[str, str]) -> bytes:
    """Read one image's bytes straight from its shard, using the offset in its index row.

    Raises ``ValueError`` when the bytes do not match the SHA-256 in the index.
    """
    shard = Path(shard_folder) / row["shard"]
    with open(shard, "rb") as handle:
        handle.seek(int(row["offset"]))
        data = handle.read(int(row["size"]))
    digest = hashlib.sha256(data).hexdigest()
    if digest != row["sha256"]:
        raise ValueError(
            f"{row['path']} in {shard} has SHA-256 {digest}, expected {row['sha256']} from the index: "
            "the shard is damaged or does not belong to this index; pull it again"
        )
    return data


def extract_shards(
    shard_folder: str | os.PathLike[str], destination: str | os.PathLike[str]
) -> int:
    """Write every image listed in the index under ``destination``, checking each SHA-256.

    Returns the number of files written. Files already in ``destination`` with the expected
    content are left untouched, so an interrupted extraction can simply be run again.
    """
    destination = Path(destination)
    rows = read_index(shard_folder)
    written = 0
    for row in rows:
        target = destination / row["path"]
        if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == row["sha256"]:
            continue
        data = read_member(shard_folder, row)
        # A finished temporary file is renamed into place, so a target is never a partial image.
        # Files are not fsynced one by one. After a crash, a rerun finds any damaged file by its
        # SHA-256 and writes it again.
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, target)
        written += 1
    log.info("extracted %d of %d files into %s", written, len(rows), destination)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dermcan.shards", description="Write or extract tar shards of an image folder."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write", help="pack SOURCE into shards and an index in DESTINATION")
    write.add_argument("source")
    write.add_argument("destination")
    write.add_argument(
        "--num-shards",
        type=int,
        default=DEFAULT_NUM_SHARDS,
        help=f"number of tar files to spread the images over (default {DEFAULT_NUM_SHARDS})",
    )
    extract = commands.add_parser("extract", help="unpack the shards in SHARDS into DESTINATION")
    extract.add_argument("shards")
    extract.add_argument("destination")
    arguments = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if arguments.command == "write":
        write_shards(arguments.source, arguments.destination, num_shards=arguments.num_shards)
    else:
        extract_shards(arguments.shards, arguments.destination)
    return 0


if __name__ == "__main__":
    sys.exit(main())
