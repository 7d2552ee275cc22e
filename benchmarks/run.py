"""Run the benchmark suite: ``python -m benchmarks.run [--quick] [--duration S] [--out DIR]``.

One run, in this order (nothing heavy ever runs at the same time as a measurement):

1. the load generator against trivial REST and gRPC endpoints (what the client can drive);
2. for each workload (``half_plus_two``, ``mlp``, ``keras_iris``) and each server
   configuration, the server
   is started alone, the load generator runs every concurrency level over REST and then
   gRPC (raw HTTP/2 client; for ``half_plus_two`` also ``grpc-stub``, the official
   stubs), then the Open Inference Protocol's ``v2-rest`` (binary tensor data) and
   ``v2-grpc`` (ModelInfer, raw contents), and the server is stopped. Configurations:
   ``pyserving`` (default flags),
   ``pyserving-batching`` (see :data:`BATCHING_PARAMETERS`), each also as
   ``...-grpcio`` (gRPC only, ``--grpc_frontend=grpcio``), and ``fastapi`` (REST only);
3. the in-process limit of each TensorFlow workload.

``--workloads`` also takes the other platforms' workloads (``mlp_onnx``, ``mlp_torch``,
``iris_onnx``, ``iris_torch``; see :mod:`benchmarks.models`): each is measured as ``mlp``
is (``pyserving``, ``pyserving-batching``, ``fastapi`` serving the same ``model.onnx`` or
``model.pt2``), without an in-process limit.

It prints a table and the targets' ratios and writes ``bench-<stamp>.json`` and
``bench-<stamp>.png`` (and the servers' logs) into the output directory. The MLP is exported
once into ``<out>/models/mlp`` and reused; so is ``half_plus_two``'s equivalent into
``<out>/models/testdata`` when TF Serving's test models are absent. ``--quick`` is a smoke
run: ``half_plus_two`` only, concurrency 1 and 2, one second per point, every protocol, no
baselines.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks import models, procstat, report, servers

#: Batching parameters of the ``pyserving-batching*`` configurations (BatchingParameters).
BATCHING_PARAMETERS = """\
max_batch_size { value: 32 }
batch_timeout_micros { value: 2000 }
max_enqueued_batches { value: 100 }
num_batch_threads { value: 1 }
"""

#: The pseudo-protocol of gRPC measured with the official stubs instead of the raw client.
GRPC_STUB = "grpc-stub"
#: Protocols measured: TF Serving's REST and gRPC, and the Open Inference Protocol's (REST
#: infer with binary tensor data, gRPC ModelInfer with raw contents).
PROTOCOLS = ("rest", "grpc", "v2-rest", "v2-grpc")

DEFAULT_CONCURRENCY = (1, 8, 32, 64)
#: Workloads also measured with batching.
BATCHED_WORKLOADS = frozenset({"mlp", *models.PLATFORM_WORKLOADS})
#: Workloads whose in-process limit is measured (``benchmarks.inprocess`` runs SavedModels).
INPROCESS_WORKLOADS = frozenset({"half_plus_two", "mlp"})
QUICK_CONCURRENCY = (1, 2)


@dataclass(frozen=True)
class ServerConfig:
    """One server configuration to measure with one workload."""

    label: str
    kind: str  # "pyserving" or "fastapi"
    protocols: tuple[str, ...]
    flags: tuple[str, ...] = ()


def server_configs(
    workload: str, args: argparse.Namespace, batching_file: str
) -> list[ServerConfig]:
    """The configurations measured for ``workload``."""
    protocols = tuple(args.protocols)
    plain = protocols
    if "grpc" in protocols and workload == "half_plus_two" and args.stub_client:
        plain = (*protocols, GRPC_STUB)
    configs = [ServerConfig(report.PYSERVING, "pyserving", plain)]
    grpcio = ("--grpc_frontend=grpcio",)
    if "grpc" in protocols and args.grpcio:
        configs.append(ServerConfig(report.PYSERVING_GRPCIO, "pyserving", ("grpc",), grpcio))
    if args.batching:
        batching = ("--enable_batching", f"--batching_parameters_file={batching_file}")
        configs.append(ServerConfig(report.PYSERVING_BATCHING, "pyserving", protocols, batching))
        if "grpc" in protocols and args.grpcio:
            configs.append(
                ServerConfig(
                    report.PYSERVING_BATCHING_GRPCIO, "pyserving", ("grpc",), batching + grpcio
                )
            )
    if args.fastapi and "rest" in protocols:
        configs.append(ServerConfig(report.FASTAPI, "fastapi", ("rest",)))
    return configs


def _csv(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="pyserving benchmarks: load points, baselines, targets; see docs/benchmarks.md",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run (see module docstring)")
    parser.add_argument("--duration", type=float, default=None, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=None, help="unmeasured seconds per point")
    parser.add_argument("--out", type=pathlib.Path, default=servers.ROOT / "benchmarks" / "results")
    parser.add_argument("--concurrency", default=None, help="comma list (default 1,8,32,64)")
    parser.add_argument(
        "--workloads",
        default=None,
        help=f"comma list of {', '.join(models.WORKLOADS)} (default half_plus_two,mlp,keras_iris)",
    )
    parser.add_argument(
        "--protocols",
        default=",".join(PROTOCOLS),
        help="comma list of rest, grpc, v2-rest, v2-grpc (default: all)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=None,
        help="repeats of a measurement disturbed by other processes (default 2; quick 0)",
    )
    parser.add_argument(
        "--models-dir",
        type=pathlib.Path,
        default=None,
        help="export cache of the MLP and of half_plus_two when TF Serving's is absent "
        "(<out>/models)",
    )
    for name, what in (
        ("fastapi", "the FastAPI baseline"),
        ("inprocess", "the in-process limit"),
        ("calibration", "the load generator against trivial endpoints"),
        ("batching", "the pyserving-batching configuration"),
        ("stub_client", "gRPC also with the official stubs (calibration, half_plus_two)"),
        ("grpcio", "gRPC also with --grpc_frontend=grpcio (the grpcio front end)"),
        ("chart", "the PNG chart"),
    ):
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            action=argparse.BooleanOptionalAction,
            default=None,
            help=what,
        )
    args = parser.parse_args(argv)
    quick = args.quick
    if args.duration is None:
        args.duration = 1.0 if quick else 10.0
    if args.warmup is None:
        args.warmup = 0.3 if quick else 2.0
    concurrency = args.concurrency or ",".join(
        str(c) for c in (QUICK_CONCURRENCY if quick else DEFAULT_CONCURRENCY)
    )
    args.concurrency = [int(c) for c in _csv(concurrency)]
    args.workloads = _csv(
        args.workloads or ("half_plus_two" if quick else ",".join(models.WORKLOADS))
    )
    args.protocols = _csv(args.protocols)
    for name in ("fastapi", "inprocess", "calibration", "batching", "stub_client", "grpcio"):
        if getattr(args, name) is None:
            setattr(args, name, not quick)
    if args.chart is None:
        args.chart = True
    if args.retries is None:
        args.retries = 0 if quick else 2
    unknown = set(args.workloads) - set(models.WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {sorted(unknown)}")
    if set(args.protocols) - set(PROTOCOLS) or not args.protocols:
        parser.error(f"--protocols takes some of {', '.join(PROTOCOLS)}")
    if args.duration <= 0 or args.warmup < 0 or not args.concurrency:
        parser.error("--duration must be positive, --warmup not negative")
    return args


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


#: A machine using more than this (percent of one core) is not quiet enough to measure on.
QUIET_BUSY_PERCENT = 30.0


def wait_quiet(max_wait: float = 120.0) -> dict[str, float]:
    """Wait (at most ``max_wait`` s) until the machine is idle before a measurement.

    Other engineers' test suites share the machine; a measurement taken while they run is
    noise. Samples one-second windows of ``/proc/stat``; returns how long it waited and the
    last window's machine-wide CPU use (percent of one core).
    """
    start = time.monotonic()
    while True:
        window = procstat.MachineCpu()
        time.sleep(1.0)
        busy = window.stop()
        waited = time.monotonic() - start
        if busy < QUIET_BUSY_PERCENT or waited >= max_wait:
            if busy >= QUIET_BUSY_PERCENT:
                _say(f"warning: the machine is still busy ({busy:.0f}% of a core); measuring")
            return {"waited_s": waited, "busy_percent": busy}


def _max_other_cpu(doc: dict[str, Any]) -> float:
    """The most CPU other processes used during any point of ``doc`` (percent of a core)."""
    values = [0.0]
    for point in doc.get("points", []):
        values.append(float(point.get("other_cpu_percent") or 0.0))
    for key, value in doc.items():
        if key in ("function", "session", "scheduler"):
            values.extend(float(p.get("other_cpu_percent") or 0.0) for p in value.values())
    return max(values)


def measure_quietly(measure: Callable[[], dict[str, Any]], retries: int) -> dict[str, Any]:
    """Run ``measure``; while other processes disturbed it, wait for quiet and measure again.

    At most ``retries`` repeats; the least disturbed attempt is kept, with ``attempts`` set.
    """
    best: dict[str, Any] | None = None
    for attempt in range(retries + 1):
        if attempt:
            _say(f"  other processes used the CPUs; measuring again (attempt {attempt + 1})")
            wait_quiet(max_wait=300.0)
        doc = measure()
        if best is None or _max_other_cpu(doc) < _max_other_cpu(best):
            best = doc
        if _max_other_cpu(doc) <= report.NOISY_OTHER_CPU_PERCENT:
            break
    assert best is not None
    best["attempts"] = attempt + 1
    return best


def run_loadgen(
    protocol: str,
    port: int,
    payload_file: pathlib.Path,
    args: argparse.Namespace,
    server_pid: int,
    concurrency: list[int] | None = None,
) -> dict[str, Any]:
    """Run the load generator in its own process and return its JSON document."""
    levels = concurrency or args.concurrency
    client = ["--protocol=grpc", "--grpc-client=stub"] if protocol == GRPC_STUB else []
    command = [
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        *(client or [f"--protocol={protocol}"]),
        f"--port={port}",
        f"--payload={payload_file}",
        f"--concurrency={','.join(str(c) for c in levels)}",
        f"--duration={args.duration}",
        f"--warmup={args.warmup}",
        f"--server-pid={server_pid}",
    ]
    budget = 120 + len(levels) * (args.duration + args.warmup + 35)
    return _run_json(command, budget, "load generator")


def _run_json(command: list[str], timeout: float, what: str) -> dict[str, Any]:
    """Run a benchmark process and return the JSON document on its last line of output."""
    done = subprocess.run(
        command,
        cwd=servers.ROOT,
        env=servers.child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_inprocess(
    workload: models.Workload,
    payload_file: pathlib.Path,
    args: argparse.Namespace,
    batching_file: pathlib.Path | None = None,
) -> dict[str, Any]:
    """The in-process limit of ``workload`` (its own process)."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.inprocess",
        f"--model_base_path={workload.base_path}",
        f"--payload={payload_file}",
        "--batch=1,32",
        f"--duration={args.duration}",
        f"--warmup={args.warmup}",
    ]
    if batching_file is not None:
        command += [
            f"--batching_parameters={batching_file}",
            f"--scheduler_callers={report.BATCHING_CONCURRENCY}",
        ]
    return _run_json(command, 300 + 5 * (args.duration + args.warmup), "in-process baseline")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("pyserving", "tensorflow", "grpcio", "uvicorn", "uvloop", "httptools", "fastapi"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=servers.ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "src"],
            cwd=servers.ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return "unknown"
    commit = done.stdout.strip() or "unknown"
    return commit + ("+local-changes-in-src" if dirty.stdout.strip() else "")


def _meta(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    return {
        "command": " ".join(["python -m benchmarks.run", *argv]),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "versions": _versions(),
        "git_commit": _git_commit(),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "concurrency": args.concurrency,
        "workloads": args.workloads,
        "protocols": args.protocols,
        "quick": args.quick,
        "batching_parameters": BATCHING_PARAMETERS,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the suite; exit status 0 when every run completed (targets do not change it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out: pathlib.Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = out / f"bench-{stamp}"
    work.mkdir()
    models_dir = (args.models_dir or out / "models").resolve()
    results: dict[str, Any] = {
        "meta": _meta(args, argv),
        "calibration": {},
        "runs": [],
        "inprocess": {},
    }
    started = time.monotonic()

    workloads: list[models.Workload] = []
    for name in args.workloads:
        workloads.append(models.workload(name, models_dir))
        _say(f"{name} model: {workloads[-1].base_path} (exported once, then reused)")
    results["meta"]["models"] = {w.name: str(w.base_path) for w in workloads}
    payloads = {}
    for workload in workloads:
        payloads[workload.name] = work / f"payload-{workload.name}.json"
        payloads[workload.name].write_text(json.dumps(workload.payload()))
    batching_file = work / "batching_parameters.txt"
    batching_file.write_text(BATCHING_PARAMETERS)

    if args.calibration:
        trivial_payload = work / "payload-trivial.json"
        trivial = dict(workloads[0].payload(), expected=None)
        trivial_payload.write_text(json.dumps(trivial))
        levels = sorted({1, max(args.concurrency)})
        calibrated = [p for p in args.protocols if p in ("rest", "grpc")]
        if "grpc" in calibrated and args.stub_client:
            calibrated.append(GRPC_STUB)
        for protocol in calibrated:
            _say(f"calibration: load generator against a trivial {protocol} endpoint")
            wait_quiet()
            kind = "grpc" if protocol == GRPC_STUB else protocol
            with servers.trivial_server(kind, work / f"trivial-{protocol}.log") as trivial_srv:
                port = trivial_srv.rest_port or trivial_srv.grpc_port
                doc = measure_quietly(
                    functools.partial(
                        run_loadgen, protocol, port, trivial_payload, args, trivial_srv.pid, levels
                    ),
                    args.retries,
                )
            results["calibration"][protocol] = {"points": doc["points"]}

    for workload in workloads:
        for config in server_configs(workload.name, args, str(batching_file)):
            rest_port = servers.free_port()
            grpc_port = servers.free_port() if config.kind == "pyserving" else 0
            if config.kind == "pyserving":
                command = servers.pyserving_command(
                    workload.name, workload.base_path, grpc_port, rest_port, config.flags
                )
            else:
                command = servers.fastapi_command(workload.name, workload.base_path, rest_port)
            server = servers.ServerProcess(
                label=config.label,
                command=command,
                log_path=work / f"server-{workload.name}-{config.label}.log",
                rest_port=rest_port,
                grpc_port=grpc_port,
            )
            quiet = wait_quiet()
            _say(f"{workload.name}: starting {config.label}")
            first = len(results["runs"])
            with servers.running(server, workload.name):
                _say(f"{workload.name}: {config.label} ready in {server.startup_s:.1f} s")
                for protocol in config.protocols:
                    rest = protocol in ("rest", "v2-rest")
                    port = rest_port if rest else grpc_port  # grpc, grpc-stub, v2-grpc
                    _say(
                        f"{workload.name}: {config.label} {protocol} at concurrency "
                        f"{','.join(map(str, args.concurrency))}"
                    )
                    doc = measure_quietly(
                        functools.partial(
                            run_loadgen, protocol, port, payloads[workload.name], args, server.pid
                        ),
                        args.retries,
                    )
                    results["runs"].append(
                        {
                            "workload": workload.name,
                            "server": config.label,
                            "protocol": protocol,
                            "flags": list(config.flags),
                            "startup_s": server.startup_s,
                            "quiet_before": quiet,
                            "points": doc["points"],
                            "attempts": doc["attempts"],
                        }
                    )
            status = server.process.returncode if server.process else None
            for run in results["runs"][first:]:
                run["exit_status"] = status

    if args.inprocess:
        for workload in (w for w in workloads if w.name in INPROCESS_WORKLOADS):
            _say(f"{workload.name}: in-process limit")
            wait_quiet()
            results["inprocess"][workload.name] = measure_quietly(
                functools.partial(
                    run_inprocess,
                    workload,
                    payloads[workload.name],
                    args,
                    batching_file if workload.name == "mlp" and args.batching else None,
                ),
                args.retries,
            )

    results["targets"] = report.compute_targets(results)
    results["meta"]["elapsed_s"] = time.monotonic() - started
    json_path = out / f"bench-{stamp}.json"
    json_path.write_text(json.dumps(results, indent=1))
    sys.stdout.write(report.render_text(results))
    print(f"\nresults: {json_path}")
    if args.chart:
        png_path = out / f"bench-{stamp}.png"
        report.write_chart(results, str(png_path))
        print(f"chart:   {png_path}")
    print(f"logs:    {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
