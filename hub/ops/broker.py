"""A private Mosquitto for the demo and the tests: a config we write, a free loopback port."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final


class BrokerError(Exception):
    """Mosquitto is missing or would not start; the message says what to do."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    """True if something accepts TCP connections there."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def mosquitto_binary() -> str | None:
    """Path to mosquitto, looking in sbin too (Debian installs it there)."""
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )


_PR_SET_PDEATHSIG: Final = 1  # <linux/prctl.h>


def _terminated_with(parent_pid: int) -> Callable[[], None]:
    """A `preexec_fn`: the child is sent SIGTERM when the thread that started it ends, `kill -9` of
    the whole process included (Linux `prctl(PR_SET_PDEATHSIG)`).

    The standard library has no wrapper for the one call, and a package for it is not worth a
    dependency. The function is looked up before the fork, so the child only calls it.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before the signal was armed
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


@dataclass
class MosquittoBroker:
    """A Mosquitto process on 127.0.0.1:`port` with persistence in `workdir`.

    `extra` holds config lines (auth, ACL); the queue limit is lifted from Mosquitto's default of
    1000 messages, which silently drops QoS-1 messages for a slow or restarting subscriber.
    `ends_with_starter`: the broker is terminated when the thread that called `start` ends, even by
    `kill -9` (the demo's broker must not outlive the demo; start it from a thread that lives as
    long as the program, e.g. the main thread).
    """

    workdir: Path
    port: int = 0
    extra: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    ends_with_starter: bool = False

    def config_text(self) -> str:
        """The mosquitto.conf this broker runs with."""
        anonymous = not any(line.startswith(("password_file", "allow_anonymous")) for line in self.extra)
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            f"log_dest file {self.workdir}/mosquitto.log",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_queued_messages 0",
            "max_queued_bytes 268435456",
            "max_inflight_messages 1000",
            "message_size_limit 2097152",
            # Without it Mosquitto's small writes (PUBACKs, acks) wait for delayed ACKs: ~40 ms a hop.
            "set_tcp_nodelay true",
            *(["allow_anonymous true"] if anonymous else []),
            # Started as root, Mosquitto drops to the `mosquitto` user, which cannot write this
            # private workdir: persistence would silently not happen. This broker is ours alone.
            *(
                ["user root"]
                if os.geteuid() == 0 and not any(x.startswith("user ") for x in self.extra)
                else []
            ),
            *self.extra,
        ]
        return "\n".join(lines) + "\n"

    def start(self, timeout_s: float = 10.0) -> None:
        """Write the config, start mosquitto, and wait until it accepts connections."""
        binary = mosquitto_binary()
        if binary is None:
            raise BrokerError("mosquitto is not installed: run `sudo apt-get install mosquitto`")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config_text())
        # Its own process group: a Ctrl-C at the terminal reaches the program that started it (which
        # stops it last, after its clients have disconnected), not the broker under their feet.
        self.process = subprocess.Popen(
            [binary, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            process_group=0,
            preexec_fn=_terminated_with(os.getpid()) if self.ends_with_starter else None,  # noqa: PLW1509
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                if self.process.stderr is not None:
                    self.process.stderr.close()
                log = (
                    (self.workdir / "mosquitto.log").read_text(errors="replace")[-500:]
                    if (self.workdir / "mosquitto.log").exists()
                    else ""
                )
                raise BrokerError(f"mosquitto exited at start: {err.strip()} {log.strip()}".strip())
            if port_open("127.0.0.1", self.port):
                return
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on 127.0.0.1:{self.port} within {timeout_s:.0f} s")

    def stop(self) -> None:
        """Terminate gracefully (persisting its state)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash or power cut would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def restart(self) -> None:
        """Stop and start on the same port with the same persistence."""
        self.stop()
        self.start()


class EmbeddedBroker:
    """The demo's fallback where Mosquitto is absent and cannot be installed: amqtt in-process.

    Fine for a demo (about 4k QoS-1 messages/s), not for a node: no ACL, no persistence.
    """

    def __init__(self, port: int = 0) -> None:
        self.port = port or free_port()
        self._broker: Any = None

    async def start(self) -> None:
        """Start amqtt on 127.0.0.1:`port`; BrokerError if amqtt is not installed."""
        try:
            from amqtt.broker import Broker  # noqa: PLC0415 (optional extra, imported only when needed)
        except ImportError:
            raise BrokerError(
                "neither mosquitto nor the amqtt fallback is installed: run `sudo apt-get install mosquitto`"
                " or `pip install hallhub[demo-broker]`"
            ) from None
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._broker = Broker(config)
        await self._broker.start()

    async def stop(self) -> None:
        """Shut the broker down."""
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
