"""ServerCore: turns a ModelServerConfig into a running lifecycle pipeline.

``FileSystemStoragePathSource -> PathToLoaderAdapter -> AspiredVersionsManager``, with a
``ServableStateMonitor`` on the manager's event bus; models whose base path is an object
store URL (``s3://``, ``gs://``, ``az://``, ``abfs://``) come from
``RemoteStoragePathSource -> RemoteVersionToLoaderAdapter`` (``CachedVersionLoader``: copy
into the local cache, then the same path->Loader factory) into the same manager. Front ends
(REST, gRPC) only ask it for handles, model status and labels; they never touch the pipeline.

Contract:

* :meth:`reload_config` validates a whole ModelServerConfig, replaces the model set (models
  added are loaded, models dropped are unloaded), waits until every listed model has settled
  (an AVAILABLE version, or all its versions ended), then applies version labels. It raises
  ``ConfigError``/``ServingError`` on an invalid config, leaving the previous set untouched.
* :meth:`handle` resolves a model spec (name + version or label) into a scoped handle.
* :meth:`model_status` reports the states TF Serving's GetModelStatus reports.

Thread-safe; a context manager; ``close`` unloads everything and is idempotent.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from tensorflow_serving.config import model_server_config_pb2

from pyserving.batching import BatchingLoader, BatchingOptions
from pyserving.config import ConfigError, read_text_proto, validate_model_server_config
from pyserving.core.handle import ServableHandle, ServableRequest
from pyserving.core.loader import (
    DISK_SIZE_RAM_MULTIPLIER,
    FailingLoader,
    Loader,
    ResourceEstimate,
)
from pyserving.core.manager import AspiredVersionsManager, ManagerOptions
from pyserving.core.monitor import ManagerState, ServableState, ServableStateMonitor
from pyserving.core.source import ServableId, connect
from pyserving.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServingError,
    Unavailable,
)
from pyserving.platforms.registry import (
    PlatformOptions,
    all_markers,
    detect_platform,
    get_platform,
)
from pyserving.protos import BatchingParameters
from pyserving.server.metrics import ServerMetrics
from pyserving.sources.adapter import PathToLoaderAdapter, RemoteVersionToLoaderAdapter
from pyserving.sources.cache import CachedVersionLoader, ModelCache, sparse_mirror
from pyserving.sources.filesystem import (
    SAVED_MODEL_MARKERS,
    FileSystemStoragePathSource,
    ServableSourceConfig,
    ServableVersionPolicy,
)
from pyserving.sources.remote import (
    ObjectStore,
    RemoteStoragePathSource,
    RemoteVersion,
    check_base_path,
    is_remote,
    local_path,
)
from pyserving.warmup import WarmupLoader

log = logging.getLogger(__name__)

#: The per-model batching file TF Serving reads with --enable_per_model_batching_parameters.
PER_MODEL_BATCHING_FILE = "batching_params.pbtxt"

#: ``factory(model_config, servable_id, version_path) -> Loader`` for one platform.
PlatformLoaderFactory = Callable[[model_server_config_pb2.ModelConfig, ServableId, str], Loader]


@dataclass(frozen=True)
class ServerCoreOptions:
    """Options of :class:`ServerCore`.

    ``file_system_poll_wait_seconds``: as the flag (>0 period, 0 once, <0 never).
    ``allow_version_labels_for_unavailable_models``: as the flag.
    ``platforms``: loader factory per ``model_platform`` name, replacing the platform
    plugins (empty = the installed plugins, see ``platforms/registry.py``: the platform is
    ``model_platform``, or without one, detected from each version directory's files).
    ``settle_timeout``: seconds :meth:`ServerCore.reload_config` waits for models (None =
    forever, as TF Serving).
    ``batching`` / ``per_model_batching``: see the fields.
    ``version_markers``: per ``model_platform``, the files one of which makes a version
    directory complete (see ``sources/filesystem.py``: with periodic polling, a version is
    loaded only once complete and unchanged between two polls). Platforms not listed here
    take their plugin's markers; a model without ``model_platform`` is complete with any
    platform's marker.
    ``prefer_tflite_model``: a ``tensorflow`` model's version directory holding
    ``model.tflite`` is served from that file by the TFLite platform (and ``model.tflite``
    also makes such a directory complete); ``num_tflite_pools`` x
    ``num_tflite_interpreters_per_pool`` interpreters serve it.
    ``model_cache_dir``: where versions from object stores are copied ("" = under the
    temporary directory; see ``sources/cache.py``); ``download_attempts`` and
    ``download_backoff`` bound the copy retries within one load.
    ``fixed_model_set``: when non-empty, :meth:`ServerCore.reload_config` refuses requests
    to change the model set (the reload RPC, V2's repository API) with
    ``FAILED_PRECONDITION`` and this reason; only the configuration the server was started
    with, or its config file, applies (``--num_workers``: every worker must hold the same set).
    """

    manager: ManagerOptions = field(default_factory=ManagerOptions)
    file_system_poll_wait_seconds: float = 1.0
    allow_version_labels_for_unavailable_models: bool = False
    saved_model_tags: tuple[str, ...] = ("serve",)
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    #: Serialized ``tensorflow.ConfigProto`` for sessions (``--tensorflow_session_config_file``).
    session_config: bytes = b""
    platforms: dict[str, PlatformLoaderFactory] = field(default_factory=dict)
    settle_timeout: float | None = None
    #: Server-side batching for every model (None = off; ``--enable_batching``).
    batching: BatchingOptions | None = None
    #: Read ``batching_params.pbtxt`` in each version directory, when present, instead.
    per_model_batching: bool = False
    #: Version policy per model name, overriding ``manager.default_policy``.
    policy_per_model: dict[str, str] = field(default_factory=dict)
    #: Replay ``assets.extra/tf_serving_warmup_requests`` before a version serves.
    enable_warmup: bool = True
    warmup_iterations: int = 1
    version_markers: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {"tensorflow": SAVED_MODEL_MARKERS}
    )
    #: ``--prefer_tflite_model``, ``--num_tflite_pools``, ``--num_tflite_interpreters_per_pool``.
    prefer_tflite_model: bool = False
    num_tflite_pools: int = 1
    num_tflite_interpreters_per_pool: int = 1
    model_cache_dir: str = ""
    #: A directory inside the cache directory (given or default) to use instead: each
    #: worker of ``--num_workers`` has its own.
    model_cache_subdir: str = ""
    #: Seconds one listing of an object store's base path may take (0 = no limit).
    store_list_timeout: float = 60.0
    download_attempts: int = 3
    download_backoff: float = 1.0
    fixed_model_set: str = ""


class ServerCore:
    """The model set of one server and the pipeline that keeps it loaded."""

    def __init__(
        self, options: ServerCoreOptions | None = None, metrics: ServerMetrics | None = None
    ) -> None:
        self.options = options or ServerCoreOptions()
        self.metrics = metrics
        self.manager = AspiredVersionsManager(self.options.manager)
        self.monitor = ServableStateMonitor(self.manager.bus)
        self._config = model_server_config_pb2.ModelServerConfig()
        self._models: dict[str, model_server_config_pb2.ModelConfig] = {}
        #: Models the V2 repository API unloaded, by name, with the config they had: they
        #: stay in its index (UNAVAILABLE) and load again by name.
        self.repository_unloaded: dict[str, model_server_config_pb2.ModelConfig] = {}
        self._platforms = dict(self.options.platforms)
        self._platform_options = PlatformOptions(
            saved_model_tags=self.options.saved_model_tags,
            intra_op_threads=self.options.intra_op_threads,
            inter_op_threads=self.options.inter_op_threads,
            session_config=self.options.session_config,
            prefer_tflite_model=self.options.prefer_tflite_model,
            num_tflite_pools=self.options.num_tflite_pools,
            num_tflite_interpreters_per_pool=self.options.num_tflite_interpreters_per_pool,
        )
        self._adapter = PathToLoaderAdapter(self._make_loader)
        self._source = FileSystemStoragePathSource(
            poll_wait_seconds=self.options.file_system_poll_wait_seconds
        )
        connect(self._source, self._adapter)
        connect(self._adapter, self.manager)
        self.cache = ModelCache(self.options.model_cache_dir, self.options.model_cache_subdir)
        list_timeout = self.options.store_list_timeout
        self._remote_source = RemoteStoragePathSource(
            poll_wait_seconds=self.options.file_system_poll_wait_seconds,
            store_factory=lambda url: ObjectStore(url, list_deadline=list_timeout),
            on_store_event=self._on_store_event,
            on_aspired=self.cache.update_aspired,
        )
        self._remote_adapter = RemoteVersionToLoaderAdapter(self._make_remote_loader)
        connect(self._remote_source, self._remote_adapter)
        connect(self._remote_adapter, self.manager)
        self._remote_names: set[str] = set()
        self._remote_started = False
        self._reload_lock = threading.Lock()
        self._started = False
        self._closed = False

    # ------------------------------------------------------------------ configuration

    @property
    def config(self) -> model_server_config_pb2.ModelServerConfig:
        """The model set in force (a copy)."""
        copy = model_server_config_pb2.ModelServerConfig()
        copy.CopyFrom(self._config)
        return copy

    def model_names(self) -> list[str]:
        return list(self._models)

    def reload_config(
        self,
        config: model_server_config_pb2.ModelServerConfig,
        *,
        from_config_file: bool = False,
    ) -> None:
        """Replace the model set with ``config`` and wait until it has settled.

        ``from_config_file``: the configuration comes from the command line or
        ``--model_config_file`` (not from a request), so ``fixed_model_set`` allows it.
        """
        if self.options.fixed_model_set and not from_config_file:
            raise FailedPrecondition(self.options.fixed_model_set)
        validate_model_server_config(config)
        for model in config.model_config_list.config:
            if self._platforms and (model.model_platform or "tensorflow") not in self._platforms:
                raise ConfigError(
                    f"Model {model.name} requests model_platform {model.model_platform!r}, "
                    "which this server does not support"
                )
            check_base_path(model.name, model.base_path)
        if any(is_remote(m.base_path) for m in config.model_config_list.config):
            self.cache.open()
        with self._reload_lock:
            models = {m.name: m for m in config.model_config_list.config}
            for name in models:
                self.manager.set_policy(
                    name,
                    self.options.policy_per_model.get(name, self.options.manager.default_policy),
                )
            removed = set(self._models) - set(models)
            # Models configured again after a time out of the set: their old END states are
            # not what this reload waits for.
            stale = {
                name: states
                for name in set(models) - set(self._models)
                if (states := self.monitor.get_version_states(name))
            }
            self._models = models
            self._config = model_server_config_pb2.ModelServerConfig()
            self._config.CopyFrom(config)
            configs = [self._source_config(m) for m in models.values()]
            local = [c for c in configs if not is_remote(c.base_path)]
            remote = [c for c in configs if is_remote(c.base_path)]
            remote_names = {c.name for c in remote}
            # A model moving between the two sources is handed over: the source it leaves
            # must not emit an empty list for it (that would un-aspire the other's versions).
            self._source.update_config(local, handed_over=remote_names)
            self._remote_source.update_config(
                remote, handed_over={c.name for c in local} & self._remote_names
            )
            self._remote_names = remote_names
            if not self._started:
                self._started = True
                self._source.start()
            elif self.options.file_system_poll_wait_seconds >= 0:
                self._source.poll_once()
            if remote and not self._remote_started:
                self._remote_started = True
                self._remote_source.start()
            elif self._remote_started and self.options.file_system_poll_wait_seconds >= 0:
                self._remote_source.poll_once()
            self.monitor.wait_until_settled(models, timeout=self.options.settle_timeout)
            for name, old in stale.items():
                self._wait_for_fresh_versions(name, old)
            if self.monitor.released:
                raise Unavailable(
                    "The server is shutting down before the new configuration's models settled"
                )
            for name in removed:
                self._wait_until_unloaded(name)
                self.manager.set_version_labels(name, {})
            for model in models.values():
                self._apply_labels(model)

    def _source_config(self, model: model_server_config_pb2.ModelConfig) -> ServableSourceConfig:
        version_policy = ServableVersionPolicy.from_config(model.model_version_policy)
        base_path = local_path(model.base_path)
        return ServableSourceConfig(model.name, base_path, version_policy, self._markers(model))

    def _markers(self, model: model_server_config_pb2.ModelConfig) -> tuple[str, ...]:
        """The files one of which makes a version of ``model`` complete."""
        platform = model.model_platform or ("tensorflow" if self._platforms else "")
        if not platform:
            return all_markers(self._platform_options)
        if platform not in self.options.version_markers:
            if self._platforms:
                return ()
            return get_platform(platform).version_markers(self._platform_options)
        markers = self.options.version_markers[platform]
        if self.options.prefer_tflite_model and platform == "tensorflow" and markers:
            from pyserving.platforms.tflite.loader import TFLITE_MODEL_FILENAME

            markers = (*markers, TFLITE_MODEL_FILENAME)
        return markers

    def _wait_for_fresh_versions(self, name: str, old: dict[int, ServableState]) -> None:
        """Wait until ``name`` has versions whose states are not the ``old`` ones (left from
        an earlier time it was configured) and they have all settled."""
        done = (ManagerState.AVAILABLE, ManagerState.END)

        def settled(m: ServableStateMonitor) -> bool:
            fresh = [s for v, s in m.get_version_states(name).items() if old.get(v) is not s]
            return bool(fresh) and all(s.state in done for s in fresh)

        self.monitor.wait_for(settled, timeout=self.options.settle_timeout)

    def _wait_until_unloaded(self, name: str) -> None:
        def gone(m: ServableStateMonitor) -> bool:
            return all(s.state is ManagerState.END for s in m.get_version_states(name).values())

        self.monitor.wait_for(gone, timeout=self.options.settle_timeout)

    def _apply_labels(self, model: model_server_config_pb2.ModelConfig) -> None:
        labels = dict(model.version_labels)
        if not self.options.allow_version_labels_for_unavailable_models:
            available = set(self.manager.available_versions(model.name))
            current = self.manager.version_labels(model.name)
            for label, version in labels.items():
                if version not in available and current.get(label) != version:
                    raise FailedPrecondition(
                        f"Request to assign label to version {version} of model {model.name}, "
                        "which is not currently available for inference"
                    )
        self.manager.set_version_labels(model.name, labels)

    # ------------------------------------------------------------------ loaders

    def _make_loader(self, id: ServableId, path: str) -> Loader:
        model = self._models.get(id.name)
        if model is None:
            raise NotFound(f"Model {id.name} is no longer configured")
        if self._platforms:
            loader = self._platforms[model.model_platform or "tensorflow"](model, id, path)
        else:
            loader = self._platform_loader(model, path)
        metrics = self.metrics
        batching = self._batching_options(path)
        if batching is not None:

            def observe_batch(signature: str, rows: int, padded: int, queued: float) -> None:
                if metrics is not None:
                    metrics.observe_batch(id.name, signature, rows, padded, queued, id.version)

            # A loader wrapping another model (a Python model's pre/post-processing) batches
            # that model, so that batches merge preprocessed tensors.
            wrap_inner = getattr(loader, "wrap_inner", None)
            if not (
                callable(wrap_inner)
                and wrap_inner(lambda inner: BatchingLoader(inner, batching, observe_batch))
            ):
                loader = BatchingLoader(loader, batching, observe_batch)
        if self.options.enable_warmup:

            def observe_warmup(seconds: float) -> None:
                if metrics is not None:
                    metrics.observe_warmup(path, seconds)

            loader = WarmupLoader(loader, path, self.options.warmup_iterations, observe_warmup)
        return loader

    def _make_remote_loader(self, id: ServableId, version: RemoteVersion) -> Loader:
        """A loader that copies ``version`` into the cache on ``load``, then loads the local
        copy with :meth:`_make_loader`; its estimate comes from the listing (computed when
        the manager first asks, before anything is copied)."""
        model = self._models.get(id.name)
        if model is None:
            raise NotFound(f"Model {id.name} is no longer configured")
        return CachedVersionLoader(
            version,
            self.cache,
            lambda path: self._make_loader(id, path),
            lambda: self._remote_estimate(model, id, version),
            attempts=self.options.download_attempts,
            backoff=self.options.download_backoff,
            on_store_event=self._on_store_event,
        )

    def _remote_estimate(
        self, model: model_server_config_pb2.ModelConfig, id: ServableId, version: RemoteVersion
    ) -> ResourceEstimate:
        """The estimate the local copy's loader will make, from the listing alone: that
        loader (its platform's: SavedModel, TFLite with ``--prefer_tflite_model``, sklearn
        ...) is built on a sparse mirror of the listing, every file at its listed size and
        holding no data, and asked. Platforms estimate from names and sizes, so this is
        their own rule (1.2 x the files, per interpreter for TFLite, plus a platform's
        overhead). Falls back to 1.2 x the listed bytes when no platform takes the mirror."""
        fallback = ResourceEstimate(ram_bytes=int(version.total_bytes * DISK_SIZE_RAM_MULTIPLIER))
        try:
            with sparse_mirror(version.files) as mirror:
                if self._platforms:
                    factory = self._platforms[model.model_platform or "tensorflow"]
                    loader = factory(model, id, mirror)
                else:
                    loader = self._platform_loader(model, mirror)
                if isinstance(loader, FailingLoader):
                    return fallback
                return loader.estimate_resources()
        except Exception as exc:
            log.warning(
                "Servable %s: estimating from the listing failed (%s); using 1.2 x its size",
                id,
                exc,
            )
            return fallback

    def _on_store_event(self, name: str, operation: str, ok: bool, nbytes: int) -> None:
        if self.metrics is not None:
            self.metrics.observe_store(name, operation, ok, nbytes)

    def _batching_options(self, version_path: str) -> BatchingOptions | None:
        """The batching a version gets: its own ``batching_params.pbtxt`` (when per-model
        batching is on and the file exists), else the server-wide options, else none."""
        if self.options.batching is None:
            return None
        if self.options.per_model_batching:
            path = os.path.join(version_path, PER_MODEL_BATCHING_FILE)
            if os.path.isfile(path):
                params = read_text_proto(
                    path, BatchingParameters(), "tensorflow.serving.BatchingParameters"
                )
                return BatchingOptions.from_proto(params)
        return self.options.batching

    def _platform_loader(self, model: model_server_config_pb2.ModelConfig, path: str) -> Loader:
        """The loader of ``model_platform``'s plugin, or of the platform the version's files
        show; when that cannot be decided (or the plugin fails to build a loader), a loader
        whose load fails with the reason, so that it shows in the model's status."""
        try:
            if model.model_platform:
                platform = get_platform(model.model_platform)
            else:
                platform = detect_platform(path, self._platform_options)
            return platform.loader(path, self._platform_options)
        except ServingError as exc:
            return FailingLoader(path, exc)

    # ------------------------------------------------------------------ requests

    def request_for(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> ServableRequest:
        """The ServableRequest a model spec denotes; ``InvalidArgument`` without a name."""
        if not name:
            raise InvalidArgument("ModelSpec has no name specified.")
        if version is not None and label:
            raise InvalidArgument("ModelSpec has both version and version_label set")
        return ServableRequest(name, version=version, label=label or None)

    def handle(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> ServableHandle:
        """A scoped handle on the requested version (``NotFound`` when not AVAILABLE)."""
        return self.manager.handle(self.request_for(name, version, label))

    def model_status(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> list[ServableState]:
        """States of ``name``'s versions, ascending; only ``version`` when one is given.

        As TF Serving's GetModelStatus, a version label does not narrow the answer: every
        version is listed. ``NotFound`` (``Could not find any versions of model NAME``) when
        nothing is known of the model, also for an empty name.
        """
        states = self.monitor.get_version_states(name)
        if version is not None:
            state = states.get(version)
            if state is None:
                raise NotFound(f"Could not find version {version} of model {name}")
            return [state]
        if not states:
            raise NotFound(f"Could not find any versions of model {name}")
        return [states[v] for v in sorted(states)]

    # ------------------------------------------------------------------ lifecycle

    def release_waiters(self) -> None:
        """The server is shutting down: configuration reloads waiting for their models to
        settle stop waiting and fail with ``Unavailable`` (so that none keeps the process
        alive), as do later ones. Models keep serving until :meth:`close`."""
        self.monitor.release_waiters()

    def close(self) -> None:
        """Stop polling and unload every model. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._source.close()
        self._remote_source.close()
        self.manager.close()
        self.monitor.close()
        self.cache.close()

    def __enter__(self) -> ServerCore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
