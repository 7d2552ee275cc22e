"""``--num_workers``: N serving processes sharing the gRPC and REST ports, under a parent.

With ``--num_workers=N`` (N > 1) the process the user starts is a **supervisor**. It loads
no model and imports no TensorFlow (except to ask platforms for estimates when a memory
budget is set). It:

1. refuses to start, with one message and exit status 1, when workers cannot work:
   ``--port=0`` (each worker would pick another port), ``--grpc_socket_path`` (a Unix socket
   cannot be shared), a port already taken by another process, or N copies of the models'
   estimates exceeding ``--model_memory_budget_bytes`` (:func:`check_memory_budget`);
2. makes a fresh directory for prometheus-client's multiprocess files
   (``PROMETHEUS_MULTIPROC_DIR``) and starts N workers: ``python -m pyserving`` with the same
   arguments and ``PYSERVING_WORKER=<index>`` in the environment, each in its own process
   group (a terminal's Ctrl-C reaches the supervisor only, which forwards it once);
3. supervises them (:class:`Supervisor`): a worker that exits or is killed is logged with
   its status and started again, at once if it had served for ``min_uptime`` seconds,
   otherwise after a delay doubling with each such early death (:func:`restart_delay`).
   A worker that fails before it first serves, during start-up, fails the whole server: the
   others are stopped and the supervisor exits with that worker's status (as a single server
   exits 1 when a model does not load). A restarted worker (``PYSERVING_WORKER_REJOIN=1``)
   joins the running server instead (:func:`rejoining`); each start of a worker names its
   metric files uniquely (``PYSERVING_WORKER_PROCESS_ID``);
4. on SIGTERM or SIGINT, sends SIGTERM to every worker (each drains as a single server does:
   requests in flight finish within the grace period, models unload), waits for all, and
   exits 0 when every worker exited 0 (or, still starting, died of that SIGTERM), else 1.
   Workers still running ``2 x grace + 60`` seconds later, or when a second signal comes,
   are killed.

A **worker** is a complete server (``server/app.py``) with a few differences, all driven by
its options: it binds both ports with ``SO_REUSEPORT``, so the kernel spreads new
connections over the workers (by a hash of the connection's addresses; a connection stays
with the worker that accepted it); its memory budget is an N-th of the flag's; its metrics
are written to the shared directory and every scrape, whichever worker answers, aggregates
all workers' (``server/metrics.py``); its model set changes only through the command line
or ``--model_config_file``, never through a request (which would reach one worker only);
it tells the supervisor when it serves by writing to the pipe ``PYSERVING_WORKER_READY_FD``
names (:func:`notify_ready`), and gets SIGTERM if the supervisor dies (:func:`watch_parent`).

What a restart guarantees: the killed worker's open connections are reset, so requests in
flight on them fail; new connections go to the workers still listening (a dead worker's
socket leaves the ``SO_REUSEPORT`` group when it closes), so a client that retries a request
failing with a connection error on a new connection gets its answer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyserving.core.loader import ResourceEstimate
    from pyserving.flags import ParsedFlags

log = logging.getLogger("pyserving.workers")

#: Set in a worker's environment: its index, 0 to N-1.
WORKER_ENV = "PYSERVING_WORKER"
#: Set in a worker's environment: the pipe to write one byte to once it serves.
READY_FD_ENV = "PYSERVING_WORKER_READY_FD"
#: Set in a worker's environment: the supervisor's process id.
SUPERVISOR_PID_ENV = "PYSERVING_SUPERVISOR_PID"
#: prometheus-client's multiprocess directory, made by the supervisor for its workers.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Set in a worker's environment: what names its metric files, unique over the supervisor's
#: life (``<index>-<start>``: a restarted worker never reopens a dead one's files, even
#: with the same pid).
PROCESS_ID_ENV = "PYSERVING_WORKER_PROCESS_ID"
#: Set in a worker's environment when it replaces one that died while the server served.
REJOIN_ENV = "PYSERVING_WORKER_REJOIN"
#: Set in a worker's environment: the supervisor's directory shared by its workers.
STATE_DIR_ENV = "PYSERVING_WORKER_STATE_DIR"
#: The model config last applied by a worker, in the state directory.
APPLIED_CONFIG_FILE = "applied_model_config.pbtxt"
#: The name the supervisor's state directories start with (in the temporary directory).
STATE_DIR_PREFIX = "pyserving-workers-"
#: In a state directory: locked (shared) by the supervisor and its workers while they run.
STATE_LOCK_FILE = ".lock"


# ---------------------------------------------------------------------- worker side


def worker_index() -> int | None:
    """This process's worker index, or None when it is not a supervised worker."""
    value = os.environ.get(WORKER_ENV)
    return int(value) if value is not None and value.isdigit() else None


def multiprocess_dir() -> str:
    """The metrics directory the supervisor made for its workers ("" when none)."""
    return os.environ.get(MULTIPROC_ENV, "")


def metrics_process_id() -> str | None:
    """What names this worker's metric files (None outside a worker: its pid)."""
    return os.environ.get(PROCESS_ID_ENV) or None


def rejoining() -> bool:
    """Whether this worker replaces one that died while the server served: it then joins
    a running server rather than starting one (the model config the workers applied when
    the file no longer parses; a wait, polling, for models with no version it can load,
    instead of failing its start into a restart loop)."""
    return worker_index() is not None and os.environ.get(REJOIN_ENV) == "1"


def save_applied_config(config: Any) -> None:
    """Record ``config`` (a ``ModelServerConfig``) as the one the workers serve, for a
    worker that rejoins while ``--model_config_file`` does not parse. A no-op outside a
    worker; written whole or not at all."""
    directory = os.environ.get(STATE_DIR_ENV, "")
    if worker_index() is None or not directory:
        return
    from google.protobuf import text_format

    path = os.path.join(directory, APPLIED_CONFIG_FILE)
    temporary = f"{path}.{os.getpid()}"
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text_format.MessageToString(config))
        os.replace(temporary, path)
    except OSError as exc:
        log.warning("Could not record the applied model config in %s: %s", path, exc)


def applied_config() -> Any:
    """The ``ModelServerConfig`` the workers last applied (:func:`save_applied_config`), or
    None when there is none or this is not a worker."""
    directory = os.environ.get(STATE_DIR_ENV, "")
    if worker_index() is None or not directory:
        return None
    from tensorflow_serving.config import model_server_config_pb2

    from pyserving.config import ConfigError, read_text_proto

    path = os.path.join(directory, APPLIED_CONFIG_FILE)
    if not os.path.exists(path):
        return None
    try:
        config = model_server_config_pb2.ModelServerConfig()
        return read_text_proto(path, config, "tensorflow.serving.ModelServerConfig")
    except ConfigError:
        return None


def notify_ready() -> None:
    """Tell the supervisor this worker serves (its ports are listening). Once; a no-op
    outside a worker."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None or not fd.isdigit():
        return
    with contextlib.suppress(OSError):
        os.write(int(fd), b"1")
        os.close(int(fd))


def watch_parent(deadline: float = 120.0) -> None:
    """Have the kernel send this worker SIGTERM when its supervisor dies (Linux), so a
    killed supervisor leaves no workers behind; exit at once if it is already gone.

    A worker whose drain does not end (a request stuck in a model) would then hold the
    ports with nobody to kill it: a watcher thread ends the process ``deadline`` seconds
    after the supervisor is gone (as the supervisor would have), and sends the SIGTERM
    itself only where the kernel cannot (a second one would cut the drain short).
    """
    expected = os.environ.get(SUPERVISOR_PID_ENV, "")
    kernel_signals = False
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            pr_set_pdeathsig = 1
            libc = ctypes.CDLL(None, use_errno=True)
            kernel_signals = libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM)) == 0
    if not expected.isdigit():
        return
    if os.getppid() != int(expected):
        sys.stderr.write("pyserving worker: the supervisor is gone; exiting\n")
        raise SystemExit(1)
    import threading

    def watch() -> None:
        while os.getppid() == int(expected):
            time.sleep(1.0)  # polling the parent: no event tells a thread of its death
        if not kernel_signals:
            # Only then: a second SIGTERM would end a drain under way at once.
            with contextlib.suppress(OSError):
                os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(deadline)
        sys.stderr.write(
            f"pyserving worker: still running {deadline:.0f}s after the supervisor died; "
            "exiting\n"
        )
        os._exit(1)

    threading.Thread(target=watch, name="pyserving-parent-watch", daemon=True).start()


def reuse_port_socket(port: int, backlog: int, host: str = "0.0.0.0") -> socket.socket:
    """A TCP socket listening on ``host:port`` with ``SO_REUSEPORT``: every worker binds
    its own, and the kernel spreads new connections over them."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


# ---------------------------------------------------------------------- start-up checks


def port_taken(port: int, host: str = "0.0.0.0") -> str | None:
    """Why ``port`` cannot be used (another process listens on it), or None when free.

    Binds without ``SO_REUSEPORT``, which fails while any socket listens on the port, also
    one of another pyserving's workers: two servers never share a port by accident.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return f"{host}:{port}: {exc.strerror or exc}"
    return None


def startup_estimates(
    config: Any, platform_options: Any
) -> tuple[dict[str, ResourceEstimate], list[str]]:
    """The RAM estimate of each version one server loads at start, by ``"model version N"``,
    and the models it cannot tell (object stores: their workers check against their share of
    the budget when they list the store).

    The versions are those the model's version policy picks among the version directories
    present now; each estimate is the one its platform's loader makes before loading (the
    budget the manager enforces), or 1.2 x the files' size when no platform takes the
    directory.
    """
    from pyserving.core.loader import FailingLoader, estimate_from_disk
    from pyserving.errors import ServingError
    from pyserving.platforms.registry import detect_platform, get_platform
    from pyserving.sources.filesystem import ServableVersionPolicy, list_versions
    from pyserving.sources.remote import is_remote, local_path

    estimates: dict[str, ResourceEstimate] = {}
    unknown: list[str] = []
    for model in config.model_config_list.config:
        if is_remote(model.base_path):
            unknown.append(model.name)
            continue
        version_policy = ServableVersionPolicy.from_config(model.model_version_policy)
        try:
            found = list_versions(local_path(model.base_path))
        except OSError:
            continue  # the workers report it, as a single server does
        for version in version_policy.select(found):
            path = found[version]
            try:
                if model.model_platform:
                    platform = get_platform(model.model_platform)
                else:
                    platform = detect_platform(path, platform_options)
                loader = platform.loader(path, platform_options)
                estimate = (
                    estimate_from_disk(path)
                    if isinstance(loader, FailingLoader)
                    else loader.estimate_resources()
                )
            except ServingError:
                estimate = estimate_from_disk(path)
            estimates[f"{model.name} version {version}"] = estimate
    return estimates, unknown


def check_memory_budget(
    estimates: Mapping[str, ResourceEstimate], num_workers: int, budget_bytes: int
) -> str | None:
    """The refusal message when ``num_workers`` copies of ``estimates`` exceed
    ``budget_bytes`` of RAM (0 = unlimited), or None when they fit."""
    if budget_bytes <= 0:
        return None
    one_copy = sum(e.ram_bytes for e in estimates.values())
    if one_copy * num_workers <= budget_bytes:
        return None
    listed = ", ".join(f"{name}: {e.ram_bytes}" for name, e in sorted(estimates.items()))
    return (
        f"--num_workers={num_workers}: each worker loads every model, so the models need "
        f"{num_workers} x {one_copy} = {one_copy * num_workers} bytes of RAM, more than "
        f"--model_memory_budget_bytes={budget_bytes} ({listed}). Raise the budget or lower "
        f"--num_workers (at most {budget_bytes // one_copy if one_copy else num_workers} "
        "fit)."
    )


# ---------------------------------------------------------------------- supervision


def restart_delay(early_deaths: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds to wait before restarting a worker after ``early_deaths`` deaths in a row,
    each before it had served ``min_uptime`` seconds: 0 after a worker that had served,
    then ``base``, doubling, at most ``cap``."""
    if early_deaths <= 0:
        return 0.0
    return float(min(cap, base * 2 ** (early_deaths - 1)))


def describe_exit(returncode: int) -> str:
    """``"exited with status 3"`` or ``"was killed by SIGKILL"``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


@dataclasses.dataclass(frozen=True)
class SupervisorOptions:
    """How workers are started and supervised.

    ``command``: a worker's command line; ``env``: its environment (the supervisor adds
    the worker variables). ``metrics_dir``: the multiprocess directory (its files of dead
    workers' live gauges are removed). ``state_dir``: the directory the workers share (the
    model config last applied, for workers that rejoin). ``grace_seconds``: the drain grace
    of one worker; workers still running ``stop_timeout`` seconds after SIGTERM are killed (None:
    ``2 x grace + 60``, REST's and gRPC's drains one after the other, then unloading).
    ``min_uptime``: a worker dying sooner after it began serving counts as an early death.
    """

    num_workers: int
    command: tuple[str, ...]
    env: Mapping[str, str]
    metrics_dir: str = ""
    state_dir: str = ""
    grace_seconds: float = 30.0
    stop_timeout: float | None = None
    min_uptime: float = 10.0


@dataclasses.dataclass
class _Slot:
    """One worker position: the process currently holding it and its history."""

    index: int
    process: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None
    ready_at: float | None = None
    ever_ready: bool = False
    early_deaths: int = 0
    restart_at: float | None = None
    starts: int = 0
    process_id: str = ""


class Supervisor:
    """Starts ``num_workers`` workers and keeps them running until SIGTERM/SIGINT.

    :meth:`run` is the whole life: it installs its signal handlers (SIGTERM, SIGINT,
    SIGCHLD) on the main thread, returns the exit status, and leaves no worker running.
    ``clock`` is injectable for the restart timing.
    """

    def __init__(
        self,
        options: SupervisorOptions,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options
        self._clock = clock
        self._slots = [_Slot(i) for i in range(options.num_workers)]
        self._selector = selectors.DefaultSelector()
        self._signal: int | None = None
        self._stopping_since: float | None = None
        self._exit_code = 0
        self._all_ready_logged = False
        self._failed_stops = 0
        self._forced = False

    # -------------------------------------------------------------- processes

    def _spawn(self, slot: _Slot) -> None:
        read_fd, write_fd = os.pipe()
        env = dict(self.options.env)
        env[WORKER_ENV] = str(slot.index)
        env[READY_FD_ENV] = str(write_fd)
        env[SUPERVISOR_PID_ENV] = str(os.getpid())
        slot.starts += 1
        slot.process_id = f"{slot.index}-{slot.starts}"
        env[PROCESS_ID_ENV] = slot.process_id
        if slot.starts > 1:  # restarts happen only once the server has served
            env[REJOIN_ENV] = "1"
        else:
            env.pop(REJOIN_ENV, None)
        if self.options.metrics_dir:
            env[MULTIPROC_ENV] = self.options.metrics_dir
        if self.options.state_dir:
            env[STATE_DIR_ENV] = self.options.state_dir
        try:
            slot.process = subprocess.Popen(
                self.options.command, env=env, pass_fds=(write_fd,), start_new_session=True
            )
        finally:
            os.close(write_fd)
        slot.ready_fd = read_fd
        slot.ready_at = None
        slot.restart_at = None
        self._selector.register(read_fd, selectors.EVENT_READ, slot)
        log.info("Worker %d started (pid %d)", slot.index, slot.process.pid)

    def _close_ready_fd(self, slot: _Slot) -> None:
        if slot.ready_fd is not None:
            self._selector.unregister(slot.ready_fd)
            os.close(slot.ready_fd)
            slot.ready_fd = None

    def _on_ready_fd(self, slot: _Slot) -> None:
        assert slot.ready_fd is not None
        try:
            data = os.read(slot.ready_fd, 16)
        except OSError:
            data = b""
        if data and slot.process is not None:
            slot.ready_at = self._clock()
            slot.ever_ready = True
            log.info("Worker %d (pid %d) serving", slot.index, slot.process.pid)
            if not self._all_ready_logged and all(s.ever_ready for s in self._slots):
                self._all_ready_logged = True
                log.info("All %d workers serving", len(self._slots))
        self._close_ready_fd(slot)

    def _reap(self, slot: _Slot) -> None:
        process = slot.process
        if process is None or process.poll() is None:
            return
        self._close_ready_fd(slot)
        slot.process = None
        if self.options.metrics_dir:
            from prometheus_client.multiprocess import mark_process_dead

            with contextlib.suppress(OSError):
                mark_process_dead(slot.process_id, self.options.metrics_dir)
        how = describe_exit(process.returncode)
        now = self._clock()
        if self._stopping_since is not None:
            # Ended by the SIGTERM it was sent before it could install its handler (still
            # starting): stopped as asked.
            clean = process.returncode in (0, -signal.SIGTERM)
            if not clean:
                self._failed_stops += 1
            level = logging.INFO if clean else logging.WARNING
            log.log(level, "Worker %d (pid %d) %s", slot.index, process.pid, how)
            return
        if not slot.ever_ready and not self._all_ready_logged:
            log.error(
                "Worker %d (pid %d) %s before serving; stopping the server",
                slot.index,
                process.pid,
                how,
            )
            self._begin_stop(process.returncode if process.returncode > 0 else 1)
            return
        served = slot.ready_at is not None and now - slot.ready_at >= self.options.min_uptime
        slot.early_deaths = 0 if served else slot.early_deaths + 1
        delay = restart_delay(slot.early_deaths)
        slot.restart_at = now + delay
        log.error(
            "Worker %d (pid %d) %s; restarting it%s",
            slot.index,
            process.pid,
            how,
            f" in {delay:.1f}s" if delay else "",
        )

    def _begin_stop(self, exit_code: int) -> None:
        if self._stopping_since is not None:
            return
        self._stopping_since = self._clock()
        self._exit_code = exit_code
        for slot in self._slots:
            slot.restart_at = None
            if slot.process is not None and slot.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.send_signal(signal.SIGTERM)

    def _stop_timeout(self) -> float:
        if self.options.stop_timeout is not None:
            return self.options.stop_timeout
        return 2 * self.options.grace_seconds + 60.0

    # -------------------------------------------------------------- the loop

    def run(self) -> int:
        """Start the workers, supervise them until a signal, stop them; the exit status."""
        wakeup_read, wakeup_write = os.pipe()
        os.set_blocking(wakeup_read, False)
        os.set_blocking(wakeup_write, False)
        self._selector.register(wakeup_read, selectors.EVENT_READ, None)

        def on_signal(signum: int, _frame: object) -> None:
            if signum == signal.SIGCHLD:
                return
            if self._signal is None:
                self._signal = signum
            else:  # a second SIGTERM/SIGINT: stop waiting for the drain
                self._forced = True

        previous_wakeup = signal.set_wakeup_fd(wakeup_write)
        previous = {
            sig: signal.signal(sig, on_signal)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        }
        try:
            for slot in self._slots:
                self._spawn(slot)
            return self._loop(wakeup_read)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_wakeup)
            self._kill_all()
            for slot in self._slots:
                self._close_ready_fd(slot)
            self._selector.close()
            os.close(wakeup_read)
            os.close(wakeup_write)

    def _loop(self, wakeup_fd: int) -> int:
        while True:
            if self._signal is not None and self._stopping_since is None:
                log.info("Received signal %d: stopping %d workers", self._signal, len(self._slots))
                self._begin_stop(0)
            for slot in self._slots:
                self._reap(slot)
            now = self._clock()
            if self._forced and any(slot.process is not None for slot in self._slots):
                log.error("Received a second signal: killing the workers")
                self._kill_all()
                return 1
            if self._stopping_since is not None:
                if all(slot.process is None for slot in self._slots):
                    if self._exit_code == 0 and self._failed_stops:
                        return 1
                    return self._exit_code
                if now - self._stopping_since >= self._stop_timeout():
                    log.error(
                        "Workers still running %.0fs after SIGTERM: killing them",
                        self._stop_timeout(),
                    )
                    self._kill_all()
                    return 1
                timeout: float | None = self._stopping_since + self._stop_timeout() - now
            else:
                for slot in self._slots:
                    if slot.restart_at is not None and slot.restart_at <= now:
                        self._spawn(slot)
                due = [s.restart_at for s in self._slots if s.restart_at is not None]
                timeout = max(0.0, min(due) - now) if due else None
            for key, _events in self._selector.select(timeout):
                if key.data is None:
                    with contextlib.suppress(OSError):
                        while os.read(wakeup_fd, 512):
                            pass
                else:
                    self._on_ready_fd(key.data)

    def _kill_all(self) -> None:
        for slot in self._slots:
            process = slot.process
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait()


def supervise(flags: ParsedFlags, args: Sequence[str]) -> int:
    """Run ``--num_workers`` workers of the command ``args`` (the arguments after the
    program name); the exit status. See the module docstring."""
    from pyserving.server.logs import configure_logging

    configure_logging(flags.log_format if flags.log_format in ("text", "json") else "text")
    n = flags.num_workers
    if flags.port == 0:
        sys.stderr.write(f"--num_workers={n} needs a fixed --port, not 0\n")
        return 1
    if flags.grpc_socket_path:
        sys.stderr.write(
            f"--num_workers={n}: --grpc_socket_path is not supported (a Unix socket cannot "
            "be shared by several processes)\n"
        )
        return 1
    for port in (flags.port, flags.rest_api_port):
        reason = port_taken(port) if port else None
        if reason is not None:
            sys.stderr.write(f"Failed to bind {reason}\n")
            return 1
    if flags.model_memory_budget_bytes > 0:
        refusal = _budget_refusal(flags)
        if refusal is not None:
            sys.stderr.write(refusal + "\n")
            return 1
    remove_stale_state_dirs(tempfile.gettempdir())
    state_dir = tempfile.mkdtemp(prefix=f"{STATE_DIR_PREFIX}{os.getpid()}-")
    metrics_dir = os.path.join(state_dir, "metrics")
    held = hold_state_dir(state_dir)
    try:
        os.mkdir(metrics_dir)
        supervisor = Supervisor(
            SupervisorOptions(
                num_workers=n,
                command=(sys.executable, "-m", "pyserving", *args),
                env=dict(os.environ),
                metrics_dir=metrics_dir,
                state_dir=state_dir,
            )
        )
        log.info("Starting %d workers", n)
        return supervisor.run()
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
        if held is not None:
            held.close()


def hold_state_dir(directory: str) -> Any:
    """Hold a shared lock on ``directory``'s lock file for as long as the returned handle
    stays open (the supervisor's life, each worker's): :func:`remove_stale_state_dirs` does
    not remove a directory whose lock anyone holds, whichever process namespace they run
    in. None when it cannot be taken."""
    import fcntl

    try:
        handle = open(os.path.join(directory, STATE_LOCK_FILE), "a+")  # noqa: SIM115
    except OSError:
        return None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
    except OSError:
        handle.close()
        return None
    return handle


#: Held for the state directory's life (:func:`hold_state_dir`).
_held_state_dir: Any = None


def hold_worker_state_dir() -> None:
    """In a worker: hold the supervisor's state directory (see :func:`hold_state_dir`) for
    this process's life, so that it outlives a killed supervisor while the worker drains."""
    global _held_state_dir
    directory = os.environ.get(STATE_DIR_ENV, "")
    if directory and worker_index() is not None and _held_state_dir is None:
        _held_state_dir = hold_state_dir(directory)


def remove_stale_state_dirs(parent: str) -> list[str]:
    """Remove the state directories under ``parent`` left by supervisors that no longer
    run (killed with SIGKILL, which skips their own clean-up) nor have workers left: those
    whose lock file no process holds (one without a lock file: whose supervisor's pid is not
    running); the paths removed."""
    import fcntl

    removed = []
    with contextlib.suppress(OSError):
        for name in os.listdir(parent):
            if not name.startswith(STATE_DIR_PREFIX):
                continue
            path = os.path.join(parent, name)
            lock_path = os.path.join(path, STATE_LOCK_FILE)
            if os.path.exists(lock_path):
                try:
                    handle = open(lock_path, "a+")  # noqa: SIM115
                except OSError:
                    continue
                with handle:
                    try:
                        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        continue  # held: in use
                    shutil.rmtree(path, ignore_errors=True)
            else:
                pid = name[len(STATE_DIR_PREFIX) :].partition("-")[0]
                if not pid.isdigit() or _alive(int(pid)):
                    continue
                shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process, or no pid: left alone
    return True


def _budget_refusal(flags: ParsedFlags) -> str | None:
    """The message refusing ``--num_workers`` copies of the models under the budget, or
    None. A configuration that does not parse is left to the workers to report."""
    from pyserving.config import ConfigError, load_model_server_config, single_model_config
    from pyserving.platforms.registry import PlatformOptions

    try:
        if flags.model_config_file:
            config = load_model_server_config(flags.model_config_file)
        elif flags.model_base_path:
            config = single_model_config(
                flags.model_name, flags.model_base_path, flags.model_platform
            )
        else:
            return None
    except ConfigError:
        return None
    if flags.platform_config_file:
        from pyserving.platform_config import read_platform_config_file

        try:
            settings = read_platform_config_file(flags.platform_config_file)
        except ConfigError:
            return None  # the workers report it
        options = PlatformOptions(
            saved_model_tags=settings.saved_model_tags,
            prefer_tflite_model=settings.prefer_tflite_model,
            num_tflite_pools=max(1, settings.num_tflite_pools),
            num_tflite_interpreters_per_pool=max(1, settings.num_tflite_interpreters_per_pool),
        )
    else:
        options = PlatformOptions(
            saved_model_tags=tuple(
                t.strip() for t in flags.saved_model_tags.split(",") if t.strip()
            ),
            prefer_tflite_model=flags.prefer_tflite_model,
            num_tflite_pools=max(1, flags.num_tflite_pools),
            num_tflite_interpreters_per_pool=max(1, flags.num_tflite_interpreters_per_pool),
        )
    estimates, unknown = startup_estimates(config, options)
    if unknown:
        log.info(
            "Models in object stores (%s) are checked by each worker against its share of "
            "the memory budget",
            ", ".join(unknown),
        )
    return check_memory_budget(estimates, flags.num_workers, flags.model_memory_budget_bytes)


__all__ = [
    "APPLIED_CONFIG_FILE",
    "STATE_DIR_PREFIX",
    "STATE_LOCK_FILE",
    "Supervisor",
    "SupervisorOptions",
    "applied_config",
    "check_memory_budget",
    "describe_exit",
    "hold_state_dir",
    "hold_worker_state_dir",
    "metrics_process_id",
    "multiprocess_dir",
    "notify_ready",
    "port_taken",
    "rejoining",
    "remove_stale_state_dirs",
    "restart_delay",
    "reuse_port_socket",
    "save_applied_config",
    "startup_estimates",
    "supervise",
    "watch_parent",
    "worker_index",
]
