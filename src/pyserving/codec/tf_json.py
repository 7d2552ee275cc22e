"""TF Serving's JSON dialect: how ``tensorflow_serving/util/json_tensor.cc`` (TF Serving 2.18
and later, with RapidJSON 1.1.0) reads request bodies and writes numbers and error texts.

Reading (:func:`loads`). TF Serving parses with RapidJSON's iterative parser and the flags
``kParseNanAndInfFlag | kParseStopWhenDoneFlag``, so:

- ``NaN``, ``Inf`` and ``Infinity`` (optionally signed) are numbers;
- any nesting depth parses (the parser keeps its own stack);
- whatever follows the first complete value is ignored, as is everything from a NUL byte on;
  a UTF-8 byte order mark is skipped;
- string bytes are not checked for valid UTF-8 (here, invalid bytes become ``surrogateescape``
  characters, so encoding a string with :func:`utf8_bytes` gives back the bytes sent);
  ``\\uXXXX`` escapes of a lone low surrogate are kept as the bytes RapidJSON writes for them,
  a high surrogate without its pair is an error;
- an integer within 64 bits is an integer, a larger one a double; a number whose exponent
  (or integer digits) put it beyond the double range is refused (``Number too big to be
  stored in double.``), while one that merely rounds past ``DBL_MAX`` (``2e308``) is infinite.

Errors are RapidJSON's texts and byte offsets: ``JSON Parse error: <reason> at offset: <n>``.
Documents are parsed by orjson; only one orjson refuses is looked at again, by Python's ``json``
(same results, with the dialect's numbers and tokens) and, where that fails too, by an exact
emulation of RapidJSON's parser (errors, deep nesting, lone surrogates), which runs at Python
speed: above :data:`EXACT_PARSE_LIMIT` (2 MiB) a document Python's ``json`` cannot read gets
that parser's error in RapidJSON's words (the offset may differ) and nesting too deep for it
is refused, as is nesting beyond :data:`MAX_DEPTH` (a million levels) at any size. Two
differences remain: a key given twice keeps its last value (RapidJSON finds the first), and
decimals are rounded correctly where RapidJSON's default parser can be one unit in the last
place of a double off for numbers with more than 17 significant digits or exponents beyond
+/-22.

Writing numbers (:func:`float_value`). ``WriteDecimal``: a float32 value is printed with six
significant digits in ``printf("%g")`` style (``9e+06``, ``3e-05``, ``0.5``) when that text
reads back as the same float32, else with nine (``%.9g``); a double with six digits or else
17. Text without a decimal point or exponent gets ``.0`` (``3.0``, ``-0.0``); non-finite
values are the bare tokens ``NaN``, ``Infinity`` and ``-Infinity``. For float32 (and float16,
printed as float32) arrays, vectorized numpy computes the digits; where TF writes fixed
notation (1e-4 <= |x| < 1e6, or < 1e9 with nine digits: most elements of most tensors) orjson
writes the double nearest TF's decimal, which prints as that decimal; the other elements'
text is spliced into orjson's, or when they are many, every element's characters are
gathered from lookup tables by numpy. Doubles and tiny arrays are formatted element by
element by C code (``%`` on a tuple).

Error texts (:func:`debug_text`). ``JsonValueToDebugString``: RapidJSON's pretty writer with
single-line arrays (``[1, 2]``; objects keep one member per line, indented by four spaces),
numbers as RapidJSON writes doubles (shortest digits: ``1e39``, ``0.1``), cut off once 256
bytes are written, and stopping at a non-finite number (RapidJSON's writer refuses them).
"""

from __future__ import annotations

import gc
import itertools
import json
import math
import re
import struct
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import numpy as np
import orjson

from pyserving.errors import InvalidArgument

__all__ = [
    "debug_text",
    "float_items",
    "float_json",
    "float_texts",
    "float_value",
    "json_type",
    "loads",
    "rapidjson_double",
    "tf_float_text",
    "utf8_bytes",
]


def utf8_bytes(text: str) -> bytes:
    """The bytes a parsed JSON string stands for: its UTF-8 encoding, with ``surrogateescape``
    characters turned back into the raw bytes they replaced (lone surrogates from ``\\u``
    escapes are encoded as RapidJSON does, three bytes each)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", errors="surrogateescape")
        except UnicodeEncodeError:
            return text.encode("utf-8", errors="surrogatepass")


class _NumberTooBig(Exception):
    """A number RapidJSON refuses (``kParseErrorNumberTooBig``)."""


_UINT64_MAX = 2**64 - 1
_INT64_MIN_MAGNITUDE = 2**63
_DOUBLE_LIMIT = 1.7976931348623157e307  # RapidJSON stops growing an integer past DBL_MAX / 10
_SIGNIFICAND_LIMIT = 2**53 - 1
_NUMBER_PARTS = re.compile(r"(-?)(\d+)(?:\.(\d+))?(?:[eE]([+-]?)(\d+))?\Z")


def _big_integer_too_big(digits: str, minus: bool) -> bool:
    """RapidJSON's overflow check for an integer beyond 64 bits, which it accumulates in a
    double digit by digit (``d = d * 10 + digit``) once the 64-bit value would overflow."""
    limit, last = (922337203685477580, 8) if minus else (1844674407370955161, 5)
    value = 0
    for position, char in enumerate(digits):
        digit = ord(char) - 48
        if value >= limit and (value != limit or digit > last):
            double = float(value)
            for rest in digits[position:]:
                if double >= _DOUBLE_LIMIT:
                    return True
                double = double * 10 + (ord(rest) - 48)
            return False
        value = value * 10 + digit
    return False


def _fraction_exponent(int_digits: str, frac_digits: str) -> int:
    """RapidJSON's ``expFrac``: minus the fraction digits that made it into the significand
    (RapidJSON keeps at most 17 significant digits and drops the rest)."""
    significand = int(int_digits)
    counted = len(int_digits) - 1 if int_digits != "0" else 0
    exp_frac = 0
    position = 0
    while position < len(frac_digits) and significand <= _SIGNIFICAND_LIMIT:
        significand = significand * 10 + ord(frac_digits[position]) - 48
        exp_frac -= 1
        if significand:
            counted += 1
        position += 1
    nonzero = significand > 0
    for char in frac_digits[position:]:
        if counted >= 17:
            break
        exp_frac -= 1
        nonzero = nonzero or char != "0"
        if nonzero:
            counted += 1
    return exp_frac


def _number_value(
    minus: bool, int_digits: str, frac_digits: str | None, exp_minus: bool, exp_digits: str | None
) -> int | float:
    """The value RapidJSON gives a number (integers within 64 bits stay integers).

    Raises:
        _NumberTooBig: RapidJSON refuses it.
    """
    # Beyond 64 bits (2**63 for a negative number) an integer is a double to RapidJSON.
    big_integer = len(int_digits) > 20 or (
        len(int_digits) >= 19 and int(int_digits) > (_INT64_MIN_MAGNITUDE if minus else _UINT64_MAX)
    )
    if big_integer and (len(int_digits) > 310 or _big_integer_too_big(int_digits, minus)):
        raise _NumberTooBig
    if frac_digits is None and exp_digits is None:
        if not big_integer:
            magnitude = int(int_digits)
            return -magnitude if minus else magnitude
        value = float(int(int_digits))
        return -value if minus else value
    if exp_digits is not None and not exp_minus:
        exp_frac = 0 if big_integer else _fraction_exponent(int_digits, frac_digits or "")
        limit = 308 - exp_frac
        exponent = 0
        for char in exp_digits:
            exponent = exponent * 10 + ord(char) - 48
            if exponent > limit:
                raise _NumberTooBig
    text = int_digits
    if frac_digits is not None:
        text += "." + frac_digits
    if exp_digits is not None:
        text += ("e-" if exp_minus else "e") + exp_digits
    value = float(text)
    return -value if minus else value


def _number_from_text(text: str) -> int | float:
    match = _NUMBER_PARTS.match(text)
    if match is None:  # pragma: no cover - json only hands over well-formed numbers
        return float(text)
    sign, int_digits, frac_digits, exp_sign, exp_digits = match.groups()
    return _number_value(sign == "-", int_digits, frac_digits, exp_sign == "-", exp_digits)


def _json_int(text: str) -> int | float:
    """``parse_int`` for Python's json: RapidJSON's integers (doubles beyond 64 bits)."""
    if len(text) <= 18:
        return int(text)
    return _number_from_text(text)


def _json_float(text: str) -> float:
    """``parse_float`` for Python's json: correctly rounded, with RapidJSON's overflow rule."""
    value = float(text)
    if (value == 0.0 or math.isinf(value)) and ("e" in text or "E" in text):
        return float(_number_from_text(text))
    return value


_DECODER = json.JSONDecoder(parse_int=_json_int, parse_float=_json_float)
_JSON_WS = re.compile(r"[ \t\n\r]*")
_BARE_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|(-?)\bInf(?:inity)?\b|\bNaN\b', re.DOTALL)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")

#: Documents larger than this that Python's json cannot read get its error (mapped to
#: RapidJSON's words; nesting too deep for it is refused) instead of the exact emulation,
#: which runs at Python speed (about a second per megabyte of small tokens).
EXACT_PARSE_LIMIT = 2 << 20
#: Deepest nesting the exact parser builds (memory: a list or dict per level).
MAX_DEPTH = 1_000_000

_PY_TO_RAPIDJSON_ERRORS = (
    ("Expecting value", "Invalid value."),
    ("Expecting property name enclosed in double quotes", "Missing a name for object member."),
    ("Expecting ':' delimiter", "Missing a colon after a name of object member."),
    ("Expecting ',' delimiter", "Missing a comma or ']' after an array element."),
    ("Unterminated string", "Missing a closing quotation mark in string."),
    ("Invalid \\escape", "Invalid escape character in string."),
    ("Invalid \\uXXXX escape", "Incorrect hex digit after \\u escape in string."),
    ("Invalid control character", "Invalid escape character in string."),
)


def _parse_error(reason: str, offset: int) -> InvalidArgument:
    return InvalidArgument(f"JSON Parse error: {reason} at offset: {offset}")


def _replace_token(match: re.Match[str]) -> str:
    token = match.group(0)
    if token.startswith('"') or token == "NaN":
        return token
    return "-Infinity" if match.group(1) else "Infinity"


def _bom_length(data: bytes) -> int:
    """How many bytes of a UTF-8 byte order mark RapidJSON skips (each of its three bytes
    is skipped if it comes in its place)."""
    skipped = 0
    for byte in (0xEF, 0xBB, 0xBF):
        if skipped < len(data) and data[skipped] == byte:
            skipped += 1
    return skipped


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse a request body as TF Serving does (see the module docstring).

    Returns:
        The document as Python objects: dict, list, str (invalid UTF-8 as
        ``surrogateescape`` characters), int, float, bool, None.

    Raises:
        InvalidArgument: ``JSON Parse error: The document is empty`` for an empty body, else
            ``JSON Parse error: <RapidJSON's reason> at offset: <byte offset>``.
    """
    if len(data) == 0:
        raise InvalidArgument("JSON Parse error: The document is empty")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    nul = raw.find(b"\x00")
    if nul >= 0:
        raw = raw[:nul]  # RapidJSON reads a NUL byte as the end of input
    bom = _bom_length(raw)
    exact = len(raw) <= EXACT_PARSE_LIMIT
    text = raw[bom:].decode("utf-8", "surrogateescape")
    if exact and (bom or _SURROGATE_ESCAPE.search(text)):
        return _parse_exact(raw)
    if "Inf" in text or "NaN" in text:
        text = _BARE_TOKENS.sub(_replace_token, text)
    start = _JSON_WS.match(text).end()  # type: ignore[union-attr]
    try:
        value, _end = _DECODER.raw_decode(text, start)  # what follows the value is ignored
        return value
    except (json.JSONDecodeError, RecursionError, _NumberTooBig, ValueError) as exc:
        if exact:
            return _parse_exact(raw)
        if isinstance(exc, json.JSONDecodeError):
            reason = exc.msg
            for prefix, rapidjson_reason in _PY_TO_RAPIDJSON_ERRORS:
                if reason.startswith(prefix):
                    reason = rapidjson_reason
                    break
            offset = bom + len(text[: exc.pos].encode("utf-8", "surrogateescape"))
            raise _parse_error(reason, offset) from None
        if isinstance(exc, RecursionError):
            raise InvalidArgument("JSON Parse error: Document nesting is too deep.") from None
        if isinstance(exc, _NumberTooBig):
            raise InvalidArgument(
                "JSON Parse error: Number too big to be stored in double."
            ) from None
        raise InvalidArgument(f"JSON Parse error: {exc}") from None


# The exact parser: RapidJSON 1.1.0's iterative parser (reader.h), state for state.
_START, _FINISH, _OBJECT_INITIAL, _MEMBER_KEY, _KEY_VALUE_DELIMITER = 0, 1, 2, 3, 4
_MEMBER_VALUE, _MEMBER_DELIMITER, _ARRAY_INITIAL, _ELEMENT, _ELEMENT_DELIMITER = 5, 6, 7, 8, 9
_END_OF_INPUT_ERRORS = {
    _START: "The document is empty.",
    _OBJECT_INITIAL: "Missing a name for object member.",
    _MEMBER_DELIMITER: "Missing a name for object member.",
    _MEMBER_KEY: "Missing a colon after a name of object member.",
    _MEMBER_VALUE: "Missing a comma or '}' after an object member.",
    _KEY_VALUE_DELIMITER: "Invalid value.",
    _ARRAY_INITIAL: "Invalid value.",
    _ELEMENT_DELIMITER: "Invalid value.",
    _ELEMENT: "Missing a comma or ']' after an array element.",
}
_WS_BYTES = re.compile(rb"[ \t\n\r]*")
_OPEN_RUN = re.compile(rb"(?:\[[ \t\n\r]*)+")
# The common well-formed tokens, read in one match: 1 a structural character, 2 a string
# without escapes, 3 an integer within 64 bits, 4 a short decimal, 5 a literal. Anything else
# (escapes, exponents, NaN, long numbers, errors) is read by the character-level functions.
_TOKEN = re.compile(
    rb"[ \t\n\r]*(?:([\[\]{},:])"
    rb'|("[^"\\\x00-\x1f]*")'
    rb"|(-?(?:0|[1-9][0-9]{0,17}))(?![0-9.eE])"
    rb"|(-?(?:0|[1-9][0-9]{0,14})\.[0-9]{1,15})(?![0-9eE])"
    rb"|(true|false|null))"
)
_LITERALS = {b"true": True, b"false": False, b"null": None}
_CLOSE_RUN = re.compile(rb"(?:\][ \t\n\r]*)+")
_STRING_RUN = re.compile(rb'[^"\\\x00-\x1f]*')
_DIGITS = re.compile(rb"[0-9]*")
_SIMPLE_ESCAPES = {
    ord('"'): b'"',
    ord("\\"): b"\\",
    ord("/"): b"/",
    ord("b"): b"\b",
    ord("f"): b"\f",
    ord("n"): b"\n",
    ord("r"): b"\r",
    ord("t"): b"\t",
}
_HEX = frozenset(b"0123456789abcdefABCDEF")


def _consume(data: bytes, pos: int, word: bytes) -> tuple[bool, int]:
    """RapidJSON's chain of ``Consume`` calls: how much of ``word`` matches at ``pos``."""
    for char in word:
        if pos >= len(data) or data[pos] != char:
            return False, pos
        pos += 1
    return True, pos


def _hex4(data: bytes, pos: int, escape: int) -> tuple[int, int]:
    chunk = data[pos : pos + 4]
    if len(chunk) < 4 or not all(c in _HEX for c in chunk):
        raise _parse_error("Incorrect hex digit after \\u escape in string.", escape)
    return int(chunk, 16), pos + 4


def _parse_string(data: bytes, pos: int) -> tuple[str, int]:
    """A string starting at the quote at ``pos``; returns it and the offset after it."""
    pos += 1
    pieces = []
    size = len(data)
    while True:
        end = _STRING_RUN.match(data, pos).end()  # type: ignore[union-attr]
        if end > pos:
            pieces.append(data[pos:end])
            pos = end
        if pos >= size:
            raise _parse_error("Missing a closing quotation mark in string.", pos)
        char = data[pos]
        if char == 0x22:  # closing quote
            return b"".join(pieces).decode("utf-8", "surrogateescape"), pos + 1
        if char != 0x5C:  # a control character
            raise _parse_error("Invalid escape character in string.", pos)
        escape = pos
        pos += 1
        kind = data[pos] if pos < size else 0
        simple = _SIMPLE_ESCAPES.get(kind)
        if simple is not None:
            pieces.append(simple)
            pos += 1
            continue
        if kind != 0x75:  # not \u
            raise _parse_error("Invalid escape character in string.", escape)
        codepoint, pos = _hex4(data, pos + 1, escape)
        if 0xD800 <= codepoint <= 0xDBFF:
            if data[pos : pos + 2] != b"\\u":
                raise _parse_error("The surrogate pair in string is invalid.", escape)
            low, pos = _hex4(data, pos + 2, escape)
            if not 0xDC00 <= low <= 0xDFFF:
                raise _parse_error("The surrogate pair in string is invalid.", escape)
            codepoint = (((codepoint - 0xD800) << 10) | (low - 0xDC00)) + 0x10000
        pieces.append(chr(codepoint).encode("utf-8", "surrogatepass"))


def _parse_number(data: bytes, pos: int) -> tuple[int | float, int]:
    """RapidJSON's ``ParseNumber`` at ``pos`` (with ``kParseNanAndInfFlag``)."""
    start = pos
    size = len(data)
    minus = pos < size and data[pos] == 0x2D
    if minus:
        pos += 1
    char = data[pos] if pos < size else 0
    special: float | None = None
    if char == 0x30:
        int_digits = "0"
        pos += 1
    elif 0x31 <= char <= 0x39:
        end = _DIGITS.match(data, pos).end()  # type: ignore[union-attr]
        int_digits = data[pos:end].decode()
        pos = end
    elif char in (0x49, 0x4E):  # I, N
        int_digits = "0"
        matched, pos = _consume(data, pos, b"NaN")
        if matched:
            special = math.nan
        else:
            matched, pos = _consume(data, pos, b"Inf")
            if not matched:
                raise _parse_error("Invalid value.", pos)
            special = -math.inf if minus else math.inf
            if pos < size and data[pos] == 0x69:  # i
                matched, pos = _consume(data, pos, b"inity")
                if not matched:
                    raise _parse_error("Invalid value.", pos)
    else:
        raise _parse_error("Invalid value.", pos)
    frac_digits = None
    if pos < size and data[pos] == 0x2E:
        pos += 1
        end = _DIGITS.match(data, pos).end()  # type: ignore[union-attr]
        if end == pos:
            raise _parse_error("Miss fraction part in number.", pos)
        frac_digits = data[pos:end].decode()
        pos = end
    exp_minus = False
    exp_digits = None
    if pos < size and data[pos] in (0x65, 0x45):
        pos += 1
        if pos < size and data[pos] in (0x2B, 0x2D):
            exp_minus = data[pos] == 0x2D
            pos += 1
        end = _DIGITS.match(data, pos).end()  # type: ignore[union-attr]
        if end == pos:
            raise _parse_error("Miss exponent in number.", pos)
        exp_digits = data[pos:end].decode()
        pos = end
    if special is not None and frac_digits is None and exp_digits is None:
        return special, pos
    try:  # after NaN/Inf, a fraction or exponent makes RapidJSON read the number from zero
        return _number_value(minus, int_digits, frac_digits, exp_minus, exp_digits), pos
    except _NumberTooBig:
        raise _parse_error("Number too big to be stored in double.", start) from None


def _parse_scalar(data: bytes, pos: int) -> tuple[Any, int]:
    char = data[pos]
    if char == 0x22:
        return _parse_string(data, pos)
    for word, value in ((b"true", True), (b"false", False), (b"null", None)):
        if char == word[0]:
            matched, end = _consume(data, pos + 1, word[1:])
            if not matched:
                raise _parse_error("Invalid value.", end)
            return value, end
    return _parse_number(data, pos)


def _nested_lists(count: int) -> list[list[Any]]:
    """``count`` lists, each holding the next: ``[[[...]]]``, outermost first.

    A long run (a deeply nested document) is built with the cyclic garbage collector paused:
    otherwise each of its passes walks the whole growing chain, which makes building half a
    million levels take seconds instead of a tenth of one.
    """
    paused = count >= 10_000 and gc.isenabled()
    if paused:
        gc.disable()
    try:
        chain: list[list[Any]] = [[] for _ in range(count)]
        list(map(list.append, chain[:-1], chain[1:]))
    finally:
        if paused:
            gc.enable()
    return chain


def _parse_exact(raw: bytes) -> Any:
    """RapidJSON 1.1.0's iterative parser with TF Serving's flags, without recursion."""
    nul = raw.find(b"\x00")
    data = raw if nul < 0 else raw[:nul]  # RapidJSON reads a NUL byte as the end of input
    size = len(data)
    pos = _bom_length(data)
    # The open containers, innermost last, with the key of the member being read (objects)
    # and whether each is an object (1) or an array (0).
    containers: list[Any] = []
    keys: list[Any] = []
    objects = bytearray()
    state = _START
    root: Any = None
    while True:
        token = _TOKEN.match(data, pos)
        if token is not None:
            kind = token.lastindex or 0
            pos = token.start(kind)
        else:
            kind = 0  # anything else is read character by character
            pos = _WS_BYTES.match(data, pos).end()  # type: ignore[union-attr]
            if pos >= size:
                break
        char = data[pos]
        if state in (_START, _ARRAY_INITIAL, _ELEMENT_DELIMITER, _KEY_VALUE_DELIMITER):
            if char == 0x5B and state != _KEY_VALUE_DELIMITER and data[pos + 1 : pos + 2] == b"[":
                # A run of opening brackets (what deep documents are made of): a list each.
                end = _OPEN_RUN.match(data, pos).end()  # type: ignore[union-attr]
                count = data.count(b"[", pos, end)
                if len(containers) + count > MAX_DEPTH:
                    raise _parse_error("Document nesting is too deep.", pos)
                chain = _nested_lists(count)
                if containers:
                    containers[-1].append(chain[0])
                else:
                    root = chain[0]
                containers.extend(chain)
                keys.extend(itertools.repeat(None, count))
                objects.extend(bytes(count))
                state = _ARRAY_INITIAL
                pos = end
                continue
            if char in (0x5B, 0x7B):
                container: Any = [] if char == 0x5B else {}
                if not containers:
                    root = container
                elif objects[-1]:
                    containers[-1][keys[-1]] = container
                else:
                    containers[-1].append(container)
                if len(containers) >= MAX_DEPTH:
                    raise _parse_error("Document nesting is too deep.", pos)
                containers.append(container)
                keys.append(None)
                objects.append(char == 0x7B)
                state = _ARRAY_INITIAL if char == 0x5B else _OBJECT_INITIAL
                pos += 1
                continue
            if char == 0x5D and state == _ARRAY_INITIAL:
                pass  # an empty array: closed below
            elif char in (0x5D, 0x7D, 0x2C, 0x3A):
                reason = "The document is empty." if state == _START else "Invalid value."
                raise _parse_error(reason, pos)
            else:
                if kind == 2:
                    value: Any = token.group(2)[1:-1].decode("utf-8", "surrogateescape")  # type: ignore[union-attr]
                elif kind == 3:
                    value = int(token.group(3))  # type: ignore[union-attr]
                elif kind == 4:
                    value = float(token.group(4))  # type: ignore[union-attr]
                elif kind == 5:
                    value = _LITERALS[token.group(5)]  # type: ignore[union-attr]
                else:
                    value, end = _parse_scalar(data, pos)
                if kind:
                    end = token.end()  # type: ignore[union-attr]
                pos = end
                if state == _START:
                    return value
                if state == _KEY_VALUE_DELIMITER:
                    containers[-1][keys[-1]] = value
                    state = _MEMBER_VALUE
                else:
                    containers[-1].append(value)
                    state = _ELEMENT
                continue
        elif state == _ELEMENT:
            if char == 0x2C:
                state = _ELEMENT_DELIMITER
                pos += 1
                continue
            if char != 0x5D:
                raise _parse_error("Missing a comma or ']' after an array element.", pos)
        elif state in (_OBJECT_INITIAL, _MEMBER_DELIMITER):
            if char == 0x22:
                if kind == 2:
                    keys[-1] = token.group(2)[1:-1].decode("utf-8", "surrogateescape")  # type: ignore[union-attr]
                    pos = token.end()  # type: ignore[union-attr]
                else:
                    keys[-1], pos = _parse_string(data, pos)
                state = _MEMBER_KEY
                continue
            if char != 0x7D or state == _MEMBER_DELIMITER:
                raise _parse_error("Missing a name for object member.", pos)
        elif state == _MEMBER_KEY:
            if char != 0x3A:
                raise _parse_error("Missing a colon after a name of object member.", pos)
            state = _KEY_VALUE_DELIMITER
            pos += 1
            continue
        else:  # _MEMBER_VALUE
            if char == 0x2C:
                state = _MEMBER_DELIMITER
                pos += 1
                continue
            if char != 0x7D:
                raise _parse_error("Missing a comma or '}' after an object member.", pos)
        # Closing brackets or a brace, each ending the innermost container: for a run of
        # brackets, as many as close arrays.
        if char == 0x5D:
            end = _CLOSE_RUN.match(data, pos).end()  # type: ignore[union-attr]
            run = data[pos:end]
            count = run.count(b"]")
            closed = min(count, len(objects) - 1 - objects.rfind(b"\x01"))
            if len(run.rstrip(b" \t\n\r")) == count:  # no whitespace between brackets
                pos = end if closed == count else pos + closed
            else:
                for _ in range(closed):
                    pos = _WS_BYTES.match(data, pos + 1).end()  # type: ignore[union-attr]
        else:
            closed = 1
            pos += 1
        del containers[-closed:], keys[-closed:], objects[-closed:]
        if not containers:
            return root  # kParseStopWhenDoneFlag: the rest is not read
        state = _MEMBER_VALUE if objects[-1] else _ELEMENT
    raise _parse_error(_END_OF_INPUT_ERRORS[state], pos)


def json_type(value: Any) -> str:
    """RapidJSON's type name of a parsed value (``JsonTypeString``)."""
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def rapidjson_double(value: float) -> str:
    """RapidJSON's ``Writer::Double`` of a finite value: shortest digits laid out by its
    ``Prettify`` (``1e39``, ``1.5e-7``, ``0.001``, ``100.0``)."""
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    sign = "-" if value < 0 else ""
    mantissa, _, exp_text = repr(abs(value)).partition("e")
    exponent = int(exp_text) if exp_text else 0
    int_part, _, frac_part = mantissa.partition(".")
    digits = (int_part + frac_part).lstrip("0")
    point = (
        len(int_part.lstrip("0"))
        if int_part.strip("0")
        else -(len(frac_part) - len(frac_part.lstrip("0")))
    )
    digits = digits.rstrip("0") or "0"
    kk = point + exponent  # the decimal point sits after kk digits
    length = len(digits)
    if length <= kk <= 21:
        body = digits + "0" * (kk - length) + ".0"
    elif 0 < kk <= 21:
        body = digits[:kk] + "." + digits[kk:]
    elif -6 < kk <= 0:
        body = "0." + "0" * (-kk) + digits
    elif length == 1:
        body = f"{digits}e{kk - 1}"
    else:
        body = f"{digits[0]}.{digits[1:]}e{kk - 1}"
    return sign + body


_ESCAPES = {i: f"\\u{i:04X}" for i in range(0x20)}
_ESCAPES.update({0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"})
_ESCAPES.update({0x22: '\\"', 0x5C: "\\\\"})
#: ``kMaxJsonDebugStringBytes``.
DEBUG_TEXT_LIMIT = 256


def _string_token(text: str) -> str:
    return '"' + text.translate(_ESCAPES) + '"'


def _byte_length(text: str) -> int:
    return len(text) if text.isascii() else len(utf8_bytes(text))


def _scalar_token(value: Any) -> str | None:
    """A scalar as RapidJSON's writer prints it; ``None`` for a non-finite number (the
    writer refuses those, which ends the text)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _string_token(value)
    if isinstance(value, int) and -(2**63) <= value <= _UINT64_MAX:
        return str(value)
    try:
        number = float(value)  # integers beyond 64 bits are doubles to RapidJSON
    except OverflowError:
        return None
    return rapidjson_double(number) if math.isfinite(number) else None


def _members(item: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for key, child in item.items():
        yield "key", key
        yield "value", child


def debug_text(value: Any) -> str:
    """``JsonValueToDebugString``: ``value`` as TF Serving quotes it in error messages (see
    the module docstring). Never recurses and only visits what it writes, so any size and
    nesting depth is fine."""
    out: list[str] = []
    size = 0
    # Open containers: [is_object, values written so far, the events of its children].
    stack: list[list[Any]] = []
    event: tuple[str, Any] | None = ("value", value)
    while size < DEBUG_TEXT_LIMIT:
        if event is None:
            if not stack:
                break
            event = next(stack[-1][2], ("end", None))
        kind: str = event[0]
        item: Any = event[1]
        event = None
        prefix = ""
        if kind != "end" and stack:
            frame = stack[-1]
            count = frame[1]
            if not frame[0]:
                prefix = ", " if count else ""
            else:
                prefix = (",\n" if count % 2 == 0 else ": ") if count else "\n"
                if count % 2 == 0:
                    prefix += "    " * len(stack)
            frame[1] = count + 1
        if kind == "end":
            frame = stack.pop()
            if frame[0] and frame[1]:
                token = "\n" + "    " * len(stack) + "}"
            else:
                token = "}" if frame[0] else "]"
        elif kind == "key":
            token = _string_token(item)
        elif isinstance(item, dict):
            token = "{"
            stack.append([True, 0, _members(item)])
        elif isinstance(item, list):
            token = "["
            stack.append([False, 0, (("value", child) for child in item)])
        else:
            scalar = _scalar_token(item)
            if scalar is None:
                out.append(prefix)
                break
            token = scalar
        piece = prefix + token
        out.append(piece)
        size += _byte_length(piece)
    return "".join(out)


_F32_INF = np.float32(np.inf)
# Nearest doubles to 10**k (Python's float() parsing is correctly rounded).
_POW10_MIN = -64
_POW10 = np.array([float(f"1e{k}") for k in range(_POW10_MIN, 65)])
_EXACT_POW10 = np.array([float(10**k) for k in range(23)])  # exact doubles


def _strtof(text: str) -> float:
    """The float32 nearest to decimal ``text`` (correctly rounded, as ``strtof``)."""
    d = float(text)
    with np.errstate(over="ignore"):
        f = np.float32(d)
    if float(f) != d and math.isfinite(d) and np.isfinite(f):
        lo = f if float(f) < d else np.nextafter(f, -_F32_INF)
        hi = np.nextafter(lo, _F32_INF)
        mid = (float(lo) + float(hi)) / 2
        if d == mid:  # the double rounding of text -> double -> float32 may be wrong here
            exact = Fraction(text)
            if exact < Fraction(mid):
                f = lo
            elif exact > Fraction(mid):
                f = hi
    return float(f)


def tf_float_text(value: float, *, single: bool = True) -> str:
    """The exact text TF Serving writes for a float32 (``single``) or double value.

    The reference for every faster path here: ``%g``, or ``%.9g`` (``%.17g`` for a double)
    when the six-digit text does not read back as the same value; ``.0`` appended to text
    without a point or exponent; ``NaN``, ``Infinity``, ``-Infinity``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = f"{value:g}"
    if (_strtof(text) if single else float(text)) != value:
        text = f"{value:.9g}" if single else f"{value:.17g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def _scale(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``x * 10**k`` in doubles, for |k| <= 66: a first multiplication by at most 10**12
    (exact for float32 ``x``), then steps of at most 10**22 (one rounding each)."""
    first = np.minimum(np.maximum(k, 0), 12)
    t = x * _EXACT_POW10[first]
    rest = k - first
    while True:
        step = np.minimum(np.maximum(rest, -22), 22)
        if not step.any():
            return t
        factor = _EXACT_POW10[np.abs(step)]
        t = np.where(step >= 0, t * factor, t / factor)
        rest = rest - step


def _digits_scalar(v: float) -> tuple[int, int, bool]:
    """``(digits, exponent, nine)`` of TF's text for a positive float32 value ``v``."""
    text = f"{v:.5e}"
    nine = _strtof(text) != v
    if nine:
        text = f"{v:.8e}"
    mantissa, _, exponent = text.partition("e")
    return int(mantissa.replace(".", "")), int(exponent), nine


def _digits_common(
    x: np.ndarray, x32: np.ndarray, e: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_float32_digits` for magnitudes in [1e-4, 1e6) (decimal exponent -4..5).

    There every step is exact: ``x * 10**k`` needs at most 24 + 28 bits for k <= 12, the
    division by the exact power of ten rounds once, and a 6-digit decimal with k <= 12 can
    never be rounded onto a float32 tie by the double conversion (5**12 * 2**25 < 2**53), so
    ``float32(n6 / 10**k) == x`` is exactly "the 6-digit text reads back as x".
    """
    k6 = 5 - e
    p6 = _EXACT_POW10[k6]
    n6 = np.rint(x * p6)
    nine = (n6 / p6).astype(np.float32) != x32
    if nine.any():
        n9 = np.rint(x * _EXACT_POW10[k6 + 3])
        n = np.where(nine, n9, n6)
    else:
        n = n6
    return n, e, nine


def _digits_general(
    x: np.ndarray, x32: np.ndarray, e: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_float32_digits` for any positive finite float32 magnitudes: the same
    computation with up to four roundings, distrusting results near a rounding tie or a float32
    rounding boundary, which are redone exactly element by element."""
    k6 = 5 - e
    t6 = _scale(x, k6)
    n6 = np.rint(t6)
    exact6 = (k6 >= 0) & (k6 <= 12)
    unsure = ~exact6 & (np.abs(t6 - np.floor(t6) - 0.5) < 1e-6)
    w6 = _scale(n6, -k6)
    nine = w6.astype(np.float32) != x32
    # float32(w6) differs from strtof(decimal) only if w6 sits on a float32 rounding boundary:
    # the points half a float32 ulp from x.
    half_up = (np.nextafter(x32, _F32_INF).astype(np.float64) - x) / 2
    half_down = (x - np.nextafter(x32, np.float32(0)).astype(np.float64)) / 2
    dist = np.abs(w6 - x)
    unsure |= (np.abs(dist - half_up) <= 1e-9 * half_up) | (
        np.abs(dist - half_down) <= 1e-9 * half_down
    )
    n = n6
    if nine.any():
        t9 = _scale(x, k6 + 3)
        n9 = np.rint(t9)
        exact9 = (k6 + 3 >= 0) & (k6 + 3 <= 12)
        unsure |= nine & ~exact9 & (np.abs(t9 - np.floor(t9) - 0.5) < 1e-6)
        n = np.where(nine, n9, n6)
    low = np.where(nine, 1e8, 1e5)
    unsure |= (n < low) | (n > low * 10)  # a decimal exponent off by one near 10**k
    e = e.copy()
    for i in np.flatnonzero(unsure).tolist():
        n[i], e[i], nine[i] = _digits_scalar(float(x[i]))
    return n, e, nine


def _float32_digits(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For positive finite float32 magnitudes ``x`` (as float64): TF's printed digits ``n``
    (a 6-digit integer, or 9-digit where ``nine``) and the decimal exponent of the first."""
    x32 = x.astype(np.float32)
    # Decimal exponent by exact comparison with the nearest doubles to the powers of ten.
    e = np.searchsorted(_POW10, x, side="right") + (_POW10_MIN - 1)
    inside = (e >= -4) & (e <= 5)
    if inside.all():
        n, e, nine = _digits_common(x, x32, e)
    elif not inside.any():
        n, e, nine = _digits_general(x, x32, e)
    else:  # the shorter computation where it applies
        n = np.empty_like(x)
        nine = np.empty(x.shape, bool)
        for part, digits in ((inside, _digits_common), (~inside, _digits_general)):
            where = np.flatnonzero(part)
            n[where], e[where], nine[where] = digits(x[where], x32[where], e[where])
    top = np.where(nine, 1e9, 1e6)
    carry = n == top  # 999999.5 rounds to 1e+06
    if carry.any():
        n = np.where(carry, top / 10, n)
        e = e + carry
    return n.astype(np.int64), e, nine


# Writing a float32 array: every element's text is gathered from a row of source characters
# by a layout, a row of indices chosen by the element's notation, decimal exponent,
# significant digits and sign. A source row is nine 32-bit words (36 bytes): the nine digits
# in three words of three (6-digit values padded with zeros), the exponent's two digits, then
# constant characters; the fourth byte of each digit word is zero and stands for "nothing".
_PAD, _E_DIGITS = 3, 12
_POINT, _E, _PLUS, _MINUS, _ZERO, _NAN, _INFINITY = 16, 17, 18, 19, 20, 21, 24
_CONSTANTS = np.frombuffer(b".e+-0NaNInfinity\x00\x00\x00\x00", np.uint32)
_ROW_BYTES = 36
_WIDTH = 15  # the longest text: -0.000123456789 or -1.23456789e-38
_FIXED_LAYOUTS = 13 * 9  # decimal exponents -4..8 x significant digits 1..9
_EXP_LAYOUTS = 2 * 9  # exponent sign x significant digits
_NAN_LAYOUT = _FIXED_LAYOUTS + _EXP_LAYOUTS
_INF_LAYOUT = _NAN_LAYOUT + 1
_SIGNED = _INF_LAYOUT + 1  # layouts for negative numbers follow


def _layouts() -> np.ndarray:
    """The index rows of every layout (see the comment above)."""

    def digit(k: int) -> int:
        return k // 3 * 4 + k % 3

    rows = []
    for negative in (False, True):
        sign = [_MINUS] if negative else []
        for exponent in range(-4, 9):  # %g's fixed notation
            for digits in range(1, 10):
                if exponent >= 0:
                    fraction = [digit(k) for k in range(exponent + 1, digits)] or [_ZERO]
                    body = [*map(digit, range(exponent + 1)), _POINT, *fraction]
                else:
                    leading = [_ZERO, _POINT] + [_ZERO] * (-exponent - 1)
                    body = leading + [digit(k) for k in range(digits)]
                rows.append(sign + body)
        for exponent_sign in (_PLUS, _MINUS):
            for digits in range(1, 10):
                point = [_POINT, *map(digit, range(1, digits))] if digits > 1 else []
                rows.append([*sign, 0, *point, _E, exponent_sign, _E_DIGITS, _E_DIGITS + 1])
        rows.append([_NAN, _NAN + 1, _NAN + 2])  # TF writes NaN without its sign
        rows.append(sign + list(range(_INFINITY, _INFINITY + 8)))
    return np.array([row + [_PAD] * (_WIDTH - len(row)) for row in rows], dtype=np.intp)


def _words(texts: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(t.ljust(4, b"\x00") for t in texts), np.uint32)


_LAYOUTS = _layouts()
_MIN_EXPONENT, _EXPONENTS = -46, 86  # float32's decimal exponents, with a margin


def _layout_of() -> np.ndarray:
    """The layout (for a positive number) of every ``(nine, exponent, digits)``, flattened as
    ``nine * 86 * 9 + (exponent + 46) * 9 + digits - 1``; zero has exponent 0 and one digit."""
    codes = []
    for precision in (6, 9):
        for exponent in range(_MIN_EXPONENT, _MIN_EXPONENT + _EXPONENTS):
            for digits in range(1, 10):
                if -4 <= exponent < precision:
                    codes.append((exponent + 4) * 9 + digits - 1)
                else:
                    codes.append(_FIXED_LAYOUTS + (exponent < 0) * 9 + digits - 1)
    return np.array(codes, dtype=np.intp)


_LAYOUT_OF = _layout_of()
_THREE_DIGITS = _words([f"{i:03d}".encode() for i in range(1000)])
_TWO_DIGITS = _words([f"{i:02d}".encode() for i in range(100)])
_TRAILING_ZEROS = np.array([3] + [len(str(i)) - len(str(i).rstrip("0")) for i in range(1, 1000)])
_CHUNK = 1 << 15
_ROW_OFFSETS = (np.arange(_CHUNK) * _ROW_BYTES)[:, None]


def _number_chars(a32: np.ndarray, digits: Any = None) -> np.ndarray:
    """TF's text of each element of flat float32 ``a32`` (at most :data:`_CHUNK`): an
    (n, 15) array of characters, zero bytes after the text (and none inside it). ``digits``:
    the elements' :func:`_float32_digits`, if known (any value for zeros and non-finite
    elements)."""
    count = a32.size
    v = a32.astype(np.float64)
    x = np.abs(v)
    finite = np.isfinite(v)
    normal = finite & (x != 0)
    all_normal = bool(normal.all())
    if digits is not None:
        n, e, nine = digits
    else:
        n, e, nine = _float32_digits(x if all_normal else np.where(normal, x, 1.0))
    if not all_normal:
        n = np.where(normal, n, 0)
        e = np.where(normal, e, 0)
    # The digits as three groups of three.
    aligned = n * np.where(nine, 1, 1000)
    groups = np.empty((count, 3), np.intp)
    groups[:, 0] = aligned // 1_000_000
    groups[:, 1] = aligned // 1000 % 1000
    groups[:, 2] = aligned % 1000
    source = np.empty((count, _ROW_BYTES // 4), np.uint32)
    source[:, :3] = _THREE_DIGITS[groups]
    source[:, 3] = _TWO_DIGITS[np.abs(e)]
    source[:, 4:] = _CONSTANTS
    # Trailing zeros of the 9 digits: those of the last group holding digits of n (the middle
    # one for 6-digit values) and, when that group is 000, of the groups before it.
    last = np.where(nine, groups[:, 2], groups[:, 1])
    trailing = _TRAILING_ZEROS[last] + np.where(nine, 0, 3)
    if not last.all():
        for i in np.flatnonzero(last == 0).tolist():
            digits = f"{int(aligned[i]):09d}"
            trailing[i] = min(9 - len(digits.rstrip("0")), 8)  # zero is written "0"
    # The layout by notation, decimal exponent and significant digits (at least one: "0").
    layout = _LAYOUT_OF[nine * (_EXPONENTS * 9) + (e - _MIN_EXPONENT) * 9 + (8 - trailing)]
    if not all_normal and not finite.all():
        layout = np.where(np.isnan(v), _NAN_LAYOUT, np.where(finite, layout, _INF_LAYOUT))
    layout += np.signbit(v) * _SIGNED
    index = np.take(_LAYOUTS, layout, axis=0)
    index += _ROW_OFFSETS[:count]
    chars: np.ndarray = source.view(np.uint8).ravel()[index]
    return chars


def _empty_json(shape: tuple[int, ...]) -> str:
    """Nested empty lists for a shape with a zero dimension (``(2, 0)`` -> ``[[],[]]``)."""
    if len(shape) <= 1 or shape[0] == 0:
        return "[]"
    inner = _empty_json(shape[1:])
    return "[" + ",".join([inner] * shape[0]) + "]"


def _nest(texts: list[str], shape: tuple[int, ...]) -> list[str]:
    """Join element texts into nested lists for ``shape``, innermost dimension first."""
    level = texts
    for size in reversed(shape):
        level = ["[" + ",".join(level[i : i + size]) + "]" for i in range(0, len(level), size)]
    return level


_FLOAT32 = struct.Struct("f")


def _to_float32(value: float) -> float:
    """``value`` rounded to float32 by C's conversion (to nearest, ties to even)."""
    try:
        result: float = _FLOAT32.unpack(_FLOAT32.pack(value))[0]
    except OverflowError:  # beyond the largest float32: rounds to infinity
        return math.copysign(math.inf, value)
    return result


def single_text(value: float) -> str:
    """:func:`tf_float_text` of a float32 value, without numpy: ``%g``, read back as a
    double and then rounded to float32 by C (exact unless that double lies halfway between
    two float32 values, when the exact :func:`_strtof` decides), else ``%.9g``."""
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "-Infinity" if value < 0 else "Infinity"
    text = f"{value:g}"
    back = float(text)
    if back != value:
        rounded = _to_float32(back)
        if rounded != back:
            # Halfway between ``rounded`` and its neighbour: ``2 * back - rounded`` (exact)
            # is that neighbour, a float32 value.
            other = 2.0 * back - rounded
            if _to_float32(other) == other:
                rounded = _strtof(text)
        if rounded != value:
            text = f"{value:.9g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def double_text(value: float) -> str:
    """:func:`tf_float_text` of a double: ``%g`` if it reads back as ``value``, else
    ``%.17g``."""
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "-Infinity" if value < 0 else "Infinity"
    text = f"{value:g}"
    if float(text) != value:
        text = f"{value:.17g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def _double_texts(array: np.ndarray) -> list[str]:
    """TF's text for each element of a flat float64 array: :func:`double_text` of each for
    a few elements, :func:`_many_double_texts` for more."""
    if array.size <= SMALL_ARRAY:
        return [double_text(v) for v in array.tolist()]
    return _many_double_texts(array)


def _many_double_texts(array: np.ndarray) -> list[str]:
    """TF's text for each element of a flat float64 array, formatted by C code (``%`` on a
    tuple). Six digits read back as the same double only for values with at most six
    significant digits; a vectorized estimate picks those candidates, checked one by one."""
    values = array.tolist()
    count = len(values)
    texts = ("%.17g\x1f" * count % tuple(values)).split("\x1f")[:count]
    with np.errstate(all="ignore"):
        x = np.abs(array)
        finite = np.isfinite(x)
        magnitude = np.log10(np.where(finite & (x > 0), x, 1.0))
        exponent = np.floor(magnitude)
        scaled = x * 10.0 ** (5 - exponent)
        short = finite & (
            (np.abs(scaled - np.rint(scaled)) <= 1e-6 * scaled)
            | (np.abs(magnitude - np.rint(magnitude)) < 1e-9)  # the exponent may be off by one
            | (x < 1e-290)  # 10 ** (5 - exponent) overflows; subnormals
        )
    for i in np.flatnonzero(short).tolist():
        text = f"{values[i]:g}"
        if float(text) == values[i]:
            texts[i] = text
        else:
            short[i] = False
    with np.errstate(invalid="ignore"):
        integral = finite & (np.floor(array) == array)
        needs_point = integral & (x < np.where(short, 1e6, 1e17))
    for i in np.flatnonzero(needs_point).tolist():
        texts[i] += ".0"
    for i in np.flatnonzero(~finite).tolist():
        texts[i] = tf_float_text(values[i], single=False)
    return texts


#: Below this many elements a Python loop beats numpy's per-call overhead.
SMALL_ARRAY = 24


def _common_values(x: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For magnitudes in [1e-4, 1e6) with decimal exponents ``e``: the doubles nearest TF's
    decimals (the steps of :func:`_digits_common`), and which elements round up to 1e+06
    (TF writes those in exponent notation)."""
    x32 = x.astype(np.float32)
    k6 = 5 - e
    p6 = _EXACT_POW10[k6]
    n6 = np.rint(x * p6)
    values = n6 / p6
    nine = values.astype(np.float32) != x32
    if nine.any():
        p9 = _EXACT_POW10[k6 + 3]
        values = np.where(nine, np.rint(x * p9) / p9, values)
    return values, ~nine & (n6 == 1e6)


def _orjson_doubles(
    flat32: np.ndarray,
) -> tuple[np.ndarray | None, np.ndarray | None, Any]:
    """``(values, others, digits)``: doubles whose orjson text is TF's text for the elements
    of flat float32 ``flat32``; the indices of the elements that have none (``None`` if all
    have one), whose ``values`` are NaN, so orjson writes ``null`` there and nowhere else;
    and those elements' :func:`_float32_digits`. All ``None`` when more than an eighth of
    the elements are nonzero and outside [1e-4, 1e6) (they would have to be spliced in).

    An element has one when it is finite and TF writes it in fixed notation (1e-4 <= |x| <
    1e6, or < 1e9 with nine digits): orjson's shortest digits of the double nearest TF's
    decimal are that decimal's digits, and orjson lays them out the same in that range.
    Elements in [1e-4, 1e6) (almost all, in most tensors) take a shorter computation.
    """
    with np.errstate(all="ignore"):
        v = flat32.astype(np.float64)
        x = np.abs(v)
        e = np.searchsorted(_POW10, x, side="right") + (_POW10_MIN - 1)
        inside = (e >= -4) & (e <= 5)
        if inside.all():
            values, carried = _common_values(x, e)
            if not carried.any():
                return np.copysign(values, v), None, None
            rest = np.flatnonzero(carried)
        else:
            if np.count_nonzero(~inside & (x != 0)) * 8 > x.size:
                return None, None, None  # many to splice: the caller writes all instead
            # Computed for all elements, then redone for the rest.
            values, carried = _common_values(x, np.clip(e, -4, 5))
            rest = np.flatnonzero(~inside | carried)
        values = np.copysign(values, v)
        # The rest: zeros, non-finite values, and the decimal exponents outside -4..5.
        xr = x[rest]
        normal = np.isfinite(xr) & (xr != 0)
        n, er, nine = _float32_digits(np.where(normal, xr, 1.0))
        k = np.where(nine, 8, 5) - er  # the decimal is n / 10**k
        fixed = normal & (er >= -4) & (k >= 0)
        values[rest] = np.where(
            normal, np.copysign(n / _EXACT_POW10[np.clip(k, 0, 22)], v[rest]), v[rest]
        )
        unusable = ~(fixed | (xr == 0))
        if not unusable.any():
            return values, None, None
        others = rest[unusable]
        values[others] = np.nan
        return values, others, (n[unusable], er[unusable], nine[unusable])


def _element_chars(flat32: np.ndarray, digits: Any = None) -> np.ndarray:
    """:func:`_number_chars` of any number of elements."""
    with np.errstate(all="ignore"):
        if flat32.size <= _CHUNK:
            return _number_chars(flat32, digits)
        return np.concatenate(
            [
                _number_chars(
                    flat32[i : i + _CHUNK],
                    None if digits is None else [part[i : i + _CHUNK] for part in digits],
                )
                for i in range(0, flat32.size, _CHUNK)
            ]
        )


def _spliced(document: bytes, texts: list[bytes]) -> bytes:
    """``document`` (orjson's text of the values of :func:`_orjson_doubles`) with its
    ``null`` tokens replaced by ``texts``, in order."""
    pieces = document.split(b"null")
    out = [pieces[0]]
    for text, piece in zip(texts, pieces[1:], strict=True):
        out.append(text)
        out.append(piece)
    return b"".join(out)


def _float32_matrix(a32: np.ndarray, start: int, blocks: list[int]) -> np.ndarray:
    """The characters of flat float32 ``a32`` (elements ``start``... of an array whose
    nesting levels hold ``blocks`` elements each), one row per element, zero bytes where a
    row has no character: ``[`` for each block the element opens, its number, ``]`` for each
    block it closes, then a comma."""
    depth = len(blocks)
    matrix = np.zeros((a32.size, 2 * depth + _WIDTH + 1), np.uint8)
    with np.errstate(all="ignore"):  # NaN and infinity are handled explicitly
        matrix[:, depth : depth + _WIDTH] = _number_chars(a32)
    # Element i opens block j when i % blocks[j] == 0 and closes it when (i + 1) % ... == 0:
    # every blocks[j]-th row, from the first such row of this chunk.
    for j, block in enumerate(blocks):
        matrix[-start % block :: block, j] = 91  # [
        matrix[(block - 1 - start) % block :: block, depth + _WIDTH + j] = 93  # ]
    matrix[:, -1] = 44  # ,
    return matrix


def _float32_text(flat32: np.ndarray, shape: tuple[int, ...]) -> bytes:
    """TF's text of flat float32 ``flat32`` laid out as an array of ``shape``, every element
    written by :func:`_number_chars` (for arrays with many elements orjson cannot write)."""
    blocks = [math.prod(shape[j:]) for j in range(len(shape))]
    pieces = []
    for start in range(0, flat32.size, _CHUNK):
        row = _float32_matrix(flat32[start : start + _CHUNK], start, blocks).ravel()
        pieces.append(row[row != 0].tobytes())
    return b"".join(pieces)[:-1]  # the last comma


def _float32_element_texts(flat32: np.ndarray, digits: Any = None) -> list[bytes]:
    """TF's text of each element of a flat float32 array (vectorized, for many elements)."""
    chars = _element_chars(flat32, digits)
    text = chars.ravel()[chars.ravel() != 0].tobytes()
    ends = np.cumsum(np.count_nonzero(chars, axis=1)).tolist()
    return [text[s:t] for s, t in zip([0, *ends[:-1]], ends, strict=True)]


def float_texts(array: np.ndarray) -> list[str]:
    """TF's text for every element of a float16/32/64 array, in C order."""
    if array.dtype == np.float64:
        return _double_texts(array.ravel())
    flat = array.astype(np.float32, copy=False).ravel()
    if flat.size <= SMALL_ARRAY:
        return [single_text(v) for v in flat.tolist()]
    return [t.decode() for t in _float32_element_texts(flat)]


def float_json(array: np.ndarray) -> bytes:
    """The JSON text TF Serving writes for a float16/32/64 array (nested lists, or a bare
    number for a scalar), e.g. ``[[9e+06, ...]]`` without spaces."""
    return orjson.dumps(float_value(array), option=orjson.OPT_SERIALIZE_NUMPY)


def _float32_document(flat32: np.ndarray, shape: tuple[int, ...]) -> Any:
    """:func:`float_value` of a float32 array of more than :data:`SMALL_ARRAY` elements:
    orjson's text with TF's text spliced in where they differ, or, when they would differ
    for many elements (nonzero magnitudes outside [1e-4, 1e6)), all of TF's text."""
    values, others, digits = _orjson_doubles(flat32)
    if values is None:  # splicing many texts costs more than writing them all
        return orjson.Fragment(_float32_text(flat32, shape))
    if others is None:
        return values.reshape(shape)
    if others.size <= SMALL_ARRAY:
        texts = [single_text(v).encode() for v in flat32[others].tolist()]
    else:
        texts = _float32_element_texts(flat32[others], digits)
    document = orjson.dumps(values.reshape(shape), option=orjson.OPT_SERIALIZE_NUMPY)
    return orjson.Fragment(_spliced(document, texts))


def float_value(array: np.ndarray) -> Any:
    """A value orjson writes as TF Serving's text for a float16/32/64 array: the array of
    doubles whose shortest digits are TF's, when there is one (the common case, see
    :func:`_orjson_doubles`), else an ``orjson.Fragment`` of the text."""
    shape = array.shape
    if array.size == 0:
        return orjson.Fragment(_empty_json(shape))
    if array.dtype == np.float64 or array.size <= SMALL_ARRAY:
        return orjson.Fragment(_nest(float_texts(array), shape)[0])
    return _float32_document(array.astype(np.float32, copy=False).ravel(), shape)


def float_items(array: np.ndarray) -> Any:
    """:func:`float_value` of ``array[0]``, ``array[1]``, ... (``array.ndim >= 1``): an
    array of doubles (iterated over its first dimension) or a list of fragments."""
    shape = array.shape
    items = shape[0]
    inner = shape[1:]
    if array.size == 0:
        return [orjson.Fragment(_empty_json(inner) if inner else "[]")] * items
    if array.dtype == np.float64 or array.size <= SMALL_ARRAY:
        return [orjson.Fragment(t) for t in _nest(float_texts(array), inner)]
    value = _float32_document(array.astype(np.float32, copy=False).ravel(), shape)
    if isinstance(value, np.ndarray):
        return value
    # Split "[item,item,...]" at its top-level commas.
    text = orjson.dumps(value)
    chars = np.frombuffer(text, np.uint8)
    depth = np.cumsum((chars == 0x5B).astype(np.int8) - (chars == 0x5D))
    cuts = np.flatnonzero((chars == 0x2C) & (depth == 1)).tolist()
    bounds = [0, *cuts, len(text) - 1]
    return [orjson.Fragment(text[bounds[i] + 1 : bounds[i + 1]]) for i in range(items)]
