"""Compare source trees of pyserving on the same points, measured in one run.

``python -m benchmarks.compare --variant before=DIR --variant after=src [--rounds 2]
[--workloads half_plus_two,mlp,keras_iris] [--protocols grpc,rest] [--concurrency 1,8,32,64]
[--duration 10] [--no-batching] [--inprocess] [--quiet-wait 120]``

Each variant is a directory holding the ``pyserving`` package (a ``src`` directory: a copy
of an older commit's ``src``, or a prototype); its server runs with that directory first on
``PYTHONPATH``, everything else (Python, TensorFlow, the load generator, the models) shared.
For each workload and configuration (``pyserving``; also ``pyserving-batching`` with
``benchmarks.run``'s batching parameters unless ``--no-batching``), every round starts
each variant's server in turn, measures each protocol of ``--protocols`` (default ``grpc``:
the raw HTTP/2 client of ``benchmarks/h2grpc.py``; ``rest``: the raw HTTP/1.1 client of
``benchmarks/loadgen.py``), in that order, at every concurrency level and stops it; the
variants' order alternates between rounds, so a drift of the machine's speed falls on both.
A measurement disturbed by other processes is repeated as in ``benchmarks.run``
(``--retries``); before each server the machine is given up to ``--quiet-wait`` seconds to
become idle. ``--inprocess`` also measures each variant's in-process limits
(``benchmarks.inprocess``, batch 1 and 32) once per workload.

It prints, per point, each variant's median QPS and server CPU per request over the rounds,
and for each variant against the first the median over rounds of the ratio within a round
(the two measured minutes apart, so a drift of the machine's speed between rounds cancels
out), and writes every figure to ``<out>/compare-<stamp>.json``. With more than one protocol
it also prints, per variant, each protocol's server CPU per request and p50 latency as a
ratio to the first protocol's, measured in the same server seconds apart (median over
rounds): e.g. REST's cost relative to gRPC's; then, per variant, batching's QPS ratio
(batched / unbatched, paired by round) and the batched QPS against the in-process batch-32
limit (rows/s of the ``function`` runtime).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import pathlib
import statistics
import subprocess
import sys
from typing import Any

from benchmarks import models, run, servers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__)
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=DIR: DIR holds the pyserving package (repeat; the first is the reference)",
    )
    parser.add_argument("--from-json", default="", help="print the tables of a saved run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workloads", default="half_plus_two,mlp")
    parser.add_argument("--protocols", default="grpc", help="comma list of grpc, rest")
    parser.add_argument("--quiet-wait", type=float, default=120.0, help="seconds (see above)")
    parser.add_argument("--inprocess", action="store_true", help="also in-process limits")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--out", type=pathlib.Path, default=servers.ROOT / "benchmarks/results")
    parser.add_argument("--models-dir", type=pathlib.Path, default=None)
    parser.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    variants: list[tuple[str, pathlib.Path]] = []
    for item in args.variant:
        name, sep, directory = item.partition("=")
        path = pathlib.Path(directory).resolve()
        if not sep or not (path / "pyserving" / "__init__.py").is_file():
            parser.error(f"--variant {item}: expected NAME=DIR with DIR/pyserving/__init__.py")
        variants.append((name, path))
    args.variants = variants
    if not variants and not args.from_json:
        parser.error("--variant is required")
    args.workloads = [w for w in args.workloads.split(",") if w]
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    args.protocols = [p for p in args.protocols.split(",") if p]
    if not args.protocols or set(args.protocols) - {"grpc", "rest"}:
        parser.error("--protocols takes grpc and/or rest")
    unknown = set(args.workloads) - set(models.WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {sorted(unknown)}")
    return args


def _configs(workload: str, args: argparse.Namespace, batching_file: str) -> list[run.ServerConfig]:
    protocols = tuple(args.protocols)
    configs = [run.ServerConfig("pyserving", "pyserving", protocols)]
    if args.batching:
        flags = ("--enable_batching", f"--batching_parameters_file={batching_file}")
        configs.append(run.ServerConfig("pyserving-batching", "pyserving", protocols, flags))
    return configs


def _inprocess(
    workload: models.Workload,
    payload: pathlib.Path,
    path: pathlib.Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """``benchmarks.inprocess`` (batch 1 and 32) with the variant's ``pyserving``."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.inprocess",
        f"--model_base_path={workload.base_path}",
        f"--payload={payload}",
        "--batch=1,32",
        f"--duration={args.duration}",
        f"--warmup={args.warmup}",
    ]
    done = subprocess.run(
        command,
        cwd=servers.ROOT,
        env={
            **servers.child_env(),
            "PYTHONPATH": os.pathsep.join([str(path), str(servers.ROOT)]),
        },
        capture_output=True,
        text=True,
        timeout=300 + 5 * (args.duration + args.warmup),
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"in-process limit failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


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
        "inprocess": {},
    }
    for name in args.workloads:
        workload = models.workload(name, models_dir)
        payload = work / f"payload-{name}.json"
        payload.write_text(json.dumps(workload.payload()))
        if args.inprocess:
            for variant, path in args.variants:
                run.wait_quiet(args.quiet_wait)
                run._say(f"{name}: in-process limits, {variant}")
                doc["inprocess"].setdefault(variant, {})[name] = _inprocess(
                    workload, payload, path, args
                )
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
                    run.wait_quiet(args.quiet_wait)
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
    lines += ["", *render_batching(doc)]
    return "\n".join(lines) + "\n"


def batching_summary(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per variant, workload, protocol and concurrency: batched QPS / unbatched QPS (median
    over rounds of the ratio within a round), and batched QPS / the in-process batch-32
    limit (rows/s of the ``function`` runtime) when measured."""
    qps: dict[tuple[str, str, str, int, str], dict[int, float]] = {}
    for run_ in doc["runs"]:
        for point in run_["points"]:
            key = (
                run_["variant"],
                run_["workload"],
                run_.get("protocol", "grpc"),
                int(point["concurrency"]),
                run_["server"],
            )
            qps.setdefault(key, {})[run_["round"]] = float(point["qps"])
    table = []
    for (variant, workload, protocol, concurrency, server), batched in qps.items():
        if server != "pyserving-batching":
            continue
        plain = qps.get((variant, workload, protocol, concurrency, "pyserving"), {})
        same = [r for r in batched if plain.get(r)]
        entry: dict[str, Any] = {
            "variant": variant,
            "workload": workload,
            "protocol": protocol,
            "concurrency": concurrency,
            "batched_qps": statistics.median(batched.values()),
            "unbatched_qps": statistics.median(plain.values()) if plain else None,
            "batched_over_unbatched": (
                statistics.median(batched[r] / plain[r] for r in same) if same else None
            ),
        }
        try:
            limit = doc["inprocess"][variant][workload]["function"]["32"]["rows_per_s"]
        except KeyError:
            limit = None
        entry["inprocess_batch32_rows_per_s"] = limit
        entry["batched_over_inprocess_batch32"] = entry["batched_qps"] / limit if limit else None
        table.append(entry)
    return table


def render_batching(doc: dict[str, Any]) -> list[str]:
    lines = [
        "| variant | workload | protocol | conc | batched QPS | unbatched QPS "
        "| batched/unbatched (paired) | batched / in-process batch-32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in doc.get("batching", []):
        ratio = e["batched_over_unbatched"]
        limit = e["batched_over_inprocess_batch32"]
        lines.append(
            f"| {e['variant']} | {e['workload']} | {e['protocol']} | {e['concurrency']} "
            f"| {e['batched_qps']:,.0f} | {e['unbatched_qps'] or 0:,.0f} "
            f"| {'' if ratio is None else f'{ratio:.3f}'} "
            f"| {'' if limit is None else f'{limit:.3f}'} |"
        )
    return lines


def render_inprocess(doc: dict[str, Any]) -> list[str]:
    """Per variant and workload, the in-process limits (``--inprocess``)."""
    lines = [
        "| variant | workload | runtime | batch | calls/s | rows/s | CPU us per call | backend |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, workloads in doc.get("inprocess", {}).items():
        for workload, runtimes in workloads.items():
            for runtime in ("function", "session"):
                for batch, p in runtimes.get(runtime, {}).items():
                    cpu_us = 1e4 * p["cpu_percent"] / p["calls_per_s"]
                    lines.append(
                        f"| {variant} | {workload} | {runtime} | {batch} "
                        f"| {p['calls_per_s']:,.0f} | {p['rows_per_s']:,.0f} | {cpu_us:,.0f} "
                        f"| {p.get('backend', '')} |"
                    )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        saved["summary"] = summary(saved)
        saved["batching"] = batching_summary(saved)
        sys.stdout.write(render(saved) + "\n" + "\n".join(render_inprocess(saved)) + "\n")
        return 0
    doc = measure(args)
    doc["summary"] = summary(doc)
    doc["protocol_ratios"] = protocol_ratios(doc)
    doc["batching"] = batching_summary(doc)
    path = args.out.resolve() / f"compare-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(doc, indent=1))
    sys.stdout.write(render(doc) + "\n" + "\n".join(render_inprocess(doc)) + "\n")
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
