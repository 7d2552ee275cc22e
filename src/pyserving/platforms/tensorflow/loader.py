"""Loads one SavedModel version directory into a :class:`SavedModelServable`.

Loading strategy
----------------
Every SavedModel is first loaded the way TF Serving loads it: the MetaGraphDef's graph is
imported into its own ``tf.Graph``, variables are restored by running the export's
``saver_def`` restore op on ``variables/variables`` and the init op (``main_op`` /
``legacy_init_op`` / ``__saved_model_init_op``) is run, all in a ``tf.compat.v1.Session``
(TF's TF1 session loader, with the C++ loader's restore step). This path handles every
testdata export: TF 1.0 exports that ``tf.saved_model.load`` rejects
(``saved_model_half_plus_three``), stateful graphs with ``float_ref`` outputs
(``saved_model_counter``) and TF2 exports, whose graph and ``__saved_model_init_op`` the
session loader runs as TF Serving does.

It is also the faster path. Measured with ``SavedModelServable.run`` on
``saved_model_half_plus_two_tf2_cpu`` (2-core CPU, ``x`` of shape [3,1], median of 5 x 5000
calls after warm-up):

- session path (a C++ ``Session::MakeCallable`` handle per signature): ~28 us/call
- function path (``tf.saved_model.load(...).signatures[...]`` called eagerly): ~290 us/call;
  ``FunctionRunner`` now imports such signatures into one session when it can (~21 us/call
  on the Keras iris export), calling them eagerly only when they capture non-variable
  resources

(``run`` itself adds ~3 us to the bare callable; the TF1 export takes ~30 us on the session
path.) The session path also keeps TF Serving's semantics for TF2 exports: a feed is not
checked against the placeholder's static shape (``half_plus_two_tf2``'s ``x`` is declared
``[1]`` yet TF Serving answers ``x=[2,3,4]``), whereas a signature concrete function can
reject such feeds.

So the session path is always tried first. ``tf.saved_model.load`` (``backend="function"``)
is used instead only for TF2 exports (the MetaGraphDef carries an object graph) when

- the session path fails to load the model (if the function path fails too, the session
  path's error is raised), or
- after restore and init some resource variables are still uninitialized: the export keeps
  their values only in its object graph (a Keras 3 model saved with ``tf.saved_model.save``
  is the common case). TF Serving loads such a model but fails every request with ``Could
  not find variable ...``; here it is served, and a warning names the variables.

``runtime="session"`` / ``runtime="function"`` force one path (``"session"`` behaves exactly
like TF Serving on the exports above).

Either way ``signature_defs`` come from the MetaGraphDef proto read from ``saved_model.pb``
(or ``.pbtxt``), so model metadata is exactly what TF Serving reports.

Before either path imports the graph, the op types it uses are checked: ops TensorFlow has
not registered are looked up in the op packages (``op_packages.py``; TF Text first), whose
import registers them, and a model needing an op no installed package provides fails with a
``NOT_FOUND`` error naming the ops and the package to install.

``assets.extra/`` (warmup requests, ``saved_model_config.pb``) is not read here.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Sequence
from typing import Any, Literal

from google.protobuf import message, text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from pyserving.core.loader import HeldServableLoader, ResourceEstimate, estimate_from_disk
from pyserving.errors import (
    Code,
    DataLoss,
    FailedPrecondition,
    NotFound,
    ServingError,
)
from pyserving.platforms.tensorflow.op_packages import (
    OP_PACKAGES,
    OpPackage,
    graph_op_types,
    require_ops,
)
from pyserving.platforms.tensorflow.servable import (
    FunctionRunner,
    Runner,
    SavedModelServable,
    SessionRunner,
)

_log = logging.getLogger(__name__)

SAVED_MODEL_FILENAME_PB = "saved_model.pb"
SAVED_MODEL_FILENAME_PBTXT = "saved_model.pbtxt"
VARIABLES_DIRECTORY = "variables"
VARIABLES_FILENAME = "variables"

Runtime = Literal["auto", "session", "function"]

#: RAM a SavedModel load takes beyond its files' size: the session, its graph and kernels
#: (the flowers example's first load in a process grew it by 9.14 MB, later loads by
#: 3.6-3.9 MB each; see docs/configuration.md, Model platforms).
SAVED_MODEL_OVERHEAD = int(9.6 * (1 << 20))


def read_saved_model(path: str) -> saved_model_pb2.SavedModel:
    """Parse ``path/saved_model.pb`` (else ``saved_model.pbtxt``), as TF's ``ReadSavedModel``.

    Raises:
        NotFound: neither file exists (TF's message).
        DataLoss: the file does not parse.
    """
    proto = saved_model_pb2.SavedModel()
    pb_path = os.path.join(path, SAVED_MODEL_FILENAME_PB)
    pbtxt_path = os.path.join(path, SAVED_MODEL_FILENAME_PBTXT)
    if os.path.isfile(pb_path):
        try:
            with open(pb_path, "rb") as f:
                proto.ParseFromString(f.read())
        except (OSError, message.DecodeError) as exc:
            raise DataLoss(f"Can't parse {pb_path} as binary proto: {exc}") from None
        return proto
    if os.path.isfile(pbtxt_path):
        try:
            with open(pbtxt_path, encoding="utf-8") as f:
                text_format.Parse(f.read(), proto)
        except (OSError, UnicodeDecodeError, text_format.ParseError) as exc:
            raise DataLoss(f"Can't parse {pbtxt_path} as text proto: {exc}") from None
        return proto
    raise NotFound(
        "Could not find SavedModel .pb or .pbtxt at supplied export directory path: "
        f"{path}. Check that the directory exists and that you have the right permissions "
        "for accessing it."
    )


def find_meta_graph(
    saved_model: saved_model_pb2.SavedModel, tags: Sequence[str]
) -> meta_graph_pb2.MetaGraphDef:
    """The MetaGraphDef whose tag-set equals ``set(tags)``.

    Raises:
        NotFound: TF's message, followed by the tag-sets the SavedModel does have.
    """
    wanted = set(tags)
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == wanted:
            return meta_graph
    available = "; ".join(
        "{ " + " ".join(mg.meta_info_def.tags) + " }" for mg in saved_model.meta_graphs
    )
    raise NotFound(
        f"Could not find meta graph def matching supplied tags: {{ {' '.join(tags)} }}. "
        f"Available tag-sets in the SavedModel: {available or 'none'}"
    )


def _translate_load_error(exc: BaseException) -> ServingError:
    """A ``ServingError`` for anything raised while loading (TF's code and text if it has one)."""
    import tensorflow as tf

    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, tf.errors.OpError):
        try:
            code = Code(exc.error_code)
        except ValueError:
            code = Code.UNKNOWN
        return ServingError.from_code(code, exc.message)
    if isinstance(exc, (OSError, message.DecodeError)):
        return DataLoss(f"{type(exc).__name__}: {exc}")
    return FailedPrecondition(f"Failed to load SavedModel: {type(exc).__name__}: {exc}")


def _session_loader(path: str, saved_model: saved_model_pb2.SavedModel) -> Any:
    """TF's own TF1 ``SavedModelLoader`` (the implementation behind
    ``tf.compat.v1.saved_model.loader.load``), given an already parsed SavedModel."""
    from tensorflow.python.saved_model import loader_impl, path_helpers

    class _ParsedSavedModelLoader(loader_impl.SavedModelLoader):
        def __init__(self) -> None:
            self._export_dir = path
            self._variables_path = path_helpers.get_variables_path(path)
            self._saved_model = saved_model

    return _ParsedSavedModelLoader()


def _restore_variables(session: Any, path: str, meta_graph: meta_graph_pb2.MetaGraphDef) -> None:
    """``RunRestore`` of TF's C++ SavedModel loader: run the saver_def's restore op on
    ``variables/variables`` (with the asset paths fed), if the export has variables."""
    from tensorflow.python.saved_model import loader_impl

    if not meta_graph.HasField("saver_def"):
        return
    variables_dir = os.path.join(path, VARIABLES_DIRECTORY)
    if not os.path.isfile(os.path.join(variables_dir, VARIABLES_FILENAME + ".index")):
        _log.info("SavedModel %s has no variables; no checkpoint restored", path)
        return
    saver_def = meta_graph.saver_def
    feeds: dict[str, Any] = {
        saver_def.filename_tensor_name: os.path.join(variables_dir, VARIABLES_FILENAME)
    }
    feeds.update(loader_impl.get_asset_tensors(path, meta_graph))
    session.run(saver_def.restore_op_name, feed_dict=feeds)


class SavedModelLoader(HeldServableLoader):
    """Loader for one SavedModel version directory (see the module docstring for strategy).

    Args:
        path: the version directory (``base_path/<version>``).
        tags: the MetaGraphDef tag-set to load (TF Serving's ``--saved_model_tags``); a single
            string is split on commas.
        intra_op_threads: the session's intra-op pool, which splits one large op (a
            matmul) over threads (0 = TF's default, one thread per core).
        inter_op_threads: N > 0 runs a step's ops on a pool of N threads; 0 (default) runs
            them in the thread that calls the model, which saves a thread hand-off per
            request (TF's ``inter_op_parallelism_threads < 0``). Only the session path
            honours them.
        runtime: ``"auto"`` (session path, function path as fallback), ``"session"`` or
            ``"function"``.
        session_config: a serialized ``tensorflow.ConfigProto`` the session starts from
            (``--tensorflow_session_config_file``); positive thread counts above override
            its own, and its ``inter_op_parallelism_threads``, when set, replaces the
            run-in-the-calling-thread default.
        op_packages: the Python packages imported when the graph uses ops they provide that
            TensorFlow has not registered (default: every package pyserving knows).

    Not thread-safe (the manager never calls one loader's methods concurrently).
    """

    def __init__(
        self,
        path: str,
        tags: Sequence[str] = ("serve",),
        *,
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        runtime: Runtime = "auto",
        session_config: bytes = b"",
        op_packages: Sequence[OpPackage] = OP_PACKAGES,
    ) -> None:
        if isinstance(tags, str):
            tags = [t.strip() for t in tags.split(",") if t.strip()]
        if runtime not in ("auto", "session", "function"):
            raise ValueError(f"runtime must be 'auto', 'session' or 'function', not {runtime!r}")
        self.path = str(path)
        self.tags = tuple(tags)
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = inter_op_threads
        self.session_config = session_config
        self.runtime: Runtime = runtime
        self.op_packages = tuple(op_packages)
        self._estimate: ResourceEstimate | None = None
        self._servable: SavedModelServable | None = None

    def __repr__(self) -> str:
        return f"SavedModelLoader(path={self.path!r}, tags={self.tags!r})"

    def estimate_resources(self) -> ResourceEstimate:
        """TF Serving's rule, 1.2 x the size of the version's files, plus
        :data:`SAVED_MODEL_OVERHEAD` (what a load costs beyond its files); computed once and
        then cached."""
        if self._estimate is None:
            self._estimate = estimate_from_disk(self.path) + ResourceEstimate(
                ram_bytes=SAVED_MODEL_OVERHEAD
            )
        return self._estimate

    def load(self) -> None:
        """Load the SavedModel. Raises a ``ServingError`` subclass on failure, leaving nothing
        loaded behind (so a retry starts clean); ``NotFound`` naming the ops and the package
        to install when the graph uses ops neither TensorFlow nor an installed op package
        registers."""
        if self._servable is not None:
            raise FailedPrecondition(f"{self!r} is already loaded")
        saved_model = read_saved_model(self.path)
        meta_graph = find_meta_graph(saved_model, self.tags)
        require_ops(graph_op_types(meta_graph.graph_def), packages=self.op_packages)
        runner, backend = self._load_runtime(saved_model, meta_graph)
        # Keep the MetaGraphDef minus its (possibly huge) graph: the runtime holds the graph.
        kept = meta_graph_pb2.MetaGraphDef()
        kept.CopyFrom(meta_graph)
        kept.ClearField("graph_def")
        del saved_model, meta_graph
        try:
            self._servable = SavedModelServable(self.path, self.tags, kept, runner, backend=backend)
        except BaseException:
            runner.close()
            raise

    def _load_runtime(
        self, saved_model: saved_model_pb2.SavedModel, meta_graph: meta_graph_pb2.MetaGraphDef
    ) -> tuple[Runner, str]:
        if self.runtime == "function":
            return self._load_function(), "function"
        has_object_graph = meta_graph.HasField("object_graph_def")
        try:
            runner, unrestored = self._load_session(
                saved_model, check_variables=self.runtime == "auto" and has_object_graph
            )
        except Exception as exc:
            error = _translate_load_error(exc)
            if self.runtime == "session" or not has_object_graph:
                raise error from None
            gc.collect()
            try:
                return self._load_function(), "function"
            except Exception:
                raise error from None
        if not unrestored:
            return runner, "session"
        # Variables that neither the saver_def restore nor the init op set: the export keeps
        # them only in its object graph (e.g. a Keras 3 model saved with
        # tf.saved_model.save). TF Serving fails on such a model at request time ("Could not
        # find variable ..."); tf.saved_model.load restores them through the object graph.
        _log.warning(
            "%s: %d variable(s) (%s) are not restored by the SavedModel's saver; loading it "
            "with tf.saved_model.load instead",
            self.path,
            len(unrestored),
            ", ".join(unrestored[:5]) + (", ..." if len(unrestored) > 5 else ""),
        )
        try:
            function_runner = self._load_function()
        except ServingError:
            _log.exception("%s: tf.saved_model.load failed; keeping the session", self.path)
            return runner, "session"
        runner.close()
        return function_runner, "function"

    def _load_session(
        self, saved_model: saved_model_pb2.SavedModel, *, check_variables: bool = False
    ) -> tuple[SessionRunner, list[str]]:
        """Load into a session; with ``check_variables``, also list the resource variables
        still uninitialized after restore and init (see ``_load_runtime``)."""
        import tensorflow as tf

        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph, config=self.config_proto())
        unrestored: list[str] = []
        try:
            # TF's TF1 loader (tf.compat.v1.saved_model.loader.load) on the SavedModel already
            # parsed, except for the restore: that one skips graphs without a "variables"
            # collection (every TF2 export), so variables are restored from the saver_def as
            # TF Serving's C++ loader does.
            sm_loader = _session_loader(self.path, saved_model)
            with graph.as_default():
                sm_loader.load_graph(graph, list(self.tags))
                meta_graph = sm_loader.get_meta_graph_def_from_tags(list(self.tags))
                _restore_variables(session, self.path, meta_graph)
                sm_loader.run_init_ops(session, list(self.tags))
                if check_variables:
                    handles = [op for op in graph.get_operations() if op.type == "VarHandleOp"]
                    if handles:
                        checks = [
                            tf.raw_ops.VarIsInitializedOp(resource=op.outputs[0]) for op in handles
                        ]
                        done = session.run(checks)
                        unrestored = [
                            op.name for op, ok in zip(handles, done, strict=True) if not ok
                        ]
            graph.finalize()
        except BaseException:
            session.close()
            raise
        return SessionRunner(graph, session), unrestored

    def _load_function(self) -> FunctionRunner:
        import tensorflow as tf

        try:
            loaded: Any = tf.saved_model.load(self.path, tags=list(self.tags))
        except Exception as exc:
            raise _translate_load_error(exc) from None
        return FunctionRunner(loaded, self.config_proto())

    def config_proto(self) -> Any:
        """The ``ConfigProto`` sessions are created with (see the class docstring)."""
        import tensorflow as tf

        config = tf.compat.v1.ConfigProto()
        if self.session_config:
            config.ParseFromString(self.session_config)
        if self.intra_op_threads > 0:
            config.intra_op_parallelism_threads = self.intra_op_threads
        if self.inter_op_threads > 0:
            config.inter_op_parallelism_threads = self.inter_op_threads
        elif config.inter_op_parallelism_threads == 0:
            # Negative: TF runs each step's ops in the calling thread (the request's) instead
            # of handing them to its inter-op pool: one thread hop less per request; large
            # ops still use the intra-op pool.
            config.inter_op_parallelism_threads = -1
        config.allow_soft_placement = True
        return config

