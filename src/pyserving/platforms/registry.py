"""Platform plugins: what a model platform provides, and how the server finds one.

A *platform* turns one version directory into a :class:`~pyserving.core.loader.Loader` whose
servable has TF-Serving-style signatures and a ``run`` on NumPy arrays (see
:mod:`pyserving.platforms.generic` for the helpers non-TensorFlow platforms share).
Everything above the loader (version policies, labels, swaps, the memory budget, status,
metadata, the V1 and V2 APIs, batching, warmup, metrics, reload) is the same for every
platform.

Platforms are found through the entry-point group ``pyserving.platforms``: each entry point's
name is the platform's name (``model_platform`` in the model config file) and its object is a
:class:`Platform` subclass or instance. The built-in platforms are declared there too (in
pyproject.toml); :data:`BUILTIN_PLATFORMS` also lists them so that an environment whose
package metadata predates a platform still finds it. A third party adds a platform with
``pip install``. The entry points are read once per process, and again when a model names a
platform not among them (so a plugin installed into a running server's environment serves
models that name it; detection by files sees it from then on, or after a restart).

Choosing a platform: a model's ``model_platform`` names it; without one, each version
directory's files decide (:func:`detect_platform`), in order of :attr:`Platform.priority`
(``python`` first: its ``model.py`` may wrap a model of another platform in the same
directory). A directory that matches no platform fails its load with a message naming the
files each platform looks for.

Importing this module is cheap: no platform is imported until it is used.
"""

from __future__ import annotations

import abc
import importlib
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from pyserving.core.loader import Loader
from pyserving.errors import NotFound

log = logging.getLogger(__name__)

#: The entry-point group platforms register under.
ENTRY_POINT_GROUP = "pyserving.platforms"

#: name -> ``module:attribute`` of the platforms that ship with pyserving.
BUILTIN_PLATFORMS: dict[str, str] = {
    "tensorflow": "pyserving.platforms.tensorflow.platform:TensorFlowPlatform",
    "python": "pyserving.platforms.python:PythonPlatform",
    "sklearn": "pyserving.platforms.sklearn:SklearnPlatform",
    "onnx": "pyserving.platforms.onnx:OnnxPlatform",
    "xgboost": "pyserving.platforms.boosters:XGBoostPlatform",
    "lightgbm": "pyserving.platforms.boosters:LightGBMPlatform",
    "pytorch": "pyserving.platforms.pytorch:PyTorchPlatform",
    "keras": "pyserving.platforms.keras:KerasPlatform",
}


@dataclass(frozen=True)
class PlatformOptions:
    """Server-wide settings a platform may use (all from the server's flags).

    ``intra_op_threads`` / ``inter_op_threads``: the TensorFlow session thread counts
    (0 = the runtime's default); other runtimes map them to their own thread settings.
    """

    saved_model_tags: tuple[str, ...] = ("serve",)
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    session_config: bytes = b""
    prefer_tflite_model: bool = False
    num_tflite_pools: int = 1
    num_tflite_interpreters_per_pool: int = 1


class Platform(abc.ABC):
    """One model platform. Subclasses set :attr:`name` and :attr:`markers` and implement
    :meth:`loader`; instances are stateless and shared by every model of the platform."""

    #: The ``model_platform`` name.
    name: str = ""
    #: Files at the top of a version directory, one of which makes the version complete (the
    #: file-system source loads a version only once one is present) and identifies this
    #: platform when ``model_platform`` is absent.
    markers: tuple[str, ...] = ()
    #: Detection order (lower first).
    priority: int = 100

    def version_markers(self, options: PlatformOptions) -> tuple[str, ...]:
        """The markers under ``options`` (default: :attr:`markers`)."""
        return self.markers

    def detect(self, path: str, options: PlatformOptions) -> bool:
        """True when the version directory ``path`` holds a model of this platform."""
        return any(os.path.isfile(os.path.join(path, m)) for m in self.version_markers(options))

    @abc.abstractmethod
    def loader(self, path: str, options: PlatformOptions) -> Loader:
        """A loader for the version directory ``path``. Cheap: nothing is loaded until
        ``load``; the runtime may be imported here or there (``FailedPrecondition`` naming
        the extra to install when it is missing)."""


_lock = threading.Lock()
_cache: dict[str, Platform] = {}
_targets: dict[str, str] | None = None


def _entry_point_targets(refresh: bool = False) -> dict[str, str]:
    """name -> ``module:attribute`` of every platform. Reading the installed packages'
    entry points takes milliseconds (every distribution's metadata is scanned), and version
    directories are matched to platforms on every poll of the file system, so they are read
    once and then again only with ``refresh`` (a platform name not found)."""
    global _targets
    targets = _targets
    if targets is None or refresh:
        targets = dict(BUILTIN_PLATFORMS)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            targets[ep.name] = ep.value
        _targets = targets
    return targets


def platform_names() -> list[str]:
    """Every platform name available (built-in and installed plugins), without importing any."""
    return sorted(_entry_point_targets())


def get_platform(name: str) -> Platform:
    """The platform ``name`` (imported on first use).

    Raises:
        NotFound: no such platform is installed.
    """
    with _lock:
        found = _cache.get(name)
        if found is not None:
            return found
        target = _entry_point_targets().get(name)
        if target is None:  # installed since the entry points were read?
            target = _entry_point_targets(refresh=True).get(name)
        if target is None:
            raise NotFound(
                f"No model platform {name!r} is installed (available: "
                f"{', '.join(platform_names())})"
            )
        module_name, _, attribute = target.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in attribute.split(".") if attribute else ():
            obj = getattr(obj, part)
        platform = obj() if isinstance(obj, type) else obj
        if not isinstance(platform, Platform):
            raise NotFound(f"Entry point {name!r} ({target}) is not a pyserving Platform")
        _cache[name] = platform
        return platform


def all_platforms(exclude: Iterable[str] = ()) -> list[Platform]:
    """Every installed platform but ``exclude``, in detection order. Platforms that fail to
    import are left out."""
    skip = set(exclude)
    found = []
    for name in platform_names():
        if name in skip:
            continue
        try:
            found.append(get_platform(name))
        except Exception:  # a broken plugin must not take the others down
            continue
    return sorted(found, key=lambda p: (p.priority, p.name))


def all_markers(options: PlatformOptions) -> tuple[str, ...]:
    """The union of every platform's markers, the SavedModel's first (a version directory of
    a model without ``model_platform`` is complete once it holds any of them)."""
    markers: list[str] = []
    for platform in sorted(all_platforms(), key=lambda p: p.name != "tensorflow"):
        for marker in platform.version_markers(options):
            if marker not in markers:
                markers.append(marker)
    return tuple(markers)


def detect_platform(path: str, options: PlatformOptions, exclude: Iterable[str] = ()) -> Platform:
    """The platform whose files the version directory ``path`` holds.

    Raises:
        NotFound: no platform recognizes the directory; the message lists what each looks for.
    """
    candidates = all_platforms(exclude)
    matching = [p for p in candidates if p.detect(path, options)]
    if matching:
        chosen = matching[0]
        others = [p.name for p in matching[1:] if p.name != "python"]
        if chosen.name != "python" and others:
            # Not an error (a directory may keep several exports of one model), but the
            # files of the platforms not chosen are ignored: say so.
            log.warning(
                "The version directory %s holds models of several platforms (%s); serving "
                "its %s model. Set model_platform in the model config (or --model_platform) "
                "to choose another.",
                path,
                ", ".join([chosen.name, *others]),
                chosen.name,
            )
        return chosen
    wanted = "; ".join(f"{p.name}: {' or '.join(p.version_markers(options))}" for p in candidates)
    head = f"The version directory {path} holds no model of any installed platform"
    if any(p.name == "tensorflow" for p in candidates):
        # TF Serving's message first: tools and people look for it.
        head = (
            "Could not find SavedModel .pb or .pbtxt at supplied export directory path: "
            f"{path}, nor a model of any other installed platform"
        )
    raise NotFound(
        f"{head} (looked for {wanted}). Set model_platform in the model config (or "
        "--model_platform) or add the model's files."
    )
