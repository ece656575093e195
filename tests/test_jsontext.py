"""The REST source's C JSON reader gives exactly what the standard library gives, or steps aside."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.rest import jsontext

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=5),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_reading_gives_what_the_standard_library_gives(value):
    text = json.dumps(value, ensure_ascii=False)
    try:
        strict = jsontext.loads_strict(text.encode("utf-8", "surrogatepass"))
    except ValueError:  # left to the standard library
        return
    assert _same(strict, json.loads(text))
    # What the strict reader read writes back (in C) as text that reads as the same values.
    assert _same(json.loads(jsontext.dumps_strict(strict)), strict)


@pytest.mark.parametrize("text", ["18446744073709551616", "-9223372036854775809", '{"id": 123456789012345678901}',
                                  "NaN", "[Infinity]", "1e309", '"\\ud800"', '{"a": "\\udfff x"}'])
def test_what_only_the_standard_library_reads_is_left_to_it(text):
    with pytest.raises(ValueError):
        jsontext.loads_strict(text.encode())


def _same(a, b) -> bool:
    """Equal, with the same types all the way down (1 is not 1.0), NaN equal to itself."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and a != a:
        return b != b
    return a == b
