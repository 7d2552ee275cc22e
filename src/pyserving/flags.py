"""``tensorflow_model_server``'s flags: their table (names, types, defaults, help) and parsing.

Flags take TF Serving's forms only: ``--name=value``, ``--flag`` and ``--flag=true|false``
(also ``1|0``) for booleans. :func:`parse_flags` collects unknown arguments instead of failing
and raises :class:`UsageError` for a value that does not parse. Importing this module is
cheap (no TensorFlow): ``--help`` is answered from it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_CPUS = os.cpu_count() or 1


@dataclass(frozen=True)
class Flag:
    name: str
    type: type
    default: Any
    help: str
    implemented: bool = True


#: TF Serving's flags (same names, types and defaults) plus pyserving's own at the end.
FLAGS: tuple[Flag, ...] = (
    Flag("port", int, 8500, "Port to listen on for gRPC API"),
    Flag("grpc_socket_path", str, "", "If non-empty, listen to a UNIX socket for gRPC API"),
    Flag("rest_api_port", int, 0, "Port to listen on for HTTP/REST API (0 = no REST API)"),
    Flag("rest_api_num_threads", int, 4 * _CPUS, "Number of threads for HTTP/REST requests"),
    Flag("rest_api_timeout_in_ms", int, 30000, "Timeout for HTTP/REST API calls"),
    Flag("rest_api_enable_cors_support", bool, False, "Enable CORS headers in REST responses"),
    Flag("enable_batching", bool, False, "Enable server-side request batching"),
    Flag(
        "allow_version_labels_for_unavailable_models",
        bool,
        False,
        "Allow assigning version labels to versions that are not yet AVAILABLE",
    ),
    Flag("batching_parameters_file", str, "", "BatchingParameters text proto"),
    Flag(
        "enable_per_model_batching_parameters",
        bool,
        False,
        "Read batching_params.pbtxt in each model version directory",
    ),
    Flag("model_config_file", str, "", "ModelServerConfig text proto (overrides model_name)"),
    Flag(
        "model_config_file_poll_wait_seconds",
        int,
        0,
        "Seconds between re-reads of model_config_file (0 = read once)",
    ),
    Flag("model_name", str, "default", "Name of the model"),
    Flag("model_base_path", str, "", "Path to export (the directory holding version dirs)"),
    Flag(
        "model_platform",
        str,
        "",
        "pyserving: the model's platform (tensorflow, onnx, sklearn, python, ...; "
        "empty = detected from each version directory's files)",
    ),
    Flag("num_load_threads", int, 0, "Threads that load models (0 = load in the manager loop)"),
    Flag("num_unload_threads", int, 0, "Threads that unload models (0 = unload inline)"),
    Flag("max_num_load_retries", int, 5, "Retries of a failed model load"),
    Flag("load_retry_interval_micros", int, 60_000_000, "Microseconds between load retries"),
    Flag(
        "file_system_poll_wait_seconds",
        int,
        1,
        "Seconds between polls for new versions (0 = once, negative = never)",
    ),
    Flag("flush_filesystem_caches", bool, True, "Flush file system caches after loading", False),
    Flag("tensorflow_session_parallelism", int, 0, "Threads for TensorFlow ops (0 = auto)"),
    Flag("tensorflow_session_config_file", str, "", "ConfigProto text proto for sessions"),
    Flag("tensorflow_intra_op_parallelism", int, 0, "TensorFlow intra-op threads (0 = auto)"),
    Flag(
        "tensorflow_inter_op_parallelism",
        int,
        0,
        "TensorFlow inter-op threads (0 = run ops in the request thread)",
    ),
    Flag("use_alts_credentials", bool, False, "Use ALTS credentials", False),
    Flag("ssl_config_file", str, "", "SSLConfig text proto for gRPC"),
    Flag(
        "platform_config_file",
        str,
        "",
        "PlatformConfigMap text proto (replaces the TensorFlow platform's flags)",
    ),
    Flag("per_process_gpu_memory_fraction", float, 0.0, "GPU memory fraction", False),
    Flag("saved_model_tags", str, "serve", "Comma-separated tags of the MetaGraph to load"),
    Flag("grpc_channel_arguments", str, "", "Comma-separated gRPC channel arguments k=v"),
    Flag("grpc_max_threads", int, 4 * _CPUS, "Max threads serving gRPC requests"),
    Flag("enable_model_warmup", bool, True, "Replay warmup requests before serving"),
    Flag("num_request_iterations_for_warmup", int, 1, "Warmup iterations per record"),
    Flag("version", bool, False, "Print the version and exit"),
    Flag("monitoring_config_file", str, "", "MonitoringConfig text proto (Prometheus)"),
    Flag(
        "remove_unused_fields_from_bundle_metagraph",
        bool,
        True,
        "Drop unused MetaGraph fields",
        False,
    ),
    Flag(
        "prefer_tflite_model",
        bool,
        False,
        "Serve model.tflite instead of the SavedModel when a version directory holds one",
    ),
    Flag("num_tflite_pools", int, 1, "TFLite interpreter pools"),
    Flag("num_tflite_interpreters_per_pool", int, 1, "TFLite interpreters per pool"),
    Flag(
        "enable_signature_method_name_check",
        bool,
        False,
        "Require classify/regress signatures to carry the matching method_name",
    ),
    Flag("xla_cpu_compilation_enabled", bool, False, "Enable XLA on CPU", False),
    Flag(
        "enable_profiler",
        bool,
        True,
        "Serve tensorflow.ProfilerService on the gRPC port (TensorBoard's profile capture)",
    ),
    Flag("thread_pool_factory_config_file", str, "", "ThreadPoolFactoryConfig", False),
    Flag("mixed_precision", str, "", "Mixed precision mode", False),
    Flag("skip_initialize_tpu", bool, False, "Skip TPU initialization", False),
    Flag(
        "enable_grpc_healthcheck_service",
        bool,
        False,
        "Serve grpc.health.v1.Health on the gRPC port",
    ),
    Flag(
        "enable_serialization_as_tensor_content",
        bool,
        False,
        "Answer Predict with tensor_content instead of typed *_val fields",
    ),
    # pyserving's own flags.
    Flag(
        "version_policy",
        str,
        "availability_preserving",
        "pyserving: availability_preserving (load new, then unload old) or resource_preserving",
    ),
    Flag(
        "version_policy_per_model",
        str,
        "",
        "pyserving: per-model policy overrides, e.g. big_model:resource_preserving,other:"
        "availability_preserving",
    ),
    Flag("log_format", str, "text", "pyserving: text, or json for one JSON object per line"),
    Flag(
        "grpc_frontend",
        str,
        "http2",
        "pyserving: gRPC served by http2 (pyserving's HTTP/2 server) or grpcio (grpc.aio)",
    ),
    Flag(
        "model_memory_budget_bytes",
        int,
        0,
        "pyserving: total RAM models may reserve (0 = unlimited)",
    ),
    Flag(
        "load_timeout_seconds",
        float,
        0.0,
        "pyserving: seconds one load of a model version may take before the version ends "
        "with DEADLINE_EXCEEDED (0 = no limit)",
    ),
    Flag(
        "rest_api_max_body_bytes",
        int,
        1 << 30,
        "pyserving: largest REST request body, also after gzip decompression; larger ones "
        "get 413 (0 = no limit)",
    ),
    Flag(
        "rest_api_ssl_certfile",
        str,
        "",
        "pyserving: PEM certificate (chain) file: serve REST over HTTPS (with "
        "rest_api_ssl_keyfile)",
    ),
    Flag(
        "rest_api_ssl_keyfile",
        str,
        "",
        "pyserving: PEM private key file for rest_api_ssl_certfile",
    ),
    Flag(
        "rest_api_ssl_client_ca_file",
        str,
        "",
        "pyserving: PEM CA certificates; REST clients must present a certificate they signed",
    ),
    Flag(
        "num_workers",
        int,
        1,
        "pyserving: serving processes sharing the gRPC and REST ports (SO_REUSEPORT), each "
        "loading every model, restarted by the parent when one dies; the memory budget "
        "counts N copies",
    ),
    Flag(
        "model_cache_dir",
        str,
        "",
        "pyserving: where versions of models in object stores (s3://, gs://, az://) are "
        "copied before loading (default: <temp dir>/pyserving-model-cache)",
    ),
    Flag(
        "model_store_list_timeout_seconds",
        float,
        60.0,
        "pyserving: how long one listing of a model's base path in an object store may take "
        "before the store counts as down for that poll (0 = no limit)",
    ),
    Flag(
        "dashboard",
        bool,
        True,
        "pyserving: serve the live dashboard at /dashboard on the REST port",
    ),
    Flag(
        "tensorflow_onednn",
        bool,
        False,
        "pyserving: run TensorFlow's ops through oneDNN (sets TF_ENABLE_ONEDNN_OPTS before "
        "TensorFlow is imported; off as in TF Serving's standard build; when not given, a "
        "TF_ENABLE_ONEDNN_OPTS already in the environment is kept)",
    ),
)

_BY_NAME = {f.name: f for f in FLAGS}


class UsageError(Exception):
    """A flag value could not be interpreted."""


@dataclass(frozen=True)
class ParsedFlags:
    """Flag values by name, the unknown arguments, and which flags were given explicitly."""

    values: dict[str, Any]
    unknown: list[str]
    given: frozenset[str]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


def _parse_bool(name: str, text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise UsageError(f"Couldn't interpret value {text} for flag {name}.")


def _parse_value(flag: Flag, text: str) -> Any:
    if flag.type is bool:
        return _parse_bool(flag.name, text)
    try:
        if flag.type is int:
            return int(text, 10)
        if flag.type is float:
            return float(text)
    except ValueError:
        raise UsageError(f"Couldn't interpret value {text} for flag {flag.name}.") from None
    return text


def parse_flags(argv: Sequence[str]) -> ParsedFlags:
    """Parse ``argv`` (without the program name). Raises ``UsageError`` for a bad value."""
    values = {f.name: f.default for f in FLAGS}
    unknown: list[str] = []
    given: set[str] = set()
    for arg in argv:
        if not arg.startswith("-"):
            unknown.append(arg)
            continue
        body = arg.lstrip("-")
        name, eq, text = body.partition("=")
        flag = _BY_NAME.get(name)
        if flag is None:
            unknown.append(arg)
            continue
        if not eq:
            if flag.type is not bool:
                raise UsageError(f"Flag --{name} needs a value: --{name}=VALUE")
            values[name] = True
        else:
            values[name] = _parse_value(flag, text)
        given.add(name)
    return ParsedFlags(values, unknown, frozenset(given))


def usage() -> str:
    """Every flag with its default, type and meaning, one per line (the ``--help`` text)."""
    lines = [
        "usage: tensorflow_model_server [--flag=value ...]",
        "       pyserving inspect PATH",
        "Flags:",
    ]
    shown = [
        (f"--{f.name}={str(f.default).lower() if f.type is bool else repr(f.default)}", f)
        for f in FLAGS
    ]
    width = max(len(text) for text, _ in shown)
    for text, f in shown:
        note = "" if f.implemented else " (accepted, not acted on)"
        lines.append(f"\t{text:<{width}}\t{f.type.__name__}\t{f.help}{note}")
    return "\n".join(lines) + "\n"


def not_implemented_flags(flags: ParsedFlags) -> list[str]:
    """Flags given explicitly (with a non-default value) that pyserving does not act on."""
    return sorted(
        name
        for name in flags.given
        if not _BY_NAME[name].implemented and flags.values[name] != _BY_NAME[name].default
    )


def flag_defaults() -> dict[str, Any]:
    return {f.name: f.default for f in FLAGS}


__all__ = [
    "FLAGS",
    "Flag",
    "ParsedFlags",
    "UsageError",
    "flag_defaults",
    "not_implemented_flags",
    "parse_flags",
    "usage",
]
