"""``--num_workers``: 1 against N workers, REST and gRPC, measured in one run.

``python -m benchmarks.workers [--workers 1,2] [--rounds 2] [--concurrency 64]
[--duration 10] [--warmup 2] [--grpc-connections 8] [--out DIR]``

Each round starts pyserving serving ``half_plus_two`` with each ``--num_workers`` value in
turn (the order alternating between rounds, so a drift of the machine's speed falls on
every variant), waits until every worker serves, runs the load generator
(:mod:`benchmarks.loadgen`, its own process) at the concurrency over REST (one keep-alive
connection per client worker, so connections are spread over the server's workers) and
gRPC (the raw HTTP/2 client over ``--grpc-connections`` connections: workers share a port
by connection, so one connection would reach one worker), and stops the server. A
measurement disturbed by other processes is repeated as in ``benchmarks.run``.

Per variant and protocol it prints the median over rounds of QPS, p50/p99 latency, server
CPU per request (the supervisor and its workers together) and the CPU shares of the server,
the load generator and everything else, with the median over rounds of each round's QPS
ratio against the first variant; then the projection of QPS to 8 and 32 cores from the
measured server CPU per request (:func:`projection`, its assumptions in its docstring).
Every figure goes to ``<out>/workers-<stamp>.json``.
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
import time
from typing import Any

from benchmarks import models, procstat, run, servers

PROTOCOLS = ("rest", "grpc")
#: Cores the projection is made for.
PROJECTED_CORES = (8, 32)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.workers", description=__doc__)
    parser.add_argument("--workers", default="1,2", help="--num_workers values; first = reference")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--grpc-connections", type=int, default=8)
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--out", type=pathlib.Path, default=servers.ROOT / "benchmarks/results")
    parser.add_argument("--models-dir", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",") if w]
    return args


def wait_all_serving(server: servers.ServerProcess, workers: int, timeout: float = 300) -> None:
    """Wait until the supervisor logs that every worker serves (one worker: nothing to)."""
    if workers <= 1:
        return
    deadline = time.monotonic() + timeout
    while f"All {workers} workers serving" not in server.log_path.read_text(errors="replace"):
        assert server.process is not None
        if server.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{server.label}: workers did not all serve:\n{server.log_tail()}")
        time.sleep(0.2)


def memory_mb(pid: int) -> dict[str, float]:
    """Resident and proportional (shared pages divided among their users) memory of the
    server's processes, summed, in MiB."""
    rss = pss = 0
    for member in procstat.process_tree(pid):
        try:
            rss += procstat.memory_bytes(member)["VmRSS"]
            with open(f"/proc/{member}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return {"rss_mb": rss / 2**20, "pss_mb": pss / 2**20}


def measure_variant(
    workers: int,
    workload: models.Workload,
    payload_file: pathlib.Path,
    args: argparse.Namespace,
    log_dir: pathlib.Path,
    round_index: int,
) -> dict[str, Any]:
    """One server with ``workers`` workers: both protocols at the concurrency."""
    grpc_port, rest_port = servers.free_port(), servers.free_port()
    label = f"workers-{workers}"
    server = servers.ServerProcess(
        label=label,
        command=servers.pyserving_command(
            workload.name,
            workload.base_path,
            grpc_port,
            rest_port,
            [f"--num_workers={workers}"],
        ),
        log_path=log_dir / f"{label}-round{round_index}.log",
        rest_port=rest_port,
        grpc_port=grpc_port,
    )
    result: dict[str, Any] = {"workers": workers, "protocols": {}}
    with servers.running(server, workload.name):
        wait_all_serving(server, workers)
        result["memory"] = memory_mb(server.pid)
        for protocol in PROTOCOLS:
            run._say(f"  {label} {protocol} c={args.concurrency}")
            port = rest_port if protocol == "rest" else grpc_port

            def once(protocol: str = protocol, port: int = port) -> dict[str, Any]:
                return loadgen(protocol, port, payload_file, args, server.pid)

            result["protocols"][protocol] = run.measure_quietly(once, args.retries)
    return result


def loadgen(
    protocol: str, port: int, payload_file: pathlib.Path, args: argparse.Namespace, pid: int
) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        f"--protocol={protocol}",
        f"--port={port}",
        f"--payload={payload_file}",
        f"--concurrency={args.concurrency}",
        f"--duration={args.duration}",
        f"--warmup={args.warmup}",
        f"--server-pid={pid}",
        f"--grpc-connections={args.grpc_connections}",
    ]
    return run._run_json(command, 120 + args.duration + args.warmup + 35, "load generator")


def projection(cpu_us_per_request: float, cores: int) -> float:
    """Requests per second ``cores`` cores would serve at ``cpu_us_per_request`` of server
    CPU each: ``cores x 1e6 / cpu_us_per_request``.

    Assumptions: one worker per core and the server alone on the machine (the load generator
    elsewhere); the CPU a request costs stays what it was measured to be with several workers
    (workers share no lock, no memory and no Python interpreter: only the kernel's accept
    path, which spreads connections by hash), so throughput is bounded by CPU alone, linearly;
    enough connections to spread over every worker (a worker serves the connections the
    kernel gives it; one HTTP/2 connection is one worker's); no other bound reached first
    (memory bandwidth, the network, interrupts, the NIC's queues); RAM for N copies of the
    models and of each worker's runtime (see ``memory`` in the results).
    """
    return cores * 1e6 / cpu_us_per_request


def _point(doc: dict[str, Any]) -> dict[str, Any]:
    point: dict[str, Any] = doc["points"][0]
    return point


def summary(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per variant and protocol: medians over rounds and the QPS ratio to the reference."""
    reference = doc["workers"][0]
    rows = []
    for protocol in PROTOCOLS:
        for workers in doc["workers"]:
            points = [
                _point(r["variants"][str(workers)]["protocols"][protocol]) for r in doc["rounds"]
            ]
            ratios = [
                _point(r["variants"][str(workers)]["protocols"][protocol])["qps"]
                / _point(r["variants"][str(reference)]["protocols"][protocol])["qps"]
                for r in doc["rounds"]
            ]
            cpu = statistics.median(p["server_cpu_us_per_request"] for p in points)
            memory = [r["variants"][str(workers)]["memory"] for r in doc["rounds"]]
            rows.append(
                {
                    "protocol": protocol,
                    "workers": workers,
                    "qps": statistics.median(p["qps"] for p in points),
                    "p50_ms": statistics.median(p["latency_ms"]["p50"] for p in points),
                    "p99_ms": statistics.median(p["latency_ms"]["p99"] for p in points),
                    "server_cpu_us_per_request": cpu,
                    "server_cpu_percent": statistics.median(
                        p["server_cpu_percent"] for p in points
                    ),
                    "client_cpu_percent": statistics.median(
                        p["client_cpu_percent"] for p in points
                    ),
                    "other_cpu_percent": statistics.median(p["other_cpu_percent"] for p in points),
                    "errors": sum(p["errors"] for p in points),
                    "qps_ratio": statistics.median(ratios),
                    "rss_mb": statistics.median(m["rss_mb"] for m in memory),
                    "pss_mb": statistics.median(m["pss_mb"] for m in memory),
                    "projected_qps": {
                        str(cores): projection(cpu, cores) for cores in PROJECTED_CORES
                    },
                }
            )
    return rows


def render(doc: dict[str, Any]) -> str:
    lines = [
        f"{doc['meta']['cpus']} CPUs, concurrency {doc['concurrency']}, "
        f"{len(doc['rounds'])} rounds (medians); CPU shares in % of one core",
        f"{'protocol':<8} {'workers':>7} {'QPS':>7} {'x ref':>6} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'us/req':>7} {'server%':>8} {'loadgen%':>9} {'other%':>7} {'errors':>6} "
        f"{'PSS MiB':>8} " + " ".join(f"{f'{c} cores':>9}" for c in PROJECTED_CORES),
    ]
    for row in doc["summary"]:
        lines.append(
            f"{row['protocol']:<8} {row['workers']:>7} {row['qps']:>7.0f} "
            f"{row['qps_ratio']:>6.2f} {row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f} "
            f"{row['server_cpu_us_per_request']:>7.0f} {row['server_cpu_percent']:>8.0f} "
            f"{row['client_cpu_percent']:>9.0f} {row['other_cpu_percent']:>7.0f} "
            f"{row['errors']:>6} {row['pss_mb']:>8.0f} "
            + " ".join(f"{row['projected_qps'][str(c)]:>9.0f}" for c in PROJECTED_CORES)
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: pathlib.Path = args.out.resolve()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_dir = out / f"workers-{stamp}-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    models_dir = (args.models_dir or out / "models").resolve()
    workload = models.half_plus_two(models_dir)
    payload_file = log_dir / "half_plus_two.json"
    payload_file.write_text(json.dumps(workload.payload()))
    doc: dict[str, Any] = {
        "meta": {
            "command": " ".join(["python -m benchmarks.workers", *sys.argv[1:]]),
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "cpu": run._cpu_model(),
            "cpus": os.cpu_count(),
            "load_average_at_start": list(os.getloadavg()),
            "versions": run._versions(),
            "git_commit": run._git_commit(),
            "duration_s": args.duration,
            "warmup_s": args.warmup,
        },
        "workers": args.workers,
        "concurrency": args.concurrency,
        "grpc_connections": args.grpc_connections,
        "rounds": [],
    }
    measure = functools.partial(
        measure_variant, workload=workload, payload_file=payload_file, args=args, log_dir=log_dir
    )
    for round_index in range(args.rounds):
        order = args.workers if round_index % 2 == 0 else list(reversed(args.workers))
        run._say(f"round {round_index + 1}/{args.rounds}: {order}")
        run.wait_quiet()
        variants = {str(w): measure(w, round_index=round_index) for w in order}
        doc["rounds"].append({"order": order, "variants": variants})
    doc["summary"] = summary(doc)
    path = out / f"workers-{stamp}.json"
    path.write_text(json.dumps(doc, indent=1))
    print(render(doc))
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
