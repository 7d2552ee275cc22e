"""Compare source trees of pyserving on the same points, measured in one run.

``python -m benchmarks.compare --variant before=DIR --variant after=src [--rounds 2]
[--workloads half_plus_two,mlp] [--concurrency 1,8,32,64] [--duration 10] [--no-batching]
[--protocols grpc,rest]``

Each variant is a directory holding the ``pyserving`` package (a ``src`` directory: a copy
of an older commit's ``src``, or a prototype); its server runs with that directory first on
``PYTHONPATH``, everything else (Python, TensorFlow, the load generator, the models) shared.
For each workload and configuration (``pyserving``; for ``mlp`` also
``pyserving-batching`` with ``benchmarks.run``'s batching parameters), every round starts
each variant's server in turn, measures each protocol of ``--protocols`` (default ``grpc``:
the raw HTTP/2 client of ``benchmarks/h2grpc.py``; ``rest``: the raw HTTP/1.1 client of
``benchmarks/loadgen.py``), in that order, at every concurrency level and stops it; the
variants' order
alternates between rounds, so a drift of the machine's speed falls on both. A measurement
disturbed by other processes is repeated as in ``benchmarks.run``.

It prints, per point, each variant's median QPS and server CPU per request over the rounds,
and for each variant against the first the median over rounds of the ratio within a round
(the two measured minutes apart, so a drift of the machine's speed between rounds cancels
out), and writes every figure to ``<out>/compare-<stamp>.json``. With more than one protocol
it also prints, per variant, each protocol's server CPU per request and p50 latency as a
ratio to the first protocol's, measured in the same server seconds apart (median over
rounds): e.g. REST's cost relative to gRPC's.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import pathlib
import statistics
import sys
from typing import Any

from benchmarks import models, run, servers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__)
    parser.add_argument(
        "--variant",
        action="append",
        required=True,
        help="NAME=DIR: DIR holds the pyserving package (repeat; the first is the reference)",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workloads", default="half_plus_two,mlp")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--out", type=pathlib.Path, default=servers.ROOT / "benchmarks/results")
    parser.add_argument("--models-dir", type=pathlib.Path, default=None)
    parser.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--protocols", default="grpc", help="comma list of grpc, rest")
    args = parser.parse_args(argv)
    variants: list[tuple[str, pathlib.Path]] = []
    for item in args.variant:
        name, sep, directory = item.partition("=")
        path = pathlib.Path(directory).resolve()
        if not sep or not (path / "pyserving" / "__init__.py").is_file():
            parser.error(f"--variant {item}: expected NAME=DIR with DIR/pyserving/__init__.py")
        variants.append((name, path))
    args.variants = variants
    args.workloads = [w for w in args.workloads.split(",") if w]
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    args.protocols = [p for p in args.protocols.split(",") if p]
    if not args.protocols or set(args.protocols) - {"grpc", "rest"}:
        parser.error("--protocols: a comma list of grpc, rest")
    return args


def _configs(workload: str, args: argparse.Namespace, batching_file: str) -> list[run.ServerConfig]:
    protocols = tuple(args.protocols)
    configs = [run.ServerConfig("pyserving", "pyserving", protocols)]
    if workload in run.BATCHED_WORKLOADS and args.batching:
        flags = ("--enable_batching", f"--batching_parameters_file={batching_file}")
        configs.append(run.ServerConfig("pyserving-batching", "pyserving", protocols, flags))
    return configs


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every round of every variant; returns the JSON document."""
    out: pathlib.Path = args.out.resolve()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = out / f"compare-{stamp}"
    work.mkdir(parents=True)
    models_dir = (args.models_dir or out / "models").resolve()
    batching_file = work / "batching_parameters.txt"
    batching_file.write_text(run.BATCHING_PARAMETERS)
    doc: dict[str, Any] = {
        "meta": {
            "command": ["python", "-m", "benchmarks.compare", *sys.argv[1:]],
            "variants": {name: str(path) for name, path in args.variants},
            "rounds": args.rounds,
            "protocols": args.protocols,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "git_commit": run._git_commit(),
        },
        "runs": [],
    }
    for name in args.workloads:
        workload = models.workload(name, models_dir)
        payload = work / f"payload-{name}.json"
        payload.write_text(json.dumps(workload.payload()))
        for config in _configs(name, args, str(batching_file)):
            for round_ in range(args.rounds):
                order = args.variants if round_ % 2 == 0 else args.variants[::-1]
                for variant, path in order:
                    grpc_port, rest_port = servers.free_port(), servers.free_port()
                    server = servers.ServerProcess(
                        label=f"{config.label}@{variant}",
                        command=servers.pyserving_command(
                            name, workload.base_path, grpc_port, rest_port, config.flags
                        ),
                        log_path=work / f"server-{name}-{config.label}-{variant}-{round_}.log",
                        rest_port=rest_port,
                        grpc_port=grpc_port,
                        env={"PYTHONPATH": os.pathsep.join([str(path), str(servers.ROOT)])},
                    )
                    run.wait_quiet()
                    run._say(f"{name}: {config.label} {variant} round {round_ + 1}")
                    with servers.running(server, name):
                        for protocol in config.protocols:
                            port = grpc_port if protocol == "grpc" else rest_port
                            result = run.measure_quietly(
                                functools.partial(
                                    run.run_loadgen, protocol, port, payload, args, server.pid
                                ),
                                args.retries,
                            )
                            doc["runs"].append(
                                {
                                    "workload": name,
                                    "server": config.label,
                                    "protocol": protocol,
                                    "variant": variant,
                                    "round": round_,
                                    "points": result["points"],
                                    "attempts": result["attempts"],
                                }
                            )
    return doc


def summary(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per workload, server and concurrency: each variant's median QPS and CPU per request,
    and the median over rounds of each variant's ratios to the first variant's figures of
    the same round (``paired``)."""
    reference = next(iter(doc["meta"]["variants"]))
    rows: dict[tuple[str, str, str, int], dict[str, dict[int, tuple[float, ...]]]] = {}
    for run_ in doc["runs"]:
        for point in run_["points"]:
            key = (
                run_["workload"],
                run_["server"],
                run_.get("protocol", "grpc"),
                int(point["concurrency"]),
            )
            rows.setdefault(key, {}).setdefault(run_["variant"], {})[run_["round"]] = (
                float(point["qps"]),
                float(point.get("server_cpu_us_per_request") or 0.0),
                float(point.get("errors") or 0),
                float((point.get("latency_ms") or {}).get("p50") or 0.0),
            )
    table = []
    for (workload, server, protocol, concurrency), variants in rows.items():
        figures: dict[str, dict[str, Any]] = {}
        base = variants.get(reference, {})
        for name, rounds in variants.items():
            qps = [r[0] for r in rounds.values()]
            cpu = [r[1] for r in rounds.values()]
            entry: dict[str, Any] = {
                "qps": statistics.median(qps),
                "cpu_us_per_request": statistics.median(cpu),
                "p50_ms": statistics.median(r[3] for r in rounds.values()),
                "errors": sum(r[2] for r in rounds.values()),
                "rounds": {k: list(v) for k, v in rounds.items()},
            }
            same = [k for k in rounds if k in base and base[k][0] and base[k][1]]
            if name != reference and same:
                entry["paired"] = {
                    "qps": statistics.median(rounds[k][0] / base[k][0] for k in same),
                    "cpu_us_per_request": statistics.median(
                        rounds[k][1] / base[k][1] for k in same
                    ),
                }
            figures[name] = entry
        table.append(
            {
                "workload": workload,
                "server": server,
                "protocol": protocol,
                "concurrency": concurrency,
                "variants": figures,
            }
        )
    return table


def protocol_ratios(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per variant, workload, server and concurrency: each protocol's server CPU per
    request and p50 latency over the first protocol's, measured in the same server in the
    same round (median over rounds)."""
    protocols = doc["meta"].get("protocols", ["grpc"])
    first = protocols[0]
    by_key: dict[tuple[str, str, int], dict[str, dict[str, Any]]] = {}
    for row in doc["summary"]:
        key = (row["workload"], row["server"], row["concurrency"])
        by_key.setdefault(key, {})[row["protocol"]] = row["variants"]
    out = []
    for (workload, server, concurrency), per_protocol in by_key.items():
        base = per_protocol.get(first, {})
        for protocol in protocols[1:]:
            for variant, entry in per_protocol.get(protocol, {}).items():
                rounds = entry["rounds"]
                reference = base.get(variant, {}).get("rounds", {})
                same = [k for k in rounds if k in reference and reference[k][1] and reference[k][3]]
                if not same:
                    continue
                out.append(
                    {
                        "workload": workload,
                        "server": server,
                        "concurrency": concurrency,
                        "variant": variant,
                        "ratio": f"{protocol}/{first}",
                        "cpu_us_per_request": statistics.median(
                            rounds[k][1] / reference[k][1] for k in same
                        ),
                        "p50": statistics.median(rounds[k][3] / reference[k][3] for k in same),
                        "qps": statistics.median(rounds[k][0] / reference[k][0] for k in same),
                    }
                )
    return out


def render(doc: dict[str, Any]) -> str:
    names = list(doc["meta"]["variants"])
    reference = names[0]
    header = ["workload", "server", "protocol", "conc"]
    for name in names:
        header += [f"{name} QPS", f"{name} CPU us/req", f"{name} p50 ms"]
    for name in names[1:]:
        header += [f"{name}/{reference} QPS (paired)", f"{name}/{reference} CPU (paired)"]
    header.append("errors")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in doc["summary"]:
        cells = [row["workload"], row["server"], row["protocol"], str(row["concurrency"])]
        figures = row["variants"]
        for name in names:
            f = figures.get(name, {})
            cells += [
                f"{f.get('qps', 0):,.0f}",
                f"{f.get('cpu_us_per_request', 0):,.0f}",
                f"{f.get('p50_ms', 0):.3f}",
            ]
        for name in names[1:]:
            paired = figures.get(name, {}).get("paired", {})
            cells += [
                f"{paired.get('qps', 0):.3f}",
                f"{paired.get('cpu_us_per_request', 0):.3f}",
            ]
        cells.append(str(int(sum(f.get("errors", 0) for f in figures.values()))))
        lines.append("| " + " | ".join(cells) + " |")
    ratios = doc.get("protocol_ratios") or []
    if ratios:
        lines += [
            "",
            "| workload | server | conc | variant | ratio | CPU us/req | p50 | QPS |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in ratios:
            lines.append(
                f"| {r['workload']} | {r['server']} | {r['concurrency']} | {r['variant']} "
                f"| {r['ratio']} | {r['cpu_us_per_request']:.2f} | {r['p50']:.2f} "
                f"| {r['qps']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    doc = measure(args)
    doc["summary"] = summary(doc)
    doc["protocol_ratios"] = protocol_ratios(doc)
    path = args.out.resolve() / f"compare-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(doc, indent=1))
    sys.stdout.write(render(doc))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
