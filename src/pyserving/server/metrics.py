"""Prometheus metrics with TF Serving's names, rendered with ``prometheus-client``.

TF Serving exports its metrics with ``/`` in names replaced by ``:``; pyserving keeps the same
names, types, labels and units so existing dashboards work:

* ``:tensorflow:serving:request_count{model_name,status}`` (counter)
* ``:tensorflow:serving:request_latency{model_name,API,entrypoint}`` (histogram, microseconds)
* ``:tensorflow:cc:saved_model:load_latency{model_path}`` (counter, microseconds, successful loads)
* ``:tensorflow:cc:saved_model:load_attempt_count{model_path,status}`` (counter)
* ``:tensorflow:serving:model_warmup_latency{model_path}`` (histogram, microseconds)
* ``:tensorflow:serving:batching_session:processed_batch_size{model_name,signature}``,
  ``...:padding_size{model_name,signature}`` (histograms, rows) and
  ``...:queuing_latency{model_name,signature}`` (histogram, microseconds), when batching is on

and pyserving's own:

* ``pyserving_model_version_state{model_name,version,state}`` (gauge, 1 for the state a
  version is in; a version appears once it is seen)
* for models in object stores: ``pyserving_model_store_up{model_name}`` (gauge, 1 when the
  last listing of the model's base path succeeded, 0 when it failed),
  ``pyserving_model_store_errors{model_name,operation}`` (counter; ``operation`` is
  ``list`` or ``download``, one per failed listing or download attempt) and
  ``pyserving_model_store_downloaded_bytes{model_name}`` (counter)

Counters are exported under their own name (not ``_total``-suffixed) as TF Serving does.
Recording is thread-safe and cheap (a lock and a dict update); rendering happens per scrape.

**Workers** (``--num_workers``; ``ServerMetrics(multiprocess_dir, worker)``). Each worker
keeps its values as above and also writes every updated value into its own files in
prometheus-client's multiprocess format (``counter_<id>.db``, ``histogram_<id>.db``,
``gauge_<mode>_<id>.db`` in ``PROMETHEUS_MULTIPROC_DIR``, ``<id>`` the worker's index and
start number, ``<index>-<start>``, so a restarted worker never writes into a dead one's
files: an ``mmap`` write of the new total, under the same lock). A scrape, whichever
worker answers it, renders what prometheus-client's ``MultiProcessCollector`` aggregates
from every worker's files, under the same names, types and labels: counters and
histograms are summed over workers (also over workers that died and were restarted, so
they never go backwards);
``pyserving_model_version_state`` is summed over the live workers (N when every worker
holds the version in that state), ``pyserving_model_store_up`` is the minimum over them
(1 when every worker's last listing succeeded). One metric is added,
``pyserving_worker_request_count{worker}`` (counter): requests each worker answered, so an
uneven spread of connections shows. The V2 statistics extension
(:meth:`ServerMetrics.version_statistics`) stays per worker: it reports the counts of the
worker that answers it.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from pyserving.core.monitor import ManagerState, ServableState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: TF Serving's latency buckets: 10 us growing by 1.8x, 33 buckets.
LATENCY_BUCKETS_US: tuple[float, ...] = tuple(10.0 * 1.8**i for i in range(33))


class SharedFiles:
    """This process's metric values in prometheus-client's multiprocess files under
    ``directory``, one file per type, named as prometheus-client names them (so that its
    ``MultiProcessCollector`` aggregates every process's). Not thread-safe: callers hold
    :class:`ServerMetrics`' lock."""

    def __init__(self, directory: str, process_id: int | str | None = None) -> None:
        self.directory = directory
        self._pid = os.getpid() if process_id is None else process_id
        self._files: dict[str, MmapedDict] = {}

    def write(self, kind: str, key: str, value: float) -> None:
        """Set ``key`` (an ``mmap_key``) to ``value`` in the file of ``kind`` (``counter``,
        ``histogram``, ``gauge_livesum``, ``gauge_livemin``)."""
        values = self._files.get(kind)
        if values is None:
            path = os.path.join(self.directory, f"{kind}_{self._pid}.db")
            values = self._files[kind] = MmapedDict(path)
        values.write_value(key, value, 0.0)

    def close(self) -> None:
        for values in self._files.values():
            values.close()
        self._files.clear()


class _Counter:
    def __init__(
        self, name: str, doc: str, labels: Sequence[str], shared: SharedFiles | None = None
    ) -> None:
        self.name, self.doc, self.labels = name, doc, tuple(labels)
        self.values: dict[tuple[str, ...], float] = {}
        self.shared = shared
        self._keys: dict[tuple[str, ...], str] = {}

    def inc(self, key: tuple[str, ...], amount: float = 1.0) -> None:
        value = self.values[key] = self.values.get(key, 0.0) + amount
        if self.shared is not None:
            mkey = self._keys.get(key)
            if mkey is None:
                mkey = self._keys[key] = _mmap_key(self.name, self.name, self.labels, key, self.doc)
            self.shared.write("counter", mkey, value)

    def metric(self) -> Metric:
        m = Metric(self.name, self.doc, "counter")
        for key, value in self.values.items():
            m.add_sample(self.name, dict(zip(self.labels, key, strict=True)), value)
        return m


class _Histogram:
    def __init__(
        self,
        name: str,
        doc: str,
        labels: Sequence[str],
        buckets: Sequence[float],
        shared: SharedFiles | None = None,
    ) -> None:
        self.name, self.doc, self.labels = name, doc, tuple(labels)
        self.buckets = tuple(buckets)
        self.values: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        self.shared = shared
        #: Per label values: the multiprocess keys of each bucket (non-cumulative counts,
        #: as prometheus-client stores them) and of the sum, last.
        self._keys: dict[tuple[str, ...], list[str]] = {}

    def observe(self, key: tuple[str, ...], value: float) -> None:
        entry = self.values.get(key)
        if entry is None:
            entry = ([0] * (len(self.buckets) + 1), [0.0])
            self.values[key] = entry
            if self.shared is not None:
                self._share(key)
        index = bisect.bisect_left(self.buckets, value)
        entry[0][index] += 1
        entry[1][0] += value
        if self.shared is not None:
            keys = self._keys[key]
            self.shared.write("histogram", keys[index], entry[0][index])
            self.shared.write("histogram", keys[-1], entry[1][0])

    def _share(self, key: tuple[str, ...]) -> None:
        """Write every bucket of a new label set (at 0): the aggregate lists all buckets."""
        assert self.shared is not None
        names = (*self.labels, "le")
        bounds = [_fmt(b) for b in self.buckets] + ["+Inf"]
        keys = [
            _mmap_key(self.name, self.name + "_bucket", names, (*key, le), self.doc)
            for le in bounds
        ]
        keys.append(_mmap_key(self.name, self.name + "_sum", self.labels, key, self.doc))
        self._keys[key] = keys
        for mkey in keys:
            self.shared.write("histogram", mkey, 0.0)

    def metric(self) -> Metric:
        m = Metric(self.name, self.doc, "histogram")
        for key, (counts, total) in self.values.items():
            labels = dict(zip(self.labels, key, strict=True))
            cumulative = 0
            for bound, count in zip(self.buckets, counts, strict=False):
                cumulative += count
                m.add_sample(self.name + "_bucket", {**labels, "le": _fmt(bound)}, cumulative)
            cumulative += counts[-1]
            m.add_sample(self.name + "_bucket", {**labels, "le": "+Inf"}, cumulative)
            m.add_sample(self.name + "_count", labels, cumulative)
            m.add_sample(self.name + "_sum", labels, total[0])
        return m


def _fmt(value: float) -> str:
    return repr(float(value))


@dataclass
class VersionStatistics:
    """Inference counters of one model version (the V2 statistics extension reports them).

    ``success_*`` / ``fail_*``: predict requests (V1 predict, V2 infer) that reached the
    version, their count and total time in the server's request path (nanoseconds).
    ``inference_count``: rows those successful requests carried (a request's batch size).
    ``execution_count``: model runs: one per successful request without batching, one per
    batch with it. ``batch_sizes``: model runs by their number of rows.
    ``last_inference_ms``: when the last request finished (milliseconds since the epoch).
    """

    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)

    def copy(self) -> VersionStatistics:
        return VersionStatistics(
            self.last_inference_ms,
            self.inference_count,
            self.execution_count,
            self.success_count,
            self.success_ns,
            self.fail_count,
            self.fail_ns,
            dict(self.batch_sizes),
        )


@dataclass(frozen=True)
class ModelTotals:
    """One model's request counters since start, summed over APIs and entrypoints.

    ``latency_counts``: requests per bucket of :data:`LATENCY_BUCKETS_US` (one more for
    those above the last bound), the ``request_latency`` histogram's own counts.
    ``batches`` / ``batch_rows``: batches run and the rows they held (before padding), over
    every batched signature (0 without batching).
    """

    requests: int
    errors: int
    latency_counts: tuple[int, ...]
    batches: int = 0
    batch_rows: float = 0.0


class ServerMetrics(Collector):
    """All metrics of one server. Subscribe :meth:`on_state` to the manager's event bus.

    ``multiprocess_dir``: prometheus-client's multiprocess directory shared by the workers
    of ``--num_workers`` ("" = this process's metrics only); ``worker``: this worker's
    index, counted in ``pyserving_worker_request_count``; ``process_id``: names this
    process's files (default: its pid; a supervised worker's is unique over the
    supervisor's life, and the supervisor passes it to prometheus-client's
    ``mark_process_dead``). See the module docstring.
    """

    def __init__(
        self,
        multiprocess_dir: str = "",
        worker: int | None = None,
        *,
        process_id: int | str | None = None,
    ) -> None:
        self._lock = threading.Lock()
        shared = self._shared = (
            SharedFiles(multiprocess_dir, process_id) if multiprocess_dir else None
        )
        self._worker = (str(worker),) if worker is not None and shared is not None else None
        self.worker_requests = _Counter(
            "pyserving_worker_request_count",
            "Requests answered by each worker (--num_workers).",
            ("worker",),
            shared,
        )
        self.request_count = _Counter(
            ":tensorflow:serving:request_count",
            "The total number of requests.",
            ("model_name", "status"),
            shared,
        )
        self.request_latency = _Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ("model_name", "API", "entrypoint"),
            LATENCY_BUCKETS_US,
            shared,
        )
        self.load_latency = _Counter(
            ":tensorflow:cc:saved_model:load_latency",
            "Latency in microseconds for SavedModels that were successfully loaded.",
            ("model_path",),
            shared,
        )
        self.load_attempts = _Counter(
            ":tensorflow:cc:saved_model:load_attempt_count",
            "The number of times a SavedModel was successfully loaded.",
            ("model_path", "status"),
            shared,
        )
        self.warmup_latency = _Histogram(
            ":tensorflow:serving:model_warmup_latency",
            "Distribution of wall time (in microseconds) for warming up the model.",
            ("model_path",),
            LATENCY_BUCKETS_US,
            shared,
        )
        batch_buckets = tuple(float(2**i) for i in range(15))
        self.batch_size = _Histogram(
            ":tensorflow:serving:batching_session:processed_batch_size",
            "Distribution of the number of rows in each processed batch (before padding).",
            ("model_name", "signature"),
            batch_buckets,
            shared,
        )
        self.padding_size = _Histogram(
            ":tensorflow:serving:batching_session:padding_size",
            "Distribution of the number of padding rows added to each batch.",
            ("model_name", "signature"),
            batch_buckets,
            shared,
        )
        self.queuing_latency = _Histogram(
            ":tensorflow:serving:batching_session:queuing_latency",
            "Distribution of the time (in microseconds) the oldest request of a batch queued.",
            ("model_name", "signature"),
            LATENCY_BUCKETS_US,
            shared,
        )
        self.store_errors = _Counter(
            "pyserving_model_store_errors",
            "Failed listings and download attempts of models in object stores.",
            ("model_name", "operation"),
            shared,
        )
        self.store_downloaded = _Counter(
            "pyserving_model_store_downloaded_bytes",
            "Bytes copied from object stores into the local model cache.",
            ("model_name",),
            shared,
        )
        self._store_up: dict[str, bool] = {}
        self._states: dict[tuple[str, int], ManagerState] = {}
        self._versions: dict[tuple[str, int], VersionStatistics] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def close(self) -> None:
        """Close this process's multiprocess files (idempotent; the values stay in them)."""
        with self._lock:
            if self._shared is not None:
                self._shared.close()

    # ------------------------------------------------------------------ recording

    def observe_request(
        self, model_name: str, api: str, entrypoint: str, status: str, seconds: float
    ) -> None:
        """One finished request: ``status`` is ``OK`` or the error code's name."""
        with self._lock:
            self.request_count.inc((model_name, status))
            self.request_latency.observe((model_name, api, entrypoint), seconds * 1e6)
            if self._worker is not None:
                self.worker_requests.inc(self._worker)

    def observe_inference(
        self,
        model_name: str,
        version: int,
        ok: bool,
        seconds: float,
        rows: int = 1,
        executed: bool = True,
    ) -> None:
        """One predict request that reached ``version``: its outcome, its time in the
        server, its rows, and whether it ran the model by itself (False for a request
        that joined a batch: :meth:`observe_batch` counts the run)."""
        with self._lock:
            stats = self._versions.get((model_name, version))
            if stats is None:
                stats = self._versions[(model_name, version)] = VersionStatistics()
            stats.last_inference_ms = int(time.time() * 1000)
            nanoseconds = int(seconds * 1e9)
            if not ok:
                stats.fail_count += 1
                stats.fail_ns += nanoseconds
                return
            stats.success_count += 1
            stats.success_ns += nanoseconds
            stats.inference_count += rows
            if executed:
                stats.execution_count += 1
                stats.batch_sizes[rows] = stats.batch_sizes.get(rows, 0) + 1

    def version_statistics(self) -> dict[tuple[str, int], VersionStatistics]:
        """A copy of every version's counters, by ``(model name, version)``."""
        with self._lock:
            return {key: stats.copy() for key, stats in self._versions.items()}

    def model_totals(self) -> dict[str, ModelTotals]:
        """Every model's :class:`ModelTotals`, from the same counters the metrics endpoint
        renders (a consistent copy, taken under the recording lock)."""
        requests: dict[str, list[int]] = {}
        latency: dict[str, list[int]] = {}
        batches: dict[str, list[float]] = {}
        with self._lock:
            for (name, status), value in self.request_count.values.items():
                entry = requests.setdefault(name, [0, 0])
                entry[0] += int(value)
                if status != "OK":
                    entry[1] += int(value)
            for (name, _api, _entrypoint), (counts, _sum) in self.request_latency.values.items():
                into = latency.get(name)
                if into is None:
                    latency[name] = list(counts)
                else:
                    for i, count in enumerate(counts):
                        into[i] += count
            for (name, _signature), (counts, total) in self.batch_size.values.items():
                entry_b = batches.setdefault(name, [0.0, 0.0])
                entry_b[0] += sum(counts)
                entry_b[1] += total[0]
        empty = (0,) * (len(LATENCY_BUCKETS_US) + 1)
        return {
            name: ModelTotals(
                requests=count[0],
                errors=count[1],
                latency_counts=tuple(latency[name]) if name in latency else empty,
                batches=int(batches.get(name, (0.0, 0.0))[0]),
                batch_rows=batches.get(name, (0.0, 0.0))[1],
            )
            for name, count in requests.items()
        }

    def observe_warmup(self, model_path: str, seconds: float) -> None:
        with self._lock:
            self.warmup_latency.observe((model_path,), seconds * 1e6)

    def observe_batch(
        self,
        model_name: str,
        signature: str,
        rows: int,
        padded: int,
        queued_seconds: float,
        version: int | None = None,
    ) -> None:
        """One batch about to run: its rows, its padded size, its oldest request's wait
        (with ``version``, also one model run of that version)."""
        with self._lock:
            if version is not None:
                stats = self._versions.get((model_name, version))
                if stats is None:
                    stats = self._versions[(model_name, version)] = VersionStatistics()
                stats.execution_count += 1
                stats.batch_sizes[rows] = stats.batch_sizes.get(rows, 0) + 1
            key = (model_name, signature)
            self.batch_size.observe(key, rows)
            self.padding_size.observe(key, padded - rows)
            self.queuing_latency.observe(key, queued_seconds * 1e6)

    def observe_store(self, model_name: str, operation: str, ok: bool, nbytes: int = 0) -> None:
        """One listing (``operation="list"``) or download attempt (``"download"``, with the
        bytes it copied) of a model in an object store."""
        with self._lock:
            if operation == "list":
                self._store_up[model_name] = ok
                if self._shared is not None:
                    key = _mmap_key(
                        "pyserving_model_store_up",
                        "pyserving_model_store_up",
                        ("model_name",),
                        (model_name,),
                        _STORE_UP_DOC,
                    )
                    self._shared.write("gauge_livemin", key, 1.0 if ok else 0.0)
            if not ok:
                self.store_errors.inc((model_name, operation))
            elif nbytes:
                self.store_downloaded.inc((model_name,), nbytes)

    def on_state(self, state: ServableState, model_path: str | None = None) -> None:
        """Event-bus subscriber: version states and load latencies."""
        with self._lock:
            self._states[(state.id.name, state.id.version)] = state.state
            if self._shared is not None:
                for candidate in ManagerState:
                    key = _mmap_key(
                        "pyserving_model_version_state",
                        "pyserving_model_version_state",
                        ("model_name", "version", "state"),
                        (state.id.name, str(state.id.version), candidate.value),
                        _VERSION_STATE_DOC,
                    )
                    self._shared.write(
                        "gauge_livesum", key, 1.0 if candidate is state.state else 0.0
                    )
            path = model_path or f"{state.id.name}/{state.id.version}"
            if state.state is ManagerState.AVAILABLE and state.duration is not None:
                self.load_latency.inc((path,), state.duration * 1e6)
                self.load_attempts.inc((path, "success"))
            elif state.state is ManagerState.END and state.error is not None:
                self.load_attempts.inc((path, "fail"))

    # ------------------------------------------------------------------ exposition

    def collect(self) -> Iterator[Metric]:
        if self._shared is not None:
            yield from self._collect_shared(self._shared.directory)
            return
        with self._lock:
            yield self.request_count.metric()
            yield self.request_latency.metric()
            yield self.load_latency.metric()
            yield self.load_attempts.metric()
            yield self.warmup_latency.metric()
            yield self.batch_size.metric()
            yield self.padding_size.metric()
            yield self.queuing_latency.metric()
            gauge = Metric("pyserving_model_version_state", _VERSION_STATE_DOC, "gauge")
            for (name, version), current in sorted(self._states.items()):
                for candidate in ManagerState:
                    gauge.add_sample(
                        "pyserving_model_version_state",
                        {"model_name": name, "version": str(version), "state": candidate.value},
                        1.0 if candidate is current else 0.0,
                    )
            yield gauge
            if self._store_up:
                up = Metric("pyserving_model_store_up", _STORE_UP_DOC, "gauge")
                for name, ok in sorted(self._store_up.items()):
                    up.add_sample(
                        "pyserving_model_store_up", {"model_name": name}, 1.0 if ok else 0.0
                    )
                yield up
                yield self.store_errors.metric()
                yield self.store_downloaded.metric()

    def _collect_shared(self, directory: str) -> Iterator[Metric]:
        """Every worker's metrics, aggregated by prometheus-client's
        ``MultiProcessCollector``, in the single-process order, names, types and labels."""
        from prometheus_client.multiprocess import MultiProcessCollector

        aggregated = {m.name: m for m in MultiProcessCollector(None, directory).collect()}
        counters = (self.request_count, self.load_latency, self.load_attempts)
        histograms = (
            self.request_latency,
            self.warmup_latency,
            self.batch_size,
            self.padding_size,
            self.queuing_latency,
        )
        families: list[tuple[str, str, str]] = [
            (m.name, m.doc, "counter" if m in counters else "histogram")
            for m in (
                self.request_count,
                self.request_latency,
                self.load_latency,
                self.load_attempts,
                *histograms[1:],
            )
        ]
        families.append(("pyserving_model_version_state", _VERSION_STATE_DOC, "gauge"))
        if "pyserving_model_store_up" in aggregated:
            families.append(("pyserving_model_store_up", _STORE_UP_DOC, "gauge"))
            families.append((self.store_errors.name, self.store_errors.doc, "counter"))
            families.append((self.store_downloaded.name, self.store_downloaded.doc, "counter"))
        families.append((self.worker_requests.name, self.worker_requests.doc, "counter"))
        for name, doc, kind in families:
            family = Metric(name, doc, kind)
            found = aggregated.get(name)
            if found is not None:
                family.samples = (
                    _histogram_order(name, found.samples)
                    if kind == "histogram"
                    else sorted(found.samples, key=_sample_order)
                )
            yield family

    def render(self) -> bytes:
        """The text exposition format (0.0.4) of every metric, TF Serving's way: a counter's
        ``# TYPE`` line and samples carry its own name (no ``_total`` suffix)."""
        lines: list[str] = []
        for family in self.registry.collect():
            doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
            lines.append(f"# HELP {family.name} {doc}")
            lines.append(f"# TYPE {family.name} {family.type}")
            for sample in family.samples:
                labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(sample.labels.items()))
                value = _number(sample.value)
                lines.append(
                    f"{sample.name}{{{labels}}} {value}" if labels else f"{sample.name} {value}"
                )
        return ("\n".join(lines) + "\n").encode()


def _mmap_key(
    metric: str, sample: str, names: Sequence[str], values: Sequence[str], doc: str
) -> str:
    """prometheus-client's multiprocess key of one sample."""
    return mmap_key(metric, sample, list(names), list(values), doc)


_VERSION_STATE_DOC = (
    "1 for the state each model version is in (START, LOADING, AVAILABLE, UNLOADING, END)."
)
_STORE_UP_DOC = "1 when the last listing of the model's object store succeeded, else 0."
_STATE_ORDER = {state.value: i for i, state in enumerate(ManagerState)}


def _sample_order(sample: Sample) -> tuple[object, ...]:
    labels = sample.labels
    version = labels.get("version", "")
    return (
        tuple(sorted((k, v) for k, v in labels.items() if k not in ("version", "state"))),
        int(version) if version.isdigit() else 0,
        _STATE_ORDER.get(labels.get("state", ""), 0),
    )


def _histogram_order(name: str, samples: Sequence[Sample]) -> list[Sample]:
    """A histogram's aggregated samples as a single process renders them: per label set,
    its buckets by bound (``le`` written as this module writes it), ``_count``, ``_sum``."""
    buckets: dict[tuple[tuple[str, str], ...], list[tuple[float, Sample]]] = {}
    totals: dict[tuple[tuple[str, str], ...], list[Sample]] = {}
    for sample in samples:
        labels = dict(sample.labels)
        le = labels.pop("le", None)
        key = tuple(sorted(labels.items()))
        if sample.name == name + "_bucket" and le is not None:
            bound = float(le)
            text = "+Inf" if bound == float("inf") else _fmt(bound)
            entry = (bound, Sample(sample.name, {**labels, "le": text}, sample.value))
            buckets.setdefault(key, []).append(entry)
        else:
            totals.setdefault(key, []).append(sample)
    out: list[Sample] = []
    for key in sorted(set(buckets) | set(totals)):
        out.extend(s for _bound, s in sorted(buckets.get(key, []), key=lambda e: e[0]))
        rest = totals.get(key, [])
        out.extend(s for s in rest if s.name == name + "_count")
        out.extend(s for s in rest if s.name == name + "_sum")
    return out


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    if value == float("-inf"):
        return "-Inf"
    return repr(float(value))
