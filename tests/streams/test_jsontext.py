"""JSON text that keeps numbers as written and any string JSON allows."""

from __future__ import annotations

import json

import pytest

from keyspan.streams import jsontext
from keyspan.streams.jsontext import JsonText


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1.50,"b":1E2,"c":1e400,"d":-1e400,"e":0.10000000000000000001,"f":-0,"g":[1,2.5,-0.0]}',
        "12345678901234567890",
        "1e-7",
        '"just a string"',
        "[]",
        '{"nested":{"deeper":[{"x":0.30000000000000000004}]}}',
        '{"big":' + "9" * 5000 + "}",  # past Python's int digits limit: was a ValueError
        "-" + "1" * 4301,
    ],
)
def test_numbers_come_back_as_written(text: str) -> None:
    assert jsontext.dumps(jsontext.loads(text)) == text


def test_numbers_a_float_keeps_stay_plain_floats() -> None:
    assert jsontext.loads('{"a": 2.5, "b": 7}') == {"a": 2.5, "b": 7}
    assert jsontext.loads("1e400") == JsonText("1e400")


@pytest.mark.parametrize("text", ["NaN", '{"a": Infinity}', "[-Infinity]"])
def test_nan_and_infinity_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not JSON"):
        jsontext.loads(text)


def test_dumps_refuses_float_nan() -> None:
    with pytest.raises(ValueError):
        jsontext.dumps({"a": float("nan")})


def test_a_lone_surrogate_escape_survives_utf8() -> None:
    value = jsontext.loads(r'{"x": "\ud800 é \udfff"}')
    data = jsontext.to_utf8(jsontext.dumps(value))
    assert data == '{"x":"\\ud800 é \\udfff"}'.encode()
    assert json.loads(data) == value


def test_a_stored_document_is_written_as_it_is() -> None:
    line = jsontext.dumps({"key": "k", "value": JsonText('{"a":1.50}'), "ttl_s": 2.5})
    assert line == '{"key":"k","value":{"a":1.50},"ttl_s":2.5}'


def test_deep_documents_come_back_as_written() -> None:
    depth = 400
    text = "[" * depth + "1e400" + "]" * depth
    assert jsontext.dumps(jsontext.loads(text)) == text


@pytest.mark.parametrize(
    ("text", "deep"),
    [
        ("[" * 1000 + "]" * 1000, False),
        ("[" * 1001 + "]" * 1001, True),
        ('{"a":' * 1001 + "1" + "}" * 1001, True),
        ('["' + "[" * 5000 + '"]', False),  # brackets in a string do not nest
        ('["\\"' + "{" * 5000 + '"]', False),  # nor after an escaped quote
        ("[" * 100_000, True),  # not JSON either: refused before the decoder recurses
    ],
)
def test_check_depth_counts_nesting_outside_strings(text: str, deep: bool) -> None:
    if deep:
        with pytest.raises(jsontext.TooDeepError, match="nests deeper than 1000 levels"):
            jsontext.check_depth(text)
    else:
        jsontext.check_depth(text)


def test_loads_refuses_text_nested_past_the_limit_without_a_recursion_error() -> None:
    with pytest.raises(ValueError, match="nests deeper than 1000 levels"):
        jsontext.loads("[" * 100_000 + "]" * 100_000)
