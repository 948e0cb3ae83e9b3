"""The one serial opener: `tcp://` and `socket://` open like a port (zigpy's `serial.py` does the same)."""

from __future__ import annotations

import asyncio

from drivers.serial_port import open_serial_streams, serial_url


def test_tcp_is_pyserial_socket_and_other_ports_pass_through() -> None:
    assert serial_url("tcp://127.0.0.1:4001") == "socket://127.0.0.1:4001"
    assert serial_url("socket://127.0.0.1:4001") == "socket://127.0.0.1:4001"
    assert serial_url("/dev/serial/by-id/usb-1") == "/dev/serial/by-id/usb-1"


async def test_a_tcp_fake_device_is_read_and_written_like_a_port() -> None:
    heard: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def device(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"PONG\r")
        await writer.drain()
        heard.set_result(await reader.readexactly(5))
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(device, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await open_serial_streams(f"tcp://127.0.0.1:{port}", 9600, exclusive=True)
        try:
            assert await reader.readexactly(5) == b"PONG\r"
            writer.write(b"PING\r")
            assert await asyncio.wait_for(heard, 5.0) == b"PING\r"
        finally:
            writer.close()
    finally:
        server.close()
        await server.wait_closed()
