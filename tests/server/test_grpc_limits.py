"""How large a gRPC request's inputs may decode: bounded by what the server would accept."""

from __future__ import annotations

import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2

from pyserving.codec.tensor_proto import ByteBudget, tensor_proto_to_ndarray
from pyserving.errors import InvalidArgument
from pyserving.server.grpc.service import decode_inputs


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
        (proto(types_pb2.DT_INT64, 5), 40),
        (proto(types_pb2.DT_BOOL, 7), 7),
    ],
)
def test_a_tensor_takes_its_decoded_size_from_the_budget(
    tensor: tensor_pb2.TensorProto, size: int
) -> None:
    budget = ByteBudget(size + 3)
    tensor_proto_to_ndarray(tensor, name="x", budget=budget)
    assert budget.remaining == 3
    if size:
        with pytest.raises(InvalidArgument, match=r"^tensor parsing error: x$"):
            tensor_proto_to_ndarray(tensor, name="x", budget=ByteBudget(size - 1))


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (proto(types_pb2.DT_FLOAT, 2**62, 2**62), "too large"),
        (proto(types_pb2.DT_FLOAT, -1), "invalid shape"),
        (proto(types_pb2.DT_FLOAT, unknown_rank=True), "unknown rank"),
        (proto(types_pb2.DT_RESOURCE, 1), "unsupported dtype"),
        (proto(999, 1), "unsupported dtype"),
    ],
)
def test_malformed_tensors_are_refused_before_the_budget(
    tensor: tensor_pb2.TensorProto, message: str
) -> None:
    budget = ByteBudget(100)
    with pytest.raises(InvalidArgument, match=message):
        tensor_proto_to_ndarray(tensor, budget=budget)
    assert budget.remaining == 100


def test_inputs_over_the_limit_together_are_refused() -> None:
    a = proto(types_pb2.DT_FLOAT, 10)
    a.float_val.append(1.0)  # filled out to 10 values: 40 bytes
    b = proto(types_pb2.DT_FLOAT, 10)
    assert {k: v.tolist() for k, v in decode_inputs({"a": a}, 40).items()} == {"a": [1.0] * 10}
    with pytest.raises(InvalidArgument, match=r"^tensor parsing error: b$"):
        decode_inputs({"a": a, "b": b}, 79)
    assert set(decode_inputs({"a": a, "b": b}, 80)) == {"a", "b"}
    assert set(decode_inputs({"a": a, "b": b})) == {"a", "b"}  # no limit


def test_a_huge_shape_described_by_a_few_bytes_is_refused_before_allocation() -> None:
    """One value filled out to 2**40 floats (4 TiB) is refused, not allocated."""
    a = proto(types_pb2.DT_FLOAT, 2**20, 2**20)
    a.float_val.append(1.0)
    with pytest.raises(InvalidArgument, match=r"^tensor parsing error: a$"):
        decode_inputs({"a": a}, 64 * 2**20)
