"""The hot path's JSON (`gateway/jsonio.py`): orjson where it agrees with the standard library,
the standard library where it would not."""

from __future__ import annotations

import json

import pytest

from shunter.gateway.jsonio import dumps, loads


@pytest.mark.parametrize("text", [
    b'{"seed": -9223372036854775809}', b'{"seed": 18446744073709551616}',
    b'{"logit_bias": {"123456789012345678901": 1}}', b'{"t": NaN, "u": -Infinity}',
    b'{"x": "\\ud800"}', '{"a": "é"}'.encode("utf-16"), b'[1e400]', b'{"a": 1, "a": 2}',
    b'{"n": 12345678901234567890123}'])
def test_loads_reads_what_the_standard_library_reads(text):
    expected = json.loads(text)
    got = loads(text)
    assert repr(got) == repr(expected)  # an int stays an int (orjson makes it a float)


@pytest.mark.parametrize("text", [b"", b"{", b'{"a": }', b"[1,]", b"\xff"])
def test_loads_refuses_what_the_standard_library_refuses_with_its_message(text):
    with pytest.raises(ValueError) as std:
        json.loads(text)
    with pytest.raises(ValueError) as ours:
        loads(text)
    assert str(ours.value) == str(std.value)


@pytest.mark.parametrize("obj", [
    {"a": 1.5, "b": "é\n\"", "c": None, "d": [True, False], "e": 1e-05},
    {"big": 10**30}, {1: "int key"}, [], "\u2028"])
def test_dumps_is_compact_utf8_json_of_the_same_value(obj):
    out = dumps(obj)
    assert isinstance(out, bytes)
    assert json.loads(out) == json.loads(json.dumps(obj))
    assert b": " not in out and b", " not in out
