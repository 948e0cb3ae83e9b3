"""Bounded JSON: numbers no field can hold and deep nesting are errors that name the field."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contract.jsonbounds import MAX_NUMBER_DIGITS, JsonBoundsError, loads


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('{"upto": 99999999999999999999999999999999}', "upto"),
        ('{"level": ' + "9" * 5000 + "}", "level"),
        ('{"a": [1, {"b": -' + "1" * 40 + "}]}", "a[1].b"),
        ('{"temp_c": 1e999}', "temp_c"),
        ('{"x": 0.' + "5" * 80 + "}", "x"),
    ],
)
def test_an_out_of_range_number_names_its_field(text: str, path: str) -> None:
    with pytest.raises(JsonBoundsError) as info:
        loads(text)
    assert info.value.path == path
    assert str(info.value).startswith(f"{path}: number ")
    assert len(str(info.value)) < 200, "the message never echoes a huge number back"


def test_constants_and_deep_nesting_are_refused() -> None:
    with pytest.raises(JsonBoundsError, match="NaN is not a JSON number"):
        loads('{"v": NaN}')
    with pytest.raises(JsonBoundsError, match="nested too deeply"):
        loads("[" * 200_000 + "]" * 200_000)


def test_long_digit_runs_inside_strings_are_only_text() -> None:
    assert loads('{"case_no": "' + "1" * 60 + '", "n": 12}') == {"case_no": "1" * 60, "n": 12}


_SMALL_INTS = st.integers(-(10**MAX_NUMBER_DIGITS) + 1, 10**MAX_NUMBER_DIGITS - 1)
_DOCUMENTS = st.recursive(
    st.none() | st.booleans() | _SMALL_INTS | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
)


@given(_DOCUMENTS)
def test_ordinary_documents_parse_as_json_does(value: object) -> None:
    text = json.dumps(value)
    assert loads(text) == json.loads(text)
