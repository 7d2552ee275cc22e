"""Replicas behind a load balancer, on one machine: a real nginx balancing three pyserving
replicas on loopback, all reading the same bucket on moto's S3 server, while clients send
predictions through nginx without pause.

Version 2 is published to the bucket the unhelpful way (``variables/`` first, then the
other files, ``saved_model.pb`` last, a few seconds apart, as a slow publisher would); every
replica moves to it; then one replica is killed (SIGKILL) and started again. No request may
fail, and every answer must come from version 1 (half_plus_two: 3.0) or version 2
(half_plus_three: 4.0), never anything else; once every replica serves version 2, every
answer is version 2's.

The figures (requests, failures, seconds from the last upload until every replica served
version 2) are printed and written to ``replicas.json`` in the test's directory; they are
quoted in docs/deploy.md.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.e2e.server import RunningServer, free_port
from tests.stores import S3Server, publish, required_tool, wait_for_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

V1 = "saved_model_half_plus_two_cpu/00000123"
V2 = "saved_model_half_plus_three/00000123"
ANSWERS = {3.0: 1, 4.0: 2}
REPLICAS = 3
CLIENTS = 3
#: Bounds of the client loops (they stop long before, when the scenario ends).
MAX_SECONDS = 600.0
MAX_REQUESTS = 500_000

NGINX_CONF = """
worker_processes 1;
{user}
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream pyserving {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://pyserving;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # A replica that refuses, resets or is not ready: the request goes to the next.
            # Predictions change nothing, so POSTs may be retried (non_idempotent).
            proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
            proxy_next_upstream_tries {replicas};
            proxy_connect_timeout 2s;
        }}
    }}
}}
"""


def wait_for(predicate: Callable[[], bool], timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"condition not reached in {timeout}s: {what}")


@dataclass
class Answer:
    started: float
    status: int
    value: float | None
    error: str = ""


class Clients:
    """Client threads posting predictions through nginx until stopped (bounded)."""

    def __init__(self, url: str, count: int) -> None:
        self.url = url
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"client-{i}", daemon=True)
            for i in range(count)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def _run(self) -> None:
        body = '{"instances": [[2.0]]}'
        deadline = time.monotonic() + MAX_SECONDS
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                if self.count() >= MAX_REQUESTS:
                    break
                started = time.monotonic()
                try:
                    r = client.post("/v1/models/m:predict", content=body)
                    value = float(r.json()["predictions"][0][0]) if r.status_code == 200 else None
                    answer = Answer(started, r.status_code, value, "" if value else r.text)
                except Exception as exc:  # any failure counts
                    answer = Answer(started, 0, None, f"{type(exc).__name__}: {exc}")
                with self._lock:
                    self.answers.append(answer)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)


def direct_answer(server: RunningServer) -> float | None:
    try:
        r = server.client.post("/v1/models/m:predict", content='{"instances": [[2.0]]}')
    except httpx.HTTPError:
        return None
    return float(r.json()["predictions"][0][0]) if r.status_code == 200 else None


@pytest.fixture
def s3() -> Iterator[S3Server]:
    store = S3Server()
    yield store
    store.stop()


def test_replicas_behind_nginx_move_to_a_new_version_and_survive_a_kill(
    s3: S3Server, testdata: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    nginx = required_tool("nginx", "/usr/sbin/nginx")
    s3.upload(testdata / V1, "models/m/1")
    ports = [(free_port(), free_port()) for _ in range(REPLICAS)]

    def replica(index: int, run: int) -> RunningServer:
        grpc_port, rest_port = ports[index]
        return RunningServer(
            [
                "--model_name=m",
                "--model_base_path=s3://models/m",
                "--file_system_poll_wait_seconds=1",
                f"--model_cache_dir={tmp_path / f'cache-{index}'}",
                "--rest_api_num_threads=2",
                "--grpc_max_threads=2",
            ],
            tmp_path / f"replica-{index}-run-{run}.log",
            env=s3.env,
            grpc_port=grpc_port,
            rest_port=rest_port,
        )

    replicas = [replica(i, 0) for i in range(REPLICAS)]
    for server in replicas:
        server.wait_ready()
    assert all(direct_answer(s) == 3.0 for s in replicas)

    port = free_port()
    servers = "\n".join(
        f"        server 127.0.0.1:{rest} max_fails=1 fail_timeout=2s;" for _, rest in ports
    )
    user = "user root;" if os.geteuid() == 0 else ""  # workers need the test's directory
    (tmp_path / "nginx.conf").write_text(
        NGINX_CONF.format(user=user, tmp=tmp_path, servers=servers, port=port, replicas=REPLICAS)
    )
    proxy = subprocess.Popen(
        [nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    clients = Clients(f"http://127.0.0.1:{port}", CLIENTS)
    try:
        wait_for_port(port)
        clients.start()
        wait_for(lambda: clients.count() >= 100, what="clients running")

        # Publish version 2: variables first, saved_model.pb last, 2 seconds apart.
        publish(s3, testdata / V2, "models/m/2", pause=2.0)
        published = time.monotonic()
        wait_for(
            lambda: all(direct_answer(s) == 4.0 for s in replicas),
            what="every replica serving version 2",
        )
        all_on_v2 = time.monotonic()

        # Kill one replica outright, let traffic flow without it, start it again.
        before_kill = clients.count()
        replicas[0].process.send_signal(signal.SIGKILL)
        replicas[0].process.wait(60)
        replicas[0].stop()
        wait_for(lambda: clients.count() >= before_kill + 200, what="traffic without it")
        replicas[0] = replica(0, 1)
        replicas[0].wait_ready()
        assert direct_answer(replicas[0]) == 4.0
        after_restart = clients.count()
        wait_for(lambda: clients.count() >= after_restart + 200, what="traffic with it back")
    finally:
        clients.stop()
        proxy.send_signal(signal.SIGQUIT)
        try:
            proxy.wait(30)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()
        for server in replicas:
            server.stop()

    answers = clients.answers
    failures = [a for a in answers if a.value is None]
    unexpected = [a for a in answers if a.value is not None and a.value not in ANSWERS]
    stale = [a for a in answers if a.started > all_on_v2 and a.value != 4.0]
    figures = {
        "replicas": REPLICAS,
        "clients": CLIENTS,
        "requests": len(answers),
        "failures": len(failures),
        "answers_from_version_1": sum(a.value == 3.0 for a in answers),
        "answers_from_version_2": sum(a.value == 4.0 for a in answers),
        "seconds_from_last_upload_to_all_replicas_on_version_2": round(all_on_v2 - published, 2),
        "requests_while_a_replica_was_down_or_restarting": after_restart - before_kill,
    }
    (tmp_path / "replicas.json").write_text(json.dumps(figures, indent=2))
    print("replica figures:", json.dumps(figures))
    assert failures == [], failures[:5]
    assert unexpected == [], unexpected[:5]
    assert stale == [], stale[:5]
    # The restarted replica found version 2 in its cache: nothing copied again.
    assert "copied" not in replicas[0].log()
