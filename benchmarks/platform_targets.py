"""The ONNX and PyTorch targets, measured in interleaved rounds.

``python -m benchmarks.platform_targets [--workloads iris_onnx,iris_torch,mlp_onnx,mlp_torch]
[--rounds 3] [--duration 5] [--warmup 1] [--flag=--pyserving_flag=value ...] [--out DIR]``

For each workload (see :mod:`benchmarks.models`) and round, three servers are started in
turn, alone, and measured, then stopped; the order of the three alternates between rounds so
that a drift of the machine's speed falls on all of them:

* ``pyserving`` (default flags): REST and gRPC at concurrency 1 and 32;
* ``pyserving-batching`` (``benchmarks.run``'s batching parameters): REST and gRPC at 32;
* ``fastapi`` (``benchmarks/fastapi_server.py`` serving the same ``model.onnx`` or
  ``model.pt2``): REST at concurrency 1.

Each target is the median over rounds of the ratio measured within a round (the figures of
one round are taken minutes apart at most): pyserving's REST p50 at concurrency 1 / FastAPI's
(goal <= 0.7), pyserving's gRPC p50 / its REST p50 (< 1), QPS at concurrency 32 with batching
/ without (>= 2, REST and gRPC). It prints every round's figures and the targets, and writes
them to ``<out>/platform-targets-<stamp>.json``. The machine is not waited for (other work
on it is recorded per point as ``other CPU%``): the paired ratios are what to read.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import statistics
import sys
from typing import Any

from benchmarks import models, report, run, servers

CONFIGS: dict[str, tuple[str, tuple[tuple[str, tuple[int, ...]], ...]]] = {
    # label -> (kind, ((protocol, concurrency levels), ...))
    # Both latency points (concurrency 1) before either load point: each protocol's p50 is
    # measured on a server that has not just been loaded (the protocols' order alternates
    # between rounds, see _in_round_order).
    report.PYSERVING: (
        "pyserving",
        (("rest", (1,)), ("grpc", (1,)), ("rest", (32,)), ("grpc", (32,))),
    ),
    report.PYSERVING_BATCHING: ("pyserving", (("rest", (32,)), ("grpc", (32,)))),
    report.FASTAPI: ("fastapi", (("rest", (1,)),)),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.platform_targets")
    parser.add_argument("--workloads", default=",".join(models.PLATFORM_WORKLOADS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--out", type=pathlib.Path, default=servers.ROOT / "benchmarks/results")
    parser.add_argument("--models-dir", type=pathlib.Path, default=None)
    parser.add_argument(
        "--flag",
        action="append",
        default=[],
        help="a flag added to both pyserving servers' command lines (repeat)",
    )
    args = parser.parse_args(argv)
    args.workloads = [w for w in args.workloads.split(",") if w]
    unknown = set(args.workloads) - set(models.PLATFORM_WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)}: {', '.join(models.PLATFORM_WORKLOADS)}")
    return args


def _in_round_order(
    points: tuple[tuple[str, tuple[int, ...]], ...], round_: int
) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``points`` as listed in even rounds; in odd rounds the protocols measured at the same
    concurrency levels one after the other swap places, so neither always goes first."""
    if round_ % 2 == 0:
        return points
    out: list[tuple[str, tuple[int, ...]]] = []
    i = 0
    while i < len(points):
        j = i
        while j < len(points) and points[j][1] == points[i][1]:
            j += 1
        out.extend(reversed(points[i:j]))
        i = j
    return tuple(out)


def _command(
    kind: str, workload: models.Workload, rest: int, grpc: int, flags: tuple[str, ...]
) -> list[str]:
    if kind == "fastapi":
        return servers.fastapi_command(workload.name, workload.base_path, rest)
    return servers.pyserving_command(workload.name, workload.base_path, grpc, rest, flags)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every round of every workload; returns the JSON document."""
    out: pathlib.Path = args.out.resolve()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = out / f"platform-targets-{stamp}"
    work.mkdir(parents=True)
    models_dir = (args.models_dir or out / "models").resolve()
    batching_file = work / "batching_parameters.txt"
    batching_file.write_text(run.BATCHING_PARAMETERS)
    batching = ("--enable_batching", f"--batching_parameters_file={batching_file}")
    doc: dict[str, Any] = {
        "meta": {
            "command": ["python", "-m", "benchmarks.platform_targets", *sys.argv[1:]],
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "git_commit": run._git_commit(),
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "pyserving_flags": args.flag,
        },
        "runs": [],
    }
    labels = list(CONFIGS)
    for name in args.workloads:
        workload = models.workload(name, models_dir)
        payload = work / f"payload-{name}.json"
        payload.write_text(json.dumps(workload.payload()))
        for round_ in range(args.rounds):
            order = labels[round_ % len(labels) :] + labels[: round_ % len(labels)]
            for label in order:
                kind, points = CONFIGS[label]
                rest, grpc = servers.free_port(), servers.free_port()
                flags = (*(batching if label == report.PYSERVING_BATCHING else ()), *args.flag)
                server = servers.ServerProcess(
                    label=label,
                    command=_command(kind, workload, rest, grpc, flags),
                    log_path=work / f"server-{name}-{label}-{round_}.log",
                    rest_port=rest,
                    grpc_port=grpc if kind == "pyserving" else 0,
                )
                run._say(f"{name}: round {round_ + 1}, {label}")
                with servers.running(server, name):
                    for protocol, levels in _in_round_order(points, round_):
                        port = rest if protocol == "rest" else grpc
                        result = run.run_loadgen(
                            protocol, port, payload, args, server.pid, list(levels)
                        )
                        doc["runs"].append(
                            {
                                "workload": name,
                                "server": label,
                                "protocol": protocol,
                                "round": round_,
                                "points": result["points"],
                            }
                        )
    return doc


def _point(
    doc: dict[str, Any], workload: str, server: str, protocol: str, round_: int, c: int
) -> dict[str, Any] | None:
    for run_ in doc["runs"]:
        if (run_["workload"], run_["server"], run_["protocol"], run_["round"]) == (
            workload,
            server,
            protocol,
            round_,
        ):
            for point in run_["points"]:
                if int(point["concurrency"]) == c:
                    return dict(point)
    return None


def _p50(point: dict[str, Any] | None) -> float | None:
    return None if point is None else point["latency_ms"]["p50"]


def _qps(point: dict[str, Any] | None) -> float | None:
    return None if point is None else float(point["qps"])


#: target id -> (description, goal operator, bound, numerator, denominator); each side is
#: (server, protocol, concurrency, figure).
TARGETS: dict[str, tuple[str, str, float, tuple[str, str, int, str], tuple[str, str, int, str]]] = {
    "rest_p50_vs_fastapi": (
        "REST p50 at concurrency 1: pyserving / FastAPI",
        "<=",
        report.PLATFORM_P50_BOUND,
        (report.PYSERVING, "rest", 1, "p50"),
        (report.FASTAPI, "rest", 1, "p50"),
    ),
    "grpc_p50_vs_rest": (
        "p50 at concurrency 1: pyserving gRPC / pyserving REST",
        "<",
        1.0,
        (report.PYSERVING, "grpc", 1, "p50"),
        (report.PYSERVING, "rest", 1, "p50"),
    ),
    "batched_vs_unbatched_rest": (
        "REST QPS at concurrency 32: with batching / without",
        ">=",
        2.0,
        (report.PYSERVING_BATCHING, "rest", 32, "qps"),
        (report.PYSERVING, "rest", 32, "qps"),
    ),
    "batched_vs_unbatched_grpc": (
        "gRPC QPS at concurrency 32: with batching / without",
        ">=",
        2.0,
        (report.PYSERVING_BATCHING, "grpc", 32, "qps"),
        (report.PYSERVING, "grpc", 32, "qps"),
    ),
}


def summary(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per workload and target: each round's figures and ratio, their median, and whether
    the median meets the goal."""
    rows = []
    workloads = list(dict.fromkeys(r["workload"] for r in doc["runs"]))
    rounds = sorted({r["round"] for r in doc["runs"]})
    for workload in workloads:
        for target_id, (text, op, bound, top, bottom) in TARGETS.items():
            figures = []
            for round_ in rounds:
                values = []
                for server, protocol, c, figure in (top, bottom):
                    point = _point(doc, workload, server, protocol, round_, c)
                    values.append(_p50(point) if figure == "p50" else _qps(point))
                if None not in values and values[1]:
                    figures.append((values[0], values[1], values[0] / values[1]))
            ratio = statistics.median(f[2] for f in figures) if figures else None
            met = None
            if ratio is not None:
                met = (
                    ratio <= bound if op == "<=" else ratio < bound if op == "<" else ratio >= bound
                )
            rows.append(
                {
                    "workload": workload,
                    "id": target_id,
                    "description": text,
                    "goal": f"{op} {bound:g}",
                    "rounds": [
                        {"numerator": a, "denominator": b, "ratio": r} for a, b, r in figures
                    ],
                    "ratio": ratio,
                    "met": met,
                }
            )
    return rows


def render(doc: dict[str, Any]) -> str:
    lines = [
        "| workload | server | protocol | conc | round | QPS | p50 ms | p99 ms "
        "| srv CPU us/req | other CPU% |",
        "|" + "---|" * 10,
    ]
    for run_ in doc["runs"]:
        for p in run_["points"]:
            lines.append(
                f"| {run_['workload']} | {run_['server']} | {run_['protocol']} | "
                f"{p['concurrency']} | {run_['round'] + 1} | {p['qps']:,.0f} | "
                f"{p['latency_ms']['p50']:.3f} | {p['latency_ms']['p99']:.3f} | "
                f"{p.get('server_cpu_us_per_request') or 0:,.0f} | "
                f"{p.get('other_cpu_percent') or 0:.0f} |"
            )
    lines += [
        "",
        "| workload | target | per round (numerator / denominator = ratio) "
        "| median ratio | goal | met |",
        "|" + "---|" * 6,
    ]
    for row in doc["summary"]:
        rounds = "; ".join(
            f"{r['numerator']:.3g} / {r['denominator']:.3g} = {r['ratio']:.2f}"
            for r in row["rounds"]
        )
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
        met = {True: "yes", False: "**no**", None: "n/a"}[row["met"]]
        lines.append(
            f"| {row['workload']} | {row['description']} | {rounds} | {ratio} "
            f"| {row['goal']} | {met} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    doc = measure(args)
    doc["summary"] = summary(doc)
    path = args.out.resolve() / f"platform-targets-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(doc, indent=1))
    sys.stdout.write(render(doc))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
