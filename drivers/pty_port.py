"""A pty pair posing as a serial port, for the device simulators and the tests: plug, unplug, replug.

Every simulator (keypads, ID-card reader, QR scanner) stands on the master side of a raw pty pair;
the driver opens a stable symlink to the slave side, as it would `/dev/serial/by-id/...`. Pulling
the adapter closes both ends and removes the link; plugging it back makes a new pair behind the
same link. `PtyMasterTransport` serves the master side to an `asyncio.Protocol`, so a simulator can
use the driver's own framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import tty
from pathlib import Path
from typing import Final, Self

__all__ = ["PtyMasterTransport", "PtyPort"]

_READ_SIZE: Final = 4096


class PtyPort:
    """A pty pair posing as a serial port at `link`, a symlink to the pty's slave device.

    The simulator keeps the slave open too, so that the master never sees EIO while the driver
    has the port closed; `unplug` closes both ends, which the driver sees as a vanished device.
    """

    def __init__(self, link: str | os.PathLike[str]) -> None:
        self.link = Path(link)
        self._master: int | None = None
        self._slave: int | None = None

    @property
    def plugged(self) -> bool:
        """True while the pair exists and the link points at it."""
        return self._master is not None

    @property
    def master_fd(self) -> int:
        """The master end (the device's side, non-blocking); only while plugged."""
        if self._master is None:
            raise RuntimeError(f"pty port {self.link} is unplugged")
        return self._master

    def plug(self) -> int:
        """Create a new raw pty pair and point the link at its slave; return the master fd."""
        if self._master is not None:
            raise RuntimeError(f"pty port {self.link} is already plugged")
        master, slave = os.openpty()
        try:
            tty.setraw(master)
            tty.setraw(slave)
            os.set_blocking(master, False)
            self.link.parent.mkdir(parents=True, exist_ok=True)
            temp = self.link.with_name(f".{self.link.name}.{os.getpid()}.tmp")
            temp.unlink(missing_ok=True)
            temp.symlink_to(os.ttyname(slave))
            temp.replace(self.link)  # atomic: the link never dangles half-made
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self._master, self._slave = master, slave
        return master

    def unplug(self) -> None:
        """Close both ends and remove the link, as pulling a USB-serial adapter would."""
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None
        self.link.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        """Plug in."""
        self.plug()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Unplug."""
        self.unplug()


class PtyMasterTransport(asyncio.Transport):
    """Reads and writes a non-blocking pty master for a protocol; the fd stays its owner's."""

    def __init__(self, fd: int, protocol: asyncio.Protocol, *, echo: bool = False) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._fd = fd
        self._protocol = protocol
        self._echo = echo
        self._pending = bytearray()
        self._closing = False
        self._loop.add_reader(fd, self._read_ready)
        self._loop.call_soon(protocol.connection_made, self)

    def is_closing(self) -> bool:
        """True once `close` was called or the pty failed."""
        return self._closing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write now if the pty takes it, else queue it until it is writable."""
        if self._closing:
            return
        if self._pending:
            self._pending += data
            return
        try:
            written = os.write(self._fd, data)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self._shut(exc)
            return
        if written < len(data):
            self._pending += bytes(data)[written:]
            self._loop.add_writer(self._fd, self._write_ready)

    def close(self) -> None:
        """Stop reading and writing; the protocol's `connection_lost(None)` follows."""
        self._shut(None)

    def abort(self) -> None:
        """Same as `close`: pending bytes are dropped."""
        self._shut(None)

    def _read_ready(self) -> None:
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._shut(None if exc.errno == errno.EIO else exc)
            return
        if data:
            if self._echo:  # a two-wire RS-485 adapter hears its own transmission
                self.write(data)
            self._protocol.data_received(data)

    def _write_ready(self) -> None:
        try:
            written = os.write(self._fd, self._pending)
        except BlockingIOError:
            return
        except OSError as exc:
            self._shut(exc)
            return
        del self._pending[:written]
        if not self._pending:
            self._loop.remove_writer(self._fd)

    def _shut(self, exc: Exception | None) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._pending.clear()
        self._loop.call_soon(self._protocol.connection_lost, exc)
