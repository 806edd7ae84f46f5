"""The datasheet of a released data-set version: what is in it, where it came from, how it was labelled.

``render_datasheet`` reads the pipeline outputs of a repository and returns Markdown. Each input
is optional. A missing or unreadable file gives "not available" in its section, never an
exception, so a partial pipeline still gets a datasheet that states what is missing.

Inputs (paths relative to the repository root):

- ``data/split/*.csv``: counts per class and split (columns ``path, label, split, group``);
- ``data/crawl/manifest.csv``: candidate URLs per status and per host;
- ``data/crawl/crawl_info.json``: crawl dates and sources (any top-level keys);
- ``data/annotated/annotations.csv``: annotation decisions;
- ``metrics/annotate.json``: measured precision and recall of the annotation;
- the ``crawl`` and ``annotate`` params: the values recorded in ``dvc.lock`` for the stage of
  the same name (what the outputs were made with), else the ones in ``params.yaml``.

The output is deterministic: the same inputs give the same bytes (no generation time), so
rerunning a release that failed half-way does not create a new datasheet version.
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from dermcan import atomic_io

log = logging.getLogger(__name__)

NOT_AVAILABLE = "not available"

SPLIT_FOLDER = Path("data/split")
CRAWL_MANIFEST = Path("data/crawl/manifest.csv")
CRAWL_INFO = Path("data/crawl/crawl_info.json")
ANNOTATIONS = Path("data/annotated/annotations.csv")
ANNOTATE_METRICS = Path("metrics/annotate.json")

# Words that mark the crawl params naming licences and blocked sites. The crawler owns the exact
# key names, so the datasheet matches on these words rather than on one fixed key.
LICENCE_KEY_WORDS = ("licen",)
BLOCKLIST_KEY_WORDS = ("block", "deny", "exclude")
DATE_KEY_WORDS = ("started", "finished", "date", "_at")
SOURCE_KEY_WORDS = ("source", "seed", "start_url", "site", "host", "user_agent")


def _read_csv(path: Path) -> list[dict[str, str]] | None:
    if not path.is_file():
        log.warning("datasheet: %s not found, writing %r in its section", path, NOT_AVAILABLE)
        return None
    return atomic_io.read_csv(path)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        log.warning("datasheet: %s not found, writing %r in its section", path, NOT_AVAILABLE)
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        log.warning(
            "datasheet: %s is not valid JSON (%s), writing %r in its section", path, error, NOT_AVAILABLE
        )
        return None


def load_stage_params(root: Path, section: str) -> tuple[dict[str, Any] | None, str]:
    """Return the params of stage ``section`` and where they came from.

    Keys recorded in ``dvc.lock`` for the stage named ``section`` override ``params.yaml``,
    because a frozen stage keeps outputs made with the locked values even after params.yaml
    changes. Returns ``(None, reason)`` when neither file has the section.
    """
    params: dict[str, Any] = {}
    origin = []
    params_file = root / "params.yaml"
    if params_file.is_file():
        loaded = yaml.safe_load(params_file.read_text(encoding="utf-8")) or {}
        if isinstance(loaded.get(section), dict):
            params.update(loaded[section])
            origin.append("params.yaml")

    locked = locked_params(root, section)
    if locked:
        params.update(locked)
        origin.append("dvc.lock")
    if not origin:
        return None, f"no {section} section in params.yaml or dvc.lock"
    return params, " overridden by ".join(origin)


def locked_params(root: Path, stage: str) -> dict[str, Any]:
    """Return the ``params.yaml`` values that ``dvc.lock`` records for ``stage``, keys without the section prefix."""
    lock_file = root / "dvc.lock"
    if not lock_file.is_file():
        return {}
    lock = yaml.safe_load(lock_file.read_text(encoding="utf-8")) or {}
    recorded = lock.get("stages", {}).get(stage, {}).get("params", {}).get("params.yaml", {})
    prefix = f"{stage}."
    return {
        key[len(prefix) :] if key.startswith(prefix) else key: value
        for key, value in recorded.items()
    }


def locked_output_hashes(root: Path) -> dict[str, str]:
    """Return the md5 of every output recorded in ``dvc.lock``, by path."""
    lock_file = root / "dvc.lock"
    if not lock_file.is_file():
        return {}
    lock = yaml.safe_load(lock_file.read_text(encoding="utf-8")) or {}
    hashes = {}
    for stage in lock.get("stages", {}).values():
        for output in stage.get("outs", []):
            if "md5" in output:
                hashes[output["path"]] = output["md5"]
    return hashes


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)


def _yaml_block(value: Any) -> str:
    text = yaml.safe_dump(value, sort_keys=True, allow_unicode=True, default_flow_style=False)
    return f"```yaml\n{text}```"


def _matching(params: Mapping[str, Any] | None, words: Iterable[str]) -> dict[str, Any]:
    """Return the entries whose key contains one of ``words``, searching nested mappings too.

    A nested match is returned under its dotted key ("profiles.demo.licence").
    """
    if not params:
        return {}
    words = tuple(words)
    found: dict[str, Any] = {}
    for key, value in params.items():
        if any(word in str(key).lower() for word in words):
            found[str(key)] = value
        elif isinstance(value, Mapping):
            for nested_key, nested_value in _matching(value, words).items():
                found[f"{key}.{nested_key}"] = nested_value
    return found


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        items = []
        for key in sorted(value):
            items.extend(_flatten(value[key], f"{prefix}{key}."))
        return items
    return [(prefix.rstrip("."), value)]


def _format_number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def split_section(root: Path) -> str:
    """Count rows per class and split in each ``data/split/*.csv``."""
    folder = root / SPLIT_FOLDER
    lists = sorted(folder.glob("*.csv")) if folder.is_dir() else []
    if not lists:
        return f"## Classes and splits\n\nTraining lists (`{SPLIT_FOLDER}/*.csv`): {NOT_AVAILABLE}.\n"

    parts = ["## Classes and splits\n"]
    for path in lists:
        rows = atomic_io.read_csv(path)
        counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for row in rows:
            counts[row.get("label", "")][row.get("split", "")] += 1
        splits = sorted({split for counter in counts.values() for split in counter})
        table_rows = [
            [label, *(counter[split] for split in splits), sum(counter.values())]
            for label, counter in sorted(counts.items())
        ]
        totals = [sum(counts[label][split] for label in counts) for split in splits]
        table_rows.append(["**total**", *totals, len(rows)])
        parts.append(f"### `{SPLIT_FOLDER / path.name}`\n")
        parts.append(_table(["class", *splits, "total"], table_rows) + "\n")
    return "\n".join(parts)


def crawl_section(root: Path, crawl_params: Mapping[str, Any] | None) -> str:
    """Describe the crawl: dates, sources, hosts and per-status counts."""
    parts = ["## Crawl\n"]
    info = _read_json(root / CRAWL_INFO)
    if isinstance(info, dict):
        dates = _matching(info, DATE_KEY_WORDS)
        date_text = ", ".join(f"{key}: {dates[key]}" for key in sorted(dates)) or NOT_AVAILABLE
        sources = _matching(info, SOURCE_KEY_WORDS)
    else:
        date_text = NOT_AVAILABLE
        sources = {}
    parts.append(f"- Crawl dates: {date_text}")
    if crawl_params and "source" in crawl_params:
        sources = {"source (params)": crawl_params["source"], **sources}
    if sources:
        parts.append("- Sources:\n\n" + _yaml_block(sources) + "\n")
    else:
        parts.append(f"- Sources: {NOT_AVAILABLE}\n")

    manifest = _read_csv(root / CRAWL_MANIFEST)
    if manifest is None:
        parts.append(f"Crawl manifest (`{CRAWL_MANIFEST}`): {NOT_AVAILABLE}.\n")
        return "\n".join(parts)

    statuses = collections.Counter(row.get("status", "") for row in manifest)
    parts.append(f"Candidate image URLs in `{CRAWL_MANIFEST}`: {len(manifest)}.\n")
    parts.append(_table(["status", "URLs"], sorted(statuses.items())) + "\n")

    hosts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for row in manifest:
        host = urlsplit(row.get("page_url") or row.get("url", "")).hostname or "(none)"
        hosts[host]["candidates"] += 1
        if row.get("status") == "downloaded":
            hosts[host]["downloaded"] += 1
    parts.append(f"Hosts (of the page that showed the image): {len(hosts)}.\n")
    parts.append(
        _table(
            ["host", "candidate URLs", "downloaded"],
            [[host, counter["candidates"], counter["downloaded"]] for host, counter in sorted(hosts.items())],
        )
        + "\n"
    )
    return "\n".join(parts)


def annotation_section(
    root: Path, annotate_params: Mapping[str, Any] | None, params_origin: str
) -> str:
    """Describe the annotation method, its decisions and its measured precision and recall."""
    parts = ["## Annotation\n"]
    if annotate_params is None:
        parts.append(f"Method (`annotate` params): {NOT_AVAILABLE}.\n")
    else:
        parts.append(f"Method (`annotate` params, from {params_origin}):\n")
        parts.append(_yaml_block(dict(annotate_params)) + "\n")

    annotations = _read_csv(root / ANNOTATIONS)
    if annotations is None:
        parts.append(f"Decisions (`{ANNOTATIONS}`): {NOT_AVAILABLE}.\n")
    else:
        decisions = collections.Counter(row.get("decision", "") for row in annotations)
        parts.append(f"Decisions in `{ANNOTATIONS}`:\n")
        parts.append(_table(["decision", "rows"], sorted(decisions.items())) + "\n")

    metrics = _read_json(root / ANNOTATE_METRICS)
    if metrics is None:
        parts.append(f"Measured precision and recall (`{ANNOTATE_METRICS}`): {NOT_AVAILABLE}.\n")
    else:
        parts.append(
            f"Measured against the demo web's ground truth (`{ANNOTATE_METRICS}`); "
            "precision and recall rows first:\n"
        )
        flat = _flatten(metrics)
        flat.sort(key=lambda item: (not any(word in item[0] for word in ("precision", "recall")), item[0]))
        parts.append(_table(["metric", "value"], [[key, _format_number(value)] for key, value in flat]) + "\n")
    return "\n".join(parts)


def licence_section(crawl_params: Mapping[str, Any] | None) -> str:
    """List the licences and the site blocklist from the crawl params."""
    parts = ["## Licences and blocked sites\n"]
    for title, words in (("Licences", LICENCE_KEY_WORDS), ("Site blocklist", BLOCKLIST_KEY_WORDS)):
        found = _matching(crawl_params, words)
        if found:
            parts.append(f"{title} (`crawl` params):\n\n" + _yaml_block(found) + "\n")
        else:
            parts.append(f"{title}: {NOT_AVAILABLE}.\n")
    return "\n".join(parts)


def render_datasheet(root: str | Path, version: str, *, tag: str) -> str:
    """Return the Markdown datasheet of the pipeline outputs under ``root`` for release ``version``."""
    root = Path(root)
    crawl_params, crawl_origin = load_stage_params(root, "crawl")
    annotate_params, annotate_origin = load_stage_params(root, "annotate")
    hashes = locked_output_hashes(root)

    header = [
        f"# dermcan data set {version}\n",
        f"Git tag `{tag}`. Get it with `git checkout {tag} && dvc pull`, or without cloning with "
        f"`dvc get <repository URL> data/annotated --rev {tag}`.\n",
        "`data/release/` holds this datasheet, the CAN-format manifest `can_manifest.txt`, and "
        "`shards/crawl/` and `shards/annotated/`: the folders `data/crawl` and `data/annotated` "
        "packed into tar shards, each with an `index.csv` that gives every file's shard, byte "
        "offset, size, SHA-256 and provenance (source URL, page, labels, split). A few shards "
        "download much faster than thousands of small files: "
        f"`dvc get <repository URL> data/release --rev {tag}`, then "
        "`python -m dermcan.shards extract release/shards/annotated data/annotated`.\n",
        "Content hashes of the pipeline outputs (from `dvc.lock`):\n",
    ]
    if hashes:
        header.append(_table(["output", "md5"], sorted(hashes.items())) + "\n")
    else:
        header.append(f"{NOT_AVAILABLE}.\n")

    sections = [
        "\n".join(header),
        split_section(root),
        crawl_section(root, crawl_params),
        annotation_section(root, annotate_params, annotate_origin),
        licence_section(crawl_params),
        "## Crawl settings\n\n"
        + (
            f"From {crawl_origin}:\n\n" + _yaml_block(dict(crawl_params)) + "\n"
            if crawl_params is not None
            else f"{NOT_AVAILABLE}.\n"
        ),
    ]
    return "\n".join(sections)
