"""A node laid out by scripts/install-node under a temporary prefix, and its broker as shipped.

`NodeBroker` runs Mosquitto with the installed `/etc/mosquitto/hallhub/mosquitto.conf`, changed only
where a test must differ from a node: the paths point into the prefix, and both listeners get free
ports on 127.0.0.1 (the LAN listener's "every address" becomes loopback). Each replacement must match
exactly once, so a change to the shipped file's shape fails here loudly instead of testing something
else. As root, Mosquitto drops to its own user, as on a node: the installed files' owners and modes
must let it read them.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from hub.ops.broker import free_port, mosquitto_binary, port_open

REPO = Path(__file__).resolve().parents[2]
INSTALL_NODE = REPO / "scripts" / "install-node"
ETC_BROKER = "/etc/mosquitto/hallhub/"


def run_install(prefix: Path, *args: str, as_user: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run scripts/install-node (as `as_user` through setpriv, when given); never raises on failure."""
    command = [str(INSTALL_NODE), "--prefix", str(prefix), *args]
    if as_user is not None:
        command = ["setpriv", f"--reuid={as_user}", f"--regid={as_user}", "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def _replace_once(text: str, old: str, new: str) -> str:
    count = text.count(old)
    assert count == 1, f"expected {old!r} once in the shipped mosquitto.conf, found it {count} times"
    return text.replace(old, new)


@dataclass
class NodeBroker:
    """Mosquitto with the node's installed config, on free loopback ports."""

    prefix: Path
    hub_port: int = 0
    lan_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def broker_dir(self) -> Path:
        """The installed /etc/mosquitto/hallhub."""
        return self.prefix / ETC_BROKER.strip("/")

    @property
    def log_path(self) -> Path:
        """Mosquitto's stderr."""
        return self.prefix / "mosquitto.log"

    def config_text(self) -> str:
        """The installed config, adapted to the prefix and the test's ports."""
        lines = (self.broker_dir / "mosquitto.conf").read_text(encoding="utf-8").splitlines()
        settings = [n for n, line in enumerate(lines) if ETC_BROKER in line and not line.startswith("#")]
        assert len(settings) == 4, "the shipped config should name its four account files"
        for n in settings:
            lines[n] = lines[n].replace(ETC_BROKER, f"{self.broker_dir}/")
        text = "\n".join(lines) + "\n"
        persist = self.prefix / "var/lib/mosquitto"
        text = _replace_once(
            text, "persistence_location /var/lib/mosquitto/", f"persistence_location {persist}/"
        )
        text = _replace_once(text, "\nlistener 1884 127.0.0.1\n", f"\nlistener {self.hub_port} 127.0.0.1\n")
        return _replace_once(text, "\nlistener 1883\n", f"\nlistener {self.lan_port} 127.0.0.1\n")

    def start(self, timeout_s: float = 10.0) -> None:
        """Start Mosquitto and wait until both listeners accept connections."""
        binary = mosquitto_binary()
        assert binary is not None, "mosquitto is not installed (Debian package mosquitto)"
        self.hub_port = self.hub_port or free_port()
        self.lan_port = self.lan_port or free_port()
        persist = self.prefix / "var/lib/mosquitto"
        persist.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(persist, pwd.getpwnam("mosquitto").pw_uid, grp.getgrnam("mosquitto").gr_gid)
        conf = self.prefix / "mosquitto-test.conf"
        conf.write_text(self.config_text(), encoding="utf-8")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"mosquitto exited: {self.log_path.read_text(errors='replace')[-2000:]}")
            if port_open("127.0.0.1", self.hub_port) and port_open("127.0.0.1", self.lan_port):
                return
            time.sleep(0.02)
        self.stop()
        raise AssertionError(f"mosquitto did not listen within {timeout_s} s: {self.log_path.read_text()}")

    def reload(self) -> None:
        """SIGHUP, as `systemctl reload mosquitto` sends: re-read the accounts and ACLs."""
        assert self.process is not None
        size = self.log_path.stat().st_size
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with self.log_path.open("rb") as log:
                log.seek(size)
                if b"Reloading config" in log.read():
                    time.sleep(0.1)
                    return
            time.sleep(0.02)
        raise AssertionError(f"mosquitto did not reload: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def log(self) -> str:
        """What Mosquitto logged so far."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""
