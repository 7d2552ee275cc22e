"""Flag parsing: TF Serving's forms, unknown flags, bad values, --help, --version; a quiet start."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
from typing import Any

import pytest

from pyserving.cli import ONEDNN_VARIABLE, apply_onednn_flag, main
from pyserving.flags import FLAGS, UsageError, not_implemented_flags, parse_flags
from pyserving.quiet_tensorflow import TF_LOG_VARIABLES, filter_noise, user_wants_tensorflow_logs


def test_defaults_match_tf_serving() -> None:
    flags = parse_flags([])
    assert flags.port == 8500
    assert flags.rest_api_port == 0
    assert flags.rest_api_timeout_in_ms == 30000
    assert flags.model_name == "default"
    assert flags.file_system_poll_wait_seconds == 1
    assert flags.max_num_load_retries == 5
    assert flags.load_retry_interval_micros == 60_000_000
    assert flags.saved_model_tags == "serve"
    assert flags.enable_model_warmup is True
    assert flags.model_config_file_poll_wait_seconds == 0


def test_value_and_bool_forms() -> None:
    flags = parse_flags(
        [
            "--port=9000",
            "--rest_api_port=8080",
            "--model_name=m",
            "--model_base_path=/mnt/models",
            "--rest_api_timeout_in_ms=60000",
            "--enable_batching",
            "--rest_api_enable_cors_support=true",
            "--enable_model_warmup=false",
            "--allow_version_labels_for_unavailable_models=1",
            "--grpc_channel_arguments=grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb",
        ]
    )
    assert (flags.port, flags.rest_api_port, flags.model_name) == (9000, 8080, "m")
    assert flags.model_base_path == "/mnt/models"
    assert flags.enable_batching is True
    assert flags.rest_api_enable_cors_support is True
    assert flags.enable_model_warmup is False
    assert flags.allow_version_labels_for_unavailable_models is True
    assert flags.grpc_channel_arguments.endswith("grpc.lb_policy_name=grpclb")
    assert "enable_batching" in flags.given


def test_unknown_flags_are_collected_not_fatal() -> None:
    flags = parse_flags(["--no_such_flag=3", "stray", "--port=1"])
    assert flags.unknown == ["--no_such_flag=3", "stray"]
    assert flags.port == 1


@pytest.mark.parametrize(
    "arg",
    ["--port=abc", "--enable_batching=maybe", "--port", "--per_process_gpu_memory_fraction=x"],
)
def test_bad_values_are_usage_errors(arg: str) -> None:
    with pytest.raises(UsageError):
        parse_flags([arg])


def test_bad_value_exits_nonzero_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--port=abc"]) == 1
    err = capsys.readouterr().err
    assert "Couldn't interpret value abc for flag port." in err
    assert "--rest_api_port" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version", "--bogus"]) == 0
    captured = capsys.readouterr()
    assert "TensorFlow ModelServer: pyserving" in captured.out
    assert "TensorFlow Library: 2." in captured.out
    assert "unknown argument: --bogus" in captured.err


def test_missing_model_path_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 1
    assert "model_base_path" in capsys.readouterr().err


def test_not_implemented_flags_listed_only_when_set() -> None:
    assert not_implemented_flags(parse_flags(["--flush_filesystem_caches=true"])) == []
    assert not_implemented_flags(parse_flags(["--xla_cpu_compilation_enabled"])) == [
        "xla_cpu_compilation_enabled"
    ]


def test_every_flag_has_a_unique_name_and_help() -> None:
    names = [f.name for f in FLAGS]
    assert len(names) == len(set(names))
    assert all(f.help for f in FLAGS)


def test_batching_keeps_the_default_threads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pyserving.server.app import server_options_from_flags

    params = tmp_path / "batching.config"
    params.write_text("max_batch_size { value: 64 }")
    base = [
        "--model_base_path=/models/m",
        "--enable_batching",
        f"--batching_parameters_file={params}",
    ]
    options = server_options_from_flags(parse_flags(base))
    defaults = parse_flags([])
    # Requests waiting for their batch hold no thread on either gRPC transport (both run
    # on an event loop) nor on REST: the default thread counts stay.
    assert (options.rest_num_threads, options.grpc_max_threads) == (
        defaults.rest_api_num_threads,
        defaults.grpc_max_threads,
    )
    grpcio = server_options_from_flags(parse_flags([*base, "--grpc_frontend=grpcio"]))
    assert grpcio.grpc_grpcio is True


def test_tensor_content_flag_reaches_the_grpc_options() -> None:
    from pyserving.server.app import server_options_from_flags

    flags = parse_flags(["--model_base_path=/models/m", "--enable_serialization_as_tensor_content"])
    options = server_options_from_flags(flags)
    assert options.grpc_tensor_content is True
    assert not any("serialization" in w for w in options.startup_warnings)
    plain = server_options_from_flags(parse_flags(["--model_base_path=/models/m"]))
    assert plain.grpc_tensor_content is False


def test_session_config_file_is_read_or_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tensorflow.core.protobuf import config_pb2

    from pyserving.server.app import server_options_from_flags

    good = tmp_path / "session.config"
    good.write_text("intra_op_parallelism_threads: 1\nallow_soft_placement: true\n")
    options = server_options_from_flags(
        parse_flags(["--model_base_path=/models/m", f"--tensorflow_session_config_file={good}"])
    )
    config = config_pb2.ConfigProto.FromString(options.core.session_config)
    assert config.intra_op_parallelism_threads == 1
    bad = tmp_path / "bad.config"
    bad.write_text("intra_op_threads: 1\n")  # no such field
    with pytest.raises(UsageError, match=r"tensorflow_session_config_file.*ConfigProto"):
        server_options_from_flags(
            parse_flags(["--model_base_path=/models/m", f"--tensorflow_session_config_file={bad}"])
        )


_ADAPTER = "type.googleapis.com/tensorflow.serving.SavedModelBundleSourceAdapterConfig"


def _platform_config(tmp_path: pathlib.Path, legacy: str, key: str = "tensorflow") -> str:
    path = tmp_path / "platform.config"
    path.write_text(
        f'platform_configs {{ key: "{key}" value {{ source_adapter_config {{ '
        f"[{_ADAPTER}] {{ legacy_config {{ {legacy} }} }} }} }} }}\n"
    )
    return str(path)


def test_a_platform_config_file_sets_the_tensorflow_platform(tmp_path: pathlib.Path) -> None:
    """Its legacy_config is what TF Serving's flags would have built: session config and its
    thread counts, batching, tags, warmup and TFLite settings; the flags it replaces are not
    read, and a warning names those given."""
    from tensorflow.core.protobuf import config_pb2

    from pyserving.server.app import server_options_from_flags

    path = _platform_config(
        tmp_path,
        "session_config { intra_op_parallelism_threads: 3 inter_op_parallelism_threads: 2 "
        "allow_soft_placement: true } "
        "batching_parameters { max_batch_size { value: 16 } batch_timeout_micros { value: 700 } "
        "num_batch_threads { value: 2 } allowed_batch_sizes: 8 allowed_batch_sizes: 16 } "
        'saved_model_tags: "serve" saved_model_tags: "gpu" '
        "enable_model_warmup: true model_warmup_options { num_request_iterations { value: 4 } } "
        "enable_per_model_batching_params: true "
        "prefer_tflite_model: true num_tflite_pools: 3 num_tflite_interpreters_per_pool: 2",
    )
    flags = parse_flags(
        [
            "--model_base_path=/models/m",
            f"--platform_config_file={path}",
            "--tensorflow_intra_op_parallelism=7",
            "--enable_model_warmup=false",
        ]
    )
    options = server_options_from_flags(flags)
    core = options.core
    session = config_pb2.ConfigProto()
    session.ParseFromString(core.session_config)
    assert (session.intra_op_parallelism_threads, session.allow_soft_placement) == (3, True)
    assert (core.intra_op_threads, core.inter_op_threads) == (3, 2)
    assert core.batching is not None
    assert (core.batching.max_batch_size, core.batching.batch_timeout_micros) == (16, 700)
    assert (core.batching.num_batch_threads, core.batching.allowed_batch_sizes) == (2, (8, 16))
    assert core.per_model_batching is True
    assert core.saved_model_tags == ("serve", "gpu")
    assert (core.enable_warmup, core.warmup_iterations) == (True, 4)
    assert (core.prefer_tflite_model, core.num_tflite_pools) == (True, 3)
    assert core.num_tflite_interpreters_per_pool == 2
    assert options.startup_warnings == (
        "--platform_config_file sets the TensorFlow platform's settings; not read: "
        "--enable_model_warmup, --tensorflow_intra_op_parallelism",
    )


def test_a_platform_config_file_field_left_out_is_the_protos_default(
    tmp_path: pathlib.Path,
) -> None:
    """As in TF Serving, the file replaces the flags' defaults too: no batching without
    batching_parameters, warmup off without enable_model_warmup, tags default to serve; a
    set field pyserving does not act on is named in a warning."""
    from pyserving.server.app import server_options_from_flags

    path = _platform_config(tmp_path, 'session_target: "local" mixed_precision: "bfloat16"')
    options = server_options_from_flags(
        parse_flags(
            ["--model_base_path=/models/m", "--enable_batching", f"--platform_config_file={path}"]
        )
    )
    core = options.core
    assert core.batching is None and core.per_model_batching is False
    assert (core.enable_warmup, core.warmup_iterations) == (False, 1)
    assert core.saved_model_tags == ("serve",)
    assert (core.session_config, core.intra_op_threads, core.inter_op_threads) == (b"", 0, 0)
    assert options.startup_warnings == (
        "--platform_config_file sets the TensorFlow platform's settings; not read: "
        "--enable_batching",
        "--platform_config_file: model warmup is off (its SessionBundleConfig does not set "
        "enable_model_warmup: true)",
        "--platform_config_file: SessionBundleConfig fields not acted on by pyserving: "
        "session_target, mixed_precision",
    )
    # An entry with no adapter config at all is an empty legacy_config.
    bare = tmp_path / "bare.config"
    bare.write_text('platform_configs { key: "tensorflow" value { } }\n')
    options = server_options_from_flags(
        parse_flags(["--model_base_path=/models/m", f"--platform_config_file={bare}"])
    )
    assert options.core.batching is None
    assert options.startup_warnings == (
        "--platform_config_file: model warmup is off (its SessionBundleConfig does not set "
        "enable_model_warmup: true)",
    )


def test_a_platform_config_file_that_cannot_be_honoured_stops_the_start(
    tmp_path: pathlib.Path,
) -> None:
    """Unreadable, malformed, an entry for another platform, none for tensorflow, another
    adapter type, bad batching parameters or warmup iterations: each stops the start with a
    message naming what is wrong."""
    from pyserving.server.app import server_options_from_flags

    def refused(path: str | pathlib.Path, pattern: str) -> None:
        with pytest.raises(UsageError, match=pattern):
            server_options_from_flags(
                parse_flags(["--model_base_path=/models/m", f"--platform_config_file={path}"])
            )

    bad = tmp_path / "bad.config"
    bad.write_text("platform_configz { }\n")
    refused(bad, r"tensorflow\.serving\.PlatformConfigMap.*platform_configz")
    refused(tmp_path / "missing.config", r"tensorflow\.serving\.PlatformConfigMap.*cannot read")
    refused(_platform_config(tmp_path, "enable_model_warmupp: true"), r"enable_model_warmupp")
    refused(
        _platform_config(tmp_path, "", key="onnx"),
        r"platform 'onnx' has no settings in a platform config file",
    )
    empty = tmp_path / "empty.config"
    empty.write_text("")
    refused(empty, r"PlatformConfigMap has no entry for platform tensorflow")
    other = tmp_path / "other.config"
    other.write_text(
        'platform_configs { key: "tensorflow" value { source_adapter_config { '
        '[type.googleapis.com/tensorflow.serving.ModelWarmupOptions] { model_name: "m" } '
        "} } }\n"
    )
    refused(other, r"is a tensorflow\.serving\.ModelWarmupOptions; pyserving reads")
    refused(
        _platform_config(
            tmp_path,
            "batching_parameters { max_batch_size { value: 8 } allowed_batch_sizes: 4 }",
        ),
        r"platform_config_file=.*: batching_parameters: The last entry in allowed_batch_sizes "
        r"must match max_batch_size",
    )
    refused(
        _platform_config(tmp_path, "model_warmup_options { num_request_iterations { value: 0 } }"),
        r"platform_config_file=.*: model_warmup_options\.num_request_iterations must be "
        r"positive",
    )


def _run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


@pytest.mark.parametrize("arg", ["--help", "-h"])
def test_help_prints_every_flag_with_its_default_without_importing_tensorflow(arg: str) -> None:
    result = _run_python(
        "import sys\n"
        "from pyserving.cli import main\n"
        f"rc = main([{arg!r}])\n"
        "sys.stderr.write(f'rc={rc} tf={\"tensorflow\" in sys.modules}')\n"
    )
    assert result.stderr.strip().endswith("rc=0 tf=False"), result.stderr
    assert "unknown argument" not in result.stderr
    for flag in FLAGS:
        assert f"--{flag.name}=" in result.stdout
    for shown in ("--port=8500", "--rest_api_timeout_in_ms=30000", "--enable_model_warmup=true"):
        assert re.search(rf"\t{shown}\s", result.stdout), shown


def test_help_from_the_installed_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pyserving", "--help", "--port=1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("usage: tensorflow_model_server")
    assert "--model_base_path=''" in result.stdout


def test_version_imports_no_tensorflow() -> None:
    result = _run_python(
        "import sys\n"
        "from pyserving.cli import main\n"
        "rc = main(['--version'])\n"
        "sys.stderr.write(f'rc={rc} tf={\"tensorflow\" in sys.modules}')\n"
    )
    assert result.stderr.strip().endswith("rc=0 tf=False"), result.stderr
    assert "TensorFlow Library: 2." in result.stdout


def test_noise_filter_keeps_every_other_line() -> None:
    captured = (
        b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        b"I0000 00:00:1 port.cc:153] oneDNN custom operations are on. You may see\n"
        b"I0000 00:00:1 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU\n"
        b"E0000 00:00:1 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n"
        b"W0000 something a user must see\n"
        b"last line without newline"
    )
    assert filter_noise(captured) == (b"W0000 something a user must see\nlast line without newline")


def test_captured_stderr_is_written_back_without_noise() -> None:
    # Writes below Python's sys.stderr, on file descriptor 2, as TensorFlow's C++ code does.
    result = _run_python(
        "import os\n"
        "from pyserving.quiet_tensorflow import stderr_without_noise\n"
        "with stderr_without_noise():\n"
        "    os.write(2, b'I0 x] Could not find cuda drivers on your machine\\nkept 1\\n')\n"
        "    os.write(2, b'E0 y] failed call to cuInit: no\\nkept 2\\n')\n"
        "os.write(2, b'after\\n')\n"
    )
    assert result.returncode == 0
    assert result.stderr == "kept 1\nkept 2\nafter\n"


def test_captured_stderr_is_written_back_whole_when_the_work_fails() -> None:
    result = _run_python(
        "import os\n"
        "from pyserving.quiet_tensorflow import stderr_without_noise\n"
        "try:\n"
        "    with stderr_without_noise():\n"
        "        os.write(2, b'I0 x] Could not find cuda drivers on your machine\\n')\n"
        "        raise ImportError('broken')\n"
        "except ImportError:\n"
        "    pass\n"
    )
    assert "Could not find cuda drivers" in result.stderr


def test_server_start_prints_no_tensorflow_start_up_noise(tmp_path: pathlib.Path) -> None:
    # The server imports TensorFlow (quietly) before reading its config, then exits on the
    # missing file: what it printed is TensorFlow's start-up plus pyserving's own error.
    env = {k: v for k, v in os.environ.items() if k not in TF_LOG_VARIABLES}
    result = subprocess.run(
        [sys.executable, "-m", "pyserving", f"--model_config_file={tmp_path / 'missing'}"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert result.returncode == 1
    assert "missing" in result.stderr
    for noise in ("absl::InitializeLog", "Could not find cuda drivers", "cuInit", "oneDNN"):
        assert noise not in result.stderr, result.stderr


def test_tensorflow_logs_stay_when_the_user_asks_for_them() -> None:
    assert user_wants_tensorflow_logs({"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert user_wants_tensorflow_logs({"TF_CPP_MAX_VLOG_LEVEL": "1"})
    assert not user_wants_tensorflow_logs({"PATH": "/bin"})


def test_smoke_script_passes_on_this_interpreter() -> None:
    # CI also runs it on the newest Python pyserving supports, from a plain `pip install .`.
    root = pathlib.Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, str(root / "tests" / "smoke.py")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 check(s) failed" in result.stdout


def test_num_workers_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker binds with SO_REUSEPORT, gets an N-th of the memory budget and a model set
    no request can change; without --num_workers nothing of this applies."""
    from pyserving.server.app import server_options_from_flags

    base = ["--model_base_path=/models/m", "--model_memory_budget_bytes=1000"]
    plain = server_options_from_flags(parse_flags(base))
    assert not plain.reuse_port and plain.worker_index is None
    assert plain.core.fixed_model_set == ""
    assert plain.core.manager.resource_budget is not None
    assert plain.core.manager.resource_budget.ram_bytes == 1000
    monkeypatch.setenv("PYSERVING_WORKER", "1")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/tmp/metrics")
    worker = server_options_from_flags(parse_flags([*base, "--num_workers=3"]))
    assert worker.reuse_port and worker.worker_index == 1
    assert worker.metrics_multiprocess_dir == "/tmp/metrics"
    assert worker.core.manager.resource_budget is not None
    assert worker.core.manager.resource_budget.ram_bytes == 333
    assert worker.core.fixed_model_set.startswith("--num_workers=3: ")
    with pytest.raises(UsageError, match="--num_workers must be at least 1, not 0"):
        server_options_from_flags(parse_flags([*base, "--num_workers=0"]))


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        ([], {}, "0"),  # off by default, as TF Serving's standard build
        (["--tensorflow_onednn"], {}, "1"),
        ([], {"TF_ENABLE_ONEDNN_OPTS": "1"}, "1"),  # the operator's environment is kept
        (["--tensorflow_onednn=false"], {"TF_ENABLE_ONEDNN_OPTS": "1"}, "0"),  # the flag wins
        (["--tensorflow_onednn=true"], {"TF_ENABLE_ONEDNN_OPTS": "0"}, "1"),
    ],
)
def test_onednn_flag_sets_the_environment(
    argv: list[str], environ: dict[str, str], expected: str
) -> None:
    apply_onednn_flag(parse_flags(argv), environ)
    assert environ[ONEDNN_VARIABLE] == expected


def test_each_worker_caches_object_store_models_in_its_own_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cache directory serves one process: worker N of --num_workers uses worker-N inside
    the flag's (or the default) directory, so workers neither conflict nor leak copies."""
    from pyserving.server.app import server_options_from_flags

    flags = parse_flags(
        ["--model_base_path=/models/m", "--model_cache_dir=/var/cache/ps", "--num_workers=2"]
    )
    assert server_options_from_flags(flags).core.model_cache_subdir == ""
    monkeypatch.setenv("PYSERVING_WORKER", "1")
    options = server_options_from_flags(flags)
    assert (options.core.model_cache_dir, options.core.model_cache_subdir) == (
        "/var/cache/ps",
        "worker-1",
    )


def test_a_rejoining_worker_waits_for_its_models_for_a_bounded_time() -> None:
    """A restarted worker of --num_workers waits for a version of every model (and its
    labels) before serving, but not for ever: a version that failed is not loaded again as
    is, so past the limit it exits to be started again ("timeout"); "ready" as soon as
    every model serves and the labels could be given."""
    from pyserving.server import app

    class Manager:
        versions: list[int] = []

        def available_versions(self, name: str) -> list[int]:
            return self.versions

    class Core:
        manager = Manager()
        reloads = 0

        def model_names(self) -> list[str]:
            return ["m"]

        def reload_config(self, config: object, *, from_config_file: bool = False) -> None:
            self.reloads += 1

    class Poller:
        def start(self) -> None:
            pass

    now = [0.0]

    def clock() -> float:
        now[0] += 100.0  # each look at the clock: 100 s later
        return now[0]

    core: Any = Core()
    options: Any = type("Options", (), {"model_config": None})()
    poller: Any = Poller()
    wait = app._wait_until_every_model_serves
    assert wait(core, options, poller, False, 300.0, clock) == "timeout"
    Manager.versions = [1]
    assert wait(core, options, poller, True, 300.0, clock) == "ready"
    assert core.reloads == 1  # the labels given once every model serves


def test_store_listing_timeout_flag() -> None:
    from pyserving.server.app import server_options_from_flags

    base = ["--model_base_path=s3://bucket/m"]
    assert server_options_from_flags(parse_flags(base)).core.store_list_timeout == 60.0
    flags = parse_flags([*base, "--model_store_list_timeout_seconds=0"])
    assert server_options_from_flags(flags).core.store_list_timeout == 0.0
    for bad in ("-1", "nan", "inf"):
        flags = parse_flags([*base, f"--model_store_list_timeout_seconds={bad}"])
        with pytest.raises(UsageError, match="model_store_list_timeout_seconds must be >= 0"):
            server_options_from_flags(flags)


def test_a_rejoining_worker_reads_the_config_the_workers_applied(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted worker serves what the other workers serve: the config they applied last
    when the file is not polled (they never read it again) or no longer parses; the file
    when it is polled and parses (they apply it at their next poll)."""
    from pyserving.server.app import server_options_from_flags

    (tmp_path / "applied_model_config.pbtxt").write_text(
        'model_config_list { config { name: "applied" base_path: "/models/a" } }'
    )
    path = tmp_path / "models.config"
    path.write_text('model_config_list { config { name: "edited" base_path: "/models/e" } }')
    monkeypatch.setenv("PYSERVING_WORKER", "1")
    monkeypatch.setenv("PYSERVING_WORKER_STATE_DIR", str(tmp_path))

    def served(*extra: str) -> tuple[str, tuple[str, ...]]:
        options = server_options_from_flags(parse_flags([f"--model_config_file={path}", *extra]))
        return options.model_config.model_config_list.config[0].name, options.startup_warnings

    assert served()[0] == "edited"  # a first start reads the file
    monkeypatch.setenv("PYSERVING_WORKER_REJOIN", "1")
    assert served() == ("applied", ())
    assert served("--model_config_file_poll_wait_seconds=5") == ("edited", ())
    path.write_text("model_config_list { oops")
    name, warnings = served("--model_config_file_poll_wait_seconds=5")
    assert name == "applied"
    assert "serving the configuration the other workers applied last" in warnings[0]
