"""CONTRACTS §15: `national.fields` renaming, `user_prop` from the evaluate request, and `config check`
refusing every `[national]` value that `run` would refuse, naming its key path."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import jsonschema
import pytest
from typer.testing import CliRunner

from contract.mqtt import EvaluateRequest, PayloadError, parse_device_payload
from hub.cli.commands import app
from hub.config import ConfigError, HubConfig, parse_config
from hub.ingest.intake import Intake
from hub.metrics import HubMetrics
from hub.ops.broker import MosquittoBroker
from hub.simulate.mqtt_device import SimulatedMqttDevice
from hub.store.outbox import Stored
from sync.annotate import national_options
from sync.national import NationalOptions, national_record_schema
from tests.support.cli import run_hallhub
from tests.support.hub import NODE_ID
from tests.sync.support import (
    TOKEN,
    hub_with_uplink,
    open_outbox,
    recording_receiver,
    sync_config,
    wait_until,
)

LOWERCASE = {"projectNo": "projectno", "areaCode": "areacode", "taskCode": "taskcode", "userProp": "userprop"}


def _validator(fields: dict[str, str] | None = None) -> jsonschema.Draft202012Validator:
    schema = national_record_schema(fields)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize(("order", "satisfaction"), [("5_best", 5), ("1_best", 1)])
async def test_renamed_fields_match_the_renamed_schema_in_both_level_orders(
    tmp_path: Path, order: str, satisfaction: int
) -> None:
    devices = [{"id": "pad-01", "kind": "pad", "transport": "mqtt", "window": "01"}]
    config = sync_config(
        tmp_path / "data",
        "http://127.0.0.1:1",
        device=devices,
        national={"level_order": order, "fields": LOWERCASE, "area_code": "370102001000"},
    )
    async with open_outbox(config) as outbox:
        records = Intake(config, outbox, HubMetrics()).evaluation(
            config.devices_by_id["pad-01"], level=5, reasons=[], case_no="F-1", item_code="T-1"
        )
        assert isinstance(await outbox.store(records), Stored)
        stored = await outbox.get_record(records[0].id)
    assert stored is not None
    national = stored["data"]["national"]
    _validator(LOWERCASE).validate(national)
    with pytest.raises(jsonschema.ValidationError):
        _validator().validate(national)
    assert list(national) == [
        "projectno",
        "taskcode",
        "taskName",
        "deptCode",
        "areacode",
        "pf",
        "satisfaction",
        "evalDetail",
        "writingEvaluation",
        "assessTime",
        "assessNumber",
        "userprop",
    ]
    assert (national["projectno"], national["taskcode"], national["areacode"]) == (
        "F-1",
        "T-1",
        "370102001000",
    )
    assert (national["satisfaction"], national["assessNumber"], national["userprop"]) == (satisfaction, 1, 1)


def test_user_prop_on_evaluate_requests() -> None:
    assert parse_device_payload(EvaluateRequest, {"request_id": "r1"}).user_prop == 1
    assert parse_device_payload(EvaluateRequest, {"request_id": "r1", "user_prop": 2}).user_prop == 2
    for wrong in (0, 3, "2", True, 1.5):
        with pytest.raises(PayloadError, match="user_prop"):
            parse_device_payload(EvaluateRequest, {"request_id": "r1", "user_prop": wrong})


async def _prompted(port: int, pad: SimulatedMqttDevice, window: str, **request: Any) -> int:
    """Ask for an evaluation as a window PC does; the session number the pad is prompted with."""
    seen = len(pad.log.commands)
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"pc-{request['request_id']}") as client:
        await client.publish(f"hall/v1/{NODE_ID}/window/{window}/evaluate", json.dumps(request), qos=1)
    async with asyncio.timeout(10):
        while True:
            prompts = [c for c in pad.log.commands[seen:] if c.cmd == "prompt" and c.session]
            if prompts:
                return int(prompts[0].session or 0)
            await asyncio.sleep(0.02)


async def test_user_prop_and_renamed_fields_reach_a_real_receiver(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """A legal person's case at a pad: rated 1, a suspect second press, re-rated 4 after 整改. The
    platform gets two national records under the province's names, `userprop` 2, numbers 1 and 2."""
    async with recording_receiver(f"sqlite:///{tmp_path / 'central.db'}") as central:
        config = sync_config(
            tmp_path / "data",
            central.url,
            broker_port=broker.port,
            device=[{"id": "pad-01", "kind": "pad", "transport": "mqtt", "window": "01"}],
            national={"fields": LOWERCASE, "level_order": "1_best"},
        )
        async with (
            hub_with_uplink(config) as hub,
            SimulatedMqttDevice("127.0.0.1", broker.port, NODE_ID, "pad-01", kind="pad") as pad,
        ):

            async def online() -> bool:
                device = hub.registry.get("pad-01")
                return device is not None and device.online

            await wait_until(online, 10, "the pad online")
            first = await _prompted(broker.port, pad, "01", request_id="q1", case_no="E2E-1", user_prop=2)
            assert (await pad.rate(1, session=first)).status == "stored"
            assert (await pad.rate(2, session=first)).status == "stored"
            again = await _prompted(broker.port, pad, "01", request_id="q2", case_no="E2E-1", user_prop=2)
            assert (await pad.rate(4, session=again)).status == "stored"
            async with aiohttp.ClientSession() as http:

                async def delivered() -> list[dict[str, Any]]:
                    async with http.get(
                        f"{central.url}/v1/evaluations", headers={"Authorization": f"Bearer {TOKEN}"}
                    ) as resp:
                        assert resp.status == 200
                        body: dict[str, Any] = await resp.json()
                        return list(body["evaluations"])

                async def all_three() -> bool:
                    return len(await delivered()) == 3

                await wait_until(all_three, 20, "three evaluations at the receiver")
                evaluations = await delivered()
    by_level = {e["data"]["level"]: e["data"] for e in evaluations}
    validator = _validator(LOWERCASE)
    for level in (1, 4):
        validator.validate(by_level[level]["national"])
        assert by_level[level]["user_prop"] == 2
        assert by_level[level]["national"]["userprop"] == 2
        assert by_level[level]["national"]["projectno"] == "E2E-1"
    assert by_level[1]["national"]["assessNumber"] == 1
    assert by_level[1]["national"]["satisfaction"] == 5, "1_best: 非常不满意 is 5"
    assert by_level[4]["national"]["assessNumber"] == 2, "the suspect press did not take the second rating"
    assert by_level[2]["flags"] == ["suspect"]
    assert "national" not in by_level[2]


# -- config check: every [national] value that run would refuse --------------------------------------

GOOD_NODE = '[node]\nid = "n1"\nhall_code = "370102"\n'

# (name, the [national] table, the key path named, the start of its message)
NATIONAL_REFUSED = [
    ("level_order", 'level_order = "best"', "national.level_order", "expected one of"),
    ("dept_code not text", "dept_code = 11", "national.dept_code", "expected text"),
    ("area_code", 'area_code = "37010"', "national.area_code", "expected a 6-digit"),
    ("timezone", 'timezone = "Asia/Shangai"', "national.timezone", "expected an IANA time zone"),
    ("pf code", "pf = {qr = 8}", "national.pf.qr", "expected a channel code from 1 to 7"),
    ("pf channel", "pf = {fax = 4}", "national.pf.fax", "unknown channel"),
    ("reasons code", 'reasons = {R1 = "101,102"}', "national.reasons.R1", "expected one platform"),
    ("fields unknown name", 'fields = {projectNumber = "pn"}', "national.fields.projectNumber", "unknown"),
    ("fields new name", 'fields = {projectNo = "project no"}', "national.fields.projectNo", "expected the"),
    ("fields taken name", 'fields = {projectNo = "taskCode"}', "national.fields.projectNo", "new name"),
    (
        "fields one name twice",
        'fields = {projectNo = "no", taskCode = "no"}',
        "national.fields.projectNo",
        "new name 'no' is also the name of taskCode",
    ),
    ("case_history_days zero", "case_history_days = 0", "national.case_history_days", "expected a value"),
    ("case_history_days text", 'case_history_days = "400"', "national.case_history_days", "expected a whole"),
    ("case_history_days huge", "case_history_days = 40000", "national.case_history_days", "expected a value"),
    ("unknown key", "field = {}", "national.field", "unknown key"),
]


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [(t, k, m) for _n, t, k, m in NATIONAL_REFUSED],
    ids=[n for n, _t, _k, _m in NATIONAL_REFUSED],
)
def test_config_check_refuses_each_bad_national_value(
    tmp_path: Path, table: str, key: str, message: str
) -> None:
    path = tmp_path / "node.toml"
    path.write_text(f"{GOOD_NODE}[national]\n{table}\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["config", "check", str(path)], env={"COLUMNS": "1000"})
    assert result.exit_code == 1, result.output
    assert f"error {path}: {key}: {message}" in result.output


@pytest.mark.parametrize("name", ["fields taken name", "case_history_days zero"])
def test_run_refuses_them_the_same_way(tmp_path: Path, name: str) -> None:
    """`hallhub run` in its own process: the same line, exit 1, no traceback, nothing created."""
    [(table, key, message)] = [(t, k, m) for n, t, k, m in NATIONAL_REFUSED if n == name]
    path = tmp_path / "node.toml"
    path.write_text(
        f'[node]\nid = "n1"\nhall_code = "370102"\ndata_dir = "{tmp_path}/data"\n'
        f'secret_file = "{tmp_path}/secret"\n[api]\nlisten = "127.0.0.1:0"\n[national]\n{table}\n',
        encoding="utf-8",
    )
    result = run_hallhub("run", "--config", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error {path}: {key}: {message}")
    assert not (tmp_path / "data").exists()


FIELDS_VALUES: list[dict[str, Any]] = [
    {},
    {"projectNo": "projectno"},
    LOWERCASE,
    {"projectNo": "taskCode", "taskCode": "projectNo"},
    {"certkeyGOV": "certkey", "userName": "username"},
    {"projectNo": "x"},
    {"projectNo": ""},
    {"projectNo": "1abc"},
    {"projectNo": "a" * 65},
    {"projectNo": "no", "taskCode": "no"},
    {"projectNo": "taskCode"},
    {"satisfied": "x"},
]


@pytest.mark.parametrize("fields", FIELDS_VALUES, ids=[json.dumps(f)[:40] for f in FIELDS_VALUES])
def test_config_accepts_exactly_the_fields_the_mapping_accepts(fields: dict[str, Any]) -> None:
    """One rule in `hub.config` for both, so a `fields` table that loads never stops `run`."""
    raw = {"node": {"id": "n1", "hall_code": "370102"}, "national": {"fields": fields}}
    try:
        config: HubConfig | None = parse_config(raw)
    except ConfigError as exc:
        config = None
        config_error: str | None = exc.problems[0].message
    else:
        config_error = None
    mapping_error: str | None = None
    try:
        options = NationalOptions(level_order="5_best", dept_code="", area_code="", fields=fields)
    except ValueError as exc:
        mapping_error = str(exc).split(": ", 1)[1]
    assert config_error == mapping_error
    if config is not None:
        assert national_options(config).fields == options.fields
