"""The national 好差评 mapping (§6a), every output checked against the JSON Schema."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from hub.config import ConfigError, parse_config
from sync.annotate import national_options
from sync.national import (
    DEFAULT_PF,
    NationalMappingError,
    NationalOptions,
    assess_number_for,
    national_record_schema,
    to_national,
)
from tests.sync.conftest import record

SCHEMA = national_record_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())


def _options(**change: Any) -> NationalOptions:
    settings: dict[str, Any] = {
        "level_order": "5_best",
        "dept_code": "11370102MB0000000X",
        "area_code": "",
        "pf": DEFAULT_PF,
        "reasons": {},
        "timezone": "Asia/Shanghai",
    }
    settings.update(change)
    return NationalOptions(**settings)


def _map(options: NationalOptions | None = None, assess_number: int = 1, **data: Any) -> dict[str, Any]:
    result = to_national(record(**data), options or _options(), assess_number)
    VALIDATOR.validate(result)
    return result


def test_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_full_mapping() -> None:
    evaluation = record(
        level=2,
        reasons=["R1", "R2"],
        comment="等了很久",
        case_no="370102-2024-000123",
        item_code="11370102MB0000000X4370117001000",
        item_name="营业执照办理",
    )
    evaluation["created_at"] = "2024-05-01T02:03:04.567Z"
    options = _options(reasons={"R1": "0101", "R2": "0203"})
    result = to_national(evaluation, options, 1)
    VALIDATOR.validate(result)
    assert result == {
        "projectNo": "370102-2024-000123",
        "taskCode": "11370102MB0000000X4370117001000",
        "taskName": "营业执照办理",
        "deptCode": "11370102MB0000000X",
        "areaCode": "370102",
        "pf": 4,
        "satisfaction": 2,
        "evalDetail": "0101,0203",
        "writingEvaluation": "等了很久",
        "assessTime": "2024-05-01 10:03:04",
        "assessNumber": 1,
        "userProp": 1,
    }


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5])
def test_level_orders(level: int) -> None:
    assert _map(_options(level_order="5_best"), level=level)["satisfaction"] == level
    assert _map(_options(level_order="1_best"), level=level)["satisfaction"] == 6 - level


def test_gbt_39046_direction_names_the_ends() -> None:
    best = _options(level_order="1_best")
    assert _map(best, level=5)["satisfaction"] == 1  # 非常满意 is 1 in GB/T 39046-2020 A.8
    assert _map(best, level=1)["satisfaction"] == 5  # 非常不满意 is 5


@pytest.mark.parametrize(("channel", "pf"), [("keypad", 4), ("pad", 4), ("terminal", 5), ("qr", 3)])
def test_default_channel_codes(channel: str, pf: int) -> None:
    assert _map(channel=channel)["pf"] == pf


@pytest.mark.parametrize("channel", ["keypad", "pad", "terminal", "qr"])
def test_configured_channel_codes(channel: str) -> None:
    table = {"keypad": 6, "pad": 7, "terminal": 1, "qr": 2}
    assert _map(_options(pf=table), channel=channel)["pf"] == table[channel]


def test_channel_missing_from_table() -> None:
    with pytest.raises(NationalMappingError, match="channel 'qr' has no pf code"):
        to_national(record(channel="qr"), _options(pf={"keypad": 4}), 1)


@pytest.mark.parametrize(
    ("reasons", "table", "expected"),
    [
        ([], {}, None),
        (["R1", "R2"], {}, None),
        (["R1", "R2", "R8"], {"R1": "A01", "R8": "A99"}, "A01,A99"),
        (["R8", "R1"], {"R1": "A01", "R8": "A99"}, "A99,A01"),
        (["R1", "R3"], {"R1": "A01", "R3": "A01"}, "A01"),
        (["R5"], {"R1": "A01"}, None),
    ],
)
def test_reason_mapping(reasons: list[str], table: dict[str, str], expected: str | None) -> None:
    assert _map(_options(reasons=table), level=1, reasons=reasons)["evalDetail"] == expected


def test_optional_fields_are_null() -> None:
    result = _map(case_no=None, item_code=None, comment=None)
    assert result["projectNo"] is None
    assert result["taskCode"] is None
    assert result["taskName"] is None
    assert result["writingEvaluation"] is None


def test_area_code_and_user_prop_options() -> None:
    result = _map(_options(area_code="370102001000", user_prop=2))
    assert result["areaCode"] == "370102001000"
    assert result["userProp"] == 2


@pytest.mark.parametrize(
    ("created_at", "zone", "expected"),
    [
        ("2024-04-30T16:00:00.000Z", "Asia/Shanghai", "2024-05-01 00:00:00"),
        ("2024-04-30T15:59:59.999Z", "Asia/Shanghai", "2024-04-30 23:59:59"),
        ("2024-12-31T16:30:00.000Z", "Asia/Shanghai", "2025-01-01 00:30:00"),
        ("2024-03-01T03:00:00.000Z", "America/New_York", "2024-02-29 22:00:00"),
        ("2024-05-01T00:00:00.000Z", "UTC", "2024-05-01 00:00:00"),
    ],
)
def test_assess_time_is_local_and_crosses_the_date_line(created_at: str, zone: str, expected: str) -> None:
    evaluation = record(device_ts="2020-01-01T00:00:00+08:00")
    evaluation["created_at"] = created_at
    result = to_national(evaluation, _options(timezone=zone), 1)
    VALIDATOR.validate(result)
    assert result["assessTime"] == expected


def test_assess_numbers() -> None:
    assert assess_number_for([], bad_level=2) == 1
    assert assess_number_for([2], bad_level=2) == 2
    assert assess_number_for([1], bad_level=2) == 2
    assert assess_number_for([3], bad_level=2) is None
    assert assess_number_for([3], bad_level=3) == 2
    assert assess_number_for([1, 4], bad_level=2) is None
    assert assess_number_for([1, 1], bad_level=2) is None
    with pytest.raises(ValueError, match="a previous level must be an integer 1-5"):
        assess_number_for([0], bad_level=2)


@pytest.mark.parametrize("number", [1, 2])
def test_assess_number_is_carried(number: int) -> None:
    assert _map(assess_number=number)["assessNumber"] == number


def test_bad_assess_number() -> None:
    with pytest.raises(NationalMappingError, match="assess_number must be 1 or 2, got 3"):
        to_national(record(), _options(), 3)


def test_repeat_has_no_national_record() -> None:
    with pytest.raises(NationalMappingError, match="is a repeat rating"):
        to_national(record(flags=["repeat"]), _options(), 1)


def test_only_valid_evaluations_map() -> None:
    with pytest.raises(NationalMappingError, match="only evaluation records map, got kind 'scan'"):
        to_national(record("scan"), _options(), 1)
    with pytest.raises(NationalMappingError, match=r"not a valid record: data\.level"):
        to_national(record(level=9), _options(), 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"level_order": "best"}, "level_order must be '5_best' or '1_best'"),
        ({"pf": {"keypad": 8}}, r"pf\['keypad'\]: expected a channel code from 1 to 7 .*, got 8$"),
        ({"pf": {"keypad": True}}, r"pf\['keypad'\]: expected a channel code from 1 to 7 .*, got True$"),
        (
            {"reasons": {"R1": "a,b"}},
            r"reasons\['R1'\]: expected one platform evalDetail code, not empty and without commas",
        ),
        ({"reasons": {"R1": ""}}, r"reasons\['R1'\]: expected one platform evalDetail code, not empty"),
        ({"timezone": "Mars/Olympus"}, r"timezone: expected an IANA time zone name .*, got 'Mars/Olympus'$"),
        ({"timezone": "../etc"}, r"timezone: expected an IANA time zone name .*, got '\.\./etc'$"),
        (
            {"area_code": "3701"},
            r"area_code: expected a 6-digit administrative division code .*, got '3701'$",
        ),
        ({"user_prop": 3}, "user_prop must be 1"),
    ],
)
def test_options_are_checked(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _options(**change)


NATIONAL_VALUES = [
    *(("pf", {"qr": code}) for code in (-1, 0, 1, 3, 7, 8, 9)),
    *(("reasons", {"R1": code}) for code in ("", "101", "101,102", ",", " ", "A-01")),
    *(("area_code", code) for code in ("", "3701", "37010", "370102", "3701020", "370102001000", "37010a")),
    *(
        ("timezone", name)
        for name in ("Asia/Shanghai", "Asia/Shangai", "UTC", "Asia", "../etc", "", "/etc/x")
    ),
]


@pytest.mark.parametrize(("key", "value"), NATIONAL_VALUES, ids=[f"{k}={v!r}" for k, v in NATIONAL_VALUES])
def test_config_accepts_exactly_what_the_mapping_accepts(key: str, value: Any) -> None:
    """Issue 13 (11): one rule in `hub.config` for both, so a config that loads never stops `run`."""
    raw = {"node": {"id": "n1", "hall_code": "370102"}, "national": {key: value}}
    try:
        options = national_options(parse_config(raw))
    except ConfigError as exc:
        config_error: str | None = exc.problems[0].message
    else:
        config_error = None
        assert isinstance(options, NationalOptions)
    mapping_error: str | None = None
    try:
        _options(**{key: value})
    except ValueError as exc:
        mapping_error = str(exc).split(": ", 1)[1]
    assert config_error == mapping_error


def test_options_copy_their_tables() -> None:
    table = {"R1": "A01"}
    options = _options(reasons=table)
    table["R1"] = "changed"
    assert options.reasons["R1"] == "A01"
    with pytest.raises(TypeError):
        options.reasons["R2"] = "x"  # type: ignore[index]


def test_schema_refuses_out_of_range_values() -> None:
    result = _map()
    for key, value in (("satisfaction", 6), ("pf", 0), ("assessTime", "2024-05-01T00:00:00")):
        with pytest.raises(jsonschema.ValidationError):
            VALIDATOR.validate(result | {key: value})
