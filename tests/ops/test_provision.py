"""`hallhub device add` on an installed node: what it writes, and what it refuses without writing."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import msgspec
import pytest

from hub.config import load_config
from hub.ops import provision
from hub.ops.provision import ACL_MARKER, ProvisionError, add_device, passwd_users


class Node:
    """The files `device add` touches on an installed node."""

    def __init__(self, root: Path) -> None:
        self.config = root / "etc/hallhub/node.toml"
        self.broker_dir = root / "etc/mosquitto/hallhub"
        self.passwd = self.broker_dir / "devices.passwd"
        self.acl = self.broker_dir / "devices.acl"

    def add(self, device_id: str, kind: str, window: str | None = None) -> provision.Credentials:
        """add_device on this node."""
        return add_device(device_id, kind, window=window, config_path=self.config, broker_dir=self.broker_dir)

    def snapshot(self) -> tuple[bytes, bytes, bytes]:
        """The three files' bytes."""
        return self.config.read_bytes(), self.passwd.read_bytes(), self.acl.read_bytes()


@pytest.fixture
def node(installed: Path) -> Node:
    """An installed node (install-node --skip-venv) with the example node.toml."""
    return Node(installed)


def test_adds_a_device_to_node_toml_and_the_broker(node: Node) -> None:
    example_text = node.config.read_text()
    mode = stat.S_IMODE(node.config.stat().st_mode)
    creds = node.add("pad-10", "pad", "10")

    text = node.config.read_text()
    assert text.startswith(example_text.rstrip("\n"))  # comments and layout kept: appended, not rewritten
    config = load_config(node.config)
    device = msgspec.structs.asdict(config.devices_by_id["pad-10"])
    assert {key: value for key, value in device.items() if value is not None} == {
        "id": "pad-10",
        "kind": "pad",
        "transport": "mqtt",
        "window": "10",
    }
    assert stat.S_IMODE(node.config.stat().st_mode) == mode == 0o640
    assert "pad-10" in passwd_users(node.passwd)
    assert creds.password not in node.passwd.read_text()
    assert len(creds.password) >= 24
    assert stat.S_IMODE(node.passwd.stat().st_mode) == 0o640
    assert "pad-10" not in node.acl.read_text()  # the %u patterns cover a device
    assert creds.publishes[1] == "hall/v1/hall-370102-01/dev/pad-10/rating"
    assert creds.reads == tuple(
        f"hall/v1/hall-370102-01/dev/pad-10/{leaf}" for leaf in ("ack", "cmd", "error")
    )


def test_a_window_pc_gets_an_acl_block_and_no_device(node: Node) -> None:
    before = node.config.read_bytes()
    node.add("window-07", "window", "07")
    node.add("queue", "queue")
    assert node.config.read_bytes() == before
    tail = node.acl.read_text().split(ACL_MARKER, 1)[1]
    for user, window in (("window-07", "07"), ("queue", "+")):
        assert (
            f"user {user}\n"
            f"topic write hall/v1/+/window/{window}/evaluate\n"
            f"topic write hall/v1/+/window/{window}/staff\n"  # §12: sign in, sign out, pause, resume
            f"topic read hall/v1/+/window/{window}/session\n"
            f"topic read hall/v1/+/window/{window}/state\n"
            f"topic read hall/v1/+/window/{window}/error\n"
        ) in tail
    assert {"window-07", "queue"} <= passwd_users(node.passwd)


@pytest.mark.parametrize(
    ("device_id", "kind", "window", "message"),
    [
        ("kp-07", "terminal", None, '"kp-07" is already in'),  # in the example node.toml
        ("pad-11", "pad", "09", 'window "09" already has rating device "pad-09"'),
        ("pad-11", "pad", None, "a rating pad serves one window: add --window"),
        ("window-07", "window", None, "a window PC serves one window: add --window"),
        ("queue", "queue", "07", "leave out --window"),
        ("hub", "terminal", None, "reserved for the hub"),
        ("term 1", "terminal", None, "is not a valid id"),
        ("pad-11", "pad", "07/#", "is not a valid window"),
        ("kp-99", "keypad", None, "Serial and PC/SC devices (keypad, idcard, pcsc) are added to node.toml"),
    ],
)
def test_refusals_change_nothing(
    node: Node, device_id: str, kind: str, window: str | None, message: str
) -> None:
    before = node.snapshot()
    with pytest.raises(ProvisionError) as caught:
        node.add(device_id, kind, window)
    assert message in str(caught.value)
    assert node.snapshot() == before


def test_an_existing_account_is_a_duplicate(node: Node) -> None:
    node.add("window-07", "window", "07")
    before = node.snapshot()
    with pytest.raises(ProvisionError, match="already has a broker account"):
        node.add("window-07", "terminal")
    assert node.snapshot() == before


def test_a_broken_node_toml_is_reported_not_extended(node: Node) -> None:
    node.config.write_text(node.config.read_text().replace('hall_code = "370102"', 'hall_code = "37"'))
    before = node.snapshot()
    with pytest.raises(ProvisionError) as caught:
        node.add("term-09", "terminal")
    assert "fix " in str(caught.value)
    assert "node.hall_code" in str(caught.value)
    assert node.snapshot() == before


def test_a_failed_config_write_removes_the_new_account(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    real_replace = provision._replace_file

    def failing_replace(path: Path, text: str) -> None:
        if path == node.config:
            raise OSError(28, "No space left on device")
        real_replace(path, text)

    monkeypatch.setattr(provision, "_replace_file", failing_replace)
    before = node.snapshot()
    with pytest.raises(OSError, match="No space left"):
        node.add("term-09", "terminal")
    assert "term-09" not in passwd_users(node.passwd)
    assert node.config.read_bytes() == before[0]


def test_appended_toml_is_valid_after_many_adds(node: Node) -> None:
    for n in range(5):
        node.add(f"t-{n:02d}", "terminal")
    raw = tomllib.loads(node.config.read_text())
    ids = [device["id"] for device in raw["device"]]
    assert ids[-5:] == [f"t-{n:02d}" for n in range(5)]
    assert len(passwd_users(node.passwd)) == 5


def test_needs_an_installed_broker_dir(node: Node, tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="set up the node broker first with scripts/install-node"):
        add_device("term-09", "terminal", config_path=node.config, broker_dir=tmp_path)
