"""The redaction rules every output shares (`hub.privacy.redact`): personal data and secrets, by key and in text."""

from __future__ import annotations

import io
import logging

import pytest

from hub.privacy.redact import (
    REDACTED,
    TO_REDACT,
    RedactingFormatter,
    Scrubber,
    redact,
    redact_text,
    redact_url,
)

ID_NUMBER = "11010519491231002X"  # the sample number of GB 11643 (its check character is right)


def test_personal_data_by_key_at_any_depth() -> None:
    doc = {
        "records": [
            {
                "kind": "card",
                "data": {
                    "id_number": ID_NUMBER,
                    "Name": "张三",
                    "citizen_ref": "ref-8c1f",
                    "citizen_masked": "110105********002X",
                    "photo": "base64…",
                    "window": "07",
                },
                "sealed": "sm4:…",
            }
        ],
        "certkeyGOV": "370102…",
    }
    data = redact(doc)["records"][0]["data"]
    assert data == {
        "id_number": REDACTED,
        "Name": REDACTED,
        "citizen_ref": REDACTED,
        "citizen_masked": REDACTED,
        "photo": REDACTED,
        "window": "07",
    }
    assert redact(doc)["records"][0]["sealed"] == REDACTED
    assert redact(doc)["certkeyGOV"] == REDACTED


def test_secrets_by_key_empty_values_stay_and_the_input_is_not_changed() -> None:
    config = {
        "broker": {"username": "hub", "password": "broker-pw", "password_file": "/etc/hallhub/broker"},
        "api": {"pull_token": "", "control_token": "c" * 24, "view_token": None},
        "central": {"url": "https://hcp.example.gov.cn/hallhub", "token": 918273645},
        "headers": [{"Authorization": "Bearer abc"}],
    }
    assert redact(config) == {
        "broker": {"username": "hub", "password": REDACTED, "password_file": "/etc/hallhub/broker"},
        "api": {"pull_token": "", "control_token": REDACTED, "view_token": None},
        "central": {"url": "https://hcp.example.gov.cn/hallhub", "token": REDACTED},
        "headers": [{"Authorization": REDACTED}],
    }
    assert config["broker"]["password"] == "broker-pw"
    assert {
        "password",
        "token",
        "pull_token",
        "control_token",
        "view_token",
        "name",
        "id_number",
    } <= TO_REDACT


def test_other_strings_in_a_mapping_pass_the_text_rules() -> None:
    doc = {"devices": [{"detail": f"cannot open socket://qr:pw-1234@127.0.0.1:1 for {ID_NUMBER}"}]}
    assert redact(doc) == {
        "devices": [{"detail": "cannot open socket://***@127.0.0.1:1 for 110105********002X"}]
    }
    assert redact(doc, text=str.upper)["devices"][0]["detail"].startswith("CANNOT OPEN SOCKET://QR:PW")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rtsp://admin:s3cret@10.0.0.5:554/stream1", "rtsp://***@10.0.0.5:554/stream1"),
        ("postgresql://hallhub:pg-pw@db.local/central", "postgresql://***@db.local/central"),
        ("https://user:p@ss@host/x", "https://***@host/x"),  # an unescaped @ in the password
        ("Authorization: Bearer eyJ.abc-def_1", f"Authorization: Bearer {REDACTED}"),
        ("GET /v1/x?access_token=abc123&limit=5", f"GET /v1/x?access_token={REDACTED}&limit=5"),
        ("dsn: host=db password=hunter2 user=x", f"dsn: host=db password={REDACTED} user=x"),
        (f"scanned {ID_NUMBER} at window 07", "scanned 110105********002X at window 07"),
        (f"full-width {ID_NUMBER.replace('1', '１')}", "full-width 110105********002X"),
    ],
)
def test_free_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Type=notify, WatchdogSec=30s (/etc/systemd/system/hallhub.service)",
        "https://hcp.example.gov.cn/hallhub/v1/nodes/hall-370102-01/batches",
        "record 0190f3a2-7b1c-7d3e-9f00-123456789012 at 2026-11-23T01:00:00.000Z, seq 123456789",
        "set central.token (or central.token_file) to the token issued for node n1",
        "user@example.org wrote",
    ],
)
def test_text_without_secrets_is_left_alone(text: str) -> None:
    assert redact_text(text) == text


def test_redact_url() -> None:
    assert redact_url("https://n1:pw@central.example/") == "https://***@central.example/"
    assert redact_url("https://n1:pw@central.example/", mark="") == "https://central.example/"
    assert redact_url("https://central.example/?token=t0k3n") == f"https://central.example/?token={REDACTED}"
    assert redact_url("sqlite:////var/lib/central.db") == "sqlite:////var/lib/central.db"


def test_scrubber_removes_known_values_longest_first() -> None:
    scrub = Scrubber(["pw", "secret-token", "secret-token-2"])
    scrub.add("", "broker-pw-9")
    assert scrub("pw secret-token-2 secret-token broker-pw-9") == f"pw {REDACTED} {REDACTED} {REDACTED}"
    assert scrub(f"rtsp://a:b@h/ {ID_NUMBER}") == "rtsp://***@h/ 110105********002X"


def test_log_lines_and_tracebacks_are_redacted() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("tests.redact")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("QR scanner %s offline: %s", "qr-01", "cannot open socket://qr:pw-77@10.0.0.9:4001")
        try:
            raise ConnectionError(f"refused Authorization: Bearer tok-991 for {ID_NUMBER}")
        except ConnectionError:
            logger.exception("uplink failed")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    text = stream.getvalue()
    assert "WARNING tests.redact: QR scanner qr-01 offline: cannot open socket://***@10.0.0.9:4001" in text
    assert f"ConnectionError: refused Authorization: Bearer {REDACTED} for 110105********002X" in text
    assert "pw-77" not in text
    assert "tok-991" not in text
    assert ID_NUMBER not in text
