"""Config loading: the example is valid, and each broken config gets its exact message."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from hub.cli.commands import app
from hub.config import ConfigError, load_config, resolve_secrets
from tests.support.cli import run_hallhub

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "node.example.toml"

GOOD_NODE = '[node]\nid = "n1"\nhall_code = "370102"\n'


def test_example_config_is_valid_and_complete() -> None:
    config = load_config(EXAMPLE)
    assert config.node.id == "hall-370102-01"
    assert {d.kind for d in config.device} == {"keypad", "idcard", "qr", "pcsc", "terminal", "pad"}
    assert config.national.reasons == {"R1": "101", "R2": "102"}
    assert config.devices_by_id["kp-08"].address == 2


def errors_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "node.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    prefix = f"{path}: "
    assert all(line.startswith(prefix) for line in info.value.lines())
    return [line.removeprefix(prefix) for line in info.value.lines()]


BROKEN = [
    ("missing node table", "", ["node: is required but missing"]),
    (
        "bad node id",
        '[node]\nid = "hall 01"\nhall_code = "370102"\n',
        ["node.id: expected 1 to 64 letters, digits, '_' or '-', got 'hall 01'"],
    ),
    (
        "hall code not 6 digits",
        '[node]\nid = "n1"\nhall_code = "3701"\n',
        ["node.hall_code: expected a 6-digit administrative division code such as \"370102\", got '3701'"],
    ),
    (
        # msgspec matches patterns with `re.search`, where `$` lets a final newline through
        "hall code with a final newline",
        '[node]\nid = "n1"\nhall_code = "370102\\n"\n',
        [
            "node.hall_code: expected a 6-digit administrative division code such as \"370102\", got '370102\\n'"
        ],
    ),
    (
        "unknown key",
        GOOD_NODE + '[broker]\nhots = "x"\n',
        [
            "broker.hots: unknown key (allowed here: host, port, username, password, password_file, client_id, keepalive_s)"
        ],
    ),
    (
        "port as text",
        GOOD_NODE + '[broker]\nport = "1883"\n',
        ["broker.port: expected a whole number, got '1883'"],
    ),
    (
        "port out of range",
        GOOD_NODE + "[broker]\nport = 70000\n",
        ["broker.port: expected a value of at most 65535, got 70000"],
    ),
    (
        "bad api.listen",
        GOOD_NODE + '[api]\nlisten = "8780"\n',
        ['api.listen: expected "host:port" such as "127.0.0.1:8780", got "8780"'],
    ),
    (
        "unknown privacy mode",
        GOOD_NODE + '[privacy]\nhmac = "md5"\n',
        ["privacy.hmac: expected one of 'sm3' or 'sha256', got 'md5'"],
    ),
    (
        "serial device without port",
        GOOD_NODE + '[[device]]\nid = "kp-07"\nkind = "keypad"\ntransport = "serial"\nwindow = "07"\n',
        [
            'device[0].port: device "kp-07" uses a serial port: set port to its udev name, e.g. "/dev/hallhub/keypad-07" (docs/field-guide.md step 3; see `ls -l /dev/hallhub/`)'
        ],
    ),
    (
        "keypad without window",
        GOOD_NODE
        + '[[device]]\nid = "kp-07"\nkind = "keypad"\ntransport = "serial"\nport = "/dev/ttyUSB0"\n',
        ['device[0].window: device "kp-07" is a keypad: set the window it serves, e.g. window = "07"'],
    ),
    (
        "duplicate device id",
        GOOD_NODE + '[[device]]\nid = "t1"\nkind = "terminal"\ntransport = "mqtt"\n'
        '[[device]]\nid = "t1"\nkind = "terminal"\ntransport = "mqtt"\n',
        ['device[1].id: "t1" is already used by device[0]'],
    ),
    (
        "wrong transport for kind",
        GOOD_NODE + '[[device]]\nid = "t1"\nkind = "terminal"\ntransport = "serial"\nport = "/dev/ttyS0"\n',
        ["device[0].transport: a terminal cannot use transport \"serial\" (use 'mqtt')"],
    ),
    (
        "two rating devices on one window",
        GOOD_NODE + '[[device]]\nid = "p1"\nkind = "pad"\ntransport = "mqtt"\nwindow = "07"\n'
        '[[device]]\nid = "p2"\nkind = "pad"\ntransport = "mqtt"\nwindow = "07"\n',
        ['device[1].window: window "07" already has rating device "p1"'],
    ),
    (
        "same keypad address twice on a port",
        GOOD_NODE
        + '[[device]]\nid = "k1"\nkind = "keypad"\ntransport = "serial"\nport = "/dev/ttyS0"\nwindow = "01"\naddress = 3\n'
        '[[device]]\nid = "k2"\nkind = "keypad"\ntransport = "serial"\nport = "/dev/ttyS0"\nwindow = "02"\naddress = 3\n',
        ['device[1].address: address 3 on /dev/ttyS0 is already used by keypad "k1"'],
    ),
    (
        "keypads on one line with different bauds",
        GOOD_NODE
        + '[[device]]\nid = "k1"\nkind = "keypad"\ntransport = "serial"\nport = "/dev/ttyS0"\nwindow = "01"\naddress = 1\n'
        '[[device]]\nid = "k2"\nkind = "keypad"\ntransport = "serial"\nport = "/dev/ttyS0"\nwindow = "02"\naddress = 2\nbaud = 19200\n',
        ['device[1].baud: keypads on one line share its baud rate: "k1" on /dev/ttyS0 uses 9600'],
    ),
    (
        "not TOML",
        "[node\n",
        ["not valid TOML: Expected ']' at the end of a table declaration (at line 1, column 6)"],
    ),
    (
        "several errors at once",
        '[node]\nid = ""\nhall_code = 370102\n',
        [
            "node.id: expected 1 to 64 letters, digits, '_' or '-', got ''",
            "node.hall_code: expected text in quotes, got 370102",
        ],
    ),
    ("array where a table belongs", "node = [1]\n", ["node: expected a table ([name] or name = { ... })"]),
    (
        "central over plain http to another host (§10)",
        GOOD_NODE + '[central]\nurl = "http://hcp.example.gov.cn/hallhub"\n',
        [
            (
                'central.url: "http://hcp.example.gov.cn/hallhub" is plain http to another host: the token '
                "and every record would cross the network in cleartext; use https:// (http is allowed only "
                "to a loopback address)"
            )
        ],
    ),
    (
        "central url with credentials in it",
        GOOD_NODE + '[central]\nurl = "https://user:pw@hcp.example.gov.cn/"\n',
        ["central.url: put the token in central.token_file, not in the URL"],
    ),
    (
        "api on the hall network without a control token (§9)",
        GOOD_NODE + '[api]\nlisten = "0.0.0.0:8780"\n',
        [
            (
                'api.control_token: api.listen "0.0.0.0:8780" is reachable from the hall network: set '
                "control_token_file (a random secret, e.g. `openssl rand -hex 24`) so that only window "
                "PCs and staff holding it can start evaluations, sign staff in or close alerts"
            )
        ],
    ),
    (
        "control token equal to the pull token",
        GOOD_NODE
        + '[api]\npull_token = "same-secret-0123456789"\ncontrol_token = "same-secret-0123456789"\n',
        ["api.control_token: must differ from api.pull_token"],
    ),
    (
        "short control token",
        GOOD_NODE + '[api]\ncontrol_token = "abc"\n',
        ["api.control_token: too short: use at least 16 random characters"],
    ),
    (
        "allowed host with a scheme",
        GOOD_NODE + '[api]\nallowed_hosts = ["http://10.1.2.3"]\n',
        [
            (
                "api.allowed_hosts[0]: expected a host name or address without scheme or path "
                '(e.g. "10.1.2.3" or "hub.hall.local:8780"), got "http://10.1.2.3"'
            )
        ],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [(t, e) for _n, t, e in BROKEN], ids=[n for n, _t, _e in BROKEN]
)
def test_broken_config_messages(tmp_path: Path, text: str, expected: list[str]) -> None:
    assert errors_of(tmp_path, text) == expected


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"node.toml: file not found \(write one from config/node.example.toml\)"
    ):
        load_config(tmp_path / "node.toml")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe[node]")
    with pytest.raises(ConfigError, match=r"bad.toml: not UTF-8 text \(byte 0\)"):
        load_config(bad)


def test_secret_files_are_read_and_errors_named(tmp_path: Path) -> None:
    token = tmp_path / "pull-token"
    token.write_text("s3cret\n")
    path = tmp_path / "node.toml"
    path.write_text(
        GOOD_NODE + f'[api]\npull_token_file = "{token}"\n[broker]\npassword_file = "{tmp_path}/nope"\n'
    )
    config = load_config(path)
    with pytest.raises(
        ConfigError, match=r"broker.password_file: cannot read .*/nope: No such file or directory"
    ):
        resolve_secrets(config, str(path))
    path.write_text(GOOD_NODE + f'[api]\npull_token_file = "{token}"\n')
    assert resolve_secrets(load_config(path), str(path)).pull_token == "s3cret"


def test_config_check_command(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["config", "check", str(EXAMPLE)])
    assert ok.exit_code == 0, ok.output
    assert "node hall-370102-01" in ok.output
    assert "kp-07" in ok.output
    bad = tmp_path / "node.toml"
    bad.write_text(GOOD_NODE + "[broker]\nport = 0\n")
    failed = runner.invoke(app, ["config", "check", str(bad)])
    assert failed.exit_code == 1
    assert "broker.port: expected a value of at least 1, got 0" in failed.output


def test_http_central_is_allowed_only_to_loopback_and_https_anywhere(tmp_path: Path) -> None:
    for url in ("http://127.0.0.1:9000", "http://[::1]:9000/x", "http://localhost", "https://hcp.gov.cn"):
        path = tmp_path / "node.toml"
        path.write_text(GOOD_NODE + f'[central]\nurl = "{url}"\n', encoding="utf-8")
        assert load_config(path).central.url == url


def test_lan_listen_with_a_control_token_file_is_accepted(tmp_path: Path) -> None:
    token = tmp_path / "control-token"
    token.write_text("window-pc-secret-0123456789\n", encoding="utf-8")
    path = tmp_path / "node.toml"
    path.write_text(
        GOOD_NODE + f'[api]\nlisten = "0.0.0.0:8780"\ncontrol_token_file = "{token}"\n', encoding="utf-8"
    )
    secrets = resolve_secrets(load_config(path), str(path))
    assert secrets.control_token == "window-pc-secret-0123456789"
    token.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"api\.control_token_file: .* is empty"):
        resolve_secrets(load_config(path), str(path))


# Issue 13, defect 11: each of these printed `ok` in `config check`, then `run` died with a traceback
# from Hub.__init__ (the national mapping's own checks). Now `load_config` rejects them, by the same
# rules that the mapping applies (hub.config's *_problem functions).
RUN_REJECTS = [
    (
        "pf code 8",
        "[national]\npf = {qr = 8}\n",
        (
            "national.pf.qr: expected a channel code from 1 to 7 (1 PC, 2 mobile, 3 QR code, 4 evaluator at the"
            " window, 5 hall terminal, 6 and 7 as the province defines them), got 8"
        ),
    ),
    (
        "reasons value with a comma",
        '[national]\nreasons = {R1 = "101,102"}\n',
        (
            "national.reasons.R1: expected one platform evalDetail code, not empty and without commas (evalDetail"
            " lists codes separated by commas), got '101,102'"
        ),
    ),
    (
        "5-digit area code",
        '[national]\narea_code = "37010"\n',
        (
            'national.area_code: expected a 6-digit administrative division code such as "370102" (or the 12-digit'
            " statistical code), or \"\" for node.hall_code, got '37010'"
        ),
    ),
    (
        "time-zone typo",
        '[national]\ntimezone = "Asia/Shangai"\n',
        (
            'national.timezone: expected an IANA time zone name such as "Asia/Shanghai" (as in /usr/share/zoneinfo),'
            " got 'Asia/Shangai'"
        ),
    ),
]


@pytest.mark.parametrize(
    ("section", "expected"), [(t, e) for _n, t, e in RUN_REJECTS], ids=[n for n, _t, _e in RUN_REJECTS]
)
def test_config_rejects_what_run_rejects(tmp_path: Path, section: str, expected: str) -> None:
    assert errors_of(tmp_path, GOOD_NODE + section) == [expected]


@pytest.mark.parametrize(
    ("section", "expected"), [(t, e) for _n, t, e in RUN_REJECTS], ids=[n for n, _t, _e in RUN_REJECTS]
)
def test_run_prints_the_config_error_not_a_traceback(tmp_path: Path, section: str, expected: str) -> None:
    """`hallhub run` in its own process: the error line naming the key, exit 1, no traceback."""
    path = tmp_path / "node.toml"
    path.write_text(
        f'[node]\nid = "n1"\nhall_code = "370102"\ndata_dir = "{tmp_path}/data"\n'
        f'secret_file = "{tmp_path}/secret"\n[api]\nlisten = "127.0.0.1:0"\n{section}',
        encoding="utf-8",
    )
    result = run_hallhub("run", "--config", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.splitlines() == [f"error {path}: {expected}"]
    assert not (tmp_path / "data").exists()  # refused before anything was created


def test_run_with_a_data_dir_it_cannot_create_says_so_not_a_traceback(tmp_path: Path) -> None:
    """A data_dir under a file (or on a read-only mount) used to end `hallhub run` in a traceback."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("", encoding="utf-8")
    path = tmp_path / "node.toml"
    path.write_text(
        f'[node]\nid = "n1"\nhall_code = "370102"\ndata_dir = "{blocker}/data"\n'
        f'secret_file = "{tmp_path}/secret"\n[api]\nlisten = "127.0.0.1:0"\n',
        encoding="utf-8",
    )
    result = run_hallhub("run", "--config", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert f"cannot open the outbox {blocker}/data/outbox.db" in result.stderr
    assert "node.data_dir" in result.stderr


def test_config_values_are_shown_as_text_not_markup(tmp_path: Path) -> None:
    bad = tmp_path / "node.toml"
    bad.write_text('[node]\nid = "n1"\nhall_code = "[/x]"\n', encoding="utf-8")
    failed = CliRunner().invoke(app, ["config", "check", str(bad)])
    assert failed.exit_code == 1, failed.output
    assert failed.exception is None or isinstance(failed.exception, SystemExit)
    assert "got '[/x]'" in failed.output


def test_every_unreadable_secret_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        GOOD_NODE
        + f'[broker]\npassword_file = "{tmp_path}/nope"\n[central]\ntoken_file = "{tmp_path}/gone"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        resolve_secrets(load_config(path), str(path))
    assert [p.key for p in info.value.problems] == ["broker.password_file", "central.token_file"]


def test_run_with_an_unusable_secret_file_prints_the_error_not_a_traceback(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("not hex\n", encoding="utf-8")
    path = tmp_path / "node.toml"
    path.write_text(
        f'[node]\nid = "n1"\nhall_code = "370102"\ndata_dir = "{tmp_path}/data"\nsecret_file = "{secret}"\n'
        '[api]\nlisten = "127.0.0.1:0"\n',
        encoding="utf-8",
    )
    result = run_hallhub("run", "--config", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.startswith(f"error {path}: node.secret_file: node secret file {secret}: ")
