"""Models in object stores, end to end: the real server reading S3 (moto's server), GCS
(gcp-storage-emulator) and Azure Blob (Azurite), all started by these tests on loopback.

Version 1 is half_plus_two (x=2 -> 3.0), version 2 half_plus_three (x=2 -> 4.0), so every
answer tells which version gave it.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.server import RunningServer
from tests.stores import (
    AWS_KEY_ID,
    AWS_SECRET,
    AZURITE_KEY,
    AzuriteServer,
    CuttingProxy,
    GcsServer,
    S3Server,
    Store,
    files_of,
    publish,
)

pytestmark = pytest.mark.e2e

V1 = "saved_model_half_plus_two_cpu/00000123"
V2 = "saved_model_half_plus_three/00000123"


def wait_for(predicate: Callable[[], bool], timeout: float = 90.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"condition not reached in {timeout}s: {what}")


def predict(server: RunningServer, model: str = "hpt") -> float | None:
    """The prediction for x=2, or None when the request failed."""
    r = server.client.post(f"/v1/models/{model}:predict", content='{"instances": [[2.0]]}')
    return float(r.json()["predictions"][0][0]) if r.status_code == 200 else None


def status(server: RunningServer, model: str = "hpt") -> dict[str, dict[str, str]]:
    """``{version: {"state": ..., "error_code": ..., "error_message": ...}}``."""
    r = server.client.get(f"/v1/models/{model}")
    if r.status_code != 200:
        return {}
    return {
        v["version"]: {"state": v["state"], **v["status"]} for v in r.json()["model_version_status"]
    }


def assert_never_shown(server: RunningServer, *secrets: str) -> None:
    """None of ``secrets`` appears in the server's log, its model status or its metrics."""
    shown = [
        server.log(),
        json.dumps(status(server)),
        server.client.get("/monitoring/prometheus/metrics").text,
    ]
    for text in shown:
        for secret in secrets:
            assert secret not in text


def metric(server: RunningServer, name: str, labels: str) -> float | None:
    text = server.client.get("/monitoring/prometheus/metrics").text
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def start(
    store: Store, base_url: str, tmp: pathlib.Path, testdata: pathlib.Path, *extra: str
) -> RunningServer:
    server = RunningServer(
        [
            "--model_name=hpt",
            f"--model_base_path={base_url}",
            "--file_system_poll_wait_seconds=1",
            f"--model_cache_dir={tmp / 'cache'}",
            f"--monitoring_config_file={testdata / 'monitoring_config.txt'}",
            *extra,
        ],
        tmp / "server.log",
        env=store.env,
    )
    server.wait_ready()
    return server


# ---------------------------------------------------------------------- S3


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    store = S3Server()
    yield store
    store.stop()


@pytest.fixture(scope="module")
def s3_tmp(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("s3")


@pytest.fixture(scope="module")
def s3_server(
    s3: S3Server, s3_tmp: pathlib.Path, testdata: pathlib.Path
) -> Iterator[RunningServer]:
    s3.upload(testdata / V1, "models/hpt/1")
    server = start(s3, "s3://models/hpt", s3_tmp, testdata)
    yield server
    assert server.stop() == 0, server.log()


def cached(tmp: pathlib.Path, model: str = "hpt") -> list[str]:
    """The versions in the server's cache: ``["1", ...]`` (fingerprints left out)."""
    model_dir = tmp / "cache" / model
    if not model_dir.is_dir():
        return []
    return sorted(p.name.split("-")[0] for p in model_dir.iterdir() if p.name[0].isdigit())


def test_s3_serves_the_version_in_the_bucket(
    s3_server: RunningServer, s3_tmp: pathlib.Path, testdata: pathlib.Path
) -> None:
    assert predict(s3_server) == 3.0
    assert status(s3_server)["1"]["state"] == "AVAILABLE"
    assert cached(s3_tmp) == ["1"]
    size = sum((testdata / V1 / name).stat().st_size for name in files_of(testdata / V1))
    assert metric(s3_server, "pyserving_model_store_downloaded_bytes", 'model_name="hpt"') == size
    assert metric(s3_server, "pyserving_model_store_up", 'model_name="hpt"') == 1.0


def test_s3_version_published_model_file_last_loads_only_once_complete(
    s3: S3Server, s3_server: RunningServer, s3_tmp: pathlib.Path, testdata: pathlib.Path
) -> None:
    # Everything but saved_model.pb: reported (NOT_FOUND, never loaded) once it settles,
    # while version 1 keeps serving.
    names = files_of(testdata / V2)
    s3.upload(testdata / V2, "models/hpt/2", [n for n in names if n != "saved_model.pb"])
    wait_for(
        lambda: (
            "Could not find SavedModel" in status(s3_server).get("2", {}).get("error_message", "")
        ),
        what="version 2 reported incomplete",
    )
    assert status(s3_server)["1"]["state"] == "AVAILABLE"
    assert predict(s3_server) == 3.0
    assert cached(s3_tmp) == ["1"]  # nothing of version 2 was copied
    s3.upload(testdata / V2, "models/hpt/2", ["saved_model.pb"])
    wait_for(lambda: predict(s3_server) == 4.0, what="version 2 serving")
    wait_for(lambda: status(s3_server)["1"]["state"] == "END", what="version 1 unloaded")
    # The copy of version 1, no longer aspired nor loaded, is deleted.
    wait_for(lambda: cached(s3_tmp) == ["2"], what="version 1's copy deleted")


def test_s3_unreachable_store_keeps_the_loaded_version_serving(
    s3: S3Server, s3_server: RunningServer
) -> None:
    assert predict(s3_server) == 4.0
    errors_before = metric(
        s3_server, "pyserving_model_store_errors", 'model_name="hpt",operation="list"'
    )
    s3.pause()
    try:
        wait_for(
            lambda: metric(s3_server, "pyserving_model_store_up", 'model_name="hpt"') == 0.0,
            what="store reported down",
        )
        wait_for(
            lambda: (
                (
                    metric(
                        s3_server,
                        "pyserving_model_store_errors",
                        'model_name="hpt",operation="list"',
                    )
                    or 0
                )
                >= (errors_before or 0) + 2
            ),
            what="two failed listings",
        )
        assert predict(s3_server) == 4.0
        assert status(s3_server)["2"]["state"] == "AVAILABLE"
        assert "Could not read base path s3://models/hpt for servable hpt" in s3_server.log()
    finally:
        s3.resume()
    wait_for(
        lambda: metric(s3_server, "pyserving_model_store_up", 'model_name="hpt"') == 1.0,
        what="store back",
    )
    wait_for(lambda: "answers again for servable hpt" in s3_server.log(), what="recovery logged")
    assert predict(s3_server) == 4.0


def test_s3_credentials_never_shown(s3_server: RunningServer) -> None:
    assert_never_shown(s3_server, AWS_SECRET, AWS_KEY_ID)


def test_s3_version_over_the_memory_budget_is_never_downloaded(
    s3: S3Server, testdata: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    s3.upload(testdata / V1, "models/big/1")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyserving",
            "--model_name=big",
            "--model_base_path=s3://models/big",
            f"--model_cache_dir={tmp_path / 'cache'}",
            "--model_memory_budget_bytes=1000",
            "--port=0",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **s3.env},
    )
    assert result.returncode == 1, result.stderr
    assert "1 model(s) did not become available" in result.stderr
    # The estimate is the SavedModel's rule on the listed sizes (1.2 x, plus a load's
    # overhead), known before anything is copied.
    from pyserving.platforms.tensorflow.loader import SAVED_MODEL_OVERHEAD

    size = sum((testdata / V1 / name).stat().st_size for name in files_of(testdata / V1))
    assert (
        "Insufficient resources to load servable big version 1: it needs "
        f"{int(size * 1.2) + SAVED_MODEL_OVERHEAD} bytes of RAM"
    ) in result.stderr
    assert "copied" not in result.stderr
    assert cached(tmp_path, "big") == []


def test_s3_credentials_from_an_aws_profile(
    s3: S3Server,
    testdata: pathlib.Path,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No key variables, only a named profile in a shared credentials file (``AWS_PROFILE``)
    and the instance metadata service off: the server can read the bucket only through the
    profile. It serves, and neither key shows in its log, model status or metrics."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    s3.upload(testdata / V1, "models/profiled/1")
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(
        f"[pyserving-test]\naws_access_key_id = {AWS_KEY_ID}\n"
        f"aws_secret_access_key = {AWS_SECRET}\n"
    )
    env = {
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_PROFILE": "pyserving-test",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3.endpoint,
    }
    server = RunningServer(
        [
            "--model_name=hpt",
            "--model_base_path=s3://models/profiled",
            f"--model_cache_dir={tmp_path / 'cache'}",
            f"--monitoring_config_file={testdata / 'monitoring_config.txt'}",
        ],
        tmp_path / "server.log",
        env=env,
    )
    try:
        server.wait_ready()
        assert predict(server) == 3.0
        assert status(server)["1"]["state"] == "AVAILABLE"
        assert_never_shown(server, AWS_SECRET, AWS_KEY_ID)
    finally:
        assert server.stop() == 0, server.log()


class PredictingClient:
    """A client predicting x=2 on ``models`` in turn, on its own thread and connection, until
    stopped: ``answers[model]`` holds every answer, ``failures`` every failed request."""

    def __init__(self, server: RunningServer, models: tuple[str, ...]) -> None:
        import httpx

        self._client = httpx.Client(base_url=server.url, timeout=60)
        self._models = models
        self._stop = threading.Event()
        self.answers: dict[str, list[float]] = {m: [] for m in models}
        self.failures: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        body = '{"instances": [[2.0]]}'
        while not self._stop.is_set():
            for model in self._models:
                try:
                    r = self._client.post(f"/v1/models/{model}:predict", content=body)
                except Exception as exc:
                    self.failures.append(f"{model}: {exc!r}")
                    continue
                if r.status_code == 200:
                    self.answers[model].append(float(r.json()["predictions"][0][0]))
                else:
                    self.failures.append(f"{model}: {r.status_code} {r.text}")
            self._stop.wait(0.02)  # pacing only: nothing waits on it

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        self._client.close()


def test_s3_download_cut_midway_is_resumed_or_retried_and_never_loaded_half(
    s3: S3Server, testdata: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """The network really cuts downloads midway: the server reaches moto through a proxy
    (``AWS_ENDPOINT_URL``) that cuts chosen responses after a given number of body bytes,
    then holds the next request for the same object until the test has looked.

    * ``resumed``: version 2's 300 KB ``padding.bin`` is cut after 100 000 bytes, once.
      s3fs asks again for the rest only (``Range: bytes=<what it received>-``); how much
      of the 100 000 bytes it had read when the cut was noticed is up to its event loop.
    * ``retried``: version 2's variables data is cut with no byte of its body as many times
      as s3fs reads again by itself, so the server's own attempt fails: it is logged,
      counted in ``pyserving_model_store_errors{operation="download"}``, and the next
      attempt copies it.

    While held, version 1 of both serves, version 2 is not AVAILABLE and its copy exists only
    as a ``.partial-`` directory. Once released, version 2 serves with every cached file of
    the listed size and content; a client predicting throughout saw no failed request and
    only version 1's or 2's answers."""
    import s3fs

    padded = tmp_path / "v2-padded"
    shutil.copytree(testdata / V2, padded)
    (padded / "padding.bin").write_bytes(random.Random(17).randbytes(300_000))
    sources = {"resumed": padded, "retried": testdata / V2}
    for model in sources:
        s3.upload(testdata / V1, f"models/{model}/1")
    proxy = CuttingProxy(s3.port)
    resumed = proxy.cut(r"^GET /models/resumed/2/padding\.bin[ ?]", 100_000, hold=True)
    retried = proxy.cut(
        r"^GET /models/retried/2/variables/variables\.data",
        0,
        times=s3fs.S3FileSystem.retries,
        hold=True,
    )
    config = tmp_path / "models.config"
    config.write_text(
        "model_config_list: {\n"
        + "".join(
            f'  config: {{ name: "{m}", base_path: "s3://models/{m}", '
            'model_platform: "tensorflow" }\n'
            for m in sources
        )
        + "}\n"
    )
    server = RunningServer(
        [
            f"--model_config_file={config}",
            "--file_system_poll_wait_seconds=1",
            "--num_load_threads=2",  # both copies under way at once
            f"--model_cache_dir={tmp_path / 'cache'}",
            f"--monitoring_config_file={testdata / 'monitoring_config.txt'}",
        ],
        tmp_path / "server.log",
        env={**s3.env, "AWS_ENDPOINT_URL": proxy.endpoint},
    )
    client: PredictingClient | None = None
    try:
        server.wait_ready()
        for model in sources:
            assert predict(server, model) == 3.0
        client = running = PredictingClient(server, tuple(sources))
        for model, local in sources.items():
            publish(s3, local, f"models/{model}/2")
        wait_for(lambda: resumed.held == 1 and retried.held == 1, what="both copies held")

        # Held midway: version 1 serves, version 2 is not loaded, nothing of it in place.
        for model in sources:
            versions = status(server, model)
            assert versions["1"]["state"] == "AVAILABLE", versions
            assert versions.get("2", {}).get("state") != "AVAILABLE", versions
            assert predict(server, model) == 3.0
            entries = sorted(p.name for p in (tmp_path / "cache" / model).iterdir())
            assert [e for e in entries if e.startswith("2-")] == [], entries
            assert any(e.startswith(".partial-2-") for e in entries), entries
        # resumed: the cut shows as s3fs asking again for the rest from the byte it had
        # received (all of it when the cut was noticed before any byte was read), and the
        # partial copy holds no more than the proxy passed.
        (partial,) = (tmp_path / "cache" / "resumed").glob(".partial-2-*")
        assert (partial / "padding.bin").stat().st_size <= 100_000
        first, again = proxy.requests_matching(resumed.pattern)
        assert first == ("GET /models/resumed/2/padding.bin HTTP/1.1", "")
        assert again[0] == first[0]
        resumed_from = int(again[1][len("bytes=") : -1]) if again[1] else 0
        assert again[1] in ("", f"bytes={resumed_from}-") and resumed_from <= 100_000
        errors = 'model_name="{}",operation="download"'
        assert metric(server, "pyserving_model_store_errors", errors.format("resumed")) is None
        # retried: the server's first attempt failed, visibly.
        assert retried.cuts == s3fs.S3FileSystem.retries
        assert (
            "Copying servable {name: retried version: 2} from s3://models/retried/2 failed "
            "(attempt 1 of 3), retrying"
        ) in server.log()
        assert metric(server, "pyserving_model_store_errors", errors.format("retried")) == 1.0

        proxy.release()
        wait_for(
            lambda: all(4.0 in running.answers[m] for m in sources),
            what="version 2 of both serving",
        )
        running.stop()
        for model, local in sources.items():
            assert status(server, model)["2"]["state"] == "AVAILABLE"
            assert running.answers[model][0] == 3.0
            assert set(running.answers[model]) == {3.0, 4.0}
            # The copy loaded is whole: every file of the listing, at its size, with the
            # published content.
            prefix = f"models/{model}/2/"
            listing = {
                path[len(prefix) :]: info["size"]
                for path, info in s3.fs.find(prefix, detail=True).items()
            }
            (copy,) = (tmp_path / "cache" / model).glob("2-*")
            assert {name: (copy / name).stat().st_size for name in files_of(copy)} == listing
            for name in files_of(local):
                assert (copy / name).read_bytes() == (local / name).read_bytes(), name
        assert running.failures == []
        downloaded = metric(
            server, "pyserving_model_store_downloaded_bytes", 'model_name="resumed"'
        )
        v1_size = sum((testdata / V1 / n).stat().st_size for n in files_of(testdata / V1))
        v2_size = sum((padded / n).stat().st_size for n in files_of(padded))
        assert downloaded == v1_size + v2_size
        assert [r for r in proxy.requests_matching(retried.pattern) if r[1]] == []
        assert len(proxy.requests_matching(retried.pattern)) == retried.cuts + 1
    finally:
        if client is not None:
            client.stop()
        proxy.release()
        assert server.stop() == 0, server.log()
        proxy.close()


# ---------------------------------------------------------------------- GCS and Azure


@pytest.mark.parametrize("kind", ["gcs", "azure"])
def test_other_stores_serve_and_update(
    kind: str, testdata: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    store: Store = GcsServer() if kind == "gcs" else AzuriteServer()
    try:
        store.upload(testdata / V1, f"{store.bucket}/hpt/1")
        server = start(store, store.url(f"{store.bucket}/hpt"), tmp_path, testdata)
        try:
            assert predict(server) == 3.0
            store.upload(testdata / V2, f"{store.bucket}/hpt/2")
            wait_for(lambda: predict(server) == 4.0, what="version 2 serving")
            wait_for(lambda: cached(tmp_path) == ["2"], what="version 1's copy deleted")
            assert AZURITE_KEY not in server.log()
        finally:
            assert server.stop() == 0, server.log()
    finally:
        store.stop()


def test_azure_account_name_and_key_with_an_account_host(
    testdata: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No connection string: the account name and key (``AZURE_STORAGE_ACCOUNT_NAME`` and
    ``_KEY``, Azurite's published development account) and the blob endpoint from
    ``AZURE_STORAGE_ACCOUNT_HOST`` (Azurite over HTTPS, its certificate from a test CA given
    by ``SSL_CERT_FILE``). Without the host the server would go to
    ``devstoreaccount1.blob.core.windows.net``, without the key anonymously (refused: the
    container is private). It serves, moves to version 2, and the key shows in neither the
    log, the model status nor the metrics."""
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    store = AzuriteServer(tls=True)
    try:
        assert "AZURE_STORAGE_CONNECTION_STRING" not in store.env
        store.upload(testdata / V1, f"{store.bucket}/hpt/1")
        server = start(store, store.url(f"{store.bucket}/hpt"), tmp_path, testdata)
        try:
            assert predict(server) == 3.0
            assert metric(server, "pyserving_model_store_up", 'model_name="hpt"') == 1.0
            store.upload(testdata / V2, f"{store.bucket}/hpt/2")
            wait_for(lambda: predict(server) == 4.0, what="version 2 serving")
            wait_for(lambda: cached(tmp_path) == ["2"], what="version 1's copy deleted")
            assert_never_shown(server, AZURITE_KEY)
        finally:
            assert server.stop() == 0, server.log()
    finally:
        store.stop()


def test_s3_one_listing_request_per_servable_per_poll(s3: S3Server, testdata: pathlib.Path) -> None:
    """However many versions and files, a poll is one ListObjectsV2 request (pages aside)."""
    import s3fs

    from pyserving.sources.filesystem import (
        SAVED_MODEL_MARKERS,
        ServableSourceConfig,
        ServableVersionPolicy,
    )
    from pyserving.sources.remote import ObjectStore, RemoteStoragePathSource

    for version in (1, 2, 3):
        s3.upload(testdata / V1, f"models/many/{version}")
    fs = s3fs.S3FileSystem(
        key=AWS_KEY_ID,
        secret=AWS_SECRET,
        endpoint_url=s3.endpoint,
        client_kwargs={"region_name": "us-east-1"},
        skip_instance_cache=True,
        use_listings_cache=False,
    )
    fs.connect()
    operations: list[str] = []
    fs.s3.meta.events.register("before-call.s3", lambda model, **_: operations.append(model.name))
    config = ServableSourceConfig(
        "many", "s3://models/many", ServableVersionPolicy.all(), SAVED_MODEL_MARKERS
    )
    source = RemoteStoragePathSource(
        [config], -1, require_stable=True, store_factory=lambda url: ObjectStore(url, fs)
    )
    emitted: list[list[int]] = []
    source.set_aspired_versions_callback(
        lambda name, versions: emitted.append([v.id.version for v in versions])
    )
    for _ in range(3):
        source.poll_once()
    assert emitted == [[1, 2, 3]] * 3
    assert operations == ["ListObjectsV2"] * 3
