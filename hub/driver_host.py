"""Runs the configured serial, PC/SC and camera drivers and turns their events into records.

This is the hub's side of `drivers.base.EventSink`: a driver hands over an event and awaits the
outcome; the host decides what it means (an evaluation in a session, a card read, a scan).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from itertools import groupby
from typing import TYPE_CHECKING, Any

from contract.records import Kind, Record
from drivers.base import (
    CitizenIdentifier,
    CitizenIdentity,
    DeviceEvent,
    DeviceFault,
    DeviceOffline,
    DeviceOnline,
    FrameDropped,
    Outcome,
)
from drivers.idcard.events import CardRead
from drivers.keypad.events import KeyPressed
from drivers.pcsc.events import CardIdentified, ReaderAttached, ReaderDetached
from drivers.qr.events import CodeScanned
from hub.config import DeviceSection, HubConfig
from hub.devices import DeviceRegistry
from hub.intake import Intake
from hub.metrics import HubMetrics
from hub.sessions import PromptPort, SessionManager
from hub.store.outbox import DedupKey, Duplicate, Rejected, Stored, StoreUnavailable

if TYPE_CHECKING:
    from drivers.keypad.driver import KeypadLineDriver

# The drivers themselves (pyserial, tenacity, pyscard, OpenCV) are imported in `runners` only for
# the devices configured, for memory: a node with only MQTT devices loads none of them. Their
# events are recognised through the drivers' light `events` modules above.

log = logging.getLogger(__name__)

Runner = Callable[[], Coroutine[Any, Any, None]]


class DriverHost:
    """Builds one driver per device (one per line for keypads) and serves as their event sink."""

    def __init__(
        self,
        config: HubConfig,
        intake: Intake,
        registry: DeviceRegistry,
        metrics: HubMetrics,
        sessions: SessionManager,
        identifier: CitizenIdentifier,
    ) -> None:
        self.config = config
        self.intake = intake
        self.registry = registry
        self.metrics = metrics
        self.sessions = sessions
        self.identifier = identifier
        self.keypad_lines: dict[str, KeypadLineDriver] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        sessions.bind("serial", PromptPort(self._prompt_keypad, self._cancel_keypad))

    def runners(self) -> list[tuple[str, Runner]]:
        """(name, coroutine function) for every driver the config asks for."""
        runners: list[tuple[str, Runner]] = []
        keypads = sorted((d for d in self.config.device if d.kind == "keypad"), key=lambda d: d.port or "")
        if keypads:
            from drivers.keypad.driver import KeypadLineDriver  # noqa: PLC0415 (lazy, for memory)
        for port, group in groupby(keypads, key=lambda d: d.port or ""):
            members = list(group)
            line = KeypadLineDriver(port, members[0].baud or 9600, {d.address or 1: d.id for d in members})
            for device in members:
                self.keypad_lines[device.id] = line
            runners.append((f"keypad-line {port}", self._runner(line)))
        for device in self.config.device:
            driver: Any = None
            if device.kind == "idcard":
                from drivers.idcard.driver import IdCardReaderDriver  # noqa: PLC0415 (lazy, for memory)

                driver = IdCardReaderDriver(
                    device.id, device.port or "", device.baud or 115200, identifier=self.identifier
                )
            elif device.kind == "qr" and device.transport == "serial":
                from drivers.qr.serial import SerialScannerDriver  # noqa: PLC0415 (lazy, for memory)

                driver = SerialScannerDriver(
                    device.id,
                    device.port or "",
                    baudrate=device.baud or 9600,
                    terminator=device.terminator or "any",
                    encoding=device.encoding or "auto",
                )
            elif device.kind == "qr" and device.transport == "camera":
                from drivers.qr.camera import CameraScannerDriver  # noqa: PLC0415 (OpenCV costs ~46 MB: load only for cameras)

                text = device.source or ""
                source: int | str = int(text) if text.isdigit() else text
                driver = CameraScannerDriver(
                    device.id, source, fps=device.fps or 5, decoder=device.decoder or "zxing"
                )
            elif device.kind == "pcsc":
                from drivers.pcsc.driver import PcscDriver  # noqa: PLC0415 (pyscard needs pcscd: load only for PC/SC)

                driver = PcscDriver(device.id, device.reader, self.identifier)
            if driver is not None:
                runners.append((f"{device.kind} {device.id}", self._runner(driver)))
        return runners

    def _runner(self, driver: Any) -> Runner:
        async def run() -> None:
            await driver.run(self)

        return run

    # -- prompting keypads ---------------------------------------------------------------------

    async def _prompt_keypad(self, device: DeviceSection, session: int, timeout_s: int, text: str) -> None:
        await self.keypad_lines[device.id].prompt(device.id, session, min(timeout_s, 255), text)

    async def _cancel_keypad(self, device: DeviceSection, session: int) -> None:
        await self.keypad_lines[device.id].cancel(device.id, session)

    # -- EventSink -----------------------------------------------------------------------------

    def submit(self, event: DeviceEvent) -> asyncio.Future[Outcome]:
        """Hand an event to the hub; the future resolves once the outcome is durable."""
        return asyncio.ensure_future(self._submit(event))

    async def _submit(self, event: DeviceEvent) -> Outcome:
        device = self.config.devices_by_id.get(event.device_id)
        if device is None:
            log.error("driver event from unconfigured device %s", event.device_id)
            return Outcome.REJECTED
        self.registry.seen(device.id)
        try:
            if isinstance(event, KeyPressed):
                return await self._key(device, event)
            if isinstance(event, CardRead):
                data = self._card_data(device, str(event.card_type), event.identity)
                data.update(sex=str(event.sex), birth_year=event.birth_year, valid_until=event.valid_until)
                return await self._store_card(data, event.identity)
            if isinstance(event, CardIdentified):
                data = self._card_data(device, str(event.card_type), event.identity)
                data.update(uid=event.uid, reader=event.reader)
                return await self._store_card(data, event.identity)
            if isinstance(event, CodeScanned):
                return await self._scan(device, event)
        except StoreUnavailable as exc:
            log.error("%s: event not stored (%s); the device will be asked again", device.id, exc)
            return Outcome.FAILED
        log.warning("%s: unexpected event %s", device.id, type(event).__name__)
        return Outcome.REJECTED

    async def _key(self, device: DeviceSection, event: KeyPressed) -> Outcome:
        async with self.sessions.lock_for(device.id):
            return await self._key_locked(device, event)

    async def _key_locked(self, device: DeviceSection, event: KeyPressed) -> Outcome:
        context = self.sessions.context(device.id, event.session)
        window = context.window if context else device.window
        records = self.intake.evaluation(
            device,
            level=event.level,
            reasons=list(event.reasons),
            case_no=context.case_no if context else None,
            item_code=context.item_code if context else None,
            item_name=context.item_name if context else None,
            window=window,
            staff_id=context.staff_id if context else None,
            session=event.session or None,
            citizen=self.sessions.take_citizen(window),
            flags=self.sessions.flags_for(device.id, event.session),
        )
        result = await self.intake.store(records, DedupKey(device.id, event.dedup_key, event.dedup_window_s))
        if isinstance(result, Stored):
            await self.sessions.rated(device.id, event.session, event.level, result.records[0].id)
            self._spawn(self._thank(device))
            return Outcome.STORED
        if isinstance(result, Duplicate):
            return Outcome.DUPLICATE
        assert isinstance(result, Rejected)
        return Outcome.REJECTED

    async def _thank(self, device: DeviceSection) -> None:
        """After the ACK of a KEY, thank the citizen on the keypad's display."""
        with contextlib.suppress(Exception):
            await self.keypad_lines[device.id].show(device.id, self.config.evaluation.thanks_text)

    def _card_data(
        self, device: DeviceSection, card_type: str, identity: CitizenIdentity | None
    ) -> dict[str, Any]:
        if identity is not None and device.window:
            self.sessions.remember_citizen(device.window, identity)
        return {
            "device_id": device.id,
            "window": device.window,
            "node_id": self.config.node.id,
            "card_type": card_type,
            "citizen_masked": identity.masked if identity else None,
            "citizen_ref": identity.ref if identity else None,
        }

    async def _store_card(self, data: dict[str, Any], identity: CitizenIdentity | None) -> Outcome:
        record = Record(kind=Kind.CARD, data=data, sealed=identity.sealed if identity else None)
        result = await self.intake.store([record])
        return Outcome.STORED if isinstance(result, Stored) else Outcome.REJECTED

    async def _scan(self, device: DeviceSection, event: CodeScanned) -> Outcome:
        record = self.intake.scan_record(device, event.data, event.symbology, str(event.source))
        result = await self.intake.store([record])
        return Outcome.STORED if isinstance(result, Stored) else Outcome.REJECTED

    def notify(self, event: DeviceEvent) -> None:
        """Online/offline, faults and dropped frames: counted, shown, and kept as telemetry."""
        if isinstance(event, FrameDropped):
            self.metrics.frames_dropped.labels(reason=event.reason).inc()
            self.registry.count_error(event.device_id, event.reason)
            return
        status: dict[str, Any] | None = None
        if isinstance(event, (DeviceOnline, DeviceOffline)):
            online = isinstance(event, DeviceOnline)
            detail = event.detail if isinstance(event, DeviceOnline) else event.reason
            if self.registry.set_online(event.device_id, online, detail):
                self.metrics.devices_online.set(self.registry.online_count)
                status = {"online": online, "detail": detail}
                (log.info if online else log.warning)(
                    "%s %s: %s", event.device_id, "online" if online else "offline", detail
                )
        elif isinstance(event, DeviceFault):
            state = self.registry.get(event.device_id)
            if state is not None and state.faults != event.faults:
                state.faults = event.faults
                status = {"faults": list(event.faults)}
        elif isinstance(event, (ReaderAttached, ReaderDetached)):
            status = {"reader": event.reader, "attached": isinstance(event, ReaderAttached)}
        else:
            self.registry.seen(event.device_id)
        if status is not None:
            self._spawn(self._store_status(event.device_id, status))

    async def _store_status(self, device_id: str, status: dict[str, Any]) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self.intake.store([self.intake.device_status(device_id, status)])

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
