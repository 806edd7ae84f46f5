"""Shared parts of the hand-run benchmarks: the machine description and the JSON record.

Each benchmark writes ``benchmarks/results/<name>.json`` with :func:`write_record`: the
machine (CPU count, CPU model, Python, torch), the date, the exact command and the figures.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dermcan import atomic_io

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPOSITORY_ROOT / "benchmarks" / "results"

# Taken when a benchmark imports this module, before its work begins.
STARTED_AT = datetime.datetime.now(datetime.timezone.utc)
LOAD_AVERAGE_AT_START = os.getloadavg() if hasattr(os, "getloadavg") else None


def cpu_model() -> str:
    """Return the first ``model name`` of /proc/cpuinfo, or the platform's processor string."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """Describe this machine: CPUs, CPU model, load average, Python and torch versions."""
    description: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import torch

        description["torch"] = torch.__version__
        description["torch_threads"] = torch.get_num_threads()
    except ImportError:
        description["torch"] = None
    if LOAD_AVERAGE_AT_START is not None:
        description["load_average_at_start"] = [round(value, 2) for value in LOAD_AVERAGE_AT_START]
    return description


def command_line() -> str:
    """Return the command that started this process, as a shell would need it."""
    return " ".join(shlex.quote(part) for part in [Path(sys.executable).name, *sys.argv])


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def new_record(name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Start a record: benchmark name, start date (UTC), command, machine and settings."""
    return {
        "benchmark": name,
        "date": STARTED_AT.isoformat(timespec="seconds"),
        "command": command_line(),
        "machine": machine(),
        "settings": dict(settings),
    }


def write_record(name: str, record: Mapping[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    """Write ``record`` to ``results_dir/<name>.json`` (atomically) and return the path."""
    record = dict(record)
    if hasattr(os, "getloadavg"):
        record.setdefault("machine", {})["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    path = results_dir / f"{name}.json"
    atomic_io.write_text(path, json.dumps(record, indent=2) + "\n")
    return path
