"""Running a server: flags -> ServerOptions -> ServerCore + gRPC + REST, until a signal.

Start-up blocks until every configured model is AVAILABLE or failed; if any failed, the
process prints ``N model(s) did not become available`` and exits 1. SIGTERM/SIGINT stop
accepting, let requests in flight finish within a grace period, unload models, exit 0.
"""

from __future__ import annotations

import concurrent.futures
import gc
import importlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyserving.config import (
    ConfigError,
    load_model_server_config,
    read_text_proto,
    single_model_config,
)
from pyserving.core.loader import ResourceEstimate
from pyserving.core.manager import ManagerOptions
from pyserving.errors import FailedPrecondition, ServingError
from pyserving.flags import ParsedFlags, UsageError, not_implemented_flags
from pyserving.platform_config import TensorFlowSettings
from pyserving.server.core import ServerCore, ServerCoreOptions
from pyserving.server.health import install_health_routes, is_ready
from pyserving.server.logs import configure_logging, log_transition
from pyserving.server.metrics import CONTENT_TYPE, ServerMetrics
from pyserving.server.service import ModelServing
from pyserving.server.workers import (
    applied_config,
    metrics_process_id,
    multiprocess_dir,
    notify_ready,
    rejoining,
    save_applied_config,
    worker_index,
)

if TYPE_CHECKING:  # grpc is imported only when the gRPC server starts
    from pyserving.server.dashboard import Dashboard
    from pyserving.server.grpc import GrpcTls

log = logging.getLogger("pyserving")

#: How long a restarted worker of ``--num_workers`` waits for a version of every model
#: before it exits to be started again (see ``run_server``).
REJOIN_WAIT_SECONDS = 300.0


@dataclass(frozen=True)
class ServerOptions:
    """Everything a server process needs, derived from the flags."""

    core: ServerCoreOptions
    model_config: Any  # ModelServerConfig
    grpc_port: int = 8500
    grpc_socket_path: str = ""
    grpc_channel_arguments: str = ""
    grpc_max_threads: int = 8
    enable_grpc_health: bool = False
    #: ``--enable_profiler``: ``tensorflow.ProfilerService`` on the gRPC port.
    enable_profiler: bool = True
    #: ``--enable_serialization_as_tensor_content``: gRPC Predict outputs as raw bytes.
    grpc_tensor_content: bool = False
    #: Serve gRPC on grpcio's grpc.aio instead of pyserving's HTTP/2 server
    #: (--grpc_frontend=grpcio).
    grpc_grpcio: bool = False
    rest_port: int = 0
    rest_num_threads: int = 8
    rest_timeout_ms: int = 30000
    rest_enable_cors: bool = False
    check_method_name: bool = False
    shutdown_grace_seconds: float = 30.0
    #: Logged as warnings at start: flags and config fields given but not acted on.
    startup_warnings: tuple[str, ...] = ()
    #: Where Prometheus metrics are served on the REST port ("" = not served).
    metrics_path: str = ""
    #: ``--model_config_file`` and how often to re-read it (0 = never).
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: float = 0.0
    log_format: str = "text"
    #: Largest REST body, also after gzip decompression (None = no limit).
    rest_max_body_bytes: int | None = 1 << 30
    #: HTTPS for the REST API: PEM certificate (chain) and key files ("" = plain HTTP).
    rest_ssl_certfile: str = ""
    rest_ssl_keyfile: str = ""
    #: PEM CA certificates REST client certificates must be signed by ("" = none asked for).
    rest_ssl_client_ca_file: str = ""
    #: TLS for gRPC (``--ssl_config_file``); None = plaintext.
    grpc_tls: GrpcTls | None = None
    #: ``--dashboard``: the live dashboard at ``/dashboard`` on the REST port.
    dashboard: bool = True
    #: The flags given on the command line, ``(name, value)``, as the dashboard shows them.
    flags_in_force: tuple[tuple[str, str], ...] = ()
    #: Bind the gRPC and REST ports with ``SO_REUSEPORT``, sharing them with the other
    #: workers of ``--num_workers`` (see ``server/workers.py``).
    reuse_port: bool = False
    #: prometheus-client's multiprocess directory this worker writes its metrics to and
    #: aggregates every worker's from ("" = metrics of this process only).
    metrics_multiprocess_dir: str = ""
    #: What names this worker's metric files (None: its pid).
    metrics_process_id: str | None = None
    #: This process's index among ``--num_workers`` workers (None = not a worker).
    worker_index: int | None = None
    num_workers: int = 1
    #: A worker replacing one that died while the server served: when a model has no
    #: version it can load, it waits for one (polling) rather than failing its start.
    rejoin: bool = False


def _flag_file(path: str, message: Any, what: str) -> Any:
    """``message`` read from the text-proto file a flag names; ``UsageError`` (the server
    does not start) when it cannot be read or parsed."""
    try:
        return read_text_proto(path, message, what)
    except ConfigError as exc:
        raise UsageError(exc.message) from None


def server_options_from_flags(flags: ParsedFlags) -> ServerOptions:
    """Build ServerOptions; ``UsageError`` for inconsistent flags or a bad config file."""
    rejoin_warnings: list[str] = []
    polled = flags.model_config_file_poll_wait_seconds > 0
    applied = applied_config() if rejoining() and flags.model_config_file and not polled else None
    if applied is not None:
        # Not polling: the other workers serve the file as it was when they read it.
        config = applied
    elif flags.model_config_file:
        try:
            config = load_model_server_config(flags.model_config_file)
        except ConfigError as exc:
            # A worker replacing one that died serves what the other workers serve.
            config = applied_config() if rejoining() else None
            if config is None:
                raise UsageError(exc.message) from None
            rejoin_warnings.append(
                f"Not applying model config file {flags.model_config_file}: {exc.message}; "
                "serving the configuration the other workers applied last"
            )
    elif flags.model_base_path:
        config = single_model_config(
            flags.model_name, flags.model_base_path, flags.model_platform
        )
    else:
        raise UsageError(
            "Both server_options.model_base_path and server_options.model_config_file are "
            "empty!\nStart with --model_base_path=/path/to/model (or --model_config_file)."
        )
    metrics_path = ""
    if flags.monitoring_config_file:
        from pyserving.protos import MonitoringConfig

        monitoring = _flag_file(
            flags.monitoring_config_file, MonitoringConfig(), "tensorflow.serving.MonitoringConfig"
        )
        if monitoring.prometheus_config.enable:
            metrics_path = monitoring.prometheus_config.path or "/monitoring/prometheus/metrics"
    if flags.version_policy not in ("availability_preserving", "resource_preserving"):
        raise UsageError(
            f"--version_policy must be availability_preserving or resource_preserving, "
            f"not {flags.version_policy}"
        )
    if flags.log_format not in ("text", "json"):
        raise UsageError(f"--log_format must be text or json, not {flags.log_format}")
    if flags.grpc_frontend not in ("http2", "grpcio"):
        raise UsageError(f"--grpc_frontend must be http2 or grpcio, not {flags.grpc_frontend}")
    policy_per_model = {}
    for item in filter(None, (x.strip() for x in flags.version_policy_per_model.split(","))):
        name, _, policy = item.partition(":")
        if policy not in ("availability_preserving", "resource_preserving") or not name:
            raise UsageError(
                f"--version_policy_per_model: {item!r} is not NAME:availability_preserving "
                "or NAME:resource_preserving"
            )
        policy_per_model[name] = policy
    if flags.num_workers < 1:
        raise UsageError(f"--num_workers must be at least 1, not {flags.num_workers}")
    # Each of the N workers loads every model: it gets an N-th of the budget.
    budget = (
        ResourceEstimate(ram_bytes=flags.model_memory_budget_bytes // flags.num_workers)
        if flags.model_memory_budget_bytes > 0
        else None
    )
    if flags.platform_config_file:
        tf_settings = _platform_config(flags)
    else:
        tf_settings = _tensorflow_settings_from_flags(flags)
    batching = None
    if tf_settings.batching_parameters is not None:
        from pyserving.batching import BatchingOptions

        try:
            batching = BatchingOptions.from_proto(tf_settings.batching_parameters)
        except ServingError as exc:
            if flags.platform_config_file:
                where = f"--platform_config_file={flags.platform_config_file}: "
                where += "batching_parameters: "
            elif flags.batching_parameters_file:
                where = f"--batching_parameters_file={flags.batching_parameters_file}: "
            else:
                where = ""
            raise UsageError(where + exc.message) from None
    load_timeout = flags.load_timeout_seconds
    if not load_timeout >= 0:  # also refuses NaN
        raise UsageError(f"--load_timeout_seconds must be >= 0, not {load_timeout}")
    if flags.rest_api_max_body_bytes < 0:
        raise UsageError(
            f"--rest_api_max_body_bytes must be >= 0, not {flags.rest_api_max_body_bytes}"
        )
    grpc_tls = _grpc_tls(flags.ssl_config_file)
    _check_rest_tls(
        flags.rest_api_ssl_certfile,
        flags.rest_api_ssl_keyfile,
        flags.rest_api_ssl_client_ca_file,
    )
    core = ServerCoreOptions(
        manager=ManagerOptions(
            num_load_threads=flags.num_load_threads,
            num_unload_threads=flags.num_unload_threads,
            max_num_load_retries=flags.max_num_load_retries,
            load_retry_interval=flags.load_retry_interval_micros / 1e6,
            default_policy=flags.version_policy,
            resource_budget=budget,
            load_timeout=load_timeout if 0 < load_timeout < float("inf") else None,
        ),
        file_system_poll_wait_seconds=flags.file_system_poll_wait_seconds,
        allow_version_labels_for_unavailable_models=flags.allow_version_labels_for_unavailable_models,
        saved_model_tags=tf_settings.saved_model_tags,
        intra_op_threads=tf_settings.intra_op_threads,
        inter_op_threads=tf_settings.inter_op_threads,
        session_config=tf_settings.session_config,
        batching=batching,
        per_model_batching=tf_settings.per_model_batching and batching is not None,
        policy_per_model=policy_per_model,
        enable_warmup=tf_settings.enable_warmup,
        warmup_iterations=tf_settings.warmup_iterations,
        prefer_tflite_model=tf_settings.prefer_tflite_model,
        num_tflite_pools=max(1, tf_settings.num_tflite_pools),
        num_tflite_interpreters_per_pool=max(1, tf_settings.num_tflite_interpreters_per_pool),
        model_cache_dir=flags.model_cache_dir,
        store_list_timeout=_store_list_timeout(flags.model_store_list_timeout_seconds),
        # A cache directory serves one process: each worker has its own inside it (a
        # restarted worker takes over its predecessor's copies).
        model_cache_subdir="" if worker_index() is None else f"worker-{worker_index()}",
        fixed_model_set=(
            f"--num_workers={flags.num_workers}: each worker serves the model set of the "
            "command line or --model_config_file (change it by editing the file, with "
            "--model_config_file_poll_wait_seconds), so it cannot be changed by a request"
            if flags.num_workers > 1
            else ""
        ),
    )
    worker = worker_index()
    return ServerOptions(
        core=core,
        model_config=config,
        grpc_port=flags.port,
        grpc_socket_path=flags.grpc_socket_path,
        grpc_channel_arguments=flags.grpc_channel_arguments,
        grpc_max_threads=max(1, int(flags.grpc_max_threads)),
        grpc_grpcio=flags.grpc_frontend == "grpcio",
        enable_grpc_health=flags.enable_grpc_healthcheck_service,
        enable_profiler=flags.enable_profiler,
        grpc_tensor_content=flags.enable_serialization_as_tensor_content,
        rest_port=flags.rest_api_port,
        rest_num_threads=max(1, int(flags.rest_api_num_threads)),
        rest_timeout_ms=flags.rest_api_timeout_in_ms,
        rest_enable_cors=flags.rest_api_enable_cors_support,
        check_method_name=flags.enable_signature_method_name_check,
        startup_warnings=(*_startup_warnings(flags, tf_settings), *rejoin_warnings),
        metrics_path=metrics_path,
        log_format=flags.log_format,
        model_config_file=flags.model_config_file,
        model_config_file_poll_wait_seconds=(
            flags.model_config_file_poll_wait_seconds if flags.model_config_file else 0
        ),
        rest_max_body_bytes=flags.rest_api_max_body_bytes or None,
        rest_ssl_certfile=flags.rest_api_ssl_certfile,
        rest_ssl_keyfile=flags.rest_api_ssl_keyfile,
        rest_ssl_client_ca_file=flags.rest_api_ssl_client_ca_file,
        grpc_tls=grpc_tls,
        dashboard=flags.dashboard,
        flags_in_force=tuple(
            (name, _flag_text(flags.values[name])) for name in sorted(flags.given)
        ),
        reuse_port=flags.num_workers > 1,
        metrics_multiprocess_dir=multiprocess_dir() if worker is not None else "",
        metrics_process_id=metrics_process_id() if worker is not None else None,
        worker_index=worker,
        num_workers=flags.num_workers,
        rejoin=rejoining(),
    )


def _flag_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _store_list_timeout(seconds: float) -> float:
    """``--model_store_list_timeout_seconds``, checked (``UsageError``)."""
    if not seconds >= 0 or seconds == float("inf"):  # also refuses NaN
        raise UsageError(
            f"--model_store_list_timeout_seconds must be >= 0 (0 = no limit), not {seconds}"
        )
    return seconds


def _tensorflow_settings_from_flags(flags: ParsedFlags) -> TensorFlowSettings:
    """The TensorFlow platform's settings the flags give (no ``--platform_config_file``);
    ``UsageError`` for inconsistent flags or a bad file they name."""
    if flags.batching_parameters_file and not flags.enable_batching:
        raise UsageError("--batching_parameters_file requires --enable_batching")
    if flags.enable_per_model_batching_parameters and not flags.enable_batching:
        raise UsageError("--enable_per_model_batching_parameters requires --enable_batching")
    params = None
    if flags.enable_batching:
        from pyserving.protos import BatchingParameters

        params = BatchingParameters()
        if flags.batching_parameters_file:
            params = _flag_file(
                flags.batching_parameters_file, params, "tensorflow.serving.BatchingParameters"
            )
    return TensorFlowSettings(
        session_config=_session_config(flags.tensorflow_session_config_file),
        intra_op_threads=flags.tensorflow_intra_op_parallelism
        or flags.tensorflow_session_parallelism,
        inter_op_threads=flags.tensorflow_inter_op_parallelism
        or flags.tensorflow_session_parallelism,
        batching_parameters=params,
        per_model_batching=flags.enable_per_model_batching_parameters,
        saved_model_tags=tuple(t.strip() for t in flags.saved_model_tags.split(",") if t.strip()),
        enable_warmup=flags.enable_model_warmup,
        warmup_iterations=flags.num_request_iterations_for_warmup,
        prefer_tflite_model=flags.prefer_tflite_model,
        num_tflite_pools=flags.num_tflite_pools,
        num_tflite_interpreters_per_pool=flags.num_tflite_interpreters_per_pool,
        unused_fields=(),
    )


def _platform_config(flags: ParsedFlags) -> TensorFlowSettings:
    """The settings of ``--platform_config_file``, which replace those of
    :data:`~pyserving.platform_config.REPLACED_FLAGS`; ``UsageError`` for a file that cannot
    be read or honoured."""
    from pyserving.platform_config import read_platform_config_file

    try:
        settings = read_platform_config_file(flags.platform_config_file)
    except ConfigError as exc:
        raise UsageError(exc.message) from None
    return settings


def _startup_warnings(flags: ParsedFlags, settings: TensorFlowSettings) -> tuple[str, ...]:
    """What the server logs at start about flags and files it does not act on."""
    from pyserving.platform_config import REPLACED_FLAGS

    warnings = [
        f"Flag --{name} is accepted but not implemented by pyserving yet; ignored"
        for name in not_implemented_flags(flags)
    ]
    if flags.platform_config_file:
        replaced = sorted(name for name in flags.given if name in REPLACED_FLAGS)
        if replaced:
            warnings.append(
                "--platform_config_file sets the TensorFlow platform's settings; not read: "
                + ", ".join(f"--{name}" for name in replaced)
            )
        if not settings.enable_warmup and "enable_model_warmup" not in flags.given:
            warnings.append(
                "--platform_config_file: model warmup is off (its SessionBundleConfig does "
                "not set enable_model_warmup: true)"
            )
        if settings.unused_fields:
            warnings.append(
                "--platform_config_file: SessionBundleConfig fields not acted on by "
                "pyserving: " + ", ".join(settings.unused_fields)
            )
    return tuple(warnings)


def _session_config(path: str) -> bytes:
    """``--tensorflow_session_config_file`` (a ``tensorflow.ConfigProto`` text proto),
    serialized; ``b""`` when unset. ``UsageError`` when unreadable or malformed."""
    if not path:
        return b""
    from tensorflow.core.protobuf import config_pb2

    try:
        config = read_text_proto(path, config_pb2.ConfigProto(), "tensorflow.ConfigProto")
    except ConfigError as exc:
        raise UsageError(f"--tensorflow_session_config_file={path}: {exc.message}") from None
    return bytes(config.SerializeToString())


def _grpc_tls(ssl_config_file: str) -> GrpcTls | None:
    """The gRPC TLS settings of ``--ssl_config_file`` (None when unset); ``UsageError``."""
    if not ssl_config_file:
        return None
    from pyserving.server.grpc import read_ssl_config_file

    try:
        return read_ssl_config_file(ssl_config_file)
    except ServingError as exc:
        raise UsageError(f"--ssl_config_file={ssl_config_file}: {exc.message}") from None


def _check_rest_tls(certfile: str, keyfile: str, client_ca_file: str = "") -> None:
    """Load the REST certificate, key and client CAs once, so a bad file stops start-up
    with a message."""
    if not certfile and not keyfile and not client_ca_file:
        return
    if not certfile:
        which = "--rest_api_ssl_keyfile" if keyfile else "--rest_api_ssl_client_ca_file"
        raise UsageError(f"{which} needs --rest_api_ssl_certfile")
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile or None)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(
            f"--rest_api_ssl_certfile={certfile} / --rest_api_ssl_keyfile={keyfile}: "
            f"cannot load the certificate and key: {exc}"
        ) from None
    if client_ca_file:
        try:
            context.load_verify_locations(cafile=client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(
                f"--rest_api_ssl_client_ca_file={client_ca_file}: cannot load the CA "
                f"certificates: {exc}"
            ) from None


#: Modules a server always needs, imported before :func:`freeze_startup_objects` freezes.
_SERVING_MODULES = (
    "tensorflow",
    "tensorflow.python.saved_model.loader_impl",
    "pyserving.platforms.tensorflow.loader",
    "pyserving.platforms.tensorflow.servable",
    "pyserving.server.grpc.h2",
    "pyserving.server.rest",
    "pyserving.server.http1",
)


def freeze_startup_objects() -> None:
    """Import what serving needs, then move every object alive now into the garbage
    collector's permanent generation (``gc.freeze``).

    Unloading a version runs a full collection, so the graph it leaves behind is freed
    before the next version loads (resource-preserving swaps rely on it). Without this,
    each such collection walks the hundreds of thousands of objects TensorFlow creates at
    import: ~0.2 s per unload, all of it inside a resource-preserving swap's window.
    Frozen objects are never collected, so this runs once, before any model loads: the
    objects of every model loaded later stay collectable.
    """
    for name in _SERVING_MODULES:
        importlib.import_module(name)
    gc.collect()
    gc.freeze()


def run_server(options: ServerOptions) -> int:
    """Serve until SIGTERM/SIGINT; return the process exit status."""
    configure_logging(options.log_format, options.worker_index)
    freeze_startup_objects()
    for warning in options.startup_warnings:
        log.warning("%s", warning)
    metrics = ServerMetrics(
        options.metrics_multiprocess_dir,
        options.worker_index,
        process_id=options.metrics_process_id,
    )
    core = ServerCore(options.core, metrics)
    core.manager.bus.subscribe(log_transition)
    core.manager.bus.subscribe(metrics.on_state)
    dashboard = _dashboard(options, core, metrics)
    try:
        labels_pending = False
        try:
            core.reload_config(options.model_config, from_config_file=True)
        except FailedPrecondition as exc:
            # The model set is in force; a label names a version not AVAILABLE here.
            if not options.rejoin:
                sys.stderr.write(f"{exc.message}\n")
                return 1
            log.warning("Version labels not given yet: %s", exc.message)
            labels_pending = True
        except ServingError as exc:
            sys.stderr.write(f"{exc.message}\n")
            return 1
        save_applied_config(options.model_config)
        poller = ConfigFilePoller(options, core)
        failed = [name for name in core.model_names() if not core.manager.available_versions(name)]
        if failed or labels_pending:
            for name in failed:
                for state in core.monitor.get_version_states(name).values():
                    if state.error is not None:
                        log.error(
                            "Model %s version %d failed: %s",
                            name,
                            state.id.version,
                            state.error.message,
                        )
            if not options.rejoin:
                sys.stderr.write(f"{len(failed)} model(s) did not become available\n")
                return 1
            # Rejoining a running server whose workers serve a version this worker did not
            # load (an older one, kept while the newest fails): serving without it would
            # fail the requests the kernel gives this worker, and exiting at once would
            # only be restarted into the same state. It waits, polling its sources, until
            # every model has a version to serve (a new version fixes it) and the labels
            # are given, then serves; after REJOIN_WAIT_SECONDS it exits, so that the
            # supervisor starts it again (a failure that was passing, a download cut
            # short, is then retried: a version that failed is not loaded again as is).
            waiting_for = (
                f"{len(failed)} model(s) have no version this worker can serve "
                f"({', '.join(failed)})"
                if failed
                else "Version labels cannot be given yet"
            )
            log.warning(
                "%s; waiting until each has one before serving, for at most %.0fs (the "
                "other workers keep serving)",
                waiting_for,
                REJOIN_WAIT_SECONDS,
            )
            outcome = _wait_until_every_model_serves(
                core, options, poller, labels_pending, REJOIN_WAIT_SECONDS
            )
            if outcome == "signal":
                core.release_waiters()
                poller.stop()
                return 0
            if outcome == "timeout":
                poller.stop()
                sys.stderr.write(
                    f"Worker still has no version of every model after "
                    f"{REJOIN_WAIT_SECONDS:.0f}s; exiting to be started again\n"
                )
                return 1
            log.info("Every model has a version AVAILABLE; serving")
        return _serve(options, core, metrics, dashboard, poller)
    finally:
        if dashboard is not None:
            dashboard.close()
        core.close()
        metrics.close()


def _dashboard(
    options: ServerOptions, core: ServerCore, metrics: ServerMetrics
) -> Dashboard | None:
    """The dashboard's state (None when off or without a REST port). Made before models
    load: it records each load's memory growth from the event bus."""
    if not options.dashboard or not options.rest_port or options.rest_port == options.grpc_port:
        return None
    from pyserving.server.dashboard import Dashboard, ServerInfo

    return Dashboard(
        core,
        metrics,
        ServerInfo(
            grpc_port=options.grpc_port,
            rest_port=options.rest_port,
            grpc_socket_path=options.grpc_socket_path,
            flags=options.flags_in_force,
            batching=options.core.batching is not None,
            worker_index=options.worker_index,
            num_workers=options.num_workers,
        ),
    )


def _start_grpc(serving: ModelServing, options: ServerOptions) -> Any:
    from pyserving.server.grpc import GrpcServerOptions, start_grpc_server

    return start_grpc_server(
        serving,
        GrpcServerOptions(
            port=options.grpc_port,
            socket_path=options.grpc_socket_path,
            channel_arguments=options.grpc_channel_arguments,
            max_threads=options.grpc_max_threads,
            enable_health=options.enable_grpc_health,
            enable_profiler=options.enable_profiler,
            tensor_content=options.grpc_tensor_content,
            grpcio=options.grpc_grpcio,
            tls=options.grpc_tls,
            reuse_port=options.reuse_port,
        ),
    )


def _onednn_state() -> str:
    """``on`` or ``off``: whether the TensorFlow of this process runs oneDNN kernels."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return "on" if _pywrap_util_port.IsMklEnabled() else "off"
    except (ImportError, AttributeError):  # pragma: no cover - a TensorFlow without it
        return "unknown"


def _serve(
    options: ServerOptions,
    core: ServerCore,
    metrics: ServerMetrics,
    dashboard: Dashboard | None = None,
    poller: ConfigFilePoller | None = None,
) -> int:
    serving = ModelServing(core, check_method_name=options.check_method_name, metrics=metrics)
    try:
        grpc_server = _start_grpc(serving, options)
    except ServingError as exc:
        sys.stderr.write(f"{exc.message}\n")
        return 1
    except RuntimeError as exc:  # the port or socket could not be bound
        sys.stderr.write(f"{exc}\n")
        return 1
    log.info("TensorFlow kernels: oneDNN %s (--tensorflow_onednn)", _onednn_state())
    log.info(
        "Running gRPC ModelServer at 0.0.0.0:%d%s ...",
        grpc_server.port,
        " (TLS)" if options.grpc_tls is not None else "",
    )
    unsubscribe = core.manager.bus.subscribe(
        lambda _state: grpc_server.set_serving_status(is_ready(core))
    )
    grpc_server.set_serving_status(is_ready(core))
    if poller is None:
        poller = ConfigFilePoller(options, core)
    poller.start()  # once: a poller already started goes on
    status = 0
    try:
        if options.rest_port and options.rest_port != options.grpc_port:
            status = _serve_rest(options, serving, metrics, dashboard)
        else:
            if options.rest_port:
                log.error(
                    "--rest_api_port cannot be same as --port. Please use a different port "
                    "for HTTP/REST API. Skipped exporting HTTP/REST API."
                )
            notify_ready()
            _wait_for_signal()
    finally:
        log.info("Shutting down: finishing requests in flight")
        core.release_waiters()  # a reload waiting for its models answers now
        poller.stop()
        unsubscribe()
        grpc_server.set_serving_status(False)
        grpc_server.stop(options.shutdown_grace_seconds)
    return status


def _serve_rest(
    options: ServerOptions,
    serving: ModelServing,
    metrics: ServerMetrics,
    dashboard: Dashboard | None = None,
) -> int:
    """Serve REST (``http1.py``) until SIGTERM/SIGINT, then let requests in flight finish
    within the grace period; the process's exit status (1 when the port cannot be bound or
    its TLS files cannot be used)."""
    from pyserving.server.http1 import start_rest_server
    from pyserving.server.rest import RestHandler, RestResponse

    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=options.rest_num_threads, thread_name_prefix="pyserving-rest"
    )
    handler = RestHandler(serving, max_body_bytes=options.rest_max_body_bytes)
    install_health_routes(handler, serving.core)
    if dashboard is not None:
        from pyserving.server.dashboard import install_dashboard_routes

        install_dashboard_routes(handler, dashboard)
        dashboard.start()
    if options.metrics_path:
        handler.extra_routes[options.metrics_path] = lambda: RestResponse(
            200, metrics.render(), CONTENT_TYPE.encode()
        )
        log.info("Prometheus metrics at :%d%s", options.rest_port, options.metrics_path)
    try:
        # With --num_workers, each worker binds the port with SO_REUSEPORT.
        server = start_rest_server(
            handler, executor, rest_server_options(options, reuse_port=options.reuse_port)
        )
    except RuntimeError as exc:
        executor.shutdown(wait=False)
        sys.stderr.write(f"{exc}\n")
        return 1
    log.info(
        "Exporting HTTP/REST API at:localhost:%d%s ...",
        server.port,
        " (HTTPS)" if options.rest_ssl_certfile else "",
    )
    if dashboard is not None:
        log.info("Dashboard at http://localhost:%d/dashboard/", server.port)
    notify_ready()
    try:
        _wait_for_signal()
    finally:
        server.stop(options.shutdown_grace_seconds)
        executor.shutdown(wait=True)
    return 0


def rest_server_options(options: ServerOptions, *, reuse_port: bool = False) -> Any:
    """The REST port's :class:`~pyserving.server.http1.RestServerOptions` (HTTPS when a
    certificate is given; ``reuse_port``: ``SO_REUSEPORT`` on its socket)."""
    from pyserving.server.http1 import RestServerOptions

    return RestServerOptions(
        port=options.rest_port,
        timeout_ms=options.rest_timeout_ms,
        enable_cors=options.rest_enable_cors,
        max_body_bytes=options.rest_max_body_bytes,
        ssl_certfile=options.rest_ssl_certfile,
        ssl_keyfile=options.rest_ssl_keyfile,
        ssl_client_ca_file=options.rest_ssl_client_ca_file,
        reuse_port=reuse_port,
    )


def _wait_for_signal(done: Callable[[], bool] | None = None) -> bool:
    """Block until SIGTERM or SIGINT (True), or until ``done()`` (asked every second) is
    true (False)."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        log.info("Received signal %d", signum)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        # Short waits: the handler runs on the main thread between them.
        while not stop.wait(1.0):
            if done is not None and done():
                return False
        return True
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _wait_until_every_model_serves(
    core: ServerCore,
    options: ServerOptions,
    poller: ConfigFilePoller,
    labels_pending: bool,
    limit: float,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Block until every configured model has an AVAILABLE version and, with
    ``labels_pending``, the config's version labels could be given (``"ready"``), a signal
    arrives (``"signal"``) or ``limit`` seconds pass (``"timeout"``). The model config file
    is polled meanwhile by ``poller`` (started here), as when serving: a model taken out of
    it is no longer waited for."""
    pending = labels_pending
    deadline = clock() + limit

    def done() -> bool:
        nonlocal pending
        if not all(core.manager.available_versions(name) for name in core.model_names()):
            return clock() >= deadline
        if pending:
            try:
                core.reload_config(options.model_config, from_config_file=True)
            except ServingError:
                return clock() >= deadline
            pending = False
        return True

    poller.start()
    if done() or not _wait_for_signal(done):
        ready = all(core.manager.available_versions(n) for n in core.model_names())
        return "ready" if ready and not pending else "timeout"
    return "signal"


class ConfigFilePoller:
    """Re-reads ``--model_config_file`` every ``--model_config_file_poll_wait_seconds``.

    A changed, valid file replaces the model set (as the reload RPC does); a file that does
    not parse or validate is logged and the current set keeps serving. A file whose model set
    was applied but whose version labels could not all be given (a version not AVAILABLE
    yet) is applied again at every poll until they are. A file that cannot be read is
    logged (once, until it can be read again) and the current set keeps serving.
    """

    def __init__(self, options: ServerOptions, core: ServerCore) -> None:
        self._path = options.model_config_file
        self._period = options.model_config_file_poll_wait_seconds
        self._core = core
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unreadable: str | None = None  # the read error last logged
        self._last = self._read() if self._path else None  # in force (or refused for good)
        self._attempted = self._last  # the content last tried

    def _read(self) -> bytes | None:
        try:
            with open(self._path, "rb") as f:
                content = f.read()
        except OSError as exc:
            reason = f"{type(exc).__name__}: {exc.strerror or exc}"
            if reason != self._unreadable:
                self._unreadable = reason
                log.error(
                    "Failed to read model config file %s (%s); serving the last configuration",
                    self._path,
                    reason,
                )
            return None
        self._unreadable = None
        return content

    def start(self) -> None:
        """Start polling (once: later calls do nothing)."""
        if not self._path or self._period <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._loop, name="pyserving-config-poll", daemon=True
        )
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._period):
            self.poll_once()

    def poll_once(self) -> None:
        content = self._read()
        if content is None or content == self._last:
            return
        retry = content == self._attempted
        self._attempted = content
        try:
            config = load_model_server_config(self._path)
            if not retry:
                log.info("Model config file %s changed; reloading", self._path)
            self._core.reload_config(config, from_config_file=True)
        except FailedPrecondition as exc:  # (a file that does not parse: InvalidArgument)
            # The new model set is in force; a label names a version not AVAILABLE yet. No
            # content counts as in force: this one is tried again, any other (the previous
            # one restored) applied.
            self._last = None
            if not retry:
                log.error(
                    "Model config file %s applied, except: %s; applying it again at every "
                    "poll until that succeeds",
                    self._path,
                    exc.message,
                )
            return
        except ServingError as exc:
            self._last = content
            log.error("Not applying model config file %s: %s", self._path, exc.message)
            return
        self._last = content
        save_applied_config(config)
        log.info("Model config reloaded: %s", ", ".join(self._core.model_names()))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
