"""The §6 wire format: encoding, decoding and the errors that decide 400, 413, 422 or rejected."""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest

from contract import wire
from tests.sync.conftest import NODE, batch_body, record

Decode = Callable[..., wire.DecodedBatch | wire.ReceivedBatch]
DECODERS = pytest.mark.parametrize(
    "decode", [wire.decode_batch, wire.receive_batch], ids=["decode", "receive"]
)
"""The receiver's path (`receive_batch`, `data` kept as text) judges every body as `decode_batch` does."""


def _gz(document: Any) -> bytes:
    return gzip.compress(json.dumps(document).encode("utf-8"), mtime=0)


def test_timestamps_are_utc_with_milliseconds() -> None:
    moment = datetime(2024, 5, 1, 8, 30, 0, 123456, tzinfo=timezone(timedelta(hours=8)))
    text = wire.format_timestamp(moment)
    assert text == "2024-05-01T00:30:00.123Z"
    assert wire.parse_timestamp(text) == datetime(2024, 5, 1, 0, 30, 0, 123000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T00:30:00Z", "must be RFC 3339 UTC with milliseconds"),
        ("2024-05-01T00:30:00.123+08:00", "must be RFC 3339 UTC with milliseconds"),
        ("2024-02-30T00:00:00.000Z", "is not a real date and time"),
    ],
)
def test_bad_timestamps_are_explained(text: str, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        wire.parse_timestamp(text)


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="aware datetime"):
        wire.format_timestamp(datetime(2024, 5, 1))


def test_batch_round_trip_gzip_and_plain() -> None:
    records = [record("alert"), record(), record("scan")]
    batch = wire.new_batch(NODE, records, sent_at=datetime(2024, 5, 1, tzinfo=UTC))
    assert batch.sent_at == "2024-05-01T00:00:00.000Z"
    for compress, encoding in ((True, "gzip"), (False, None)):
        body = wire.encode_batch(batch, compress=compress)
        assert body[:2] == b"\x1f\x8b" if compress else body.startswith(b"{")
        decoded = wire.decode_batch(body, content_encoding=encoding)
        assert decoded.batch_id == batch.batch_id
        assert [msgspec.structs.asdict(r) for r in decoded.records] == records
        assert decoded.rejected == ()


def _received_as_dicts(batch: wire.ReceivedBatch) -> list[dict[str, Any]]:
    return [
        {
            "id": r.id,
            "seq": r.seq,
            "kind": r.kind,
            "created_at": r.created_at,
            "data": json.loads(r.data_json),
        }
        for r in batch.records
    ]


def test_the_receivers_path_keeps_each_datas_text_as_sent_and_agrees_with_decode_batch() -> None:
    odd = record()
    odd["data"] |= {"comment": '等候 "太长" \\ \n', "extra": {"deep": [1, 2.5, None, True]}, "emoji": "😀"}
    records = [
        record("alert"),
        record(),
        odd,
        record("scan"),
        record("followup") | {"data": _data_of("followup")},
        record("window") | {"data": _data_of("window")},
        record("card"),
    ]
    for ensure_ascii in (True, False):
        texts = [json.dumps(r, ensure_ascii=ensure_ascii) for r in records]
        document = (
            '{"node_id": "%s", "batch_id": "b-1", "sent_at": "2024-05-01T09:00:00.000Z", "records": [%s]}'
        )
        body = gzip.compress((document % (NODE, ", ".join(texts))).encode("utf-8"), mtime=0)
        received = wire.receive_batch(body)
        decoded = wire.decode_batch(body)
        assert received.rejected == decoded.rejected == ()
        assert _received_as_dicts(received) == [msgspec.structs.asdict(r) for r in decoded.records] == records
        sent_data = [json.dumps(r["data"], ensure_ascii=ensure_ascii) for r in records]
        assert [r.data_json for r in received.records] == sent_data, "the text as the node sent it"
        assert (received.node_id, received.batch_id, received.sent_at) == (
            decoded.node_id,
            decoded.batch_id,
            decoded.sent_at,
        )


@pytest.mark.parametrize("kind", ["alert", "scan", "card", "evaluation"])
@pytest.mark.parametrize("data", [[], "text", 5, None])
def test_data_that_is_not_an_object_is_rejected_for_every_kind(kind: str, data: Any) -> None:
    good, bad = record(kind), record(kind) | {"data": data}
    received = wire.receive_batch(_gz(batch_body([good, bad])))
    assert [r.id for r in received.records] == [good["id"]]
    assert [r.id for r in received.rejected] == [bad["id"]]
    assert received.rejected[0].error.startswith("data: expected an object")
    assert received.rejected == wire.decode_batch(_gz(batch_body([good, bad]))).rejected


def test_a_lone_surrogate_takes_the_worded_path_and_is_kept_escaped() -> None:
    """msgspec refuses `\\ud800` even inside text it keeps raw: the batch goes through `decode_batch`'s
    path, which takes it, and the text stored escapes it as before."""
    lone = record("alert")
    lone["data"] = {"type": "bad_review", "note": "\ud800"}
    received = wire.receive_batch(_gz(batch_body([record(), lone])))
    assert received.rejected == ()
    assert json.loads(received.records[1].data_json) == {"type": "bad_review", "note": "\ud800"}
    assert "\\ud800" in received.records[1].data_json


def test_a_received_record_writes_itself_back_as_the_same_record() -> None:
    original = record()
    received = wire.ReceivedRecord.of(wire.validate_record(original))
    assert json.loads(received.to_json()) == original


_ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    6,
    2**64,
    10**30,
    1.5,
    "",
    "x" * 600,
    "等候",
    "\u0000",
    "\ud83d\ude00",
    "\ud800",
    [],
    ["R1", 2],
    {},
    {"nested": {"deep": [1, {"a": None}]}},
]


def _outcome(decode: Decode, body: bytes) -> object:
    try:
        batch = decode(body, content_encoding=None)
    except wire.WireError as exc:
        return ("refused", exc.status, exc.message, exc.field)
    return ([r.id for r in batch.records], batch.rejected)


def test_both_paths_judge_10000_mutated_records_alike() -> None:
    """Records with one value replaced by an odd one, at the top or in `data`, for every kind with a
    model: the receiver's text path accepts, rejects and refuses exactly as `decode_batch`."""
    rng = random.Random(20261207)
    kinds = ["evaluation", "followup", "window", "alert", "scan"]
    for _ in range(2000):
        records = []
        for _ in range(5):
            kind = rng.choice(kinds)
            item = record(kind)
            if kind in ("followup", "window"):
                item["data"] = _data_of(kind)
            target = item["data"] if rng.random() < 0.8 else item
            key = rng.choice([*target.keys(), "extra"])
            if key != "id" or rng.random() < 0.1:
                target[key] = rng.choice(_ODD_VALUES)
            records.append(item)
        text = json.dumps(batch_body(records), ensure_ascii=rng.random() < 0.5)
        body = text.encode("utf-8", "surrogatepass")
        assert _outcome(wire.receive_batch, body) == _outcome(wire.decode_batch, body), body[:600]


def test_new_batch_keeps_a_given_id_and_makes_uuid7_otherwise() -> None:
    given = wire.new_batch(NODE, [record()], batch_id="retry-1")
    assert given.batch_id == "retry-1"
    fresh = wire.new_batch(NODE, [record()])
    assert fresh.batch_id[14] == "7"


def test_path_and_headers() -> None:
    assert wire.batch_path(NODE) == f"/v1/nodes/{NODE}/batches"
    assert wire.is_node_id(NODE)
    assert not wire.is_node_id("x" * 65)
    with pytest.raises(ValueError, match="node_id"):
        wire.batch_path("no/slash")
    assert wire.batch_headers("tok", "b-1") == {
        "Authorization": "Bearer tok",
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "Idempotency-Key": "b-1",
    }


@pytest.mark.parametrize(
    ("body", "encoding", "status", "message", "field"),
    [
        (b"{}", "gzip", 400, "body is not valid gzip", None),
        (_gz({"a": 1})[:-6], "gzip", 400, "the stream is truncated", None),
        (_gz({"a": 1}) + b"junk", "gzip", 400, "bytes follow the end of the stream", None),
        (b"\xff\xfe", None, 400, "body is not UTF-8", None),
        (b'{"node_id": ', None, 400, "body is not valid JSON (Expecting value at line 1", None),
        (b'{"x": NaN}', None, 400, "NaN is not valid JSON", None),
        (b'{"x": 1e999}', None, 400, "number 1e999 is out of range", None),  # not taken as infinity
        (b"[" * 100_000, None, 400, "nested too deeply", None),
        (b"[1, 2]", None, 400, "body must be a JSON object", None),
        (b"{}", "br", 400, "Content-Encoding 'br' is not supported", None),
    ],
)
@DECODERS
def test_malformed_bodies(
    decode: Decode, body: bytes, encoding: str | None, status: int, message: str, field: str | None
) -> None:
    with pytest.raises(wire.WireError) as caught:
        decode(body, content_encoding=encoding)
    assert caught.value.status == status
    assert message in caught.value.message
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"node_id": None}, "node_id", "node_id: expected text, got None"),
        ({"node_id": "a b"}, "node_id", "node_id: must be 1-64 of A-Z a-z 0-9 _ -"),
        ({"batch_id": ""}, "batch_id", "batch_id: must be 1-128"),
        ({"sent_at": "yesterday"}, "sent_at", "sent_at: must be RFC 3339 UTC with milliseconds"),
        ({"records": []}, "records", "records: must not be empty"),
        ({"records": {}}, "records", "records: expected a list, got an object"),
        ({"extra": 1}, "extra", "extra: is not a field of this object"),
    ],
)
@DECODERS
def test_envelope_errors_name_the_field(
    decode: Decode, change: dict[str, Any], field: str, message: str
) -> None:
    document = batch_body([record()]) | change
    with pytest.raises(wire.WireError) as caught:
        decode(json.dumps(document).encode(), content_encoding=None)
    assert caught.value.status == 400
    assert caught.value.field == field
    assert caught.value.message.startswith(message)


@DECODERS
def test_missing_envelope_field(decode: Decode) -> None:
    document = batch_body([record()])
    del document["sent_at"]
    with pytest.raises(wire.WireError) as caught:
        decode(_gz(document))
    assert (caught.value.status, caught.value.field) == (400, "sent_at")
    assert caught.value.message == "sent_at: is required"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("not an object", "records[1]: a record must be a JSON object"),
        (
            {"seq": 1},
            "records[1].id: must be a UUID in lower-case canonical form (8-4-4-4-12 hex) (got None)",
        ),
        (
            {"id": "0190F3A2-0000-7000-8000-000000000000"},
            "records[1].id: must be a UUID in lower-case canonical form",
        ),
    ],
)
@DECODERS
def test_record_without_usable_id_refuses_the_batch(decode: Decode, bad: Any, message: str) -> None:
    with pytest.raises(wire.WireError) as caught:
        decode(_gz(batch_body([record(), bad])))
    assert caught.value.status == 422
    assert caught.value.message.startswith(message)
    assert caught.value.field is not None
    assert caught.value.field.startswith("records[1]")


@pytest.mark.parametrize(
    ("change", "data_change", "message"),
    [
        ({"seq": 0}, {}, "seq: expected a value of at least 1, got 0"),
        ({"seq": "3"}, {}, "seq: expected a whole number, got '3'"),
        ({"kind": "vote"}, {}, "kind: expected one of 'evaluation', 'alert'"),
        ({"created_at": "2024-05-01 08:30:00"}, {}, "created_at: must be RFC 3339 UTC"),
        ({"data": []}, {}, "data: expected an object, got a list"),
        ({"national": {}}, {}, "national: is not a field of this object"),
        ({}, {"level": 6}, "data.level: expected a value of at most 5, got 6"),
        ({}, {"level": True}, "data.level: expected a whole number, got True"),
        ({}, {"channel": "sms"}, "data.channel: expected one of 'keypad', 'terminal'"),
        ({}, {"hall_code": "37010"}, "data.hall_code: must be 6 digits"),
        ({}, {"device_ts": "08:30"}, "data.device_ts: must be an RFC 3339 date and time"),
        ({}, {"device_ts": "2024-05-01T08:30:00"}, "data.device_ts: must carry a time zone"),
        ({}, {"citizen_ref": "abc"}, "data.citizen_ref: must be 64 hex digits"),
        ({}, {"comment": "x" * 501}, "data.comment: expected at most 500 characters"),
    ],
)
@DECODERS
def test_record_level_errors_reject_only_that_record(
    decode: Decode, change: dict[str, Any], data_change: dict[str, Any], message: str
) -> None:
    good = record()
    bad = record() | change
    bad["data"] = bad["data"] | data_change if isinstance(bad["data"], dict) else bad["data"]
    decoded = decode(_gz(batch_body([good, bad])))
    assert [r.id for r in decoded.records] == [good["id"]]
    assert len(decoded.rejected) == 1
    assert decoded.rejected[0].id == bad["id"]
    assert decoded.rejected[0].error.startswith(message)


def test_missing_evaluation_field_is_named() -> None:
    bad = record()
    del bad["data"]["channel"]
    with pytest.raises(wire.RecordError) as caught:
        wire.validate_record(bad)
    assert caught.value.field == "data.channel"
    assert caught.value.message == "data.channel: is required"


@pytest.mark.parametrize(
    "device_ts", ["2024-05-01T08:30:00z", "2024-05-01T08:30:00.5+08:00", "2024-05-01T00:30:00.000Z"]
)
def test_device_time_accepts_rfc_3339_offsets(device_ts: str) -> None:
    assert wire.validate_record(record(device_ts=device_ts)).data["device_ts"] == device_ts


def test_optional_evaluation_fields_and_extras() -> None:
    minimal = record()
    minimal["data"] = {
        "level": 1,
        "channel": "qr",
        "device_id": "qr-1",
        "node_id": NODE,
        "hall_code": "370102",
        "item_name": "营业执照办理",
        "staff_name": "张三",
    }
    checked = wire.evaluation_data(wire.validate_record(minimal))
    assert checked.reasons == []
    assert checked.flags == []
    assert checked.item_name == "营业执照办理"
    assert not hasattr(checked, "staff_name")
    assert wire.validate_record(minimal).data["staff_name"] == "张三", "the record keeps extra keys"


@DECODERS
def test_size_limits(decode: Decode) -> None:
    document = batch_body([record() for _ in range(3)])
    plain = json.dumps(document).encode()
    with pytest.raises(wire.WireError, match="body is larger than 100 bytes") as caught:
        decode(plain, content_encoding=None, max_bytes=100)
    assert caught.value.status == 413
    bomb = gzip.compress(b" " * 1_000_000 + plain)
    assert len(bomb) < 10_000
    with pytest.raises(wire.WireError, match="larger than 100000 bytes once decompressed") as caught:
        decode(bomb, max_bytes=100_000)
    assert caught.value.status == 413
    with pytest.raises(wire.WireError, match="batch has 3 records; at most 2") as caught:
        decode(plain, content_encoding=None, max_records=2)
    assert (caught.value.status, caught.value.field) == (413, "records")


def test_answer_round_trip_and_errors() -> None:
    answer = wire.BatchAnswer(accepted=["a"], duplicate=["b"], rejected=[wire.Rejection(id="c", error="why")])
    assert wire.decode_answer(wire.encode_answer(answer)) == answer
    assert wire.decode_answer(b'{"accepted": [], "platform_extra": 1}') == wire.BatchAnswer()
    with pytest.raises(ValueError, match=r"not a valid batch answer: rejected\[0\]\.error"):
        wire.decode_answer(b'{"rejected": [{"id": "x"}]}')
    with pytest.raises(ValueError, match=r"not a valid batch answer: .*Invalid JSON"):
        wire.decode_answer(b"<html>")


def test_the_hubs_evaluation_data_has_exactly_the_keys_the_platform_checks() -> None:
    """`contract.records.evaluation_data` (what the hub writes) and `wire.EvaluationData` (what the
    platform checks) describe the same §1 record; `item_name` is the one optional extension."""
    from contract.records import evaluation_data

    written = evaluation_data(
        level=4,
        reasons=[],
        comment=None,
        channel="pad",
        device_id="pad-01",
        window="07",
        staff_id=None,
        case_no=None,
        item_code=None,
        session=None,
        citizen_ref=None,
        citizen_masked=None,
        device_ts=None,
        node_id="n1",
        hall_code="370102",
        flags=[],
    )
    assert set(written) == set(wire.EvaluationData.__struct_fields__) - {"item_name"}
    msgspec.convert(written, wire.EvaluationData, strict=True)


def _data_of(kind: str) -> dict[str, Any]:
    """Valid `data` for the kinds whose `data` is checked."""
    if kind == "followup":
        return {
            "alert_id": "0190f3a2-0000-7000-8000-000000000001",
            "evaluation_id": "0190f3a2-0000-7000-8000-000000000002",
            "step": "callback",
            "by": "王主任",
            "outcome": "reached",
            "late": False,
            "window": "07",
            "node_id": NODE,
            "hall_code": "370102",
        }
    if kind == "window":
        return {
            "window": "07",
            "event": "sign_in",
            "staff_id": "S001",
            "node_id": NODE,
            "hall_code": "370102",
        }
    return record()["data"] | {"citizen_ref": "ab" * 32, "device_ts": "2024-05-01T08:30:00+08:00"}


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        *(("evaluation", name) for name in wire._EVALUATION_CHECKS),
        *(("followup", name) for name in wire._FOLLOWUP_CHECKS),
        *(("window", name) for name in wire._WINDOW_CHECKS),
    ],
)
@DECODERS
def test_every_field_rule_rejects_the_record_naming_the_field(decode: Decode, kind: str, field: str) -> None:
    """The rules msgspec does not check run in `__post_init__`: each one refuses, and names its field."""
    good = record(kind)
    good["data"] = _data_of(kind)
    assert wire.validate_record(good).data == good["data"]
    bad = good | {"data": good["data"] | {field: "no such value!"}}
    decoded = decode(_gz(batch_body([good, bad])))
    assert [r.id for r in decoded.records] == [good["id"]]
    assert [r.id for r in decoded.rejected] == [bad["id"]]
    assert decoded.rejected[0].error.startswith(f"data.{field}: must ")
    assert decoded.rejected[0].error.endswith("(got 'no such value!')")
