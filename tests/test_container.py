"""The container image's files, without a container runtime: the Dockerfile (linted with
hadolint, and shaped like tensorflow/serving's image), the pinned wheels it installs, and its
entrypoint script run as a container would run it (the image's environment variables, extra
arguments), first with a stand-in server that records its command line, then with the real
one, whose readiness the image's HEALTHCHECK command checks."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.e2e.server import free_port
from tests.stores import required_tool

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
LOCK = ROOT / "docker" / "requirements.lock"
#: The extras installed in the image: every model store and every platform's extra ...
IMAGE_EXTRAS = ("s3", "gcs", "azure", "sklearn", "onnx", "xgboost", "lightgbm", "keras")
#: ... but these, with why (docs/deploy.md says how to add them to an image).
NOT_IN_IMAGE = {
    "torch": "PyPI's Linux torch wheel is the CUDA build, gigabytes with its libraries",
}


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions: ``(KEYWORD, arguments)``, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), " ".join(rest.split())))
    return found


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = required_tool("hadolint", os.path.join(os.path.dirname(sys.executable), "hadolint"))
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold=info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_image_is_shaped_like_tensorflow_serving() -> None:
    steps = final_stage()
    values = {}
    for keyword, rest in steps:
        values.setdefault(keyword, []).append(rest)
    assert "slim" in next(a for k, a in instructions() if k == "ARG" and "PYTHON_IMAGE" in a)
    assert values["EXPOSE"] == ["8500 8501"]
    env = dict(item.split("=", 1) for item in " ".join(values["ENV"]).split())
    assert env["MODEL_BASE_PATH"] == "/models" and env["MODEL_NAME"] == "model"
    (user,) = values["USER"]
    assert user.split(":")[0] not in ("0", "root")
    (entrypoint,) = values["ENTRYPOINT"]
    assert json.loads(entrypoint) == ["/usr/bin/tf_serving_entrypoint.sh"]
    assert any(a.endswith("/usr/bin/tf_serving_entrypoint.sh") for a in values["COPY"])
    (healthcheck,) = values["HEALTHCHECK"]
    assert "/v2/health/ready" in healthcheck and ":8501/" in healthcheck
    # KServe's TF Serving runtime runs /usr/bin/tensorflow_model_server itself.
    assert any("/usr/bin/tensorflow_model_server" in a for a in values["RUN"])
    # Wheels only from the pinned set (no index at install time).
    assert any("--no-index" in a for a in values["RUN"])
    assert any("-r requirements.lock" in a for k, a in instructions() if k == "RUN")
    assert f"'.[{','.join(IMAGE_EXTRAS)}]'" in LOCK.read_text()  # the regeneration command


def test_image_has_every_platform() -> None:
    """Every platform extra (those ``all`` gathers) is in the image or, with a reason, not."""
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    (everything,) = extras["all"]
    platforms = Requirement(everything).extras
    missing = platforms - set(IMAGE_EXTRAS) - set(NOT_IN_IMAGE)
    assert not missing, (
        f"extras {sorted(missing)} are not in the image: add them to IMAGE_EXTRAS here and "
        f"regenerate {LOCK.relative_to(ROOT)} with the command at its top"
    )


def test_lock_pins_what_pyproject_requires() -> None:
    """The lock pins every package exactly, and each version meets pyproject.toml's
    requirement for it (for the image's packages: the dependencies and :data:`IMAGE_EXTRAS`).
    A requirement added to one of them fails this until the lock is regenerated with the
    command at its top."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = list(project["dependencies"])
    pending, seen = list(IMAGE_EXTRAS), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in extras[extra]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == "pyserving":
                pending.extend(requirement.extras)
            else:
                wanted.append(text)
    lock = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"not pinned exactly: {line}"
            lock[canonicalize_name(name)] = version
    regenerate = f"regenerate {LOCK.relative_to(ROOT)} with the command at its top"
    for text in wanted:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{name} missing from {LOCK.name}: {regenerate}"
        assert requirement.specifier.contains(lock[name], prereleases=True), (
            f"{LOCK.name} has {name}=={lock[name]}, pyproject.toml wants {text}: {regenerate}"
        )


# ---------------------------------------------------------------------- the entrypoint


@pytest.fixture
def fake_server(tmp_path: pathlib.Path) -> pathlib.Path:
    """A ``tensorflow_model_server`` that writes its pid and arguments (one per line)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "tensorflow_model_server"
    script.write_text(
        '#!/bin/sh\necho "$$" > "$FAKE_OUT.pid"\n'
        'for a in "$@"; do printf "%s\\n" "$a"; done > "$FAKE_OUT"\n'
    )
    script.chmod(0o755)
    return bin_dir


def run_entrypoint(
    bin_dir: pathlib.Path, tmp: pathlib.Path, env: dict[str, str], *args: str
) -> list[str]:
    out = tmp / "argv"
    process = subprocess.Popen(
        ["/bin/sh", str(ENTRYPOINT), *args],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_OUT": str(out), **env},
    )
    assert process.wait(60) == 0
    # exec: the server is the entrypoint's own process (signals reach it directly).
    assert int((tmp / "argv.pid").read_text()) == process.pid
    return out.read_text().splitlines()


def test_entrypoint_defaults(fake_server: pathlib.Path, tmp_path: pathlib.Path) -> None:
    assert run_entrypoint(fake_server, tmp_path, {}) == [
        "--port=8500",
        "--rest_api_port=8501",
        "--model_name=model",
        "--model_base_path=/models/model",
    ]


def test_entrypoint_environment_and_extra_arguments(
    fake_server: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    env = {"MODEL_NAME": "flowers", "MODEL_BASE_PATH": "s3://bucket/models/"}
    extra = ["--enable_batching", "--model_config_file_poll_wait_seconds=60", "a b"]
    assert run_entrypoint(fake_server, tmp_path, env, *extra) == [
        "--port=8500",
        "--rest_api_port=8501",
        "--model_name=flowers",
        "--model_base_path=s3://bucket/models/flowers",
        *extra,
    ]


def test_entrypoint_runs_the_real_server_and_the_healthcheck_sees_it_ready(
    testdata: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    scripts = os.path.dirname(sys.executable)
    server = shutil.which("tensorflow_model_server", path=scripts) or shutil.which(
        "tensorflow_model_server"
    )
    assert server, "the tensorflow_model_server command is not installed"
    grpc_port, rest_port = free_port(), free_port()
    env = dict(
        os.environ,
        PATH=f"{os.path.dirname(server)}:{os.environ['PATH']}",
        MODEL_NAME="saved_model_half_plus_two_cpu",
        MODEL_BASE_PATH=str(testdata),
    )
    log = (tmp_path / "server.log").open("wb")
    # As `docker run IMAGE --port=... --rest_api_port=...`: later flags override the defaults.
    process = subprocess.Popen(
        ["/bin/sh", str(ENTRYPOINT), f"--port={grpc_port}", f"--rest_api_port={rest_port}"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    (healthcheck,) = [a for k, a in final_stage() if k == "HEALTHCHECK"]
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    check = [sys.executable, *command[1:]]
    try:
        deadline = time.monotonic() + 180
        ready = False
        while time.monotonic() < deadline and process.poll() is None:
            probe = [c.replace(":8501/", f":{rest_port}/") for c in check]
            if subprocess.run(probe, capture_output=True, timeout=60).returncode == 0:
                ready = True
                break
            time.sleep(0.2)
        assert ready, (tmp_path / "server.log").read_text()
        r = httpx.post(
            f"http://127.0.0.1:{rest_port}/v1/models/saved_model_half_plus_two_cpu:predict",
            content='{"instances": [[2.0]]}',
        )
        assert r.json() == {"predictions": [[3.0]]}
        # The healthcheck fails where nothing is ready.
        closed = [c.replace(":8501/", f":{free_port()}/") for c in check]
        assert subprocess.run(closed, capture_output=True, timeout=60).returncode != 0
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        log.close()
    assert code == 0, (tmp_path / "server.log").read_text()
