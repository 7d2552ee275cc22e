"""TF Serving config messages that no installed package ships, built at import time.

``tensorflow.serving.MonitoringConfig`` / ``PrometheusConfig`` (monitoring_config.proto),
``tensorflow.serving.SSLConfig`` (ssl_config.proto) and ``tensorflow.serving.BatchingParameters``
(session_bundle_config.proto) have TF Serving's package, message and field names and numbers,
so TF Serving's text-proto files parse unchanged. They are registered in the default
descriptor pool under TF Serving's file names.

:func:`session_bundle_messages` adds, on first call, ``SessionBundleConfig``,
``ModelWarmupOptions`` and ``SavedModelBundleSourceAdapterConfig`` (the ``legacy_config`` of
a ``--platform_config_file``'s ``tensorflow`` entry, packed in a ``google.protobuf.Any``):
they hold a ``tensorflow.ConfigProto``, so they import TensorFlow's protos and are built only
when such a file is read.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

_F = descriptor_pb2.FieldDescriptorProto


def _field(name: str, number: int, kind: int, type_name: str = "", repeated: bool = False) -> Any:
    field = _F(
        name=name,
        number=number,
        type=kind,
        label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
    )
    if type_name:
        field.type_name = type_name
    return field


def _build(file_name: str, messages: dict[str, list[Any]], deps: tuple[str, ...] = ()) -> None:
    """Register ``messages`` (name -> fields) as ``file_name`` in package
    ``tensorflow.serving`` of the default pool, unless that file is there already."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(file_name)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto(
        name=file_name, package="tensorflow.serving", syntax="proto3", dependency=list(deps)
    )
    for name, fields in messages.items():
        proto.message_type.add(name=name, field=fields)
    pool.Add(proto)


_ = wrappers_pb2  # the wrappers file must be in the pool before BatchingParameters
_I64 = ".google.protobuf.Int64Value"
_I32 = ".google.protobuf.Int32Value"
_TS = ".tensorflow.serving."
_build(
    "tensorflow_serving/config/monitoring_config.proto",
    {
        "PrometheusConfig": [
            _field("enable", 1, _F.TYPE_BOOL),
            _field("path", 2, _F.TYPE_STRING),
        ],
        "MonitoringConfig": [
            _field("prometheus_config", 1, _F.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig"),
        ],
    },
)
_build(
    "tensorflow_serving/config/ssl_config.proto",
    {
        "SSLConfig": [
            _field("server_key", 1, _F.TYPE_STRING),
            _field("server_cert", 2, _F.TYPE_STRING),
            _field("custom_ca", 3, _F.TYPE_STRING),
            _field("client_verify", 4, _F.TYPE_BOOL),
        ],
    },
)
_BATCHING_FILE = "tensorflow_serving/servables/tensorflow/session_bundle_config_batching.proto"
_build(
    _BATCHING_FILE,
    {
        "BatchingParameters": [
            _field("max_batch_size", 1, _F.TYPE_MESSAGE, _I64),
            _field("batch_timeout_micros", 2, _F.TYPE_MESSAGE, _I64),
            _field("max_enqueued_batches", 3, _F.TYPE_MESSAGE, _I64),
            _field("num_batch_threads", 4, _F.TYPE_MESSAGE, _I64),
            _field("thread_pool_name", 5, _F.TYPE_MESSAGE, ".google.protobuf.StringValue"),
            _field("allowed_batch_sizes", 6, _F.TYPE_INT64, repeated=True),
            _field("pad_variable_length_inputs", 7, _F.TYPE_BOOL),
            _field(
                "enable_large_batch_splitting", 8, _F.TYPE_MESSAGE, ".google.protobuf.BoolValue"
            ),
            _field("max_execution_batch_size", 9, _F.TYPE_MESSAGE, _I64),
        ],
    },
    deps=("google/protobuf/wrappers.proto",),
)


def _cls(full_name: str) -> Any:
    return message_factory.GetMessageClass(
        descriptor_pool.Default().FindMessageTypeByName(full_name)
    )


MonitoringConfig = _cls("tensorflow.serving.MonitoringConfig")
PrometheusConfig = _cls("tensorflow.serving.PrometheusConfig")
SSLConfig = _cls("tensorflow.serving.SSLConfig")
BatchingParameters = _cls("tensorflow.serving.BatchingParameters")


def session_bundle_messages() -> tuple[Any, Any]:
    """``(SessionBundleConfig, SavedModelBundleSourceAdapterConfig)`` message classes, with
    TF Serving's field names and numbers (session_bundle_config.proto and
    saved_model_bundle_source_adapter.proto); registered on first call, after TensorFlow's
    ``ConfigProto`` and ``NamedTensorProto`` they refer to.

    ``in_graph_batching_parameters`` (7), whose message TF Serving does not publish, is left
    out: a file that sets it does not parse.
    """
    from tensorflow.core.protobuf import config_pb2, named_tensor_pb2

    _build(
        "tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
        {
            "ModelWarmupOptions": [
                _field("num_request_iterations", 1, _F.TYPE_MESSAGE, _I32),
                _field("num_model_warmup_threads", 2, _F.TYPE_MESSAGE, _I32),
                _field("model_name", 3, _F.TYPE_STRING),
                _field("model_version", 4, _F.TYPE_INT64),
                _field("enable_all_batch_sizes_warmup", 5, _F.TYPE_BOOL),
            ],
            "SessionBundleConfig": [
                _field("session_target", 1, _F.TYPE_STRING),
                _field("session_config", 2, _F.TYPE_MESSAGE, ".tensorflow.ConfigProto"),
                _field("batching_parameters", 3, _F.TYPE_MESSAGE, _TS + "BatchingParameters"),
                _field("session_run_load_threadpool_index", 4, _F.TYPE_MESSAGE, _I32),
                _field("experimental_transient_ram_bytes_during_load", 5, _F.TYPE_UINT64),
                _field("saved_model_tags", 6, _F.TYPE_STRING, repeated=True),
                _field(
                    "experimental_fixed_input_tensors",
                    778,
                    _F.TYPE_MESSAGE,
                    ".tensorflow.NamedTensorProto",
                    repeated=True,
                ),
                _field("enable_model_warmup", 779, _F.TYPE_BOOL),
                _field("model_warmup_options", 780, _F.TYPE_MESSAGE, _TS + "ModelWarmupOptions"),
                _field("enable_session_metadata", 781, _F.TYPE_BOOL),
                _field("remove_unused_fields_from_bundle_metagraph", 782, _F.TYPE_BOOL),
                _field("prefer_tflite_model", 783, _F.TYPE_BOOL),
                _field("resource_estimation_uses_validation_result", 784, _F.TYPE_BOOL),
                _field("num_tflite_interpreters", 785, _F.TYPE_INT32),
                _field("num_tflite_interpreters_per_pool", 786, _F.TYPE_INT32),
                _field("num_tflite_pools", 787, _F.TYPE_INT32),
                _field("wrap_session_with_no_threading_params", 788, _F.TYPE_BOOL),
                _field("enable_per_model_batching_params", 789, _F.TYPE_BOOL),
                _field("enable_saved_model_config", 790, _F.TYPE_BOOL),
                _field("mixed_precision", 791, _F.TYPE_STRING),
            ],
        },
        deps=(
            "google/protobuf/wrappers.proto",
            config_pb2.DESCRIPTOR.name,
            named_tensor_pb2.DESCRIPTOR.name,
            _BATCHING_FILE,
        ),
    )
    _build(
        "tensorflow_serving/servables/tensorflow/saved_model_bundle_source_adapter.proto",
        {
            "SavedModelBundleSourceAdapterConfig": [
                _field("legacy_config", 1000, _F.TYPE_MESSAGE, _TS + "SessionBundleConfig"),
            ],
        },
        deps=("tensorflow_serving/servables/tensorflow/session_bundle_config.proto",),
    )
    return (
        _cls("tensorflow.serving.SessionBundleConfig"),
        _cls("tensorflow.serving.SavedModelBundleSourceAdapterConfig"),
    )
