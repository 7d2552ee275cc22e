"""How large a gRPC request's inputs may decode: bounded by what the server would accept."""

from __future__ import annotations

import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2

from pyserving.errors import InvalidArgument
from pyserving.server.grpc.service import decode_inputs, decoded_size_bytes


def proto(dtype: int, *dims: int, unknown_rank: bool = False) -> tensor_pb2.TensorProto:
    p = tensor_pb2.TensorProto(dtype=dtype)
    for d in dims:
        p.tensor_shape.dim.add(size=d)
    p.tensor_shape.unknown_rank = unknown_rank
    return p


@pytest.mark.parametrize(
    ("tensor", "size"),
    [
        (proto(types_pb2.DT_FLOAT, 3, 4), 48),
        (proto(types_pb2.DT_DOUBLE), 8),  # a scalar
        (proto(types_pb2.DT_INT8, 2**40, 0), 0),
        (proto(types_pb2.DT_STRING, 10), 160),
        (proto(types_pb2.DT_FLOAT, 2**62, 2**62), 2**124 * 4),
        (proto(types_pb2.DT_FLOAT, -1), None),
        (proto(types_pb2.DT_FLOAT, unknown_rank=True), None),
        (proto(types_pb2.DT_RESOURCE, 1), None),
        (proto(999, 1), None),
    ],
)
def test_decoded_size(tensor: tensor_pb2.TensorProto, size: int | None) -> None:
    assert decoded_size_bytes(tensor) == size


def test_inputs_over_the_limit_together_are_refused() -> None:
    a = proto(types_pb2.DT_FLOAT, 10)
    a.float_val.append(1.0)  # filled out to 10 values: 40 bytes
    b = proto(types_pb2.DT_FLOAT, 10)
    assert {k: v.tolist() for k, v in decode_inputs({"a": a}, 40).items()} == {"a": [1.0] * 10}
    with pytest.raises(InvalidArgument, match=r"^tensor parsing error: b$"):
        decode_inputs({"a": a, "b": b}, 79)
    assert set(decode_inputs({"a": a, "b": b}, 80)) == {"a", "b"}
    assert set(decode_inputs({"a": a, "b": b})) == {"a", "b"}  # no limit
