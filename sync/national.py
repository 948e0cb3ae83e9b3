"""Map an evaluation record to the provincial 好差评 platform record (CONTRACTS §6a).

A pure function of the record, the options and the assessment number: no clock, no I/O.
Decisions that the contract leaves to us, stated once here:

- `assessTime` is taken from the record's `created_at` (the hub's clock, which the node keeps in
  sync and which every record carries), not from `data.device_ts`: keypads and pads often have no
  real-time clock, and a device's wrong time must not move an evaluation to another day.
- `evalDetail` is `null` when no reason code maps (no reasons, or none listed in
  `NationalOptions.reasons`, which is empty by default): the platform gets "no detail" rather
  than an empty code list. Mapped codes keep the order of the hub's reasons, without repeats.
- `taskName` is `data.item_name` when the window's evaluate request carried one, else `null`.
- `projectNo` and `taskCode` are `data.case_no` and `data.item_code`, null when absent (a free
  rating without a case).
- `userProp` is `data.user_prop` (the evaluate request's `user_prop`, CONTRACTS §15) when the rating
  joined a session that carried one, else `NationalOptions.user_prop` (1, a person).
- `NationalOptions.fields` renames fields for a province's interface (`projectNo` → `projectno`) as
  the record is built; `national_record_schema(fields)` is the schema under those names.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from types import MappingProxyType
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

from contract.wire import RecordError, parse_timestamp, validate_record
from hub.config import (
    DEFAULT_PF,
    DEFAULT_TIMEZONE,
    area_code_problem,
    field_name_problem,
    national_fields_problems,
    pf_code_problem,
    reason_code_problem,
    timezone_problem,
)

__all__ = [
    "DEFAULT_PF",
    "DEFAULT_TIMEZONE",
    "LevelOrder",
    "NationalMappingError",
    "NationalOptions",
    "assess_number_for",
    "national_for_new_evaluation",
    "national_record_schema",
    "rename_fields",
    "to_national",
]

LevelOrder = Literal["5_best", "1_best"]

_ASSESS_TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S"


class NationalMappingError(ValueError):
    """The record cannot be mapped (not an evaluation, invalid, a repeat, unknown channel)."""


@dataclass(frozen=True)
class NationalOptions:
    """Per-target settings of the mapping (config `[national]`).

    `area_code` empty means the record's `hall_code`. `pf` maps a channel to the platform's
    channel code and `reasons` a hub reason code (`R1`…) to the platform's `evalDetail` code;
    both are copied into read-only mappings. `timezone` is an IANA name for `assessTime`.
    `user_prop` is the `userProp` of a rating whose session gave none; `fields` renames national
    field names (`projectNo` → `projectno`) for a province's interface.
    """

    level_order: LevelOrder
    dept_code: str
    area_code: str
    pf: Mapping[str, int] = field(default_factory=lambda: DEFAULT_PF)
    reasons: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    timezone: str = DEFAULT_TIMEZONE
    user_prop: int = 1
    fields: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        """Check every setting once, so that mapping a record cannot fail on configuration.

        The rules are `hub.config`'s, which `load_config` applies to `[national]`: a config that
        loads always makes valid options.
        """
        if self.level_order not in ("5_best", "1_best"):
            raise ValueError(f"level_order must be '5_best' or '1_best', got {self.level_order!r}")
        problems = [(f"pf[{channel!r}]", pf_code_problem(code)) for channel, code in self.pf.items()]
        problems += [
            (f"reasons[{reason!r}]", reason_code_problem(code)) for reason, code in self.reasons.items()
        ]
        problems += [
            ("area_code", area_code_problem(self.area_code)),
            ("timezone", timezone_problem(self.timezone)),
        ]
        problems += [(f"fields[{name!r}]", field_name_problem(new)) for name, new in self.fields.items()]
        problems += [
            (f"fields[{name!r}]", problem) for name, problem in national_fields_problems(self.fields)
        ]
        for name, problem in problems:
            if problem is not None:
                raise ValueError(f"{name}: {problem}")
        if self.user_prop not in (1, 2):
            raise ValueError(f"user_prop must be 1 (person) or 2 (legal person), got {self.user_prop!r}")
        object.__setattr__(self, "pf", MappingProxyType(dict(self.pf)))
        object.__setattr__(self, "reasons", MappingProxyType(dict(self.reasons)))
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))


def assess_number_for(previous_levels_for_same_case: Sequence[int], bad_level: int) -> int | None:
    """The `assessNumber` of a new rating under 一次一评, given the earlier ratings of its case.

    No earlier rating: 1. Exactly one earlier rating and it was a bad review (`level <=
    bad_level`): 2, the re-evaluation after 整改. Anything else is a repeat: `None`, and the
    record gets `flags: ["repeat"]` and no national record. The caller passes the levels of the
    same case and channel, as §6a counts them.
    """
    for level in previous_levels_for_same_case:
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 5:
            raise ValueError(f"a previous level must be an integer 1-5, got {level!r}")
    if not previous_levels_for_same_case:
        return 1
    if len(previous_levels_for_same_case) == 1 and previous_levels_for_same_case[0] <= bad_level:
        return 2
    return None


def to_national(record: Mapping[str, Any], options: NationalOptions, assess_number: int) -> dict[str, Any]:
    """Map one evaluation record (§1, with its `data`) to the platform record of §6a."""
    try:
        checked = validate_record(record)
        if checked.kind != "evaluation":
            raise NationalMappingError(f"only evaluation records map, got kind {checked.kind!r}")
    except RecordError as exc:
        raise NationalMappingError(f"not a valid record: {exc.message}") from None
    # `validate_record` checked `data` as `EvaluationData`; the dict keeps extras such as `user_prop`.
    return _map(checked.id, parse_timestamp(checked.created_at), checked.data, options, assess_number)


def national_for_new_evaluation(
    record_id: str,
    created_at: datetime,
    data: Mapping[str, Any],
    options: NationalOptions,
    assess_number: int,
) -> dict[str, Any]:
    """`to_national` for an evaluation the hub has just built from validated input, in the writer.

    The hub's own `data` is not validated again (that was a third of the writer's time per rating
    under load); what the mapping itself depends on is still checked.
    """
    level = data.get("level")
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 5:
        raise NationalMappingError(f"not a valid record: data.level: must be an integer 1-5, got {level!r}")
    return _map(record_id, created_at, data, options, assess_number)


def _map(
    record_id: str,
    created_at: datetime,
    data: Mapping[str, Any],
    options: NationalOptions,
    assess_number: int,
) -> dict[str, Any]:
    if assess_number not in (1, 2):
        raise NationalMappingError(f"assess_number must be 1 or 2, got {assess_number!r}")
    flags = data.get("flags") or ()
    for flag in ("repeat", "suspect"):
        if flag in flags:
            raise NationalMappingError(
                f"record {record_id} is a {flag} rating (flags: {flag}) and has no national record"
            )
    channel = data.get("channel")
    if not isinstance(channel, str) or channel not in options.pf:
        raise NationalMappingError(f"channel {channel!r} has no pf code; add it to national.pf")
    level: int = data["level"]
    satisfaction = level if options.level_order == "5_best" else 6 - level
    codes: list[str] = []
    for reason in data.get("reasons") or ():
        code = options.reasons.get(reason)
        if code is not None and code not in codes:
            codes.append(code)
    local = created_at.astimezone(_zone(options.timezone))
    user_prop = data.get("user_prop")
    if user_prop not in (1, 2) or isinstance(user_prop, bool):
        user_prop = options.user_prop
    national = {
        "projectNo": data.get("case_no"),
        "taskCode": data.get("item_code"),
        "taskName": data.get("item_name"),
        "deptCode": options.dept_code,
        "areaCode": options.area_code or data.get("hall_code"),
        "pf": options.pf[channel],
        "satisfaction": satisfaction,
        "evalDetail": ",".join(codes) if codes else None,
        "writingEvaluation": data.get("comment"),
        "assessTime": local.strftime(_ASSESS_TIME_FORMAT),
        "assessNumber": assess_number,
        "userProp": user_prop,
    }
    return rename_fields(national, options.fields)


def rename_fields(national: Mapping[str, Any], fields: Mapping[str, str]) -> dict[str, Any]:
    """The national record under the province's field names (`national.fields`), order kept."""
    if not fields:
        return dict(national)
    return {fields.get(name, name): value for name, value in national.items()}


@functools.cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def national_record_schema(fields: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The JSON Schema of the platform record (`sync/schema/national_record.json`), with its field
    names renamed by `fields` (`national.fields`) when given."""
    text = resources.files("sync").joinpath("schema/national_record.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    if fields:
        schema["properties"] = rename_fields(schema["properties"], fields)
        schema["required"] = [fields.get(name, name) for name in schema["required"]]
    return schema
