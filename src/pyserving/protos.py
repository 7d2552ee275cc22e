"""TF Serving config messages that no installed package ships, built at import time.

``tensorflow.serving.MonitoringConfig`` / ``PrometheusConfig`` (monitoring_config.proto),
``tensorflow.serving.SSLConfig`` (ssl_config.proto) and ``tensorflow.serving.BatchingParameters``
(session_bundle_config.proto) have TF Serving's package, message and field names and numbers,
so TF Serving's text-proto files parse unchanged. They are registered in the default
descriptor pool under TF Serving's file names.
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
_build(
    "tensorflow_serving/servables/tensorflow/session_bundle_config_batching.proto",
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
