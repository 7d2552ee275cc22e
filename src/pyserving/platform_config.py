"""``--platform_config_file``: TF Serving's ``PlatformConfigMap``, read into the TensorFlow
platform's settings.

TF Serving builds its ``tensorflow`` platform's ``SessionBundleConfig`` from the flags
(``--enable_batching``, ``--batching_parameters_file``, ``--tensorflow_*_parallelism``,
``--tensorflow_session_config_file``, ``--saved_model_tags``, ``--enable_model_warmup``,
``--num_request_iterations_for_warmup``, ``--prefer_tflite_model``, ``--num_tflite_*``,
``--enable_per_model_batching_parameters``) unless ``--platform_config_file`` is given; then
the file's ``legacy_config`` is the whole configuration and those flags are not read. This
module gives that file's meaning:

.. code-block:: text

    platform_configs {
      key: "tensorflow"
      value {
        source_adapter_config {
          [type.googleapis.com/tensorflow.serving.SavedModelBundleSourceAdapterConfig] {
            legacy_config {
              session_config { intra_op_parallelism_threads: 2 }
              batching_parameters { max_batch_size { value: 32 } }
              enable_model_warmup: true
            }
          }
        }
      }
    }

As in TF Serving, the values are the proto's: a field left out is false or 0 (so warmup is
off unless ``enable_model_warmup: true``), ``saved_model_tags`` left out means ``serve``,
batching is on exactly when ``batching_parameters`` is present. ``session_config``'s thread
counts are also the thread counts of the other platforms (ONNX Runtime, PyTorch), as the
parallelism flags are. Only the ``tensorflow`` entry has settings here: an entry for any
other key is refused (TF Serving would refuse a platform it has no adapter for), and so is an
adapter config of another type. Fields pyserving does not act on are named by
:attr:`TensorFlowSettings.unused_fields` so the server can warn about them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyserving.config import ConfigError, read_text_proto

#: The flags whose settings a platform config file replaces (TF Serving does not read them
#: when the file is given).
REPLACED_FLAGS = (
    "enable_batching",
    "batching_parameters_file",
    "enable_per_model_batching_parameters",
    "tensorflow_session_parallelism",
    "tensorflow_intra_op_parallelism",
    "tensorflow_inter_op_parallelism",
    "tensorflow_session_config_file",
    "saved_model_tags",
    "enable_model_warmup",
    "num_request_iterations_for_warmup",
    "prefer_tflite_model",
    "num_tflite_pools",
    "num_tflite_interpreters_per_pool",
)

_ADAPTER = "tensorflow.serving.SavedModelBundleSourceAdapterConfig"

#: ``SessionBundleConfig`` fields pyserving reads; any other field that is set is reported.
_READ_FIELDS = frozenset(
    {
        "session_config",
        "batching_parameters",
        "saved_model_tags",
        "enable_model_warmup",
        "model_warmup_options",
        "prefer_tflite_model",
        "num_tflite_pools",
        "num_tflite_interpreters_per_pool",
        "num_tflite_interpreters",
        "enable_per_model_batching_params",
        # What TF Serving sets from its own flags' defaults, with no effect here:
        "remove_unused_fields_from_bundle_metagraph",
    }
)


@dataclass(frozen=True)
class TensorFlowSettings:
    """The ``tensorflow`` platform's settings from a platform config file."""

    #: Serialized ``tensorflow.ConfigProto`` (``b""`` when absent).
    session_config: bytes
    intra_op_threads: int
    inter_op_threads: int
    #: ``tensorflow.serving.BatchingParameters`` when batching is on, else None.
    batching_parameters: Any
    per_model_batching: bool
    saved_model_tags: tuple[str, ...]
    enable_warmup: bool
    #: Replays of each warmup record (TF Serving's default 1 when not set).
    warmup_iterations: int
    prefer_tflite_model: bool
    #: 0 = the flag's default.
    num_tflite_pools: int
    num_tflite_interpreters_per_pool: int
    #: Set ``SessionBundleConfig`` fields pyserving does not act on.
    unused_fields: tuple[str, ...]


def read_platform_config_file(path: str) -> TensorFlowSettings:
    """The settings of the platform config file at ``path``; ``ConfigError`` when it cannot
    be read, does not parse as ``tensorflow.serving.PlatformConfigMap`` or holds an entry
    pyserving cannot honour."""
    from tensorflow_serving.config import platform_config_pb2

    from pyserving.protos import session_bundle_messages

    _, adapter_class = session_bundle_messages()  # registers the Any's types before parsing
    what = "tensorflow.serving.PlatformConfigMap"
    config_map = read_text_proto(path, platform_config_pb2.PlatformConfigMap(), what)
    prefix = f"--platform_config_file={path}"
    entries = dict(config_map.platform_configs)
    others = sorted(key for key in entries if key != "tensorflow")
    if others:
        raise ConfigError(
            f"{prefix}: platform {others[0]!r} has no settings in a platform config file: "
            "only the 'tensorflow' entry is read (other platforms take theirs from the "
            "model directory and the flags)"
        )
    if "tensorflow" not in entries:
        raise ConfigError(f"{prefix}: PlatformConfigMap has no entry for platform tensorflow")
    packed = entries["tensorflow"].source_adapter_config
    adapter = adapter_class()
    if packed.type_url and not packed.Is(adapter.DESCRIPTOR):
        raise ConfigError(
            f"{prefix}: the tensorflow entry's source_adapter_config is a "
            f"{packed.type_url.rpartition('/')[2]}; pyserving reads {_ADAPTER}"
        )
    if packed.type_url:
        packed.Unpack(adapter)
    return _settings(adapter.legacy_config, prefix)


def _settings(legacy: Any, prefix: str) -> TensorFlowSettings:
    session = legacy.session_config
    warmup = legacy.model_warmup_options
    iterations = (
        int(warmup.num_request_iterations.value) if warmup.HasField("num_request_iterations") else 1
    )
    if iterations < 1:
        raise ConfigError(
            f"{prefix}: model_warmup_options.num_request_iterations must be positive, "
            f"not {iterations}"
        )
    unused = tuple(
        field.name for field, _ in legacy.ListFields() if field.name not in _READ_FIELDS
    )
    return TensorFlowSettings(
        session_config=(
            bytes(session.SerializeToString()) if legacy.HasField("session_config") else b""
        ),
        intra_op_threads=max(0, int(session.intra_op_parallelism_threads)),
        inter_op_threads=max(0, int(session.inter_op_parallelism_threads)),
        batching_parameters=(
            legacy.batching_parameters if legacy.HasField("batching_parameters") else None
        ),
        per_model_batching=bool(legacy.enable_per_model_batching_params),
        saved_model_tags=tuple(legacy.saved_model_tags) or ("serve",),
        enable_warmup=bool(legacy.enable_model_warmup),
        warmup_iterations=iterations,
        prefer_tflite_model=bool(legacy.prefer_tflite_model),
        num_tflite_pools=max(0, int(legacy.num_tflite_pools)),
        num_tflite_interpreters_per_pool=max(
            0, int(legacy.num_tflite_interpreters_per_pool or legacy.num_tflite_interpreters)
        ),
        unused_fields=unused,
    )


__all__ = ["REPLACED_FLAGS", "TensorFlowSettings", "read_platform_config_file"]
