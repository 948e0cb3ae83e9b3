"""`hallhub outbox` and `hallhub central` as a technician runs them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pytest
from typer.testing import CliRunner, Result

from contract import wire
from contract.records import Kind, Record
from hub.cli.commands import app
from hub.store import Stored
from hub.store.schema import SCHEMA_VERSION
from sync import outbox_cli
from sync.uplink import INFLIGHT_KEY, UNAUTHORIZED_KEY
from tests.support.hub import write_toml
from tests.sync.support import TOKEN, fill, open_outbox, ratings, sync_config, sync_raw

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich wraps at 80 columns when not on a terminal; wide output keeps ids and reasons whole."""
    for console in (outbox_cli._console, outbox_cli._err):
        monkeypatch.setattr(console, "width", 300)


def _run(*args: str) -> Result:
    return runner.invoke(app, list(args))


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_toml(tmp_path / "node.toml", sync_raw(tmp_path / "data", "http://127.0.0.1:1"))


async def _prepare(tmp_path: Path, count: int = 30) -> list[Record]:
    config = sync_config(tmp_path / "data", "http://127.0.0.1:1")
    records = ratings(config, count, bad_every=10)
    async with open_outbox(config) as outbox:
        await fill(outbox, records)
        await outbox.mark_delivered([records[1].id], via="push")
        await outbox.dead_letter(records[2].id, "rejected by the platform: satisfaction out of range")
        await outbox.dead_letter(records[4].id, "refused by the platform (422): record cannot be processed")
    return records


async def test_summary_lists_pending_kinds_age_and_dead_letters(tmp_path: Path, config_path: Path) -> None:
    records = await _prepare(tmp_path)
    result = await asyncio.to_thread(_run, "outbox", "--config", str(config_path))
    assert result.exit_code == 0, result.output
    out = result.output
    assert "pending by kind" in out
    assert "evaluation" in out
    assert "alert" in out
    assert "satisfaction out of range" in out
    assert records[2].id in out
    assert "2 dead letters" in out
    assert "push 1" in out

    as_json = await asyncio.to_thread(_run, "outbox", "--db", str(tmp_path / "data" / "outbox.db"), "--json")
    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.output)
    assert document["pending_by_kind"] == {"evaluation": 28, "alert": 2}
    assert document["dead_letters"] == 2
    assert {d["id"] for d in document["recent_dead_letters"]} == {records[2].id, records[4].id}
    assert document["oldest_pending_age_s"] >= 0


async def test_retry_waits_for_the_hubs_writer_and_queues_again(tmp_path: Path, config_path: Path) -> None:
    records = await _prepare(tmp_path)
    config = sync_config(tmp_path / "data", "http://127.0.0.1:1")
    async with open_outbox(config) as outbox:
        # Another writer holds the lock for a moment: the CLI waits for it instead of failing.
        holder = sqlite3.connect(
            tmp_path / "data" / "outbox.db", isolation_level=None, check_same_thread=False
        )
        holder.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
        release.start()
        started = time.monotonic()
        result = await asyncio.to_thread(_run, "outbox", "retry", records[2].id, "--config", str(config_path))
        waited = time.monotonic() - started
        release.join()
        holder.close()
        assert result.exit_code == 0, result.output
        assert f"queued again {records[2].id}" in result.output
        assert waited >= 0.4
        assert [d.id for d in await outbox.dead_letters()] == [records[4].id]
        assert await outbox.pending_by_ids([records[2].id])
        # The hub's writer keeps working on the same file afterwards.
        assert await outbox.mark_delivered([records[2].id], via="push") == 1

        unknown = await asyncio.to_thread(_run, "outbox", "--config", str(config_path), "retry", "no-such-id")
        assert unknown.exit_code == 1
        assert "no-such-id: no dead letter with this id" in unknown.output

        everything = await asyncio.to_thread(_run, "outbox", "retry", "--all", "--config", str(config_path))
        assert everything.exit_code == 0, everything.output
        assert await outbox.dead_letters() == []
    neither = _run("outbox", "retry", "--config", str(config_path))
    assert neither.exit_code == 1
    assert "give one or more record ids, or --all" in neither.output


async def test_export_writes_pending_records_as_json_lines(tmp_path: Path, config_path: Path) -> None:
    config = sync_config(tmp_path / "data", "http://127.0.0.1:1")
    records = ratings(config, 12_000)
    records[0].sealed = "v1.sealed-token-never-exported"
    async with open_outbox(config) as outbox:
        await fill(outbox, records)
        await outbox.mark_delivered([records[5].id], via="pull")
    target = tmp_path / "export" / "pending.jsonl"
    target.parent.mkdir()
    result = await asyncio.to_thread(_run, "outbox", "export", str(target), "--config", str(config_path))
    assert result.exit_code == 0, result.output
    assert "exported 11,999 pending records" in result.output
    lines = target.read_text(encoding="utf-8").splitlines()
    exported = [json.loads(line) for line in lines]
    assert [r["id"] for r in exported] == [r.id for r in records if r.id != records[5].id]
    assert [r["seq"] for r in exported] == sorted(r["seq"] for r in exported)
    assert all(wire.validate_record(r).kind == "evaluation" for r in exported[:50])
    assert "sealed" not in target.read_text(encoding="utf-8")
    assert not (tmp_path / "export" / "pending.jsonl.partial").exists()

    only_alerts = await asyncio.to_thread(
        _run, "outbox", "export", "-", "--kind", "alert", "--config", str(config_path)
    )
    assert only_alerts.exit_code == 0
    assert "exported 0 pending records" in only_alerts.output
    wrong_kind = _run("outbox", "export", "-", "--kind", "ratings", "--config", str(config_path))
    assert wrong_kind.exit_code == 1
    assert "--kind: expected one of" in wrong_kind.output


async def test_clear_errors(tmp_path: Path, config_path: Path) -> None:
    missing = _run("outbox", "--config", str(config_path))
    assert missing.exit_code == 1
    assert "no outbox file here" in missing.output
    bad_config = _run("outbox", "--config", str(tmp_path / "nope.toml"))
    assert bad_config.exit_code == 1
    assert "file not found" in bad_config.output
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    not_ours = await asyncio.to_thread(_run, "outbox", "--db", str(other))  # the command runs its own loop
    assert not_ours.exit_code == 1
    assert "not a hallhub outbox" in not_ours.output
    for command in (["outbox"], ["outbox", "retry"], ["outbox", "export"], ["central"]):
        assert _run(*command, "--help").exit_code == 0


async def test_summary_beside_the_running_hub_shows_the_uplinks_state(
    tmp_path: Path, config_path: Path
) -> None:
    """The uplink's kv entries, read under the keys sync/uplink.py writes, while the hub's outbox is open."""
    records = await _prepare(tmp_path)
    config = sync_config(tmp_path / "data", "http://127.0.0.1:1")
    async with open_outbox(config) as outbox:
        inflight = {
            "batch_id": "b-1",
            "sent_at": "2026-11-22T08:00:00.000Z",
            "ids": [records[0].id, records[3].id],
        }
        await outbox.kv_set(INFLIGHT_KEY, json.dumps(inflight))
        await outbox.kv_set(
            UNAUTHORIZED_KEY, json.dumps({"status": 401, "since": "2026-11-22T08:00:01.000Z"})
        )
        shown = await asyncio.to_thread(_run, "outbox", "--config", str(config_path), "--json")
        assert shown.exit_code == 0, shown.output
        document = json.loads(shown.output)
        assert document["uplink_inflight"] == {
            "batch_id": "b-1",
            "sent_at": inflight["sent_at"],
            "records": 2,
        }
        assert document["uplink_unauthorized"]["status"] == 401
        assert document["last_seq"] == 33, "30 ratings and 3 bad-review alerts"
        # The hub goes on storing: the command took no seq and left the file as the hub's.
        after = await outbox.store([ratings(config, 1)[0]])
        assert isinstance(after, Stored)
        assert after.records[0].seq == 34
        await outbox.mark_delivered([records[0].id, records[3].id], via="push")
        shown = await asyncio.to_thread(_run, "outbox", "--config", str(config_path), "--json")
        assert json.loads(shown.output)["uplink_inflight"] is None


async def test_a_store_written_by_a_newer_hallhub_is_refused(tmp_path: Path, config_path: Path) -> None:
    await _prepare(tmp_path)
    db = tmp_path / "data" / "outbox.db"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    for command in (["outbox"], ["outbox", "retry", "--all"], ["outbox", "export", "-"]):
        result = await asyncio.to_thread(_run, *command, "--db", str(db))
        assert result.exit_code == 1, command
        assert "written by a newer hallhub" in result.output


async def test_retry_of_a_record_kept_as_alert_kind(tmp_path: Path, config_path: Path) -> None:
    config = sync_config(tmp_path / "data", "http://127.0.0.1:1")
    alert = Record(kind=Kind.ALERT, data={"type": "bad_review", "evaluation_id": "x"})
    async with open_outbox(config) as outbox:
        await fill(outbox, [alert])
        await outbox.dead_letter(alert.id, "test")
    result = await asyncio.to_thread(_run, "outbox", "retry", alert.id, "--config", str(config_path))
    assert result.exit_code == 0
    shown = await asyncio.to_thread(_run, "outbox", "--config", str(config_path), "--json")
    assert json.loads(shown.output)["pending_by_kind"] == {"alert": 1}


async def test_central_command_serves_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    config = sync_config(tmp_path / "data", "http://127.0.0.1:1")
    record = ratings(config, 1)[0]
    record.seq = 1
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hub",
            "central",
            "--listen",
            "127.0.0.1:0",
            "--db",
            f"sqlite:///{tmp_path / 'central.db'}",
            "--token",
            TOKEN,
            "--seed",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
    )
    try:
        assert process.stdout is not None
        first = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 20)
        text = first.decode()
        assert text.startswith("central receiver listening on http://127.0.0.1:"), text
        url = text.split()[-1]
        batch = wire.new_batch(config.node.id, [record.to_wire()])
        async with aiohttp.ClientSession() as http:
            async with http.post(
                url + wire.batch_path(config.node.id),
                data=wire.encode_batch(batch),
                headers=wire.batch_headers(TOKEN, batch.batch_id),
            ) as response:
                assert response.status == 200
                assert wire.decode_answer(await response.read()).accepted == [record.id]
        process.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(process.wait, 20)
        rest = process.stdout.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
    assert code == 0, rest
    assert "central receiver stopped" in rest
    assert "Traceback" not in rest


def test_central_command_refuses_bad_settings(tmp_path: Path) -> None:
    no_token = runner.invoke(app, ["central", "--db", "sqlite:///x.db"], env={"HALLHUB_CENTRAL_TOKEN": ""})
    assert no_token.exit_code != 0
    bad_db = _run("central", "--db", "mysql://x", "--token", "t", "--listen", "127.0.0.1:0")
    assert bad_db.exit_code == 1
    assert "is not supported" in bad_db.output
    bad_rate = _run("central", "--db", "sqlite:///x.db", "--token", "t", "--fail-rate", "2")
    assert bad_rate.exit_code == 2
