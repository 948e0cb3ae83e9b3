"""The node's TOML config (CONTRACTS §7), validated so that every error names file, key and fix.

Validation runs in two passes: msgspec checks each key's type and range, and each section's
`rule_problems` the rules msgspec cannot express; then `_cross_checks` checks what depends on several
keys (a serial device needs a port, one rating device per window...).
`load_config` is the one place a config is judged: `hallhub config check`, `hallhub doctor` and
`hallhub run` all call it, so a value that would stop the hub at start-up is a `ConfigError` naming
its key. The rules of the national record's values (`pf_code_problem`, `reason_code_problem`,
`area_code_problem`, `timezone_problem`, `field_name_problem`, `national_fields_problems`) live here
and `sync.national` applies the same functions.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from contract.records import HALL_CODE_REGEX, ID_REGEX, WINDOW_REGEX
from contract.validation import REFUSED, Problem, RuleProblems, field_problem, listed_choices, problems
from drivers.registry import KINDS, missing_extra
from hub.privacy.redact import redact_url

DEFAULT_CONFIG_PATH = Path("/etc/hallhub/node.toml")

# `\Z`, not `$`: msgspec matches with Python's `re.search`, where `$` also matches before a final newline.
_ID_PATTERN = f"^{ID_REGEX}\\Z"
_WINDOW_PATTERN = f"^{WINDOW_REGEX}\\Z"
_HALL_CODE_PATTERN = f"^{HALL_CODE_REGEX}\\Z"
_HOST_PATTERN = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?$")
MIN_TOKEN_CHARS = 16

Transport = Literal["serial", "mqtt", "pcsc", "camera"]

# Which kinds there are, which transports each can use (anything else is a config error), which
# rate at one window and which take an address: the driver registry's `KINDS`, where a kind is added.


def kind_problem(kind: str) -> str | None:
    """Why `kind` is not a device kind of the registry, or None."""
    if kind in KINDS:
        return None
    return f"expected one of {listed_choices(KINDS)}, got {kind!r}"


# -- the national record's values (CONTRACTS §6a), shared with sync.national ---------------------

NATIONAL_CHANNELS: Final = ("keypad", "terminal", "pad", "qr")
"""The channels a rating comes through, the keys of `national.pf`."""

PF_CODES: Final = range(1, 8)
"""`pf` codes the national record takes: 1 PC, 2 mobile, 3 QR code, 4 evaluator or tablet at the
window, 5 other hall terminal; 6 and 7 differ by province."""

DEFAULT_PF: Final[Mapping[str, int]] = MappingProxyType({"keypad": 4, "pad": 4, "terminal": 5, "qr": 3})
"""Channel → `pf`: 4 evaluator or tablet at the window, 5 other hall terminal, 3 QR code."""

DEFAULT_TIMEZONE: Final = "Asia/Shanghai"

AREA_CODE: Final = re.compile(r"[0-9]{6}(?:[0-9]{6})?")
"""`areaCode`: a 6-digit administrative division code, or the 12-digit statistical one."""

NATIONAL_FIELDS: Final = (
    "projectNo",
    "taskCode",
    "taskName",
    "deptCode",
    "areaCode",
    "pf",
    "satisfaction",
    "evalDetail",
    "writingEvaluation",
    "assessTime",
    "assessNumber",
    "userProp",
    "certkeyGOV",
    "userName",
)
"""The national record's field names (§6a), the keys `national.fields` may rename (§15)."""

FIELD_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
"""A name a province's interface may give a national field: a plain JSON identifier."""

DEFAULT_CASE_HISTORY_DAYS: Final = 400
"""How long the case ledger remembers a case after its last counted rating (§15)."""


def _shown(value: object) -> str:
    """A value as a config error quotes it, lists and tables as written (`contract.validation.shown`
    says "a list" for a payload's), shortened: a message is one line."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def pf_code_problem(code: object) -> str | None:
    """Why `code` cannot be a `pf` channel code, or None."""
    if isinstance(code, bool) or not isinstance(code, int) or code not in PF_CODES:
        return (
            "expected a channel code from 1 to 7 (1 PC, 2 mobile, 3 QR code, 4 evaluator at the window,"
            f" 5 hall terminal, 6 and 7 as the province defines them), got {_shown(code)}"
        )
    return None


def reason_code_problem(code: object) -> str | None:
    """Why `code` cannot be an `evalDetail` code, or None (the platform reads a comma-separated list)."""
    if not isinstance(code, str) or not code or "," in code:
        return (
            "expected one platform evalDetail code, not empty and without commas (evalDetail lists"
            f" codes separated by commas), got {_shown(code)}"
        )
    return None


def area_code_problem(code: str) -> str | None:
    """Why `code` cannot be the `areaCode`, or None (empty means `node.hall_code`)."""
    if code and not AREA_CODE.fullmatch(code):
        return (
            'expected a 6-digit administrative division code such as "370102" (or the 12-digit'
            f' statistical code), or "" for node.hall_code, got {_shown(code)}'
        )
    return None


def timezone_problem(name: str) -> str | None:
    """Why `name` is not a time zone this system can load, or None."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return (
            'expected an IANA time zone name such as "Asia/Shanghai" (as in /usr/share/zoneinfo),'
            f" got {_shown(name)}"
        )
    return None


def field_name_problem(name: object) -> str | None:
    """Why `name` cannot be the new name of a national field in `national.fields`, or None."""
    if not isinstance(name, str) or not FIELD_NAME.fullmatch(name):
        return (
            "expected the field name the province's interface uses: a letter or '_', then up to 63"
            f" letters, digits or '_' (e.g. \"projectno\"), got {_shown(name)}"
        )
    return None


def national_fields_problems(fields: Mapping[str, object]) -> list[tuple[str, str]]:
    """(key, problem) for each entry of `national.fields` that cannot be used: a key that is not a
    national field name, or a new name that another field of the record would also have."""
    problems = [
        (name, f"unknown national field name (rename one of: {', '.join(NATIONAL_FIELDS)})")
        for name in fields
        if name not in NATIONAL_FIELDS
    ]
    named: dict[object, list[str]] = {}
    for name in NATIONAL_FIELDS:
        named.setdefault(fields.get(name, name), []).append(name)
    for name in NATIONAL_FIELDS:
        target = fields.get(name, name)
        others = [other for other in named[target] if other != name]
        if name in fields and others:
            problems.append(
                (
                    name,
                    (
                        f"new name {_shown(target)} is also the name of {', '.join(others)}:"
                        " each national field needs a name of its own"
                    ),
                )
            )
    return problems


def _check(values: Mapping[str, Any], name: str, problem_of: Callable[[Any], str | None]) -> RuleProblems:
    """The problem `problem_of` finds in the value of `name`, if it is given."""
    if name in values and (problem := problem_of(values[name])) is not None:
        yield name, problem


def _check_each(
    values: Mapping[str, Any], name: str, problem_of: Callable[[Any], str | None]
) -> RuleProblems:
    """The problem `problem_of` finds in each value of the table `name` (`name.key`) or item of its
    array (`name[3]`), so that the message names the entry, not the whole key."""
    value = values.get(name)
    entries: Iterator[tuple[str, object]]
    if isinstance(value, Mapping):
        entries = ((f"{name}.{key}", item) for key, item in value.items())
    elif isinstance(value, list):
        entries = ((f"{name}[{index}]", item) for index, item in enumerate(value))
    else:
        return
    for key, item in entries:
        if item is not REFUSED and (problem := problem_of(item)) is not None:
            yield key, problem


class _Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A config table: unknown keys are refused, and values are fixed once loaded."""

    @classmethod
    def rule_problems(cls, values: Mapping[str, Any]) -> RuleProblems:
        """What this section's rules (those msgspec cannot express) refuse among `values`, field
        name to value; `parse_config` also applies them to the valid keys of a refused table."""
        return iter(())

    def __post_init__(self) -> None:
        """Applies the rules to a section being built, naming the first key they refuse."""
        problem = next(self.rule_problems(msgspec.structs.asdict(self)), None)
        if problem is not None:
            raise field_problem(*problem)


class NodeSection(_Section, frozen=True):
    """`[node]`: who this node is and where it keeps its data."""

    id: Annotated[str, msgspec.Meta(pattern=_ID_PATTERN)]
    hall_code: Annotated[str, msgspec.Meta(pattern=_HALL_CODE_PATTERN)]
    name: Annotated[str, msgspec.Meta(max_length=64)] = ""  # extension: the hall's name, for the board (§14)
    data_dir: Annotated[str, msgspec.Meta(min_length=1)] = "/var/lib/hallhub"
    secret_file: Annotated[str, msgspec.Meta(min_length=1)] = "/etc/hallhub/secret"  # noqa: S105 (a path)


class BrokerSection(_Section, frozen=True):
    """`[broker]`: the node's MQTT broker."""

    host: Annotated[str, msgspec.Meta(min_length=1)] = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 1883
    username: str = ""
    password: str = ""
    password_file: str = ""
    client_id: Annotated[str, msgspec.Meta(pattern=_ID_PATTERN)] | None = None
    keepalive_s: Annotated[int, msgspec.Meta(ge=5, le=3600)] = 30


class ApiSection(_Section, frozen=True):
    """`[api]`: the local HTTP API, its tokens (§5 pull, §9 control and view) and its limits."""

    listen: str = "127.0.0.1:8780"
    pull_token: str = ""
    pull_token_file: str = ""
    control_token: str = ""
    control_token_file: str = ""
    view_token: str = ""
    view_token_file: str = ""
    allowed_hosts: list[Annotated[str, msgspec.Meta(min_length=1, max_length=253)]] = msgspec.field(
        default_factory=list
    )
    header_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0
    max_connections: Annotated[int, msgspec.Meta(ge=8, le=100_000)] = 256


class CentralSection(_Section, frozen=True):
    """`[central]`: the platform the node pushes to; an empty url turns push off."""

    url: str = ""
    token: str = ""
    token_file: str = ""
    batch_max: Annotated[int, msgspec.Meta(ge=1, le=5000)] = 500
    # extension: at most this many bytes of record JSON (before gzip) in one uplink batch
    batch_max_bytes: Annotated[int, msgspec.Meta(ge=65_536, le=16 * 2**20)] = 4 * 2**20
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 30.0


class EvaluationSection(_Section, frozen=True):
    """`[evaluation]`: session timeout and what counts as a bad review."""

    timeout_s: Annotated[int, msgspec.Meta(ge=5, le=3600)] = 60
    bad_level: Annotated[int, msgspec.Meta(ge=1, le=4)] = 2
    thanks_text: Annotated[str, msgspec.Meta(max_length=64)] = "感谢您的评价"
    max_per_session: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1
    max_free_per_minute: Annotated[int, msgspec.Meta(ge=1, le=600)] = 6


class OutboxSection(_Section, frozen=True):
    """`[outbox]`: the disk quota and how long delivered records are kept."""

    max_mb: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 512
    retention_days: Annotated[float, msgspec.Meta(ge=0, le=3650)] = 7.0


class AlertsSection(_Section, frozen=True):
    """`[alerts]`: device fault alerts; a device offline this long raises one (0 turns that off)."""

    offline_after_s: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 300.0


class LimitsSection(_Section, frozen=True):
    """`[limits]` (extension): per-device MQTT rate limit; excess is dropped unacked and counted."""

    device_msgs_per_s: Annotated[float, msgspec.Meta(gt=0, le=100_000)] = 50.0
    device_burst: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 200


class PrivacySection(_Section, frozen=True):
    """`[privacy]`: how citizen identity is referenced."""

    hmac: Literal["sm3", "sha256"] = "sm3"
    identity: Literal["none", "encrypted"] = "none"


class NationalSection(_Section, frozen=True):
    """`[national]`: mapping to the provincial 好差评 record (CONTRACTS §6a)."""

    level_order: Literal["5_best", "1_best"] = "5_best"
    dept_code: str = ""
    area_code: str = ""
    timezone: str = DEFAULT_TIMEZONE
    pf: dict[str, int] = msgspec.field(default_factory=lambda: dict(DEFAULT_PF))
    reasons: dict[str, str] = msgspec.field(default_factory=dict)
    fields: dict[str, str] = msgspec.field(default_factory=dict)
    case_history_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] = DEFAULT_CASE_HISTORY_DAYS

    @classmethod
    def rule_problems(cls, values: Mapping[str, Any]) -> RuleProblems:
        """The national record's rules for each value, the ones `sync.national` applies."""
        yield from _check(values, "area_code", area_code_problem)
        yield from _check(values, "timezone", timezone_problem)
        yield from _check_each(values, "pf", pf_code_problem)
        yield from _check_each(values, "reasons", reason_code_problem)
        yield from _check_each(values, "fields", field_name_problem)


def holiday_problem(text: str) -> str | None:
    """Why `text` is not a date `YYYY-MM-DD`, or None."""
    try:
        date.fromisoformat(text)
    except ValueError:
        return f"expected a date YYYY-MM-DD, got {text!r}"
    return None if len(text) == 10 else f"expected a date YYYY-MM-DD, got {text!r}"


class FollowupSection(_Section, frozen=True):
    """`[followup]` (§11): deadlines for calling back a bad review and putting right what it found."""

    callback_within_min: Annotated[int, msgspec.Meta(ge=1, le=7 * 24 * 60)] = 60
    rectify_within_days: Annotated[int, msgspec.Meta(ge=1, le=60)] = 3
    holidays: Annotated[list[str], msgspec.Meta(max_length=1000)] = msgspec.field(default_factory=list)

    @classmethod
    def rule_problems(cls, values: Mapping[str, Any]) -> RuleProblems:
        """Each holiday is a date."""
        yield from _check_each(values, "holidays", holiday_problem)


class DeviceSection(_Section, frozen=True):
    """One `[[device]]`."""

    id: Annotated[str, msgspec.Meta(pattern=_ID_PATTERN)]
    kind: str
    transport: Transport
    port: str | None = None
    baud: Annotated[int, msgspec.Meta(ge=300, le=4_000_000)] | None = None
    address: Annotated[int, msgspec.Meta(ge=1, le=254)] | None = None
    window: Annotated[str, msgspec.Meta(pattern=_WINDOW_PATTERN)] | None = None
    source: str | None = None
    fps: Annotated[float, msgspec.Meta(gt=0, le=60)] | None = None
    decoder: Literal["zxing", "pyzbar"] | None = None
    terminator: Literal["cr", "lf", "crlf", "any"] | None = None
    encoding: Literal["auto", "utf-8", "gbk"] | None = None
    reader: str | None = None

    @classmethod
    def rule_problems(cls, values: Mapping[str, Any]) -> RuleProblems:
        """The kind is one of the driver registry's."""
        yield from _check(values, "kind", kind_problem)


MAX_QR_BASE_URL_CHARS: Final = 200
"""A rating link must fit a small QR code on a pad's screen or a queue ticket."""


def qr_base_url_problem(url: str) -> str | None:
    """Why `qr_evaluation.base_url` cannot start a rating link that phones open (§13), or None."""
    if not url.isascii() or any(char.isspace() or not char.isprintable() for char in url):
        return f"expected a plain ASCII URL without spaces, got {url!r}"
    parts = urlsplit(url)
    try:
        host = parts.hostname
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError as exc:
        return f'not a usable URL ({exc}): "{redact_url(url)}"'
    if parts.scheme not in ("http", "https") or not host:
        return (
            "expected the http:// or https:// address phones on the hall network use to reach this hub, "
            f'such as "http://10.1.2.3:8780", got "{redact_url(url)}"'
        )
    if parts.username is not None or parts.password is not None:
        return "expected no user name or password in the URL (the link's own token is the phone's credential)"
    if parts.query or parts.fragment:
        return f'expected no query or fragment, got "{redact_url(url)}"'
    return None


class QrEvaluationSection(_Section, frozen=True):
    """`[qr_evaluation]` (§13): single-use rating links that citizens open on their own phones."""

    enabled: bool = False
    base_url: Annotated[str, msgspec.Meta(max_length=MAX_QR_BASE_URL_CHARS)] = ""
    ttl_s: Annotated[int, msgspec.Meta(ge=60, le=86_400)] = 1800
    # extension: submissions per minute from one client address (a hall behind one NAT: raise it)
    submissions_per_minute: Annotated[int, msgspec.Meta(ge=1, le=600)] = 10

    @classmethod
    def rule_problems(cls, values: Mapping[str, Any]) -> RuleProblems:
        """`base_url` is required once enabled, and then a URL that phones can open."""
        if values.get("base_url") == "" and values.get("enabled"):
            yield (
                "base_url",
                (
                    "required when enabled: the address phones on the hall network use to reach this hub, "
                    'such as "http://10.1.2.3:8780"'
                ),
            )
        elif values.get("base_url"):
            yield from _check(values, "base_url", qr_base_url_problem)

    def __post_init__(self) -> None:
        """Checks the rules, then keeps `base_url` without a trailing `/` (links add `/r/<token>`)."""
        super().__post_init__()
        msgspec.structs.force_setattr(self, "base_url", self.base_url.rstrip("/"))


class HubConfig(_Section, frozen=True, dict=True):
    """The whole node config. Build it with `load_config`, which reports errors precisely.

    `dict=True` gives instances the `__dict__` that `functools.cached_property` stores into.
    """

    node: NodeSection
    broker: BrokerSection = msgspec.field(default_factory=BrokerSection)
    api: ApiSection = msgspec.field(default_factory=ApiSection)
    central: CentralSection = msgspec.field(default_factory=CentralSection)
    evaluation: EvaluationSection = msgspec.field(default_factory=EvaluationSection)
    outbox: OutboxSection = msgspec.field(default_factory=OutboxSection)
    alerts: AlertsSection = msgspec.field(default_factory=AlertsSection)
    privacy: PrivacySection = msgspec.field(default_factory=PrivacySection)
    limits: LimitsSection = msgspec.field(default_factory=LimitsSection)
    national: NationalSection = msgspec.field(default_factory=NationalSection)
    followup: FollowupSection = msgspec.field(default_factory=FollowupSection)
    device: list[DeviceSection] = msgspec.field(default_factory=list)
    qr_evaluation: QrEvaluationSection = msgspec.field(default_factory=QrEvaluationSection)

    @functools.cached_property
    def devices_by_id(self) -> dict[str, DeviceSection]:
        """Configured devices keyed by id (built once: the gateway looks one up per message)."""
        return {device.id: device for device in self.device}

    @property
    def api_host_port(self) -> tuple[str, int]:
        """`api.listen` split into host and port (validated at load)."""
        return split_host_port(self.api.listen)


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong in a config file: where (`key`, e.g. `device[2].port`) and what to do."""

    key: str
    message: str


class ConfigError(Exception):
    """A config file that cannot be used; `problems` lists every error found, not only the first."""

    def __init__(self, path: Path | str, problems: Sequence[ConfigProblem]) -> None:
        self.path = str(path)
        self.problems = list(problems)
        super().__init__(self.render())

    def lines(self) -> list[str]:
        """One line per problem: `file: key: message`."""
        return [
            f"{self.path}: {p.key}: {p.message}" if p.key else f"{self.path}: {p.message}"
            for p in self.problems
        ]

    def render(self) -> str:
        """All problems, one per line."""
        return "\n".join(self.lines())


def split_host_port(text: str) -> tuple[str, int]:
    """Split `host:port` (IPv6 as `[::1]:8780`); raise ValueError with a readable message."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f'expected "host:port" such as "127.0.0.1:8780", got "{text}"')
    host = host.removeprefix("[").removesuffix("]")
    # Port 0 asks the OS for a free port (tests, demo); a node uses a fixed one.
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f'expected a port from 1 to 65535 after ":", got "{text}"')
    return host, int(port_text)


def _worded(problem: Problem) -> ConfigProblem:
    """A problem in a config file's words: unknown keys with the keys allowed there, text "in
    quotes", tables and arrays of tables, and the allowed values of a key given a wrong type."""
    message = problem.message
    if problem.kind == "unknown":
        message = f"unknown key (allowed here: {', '.join(map(str, problem.allowed))})"
    elif problem.kind == "type":
        got = _shown(problem.value)
        if problem.allowed:
            message = f"expected one of {listed_choices(problem.allowed)}, got {got}"
        elif problem.want == "str":
            message = f"expected text in quotes, got {got}"
        elif problem.want == "object":
            message = "expected a table ([name] or name = { ... })"
        elif problem.want == "array":
            message = "expected an array of tables ([[name]])"
    return ConfigProblem(problem.path, message)


def _cross_checks(config: HubConfig) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    try:
        split_host_port(config.api.listen)
    except ValueError as exc:
        problems.append(ConfigProblem("api.listen", str(exc)))
    if config.broker.password and config.broker.password_file:
        problems.append(ConfigProblem("broker.password_file", "set password or password_file, not both"))
    for token in ("pull_token", "control_token", "view_token"):
        if getattr(config.api, token) and getattr(config.api, f"{token}_file"):
            problems.append(ConfigProblem(f"api.{token}_file", f"set {token} or {token}_file, not both"))
    problems += _api_access_checks(config.api)
    if config.central.token and config.central.token_file:
        problems.append(ConfigProblem("central.token_file", "set token or token_file, not both"))
    if config.central.url:
        problem = central_url_problem(config.central.url)
        if problem:
            problems.append(ConfigProblem("central.url", problem))
    for channel in config.national.pf:
        if channel not in NATIONAL_CHANNELS:
            problems.append(
                ConfigProblem(f"national.pf.{channel}", f"unknown channel ({', '.join(NATIONAL_CHANNELS)})")
            )
    problems += [
        ConfigProblem(f"national.fields.{name}", problem)
        for name, problem in national_fields_problems(config.national.fields)
    ]

    seen_ids: dict[str, int] = {}
    windows: dict[str, str] = {}
    addresses: dict[tuple[str, int], str] = {}
    line_baud: dict[str, tuple[int, str]] = {}
    for index, device in enumerate(config.device):
        key = f"device[{index}]"
        label = f'device "{device.id}"'
        if device.id in seen_ids:
            problems.append(
                ConfigProblem(f"{key}.id", f'"{device.id}" is already used by device[{seen_ids[device.id]}]')
            )
        seen_ids.setdefault(device.id, index)
        rule = KINDS[device.kind]
        allowed = rule.transports
        if device.transport not in allowed:
            problems.append(
                ConfigProblem(
                    f"{key}.transport",
                    f'a {device.kind} cannot use transport "{device.transport}" '
                    f"(use {' or '.join(repr(a) for a in allowed)})",
                )
            )
        elif (missing := missing_extra(device)) is not None:
            problems.append(ConfigProblem(f"{key}.transport", f"{label} {missing.advice()}"))
        if device.transport == "serial" and not device.port:
            name = f"{device.kind}-{device.window or '07'}"
            problems.append(
                ConfigProblem(
                    f"{key}.port",
                    f'{label} uses a serial port: set port to its udev name, e.g. "/dev/hallhub/{name}"'
                    " (docs/field-guide.md step 3; see `ls -l /dev/hallhub/`)",
                )
            )
        if device.transport != "serial":
            for field_name in ("port", "baud"):
                if getattr(device, field_name) is not None:
                    problems.append(
                        ConfigProblem(f"{key}.{field_name}", f"only serial devices take {field_name}")
                    )
        if not rule.addressed and device.address is not None:
            problems.append(ConfigProblem(f"{key}.address", "only keypads take an address"))
        if device.transport == "camera" and not device.source:
            problems.append(
                ConfigProblem(
                    f"{key}.source",
                    f'{label} is a camera: set source to a device index ("0"), a file or an rtsp:// URL',
                )
            )
        if rule.needs_window:
            if device.window is None:
                problems.append(
                    ConfigProblem(
                        f"{key}.window",
                        f'{label} is a {device.kind}: set the window it serves, e.g. window = "07"',
                    )
                )
            elif device.window in windows:
                problems.append(
                    ConfigProblem(
                        f"{key}.window",
                        f'window "{device.window}" already has rating device "{windows[device.window]}"',
                    )
                )
            else:
                windows[device.window] = device.id
        if device.kind == "keypad" and device.port:
            address = device.address if device.address is not None else 1
            other = addresses.get((device.port, address))
            if other is not None:
                problems.append(
                    ConfigProblem(
                        f"{key}.address",
                        f'address {address} on {device.port} is already used by keypad "{other}"',
                    )
                )
            addresses[(device.port, address)] = device.id
            first = line_baud.setdefault(device.port, (device.baud or 9600, device.id))
            if first[0] != (device.baud or 9600):
                problems.append(
                    ConfigProblem(
                        f"{key}.baud",
                        f'keypads on one line share its baud rate: "{first[1]}" on {device.port}'
                        f" uses {first[0]}",
                    )
                )
    return problems


def _api_access_checks(api: ApiSection) -> list[ConfigProblem]:
    """§9: a listen address off loopback needs a control token; tokens must differ."""
    problems: list[ConfigProblem] = []
    try:
        host, _port = split_host_port(api.listen)
    except ValueError:
        return problems  # reported as api.listen already
    if not is_loopback(host) and not (api.control_token or api.control_token_file):
        problems.append(
            ConfigProblem(
                "api.control_token",
                f'api.listen "{api.listen}" is reachable from the hall network: set control_token_file '
                "(a random secret, e.g. `openssl rand -hex 24`) so that only window PCs and staff "
                "holding it can start evaluations, sign staff in or close alerts",
            )
        )
    tokens = [(name, getattr(api, name)) for name in ("pull_token", "control_token", "view_token")]
    for index, (name, value) in enumerate(tokens):
        if value and len(value) < MIN_TOKEN_CHARS:
            problems.append(
                ConfigProblem(f"api.{name}", f"too short: use at least {MIN_TOKEN_CHARS} random characters")
            )
        for other, other_value in tokens[:index]:
            if value and value == other_value:
                problems.append(ConfigProblem(f"api.{name}", f"must differ from api.{other}"))
    for index, host_name in enumerate(api.allowed_hosts):
        if not _HOST_PATTERN.match(host_name):
            problems.append(
                ConfigProblem(
                    f"api.allowed_hosts[{index}]",
                    f'expected a host name or address without scheme or path (e.g. "10.1.2.3" or '
                    f'"hub.hall.local:8780"), got "{host_name}"',
                )
            )
    return problems


def central_url_problem(url: str) -> str | None:
    """Why `central.url` cannot be used (§10: https, or http only to a loopback host), or None."""
    parts = urlsplit(url)
    shown = redact_url(url)  # a password in the URL must not reach the terminal or the journal
    try:
        host = parts.hostname
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError as exc:
        return f'not a usable URL ({exc}): "{shown}"'
    if parts.scheme not in ("https", "http") or not host:
        return f'expected an https:// URL such as "https://hcp.example.gov.cn/hallhub", got "{shown}"'
    if parts.scheme == "http" and not is_loopback(host):
        return (
            f'"{shown}" is plain http to another host: the token and every record would cross the '
            "network in cleartext; use https:// (http is allowed only to a loopback address)"
        )
    if parts.username or parts.password:
        return "put the token in central.token_file, not in the URL"
    if parts.query or parts.fragment:
        return f'expected no query or fragment, got "{shown}"'
    return None


def parse_config(raw: dict[str, Any], path: Path | str = "<config>") -> HubConfig:
    """Validate a parsed TOML document; raise ConfigError listing every problem."""
    try:
        config = msgspec.convert(raw, HubConfig, strict=True)
    except msgspec.ValidationError as exc:
        found = [_worded(problem) for problem in problems(raw, HubConfig, exc)]
        raise ConfigError(path, found) from None
    crossed = _cross_checks(config)
    if crossed:
        raise ConfigError(path, crossed)
    return config


def read_config_document(path: Path | str) -> dict[str, Any]:
    """Read a config file as a TOML document, not yet validated; raise ConfigError naming the file."""
    file = Path(path)
    try:
        text = file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(
            file, [ConfigProblem("", "file not found (write one from config/node.example.toml)")]
        ) from None
    except PermissionError:
        raise ConfigError(
            file, [ConfigProblem("", "permission denied (is it readable by the hallhub user?)")]
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(file, [ConfigProblem("", f"not UTF-8 text (byte {exc.start})")]) from None
    except OSError as exc:
        raise ConfigError(file, [ConfigProblem("", f"cannot read: {exc.strerror}")]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, [ConfigProblem("", f"not valid TOML: {exc}")]) from None


def load_config(path: Path | str) -> HubConfig:
    """Read and validate a config file; raise ConfigError that names the file and each key.

    This is the whole validation: `run`, `config check` and `doctor` all judge a config by it.
    """
    return parse_config(read_config_document(path), Path(path))


@dataclass(frozen=True, slots=True)
class Secrets:
    """Passwords and tokens resolved from the config or from their `*_file` keys."""

    broker_password: str
    pull_token: str
    central_token: str
    control_token: str = ""
    view_token: str = ""


_SECRET_KEYS: Final = (
    ("broker.password_file", "broker_password"),
    ("api.pull_token_file", "pull_token"),
    ("central.token_file", "central_token"),
    ("api.control_token_file", "control_token"),
    ("api.view_token_file", "view_token"),
)
"""Each `*_file` key and the `Secrets` field it fills."""


def read_secrets(config: HubConfig) -> tuple[Secrets, list[ConfigProblem]]:
    """Secrets from the config and its `*_file` keys, and a problem for each file that cannot be used.

    A secret whose file fails is left empty; `resolve_secrets` refuses to go on, `doctor` skips
    only the checks that need that secret.
    """
    values = {
        "broker_password": config.broker.password,
        "pull_token": config.api.pull_token,
        "central_token": config.central.token,
        "control_token": config.api.control_token,
        "view_token": config.api.view_token,
    }
    problems: list[ConfigProblem] = []
    for key, field_name in _SECRET_KEYS:
        section, name = key.split(".")
        path = getattr(getattr(config, section), name)
        if not path:
            continue
        try:
            values[field_name] = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            problems.append(ConfigProblem(key, f"cannot read {path}: {exc.strerror}"))
        except UnicodeDecodeError as exc:
            problems.append(ConfigProblem(key, f"{path} is not UTF-8 text (byte {exc.start})"))
    host, _port = config.api_host_port
    unread = {problem.key for problem in problems}
    if not is_loopback(host) and not values["control_token"] and "api.control_token_file" not in unread:
        # Off loopback a control token is required (checked at load): here its file turned out empty.
        problems.append(ConfigProblem("api.control_token_file", f"{config.api.control_token_file} is empty"))
    return Secrets(**values), problems


def resolve_secrets(config: HubConfig, config_path: str = "<config>") -> Secrets:
    """Read `password_file`, `pull_token_file`, `token_file` and the other `*_file` keys where set;
    raise ConfigError listing every file that cannot be used."""
    secrets, problems = read_secrets(config)
    if problems:
        raise ConfigError(config_path, problems)
    return secrets


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (used to warn when the API listens on the LAN)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
