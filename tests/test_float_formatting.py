"""TF Serving's number text, written the fast ways, against the reference formatter.

``tf_float_text`` is the reference (``%g``, or ``%.9g``/``%.17g`` when six digits do not read
back as the same value, ``.0`` for text without a point or exponent; ``NaN``, ``Infinity``,
``-Infinity``). The writers predict answers use (``single_text``/``double_text`` per element,
the vectorized float32 writers, orjson for the rest) must give the same bytes for every value:
random bit patterns (NaN payloads, infinities, subnormals, -0.0 included), decimals whose
double lies exactly halfway between two float32 values, every dtype an answer can hold, and
every tensor size on either side of the writers' thresholds.
"""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from pyserving.codec import format_predict_response
from pyserving.codec.tf_json import SMALL_ARRAY, double_text, single_text, tf_float_text


def random_bits(dtype: type, count: int, seed: int) -> np.ndarray:
    """``count`` values of ``dtype`` with uniformly random bit patterns."""
    rng = np.random.default_rng(seed)
    width = np.dtype(dtype).itemsize
    raw = rng.integers(0, 256, size=count * width, dtype=np.uint8)
    return raw.view(dtype)


SPECIAL = [
    0.0,
    -0.0,
    math.nan,
    -math.nan,
    math.inf,
    -math.inf,
    5e-324,
    -5e-324,
    1e-45,
    -1e-45,
    1.1754942e-38,
    1.17549435e-38,
    3.4028234663852886e38,
    1e-4,
    9.99999e-5,
    999999.5,
    1e6,
    1e9,
    123456789.0,
    16777217.0,
    0.1,
    1 / 3,
    2.5,
    1e300,
    1e-300,
]


def specials(dtype: type) -> np.ndarray:
    """:data:`SPECIAL` as ``dtype`` (values beyond its range become infinities)."""
    with np.errstate(over="ignore"):
        return np.array(SPECIAL, dtype)


def halfway_values() -> list[float]:
    """Float32 values whose six-digit text reads back (as a double) exactly halfway between
    two float32 values: 1.07372e+09 = 1073720000 = 64 x 16776875 is the midpoint of two
    float32 neighbours 128 apart, and so on for other such decimals."""
    values = []
    for text in ("1.07372e+09", "1.07374e+09", "2.14748e+09", "4.29496e+09", "6.71089e+07"):
        middle = np.float32(float(text))
        for v in (np.nextafter(middle, np.float32(0)), middle, np.nextafter(middle, np.inf)):
            values.append(float(v))
    return values


def test_single_text_matches_the_reference_on_random_bits() -> None:
    values = np.concatenate(
        [
            random_bits(np.float32, 200_000, 1),
            specials(np.float32),
            np.array(halfway_values(), np.float32),
        ]
    )
    for v in values.tolist():
        assert single_text(v) == tf_float_text(v), v


def test_double_text_matches_the_reference_on_random_bits() -> None:
    values = np.concatenate([random_bits(np.float64, 200_000, 2), np.array(SPECIAL)])
    for v in values.tolist():
        assert double_text(v) == tf_float_text(v, single=False), v


def reference_json(array: np.ndarray) -> str:
    """TF Serving's text of a tensor, element by element with the reference formatter."""
    if array.dtype.kind == "f":
        single = array.dtype != np.float64
        texts = [tf_float_text(float(v), single=single) for v in array.ravel().tolist()]
    elif array.dtype == np.bool_:
        texts = ["true" if v else "false" for v in array.ravel().tolist()]
    elif array.dtype.kind in "iu":
        texts = [str(int(v)) for v in array.ravel().tolist()]
    else:
        texts = [
            orjson.dumps(v.decode() if isinstance(v, bytes) else v).decode()
            for v in array.ravel().tolist()
        ]

    def nest(items: list[str], shape: tuple[int, ...]) -> str:
        if not shape:
            return items[0]
        step = len(items) // shape[0] if shape[0] else 0
        return (
            "["
            + ",".join(nest(items[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0]))
            + "]"
        )

    return nest(texts, array.shape)


FLOAT_DTYPES = [np.float16, np.float32, np.float64]
OTHER_DTYPES = [
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint32,
    np.uint64,
    np.bool_,
]


def sample(dtype: type, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype in FLOAT_DTYPES:
        kind = seed % 3
        if kind == 0:  # any bit pattern
            values = random_bits(dtype, size, seed)
        elif kind == 1:  # typical model outputs
            values = (rng.standard_normal(size) * 10.0 ** rng.integers(-3, 4, size)).astype(dtype)
        else:  # specials and subnormals mixed in
            values = rng.standard_normal(size).astype(dtype)
            picks = rng.choice(specials(dtype), size)
            mask = rng.random(size) < 0.3
            values[mask] = picks[mask]
        return values
    if dtype == np.bool_:
        return rng.random(size) < 0.5
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size, dtype=dtype, endpoint=True)


SIZES = [1, 2, 7, SMALL_ARRAY, SMALL_ARRAY + 1, 100, 1000]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES + OTHER_DTYPES, ids=lambda d: np.dtype(d).name)
def test_answers_of_every_dtype_match_the_reference(dtype: type) -> None:
    for seed, size in enumerate(SIZES * 3):
        flat = sample(dtype, size, seed)
        for shape in ((size,), (size, 1), (1, size)):
            array = flat.reshape(shape)
            text = reference_json(array)
            assert format_predict_response({"y": array}, "columnar") == (
                f'{{"outputs":{text}}}'.encode()
            ), (dtype, shape, seed)
            assert format_predict_response({"y": array}, "row") == (
                f'{{"predictions":{text}}}'.encode()
            ), (dtype, shape, seed)
            marker = np.zeros(shape[0], np.int8)
            items = ",".join(f'{{"m":0,"y":{reference_json(array[i])}}}' for i in range(shape[0]))
            assert format_predict_response({"y": array, "m": marker}, "row") == (
                f'{{"predictions":[{items}]}}'.encode()
            ), (dtype, shape, seed)


def test_dtypes_tf_serving_does_not_write_are_errors() -> None:
    """uint16 (and the types without a JSON form) are refused as TF Serving refuses them."""
    with pytest.raises(Exception, match="Failed to write JSON value for tensor type: uint16"):
        format_predict_response({"y": np.ones(3, np.uint16)}, "columnar")


def test_string_answers_match_the_reference() -> None:
    array = np.array([b"a", b"\xc3\xa9", b'"quoted"\n', b""], dtype=object).reshape(2, 2)
    assert format_predict_response({"y": array}, "columnar") == (
        f'{{"outputs":{reference_json(array)}}}'.encode()
    )
