"""Wall time of `dvc repro` in a fresh clone: the full demo, a no-op rerun, an evaluate-param rerun.

Run by hand from the repository root. At the default demo size (the target for the full run is
under 10 minutes on 2 cores)::

    .venv/bin/python benchmarks/bench_pipeline.py --cpus 2

At the tiny size of the pipeline tests, for development::

    .venv/bin/python benchmarks/bench_pipeline.py --tiny

It clones this repository with ``git clone`` into a temporary folder, so only committed files
take part, and runs the stages with this virtual environment's ``dvc`` and ``python``, with
``PYTHONPATH`` set to the clone's ``src/``. Nothing is installed. It then times:

1. ``full``: ``dvc repro`` of every stage, with each stage's wall time taken from the moment
   dvc prints its ``Running stage`` line to the next such line (or to the end), so a stage's
   time includes dvc's hashing and caching of its outputs;
2. ``no_op``: ``dvc repro`` right after, ``--runs`` times; the target is under 5 s, and the
   output must name no stage as running;
3. ``evaluate_param``: ``--runs`` reruns, each after setting ``evaluate.seed`` to a new value
   in params.yaml. The stages that ran must be every ``evaluate@`` stage and nothing but them
   and ``summary``.

The full run is done once. The record goes to benchmarks/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from pipeline_repo import TINY_PARAMS, dvc_environment, update_params  # noqa: E402
from records import REPOSITORY_ROOT, median, new_record, write_record  # noqa: E402

RUNNING_STAGE = re.compile(r"^Running stage '([^']+)'")
FULL_RUN_TARGET_S = 600.0
NO_OP_TARGET_S = 5.0


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` pairs (dotted params keys, YAML values) into a dict."""
    overrides = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise SystemExit(f"invalid --params entry {pair!r}: expected KEY=VALUE, e.g. train.epochs=1")
        overrides[key] = yaml.safe_load(value)
    return overrides


def clone(destination: Path, environment: dict[str, str]) -> Path:
    """Clone this repository's committed state into ``destination``."""
    subprocess.run(["git", "clone", "-q", str(REPOSITORY_ROOT), str(destination)], env=environment, check=True)
    return destination


def timed_repro(repo: Path, environment: dict[str, str], log_path: Path) -> dict[str, Any]:
    """Run ``dvc repro`` in ``repo``; return its wall time, the stages it ran and their wall times.

    The time before the first ``Running stage`` line (dvc starting and checking the graph) is
    reported apart, so the stage times add up to the total with it.

    Every output line is written to ``log_path`` with the seconds since the start.
    """
    started = time.perf_counter()
    stage_starts: list[tuple[str, float]] = []
    with open(log_path, "a", encoding="utf-8") as log, subprocess.Popen(
        ["dvc", "repro"], cwd=repo, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            elapsed = time.perf_counter() - started
            log.write(f"{elapsed:9.2f} {line}")
            match = RUNNING_STAGE.match(line)
            if match:
                stage_starts.append((match.group(1), elapsed))
        returncode = process.wait()
    total = time.perf_counter() - started
    if returncode != 0:
        raise SystemExit(f"dvc repro failed with exit code {returncode} in {repo}; see {log_path}")
    ends = [start for _, start in stage_starts[1:]] + [total]
    stages = {name: round(end - start, 2) for (name, start), end in zip(stage_starts, ends)}
    before_first_stage = stage_starts[0][1] if stage_starts else total
    return {"seconds": round(total, 2), "seconds_before_first_stage": round(before_first_stage, 2), "stages": stages}


def check_evaluate_rerun(ran: list[str], all_stages: list[str]) -> str:
    """Return an empty string when ``ran`` is every evaluate@ stage plus at most summary, else why not."""
    evaluate_stages = {name for name in all_stages if name.startswith("evaluate@")}
    unexpected = sorted(set(ran) - evaluate_stages - {"summary"})
    missing = sorted(evaluate_stages - set(ran))
    problems = []
    if unexpected:
        problems.append(f"unexpected stages ran: {', '.join(unexpected)}")
    if missing:
        problems.append(f"evaluate stages did not run: {', '.join(missing)}")
    return "; ".join(problems)


def print_summary(full: dict[str, Any], no_ops: list[dict[str, Any]], reruns: list[dict[str, Any]]) -> None:
    print("| stage (full run) | wall time (s) |")
    print("|---|---:|")
    for name, seconds in full["stages"].items():
        print(f"| {name} | {seconds:.1f} |")
    print(f"| (dvc before the first stage) | {full['seconds_before_first_stage']:.1f} |")
    print(f"| **total** | **{full['seconds']:.1f}** |")
    no_op = median([run["seconds"] for run in no_ops])
    rerun = median([run["seconds"] for run in reruns])
    print(f"\nfull dvc repro:          {full['seconds']:7.1f} s (target under {FULL_RUN_TARGET_S:.0f} s)")
    print(f"no-op dvc repro:         {no_op:7.2f} s median of {len(no_ops)} (target under {NO_OP_TARGET_S:.0f} s)")
    print(f"evaluate-param rerun:    {rerun:7.1f} s median of {len(reruns)}, stages: {', '.join(reruns[0]['stages'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", nargs="+", default=[], metavar="KEY=VALUE",
                        help="params.yaml overrides in the clone, dotted keys and YAML values, e.g. train.epochs=1")
    parser.add_argument("--tiny", action="store_true",
                        help="apply TINY_PARAMS of tests/pipeline_repo.py (the pipeline tests' size) before --params")
    parser.add_argument("--runs", type=int, default=3, help="no-op runs and evaluate-param reruns, each (default 3)")
    parser.add_argument("--cpus", type=int, help="restrict the benchmark and its children to this many CPUs (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone and print its path")
    parser.add_argument("--no-record", action="store_true", help="print only; do not write benchmarks/results/pipeline.json")
    args = parser.parse_args()

    overrides = {**(TINY_PARAMS if args.tiny else {}), **parse_overrides(args.params)}
    if args.cpus:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cpus])
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    repo = work / "repo"
    log_path = work / "repro.log"
    environment = dvc_environment()
    environment["PYTHONPATH"] = str(repo / "src")  # the clone's code, not the editable install's
    environment["PYTHONUNBUFFERED"] = "1"  # dvc's stage lines arrive when printed, for the timestamps

    try:
        clone(repo, environment)
        if overrides:
            update_params(repo, overrides)
        all_stages = subprocess.run(["dvc", "stage", "list", "--names-only"], cwd=repo, env=environment,
                                    capture_output=True, text=True, check=True).stdout.split()

        full = timed_repro(repo, environment, log_path)
        print(f"full dvc repro: {full['seconds']:.1f} s", file=sys.stderr)
        no_ops = [timed_repro(repo, environment, log_path) for _ in range(args.runs)]
        if any(run["stages"] for run in no_ops):
            raise SystemExit(f"a no-op dvc repro ran stages {[run['stages'] for run in no_ops]}; see {log_path}")

        reruns = []
        seed = int(yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))["evaluate"]["seed"])
        for run in range(args.runs):
            update_params(repo, {"evaluate.seed": seed + run + 1})
            rerun = timed_repro(repo, environment, log_path)
            problem = check_evaluate_rerun(list(rerun["stages"]), all_stages)
            if problem:
                raise SystemExit(f"evaluate.seed change: {problem}; see {log_path}")
            reruns.append(rerun)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    print_summary(full, no_ops, reruns)
    if not args.no_record:
        record = new_record("pipeline", {"params_overrides": overrides, "tiny": args.tiny, "runs": args.runs,
                                         "cpus": len(os.sched_getaffinity(0))})
        size = "default demo"
        if args.tiny:
            size = "tiny (TINY_PARAMS of tests/pipeline_repo.py)"
        elif overrides:
            size = "default demo with overrides"
        record.update(
            size=size,
            full_run=full,
            no_op={"median_seconds": median([run["seconds"] for run in no_ops]), "runs_seconds": [run["seconds"] for run in no_ops]},
            evaluate_param_rerun={
                "median_seconds": median([run["seconds"] for run in reruns]),
                "runs_seconds": [run["seconds"] for run in reruns],
                "stages": reruns[0]["stages"],
                "only_evaluate_and_summary_ran": True,
            },
            targets={"full_run_under_s": FULL_RUN_TARGET_S, "full_run_met": full["seconds"] < FULL_RUN_TARGET_S,
                     "no_op_under_s": NO_OP_TARGET_S,
                     "no_op_met": median([run["seconds"] for run in no_ops]) < NO_OP_TARGET_S},
        )
        print(f"wrote {write_record('pipeline', record)}")


if __name__ == "__main__":
    main()
