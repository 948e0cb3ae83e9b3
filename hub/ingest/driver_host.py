"""Runs the configured serial, PC/SC and camera drivers and turns their events into records.

This is the hub's side of `drivers.base.EventSink`: a driver hands over an event and awaits the
outcome; the host decides what it means (an evaluation in a session, a card read, a scan).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from drivers.base import (
    CitizenIdentifier,
    DeviceEvent,
    DeviceFault,
    DeviceOffline,
    DeviceOnline,
    Driver,
    FrameDropped,
    Outcome,
    Prompter,
)
from drivers.pcsc.events import ReaderAttached, ReaderDetached
from drivers.registry import DriverContext, driver_groups, entry_for
from hub.config import DeviceSection, HubConfig
from hub.hall.sessions import PromptPort, SessionManager
from hub.ingest.devices import DeviceRegistry
from hub.ingest.intake import DriverRecords, EventMapping, Intake
from hub.metrics import HubMetrics
from hub.store.outbox import StoreUnavailable

# The drivers themselves (pyserial, tenacity, pyscard, OpenCV) are imported by the registry's
# factories only for the devices configured, for memory: a node with only MQTT devices loads none
# of them. Their events are recognised through the drivers' light `events` modules.

log = logging.getLogger(__name__)

Runner = Callable[[], Coroutine[Any, Any, None]]


class DriverHost:
    """Builds one driver per registry group (one per line for keypads) and serves as their event sink.

    Nothing here knows a device kind: `drivers.registry` says which driver serves a device and which
    record mapping (`hub.ingest.intake.DriverRecords`) its events go to.
    """

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
        self.records = DriverRecords(config, intake, sessions, self._thank_soon)
        self.prompters: dict[str, Prompter] = {}
        """The driver that shows prompts for a device id (keypads), filled by `runners`."""
        self._mappings: dict[str, EventMapping] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        sessions.bind("serial", PromptPort(self._prompt, self._cancel, self._show))

    def runners(self) -> list[tuple[str, Runner]]:
        """(name, coroutine function) for every driver the config asks for; builds the drivers."""
        context = DriverContext(identifier=self.identifier)
        runners: list[tuple[str, Runner]] = []
        for group in driver_groups(self.config.device):
            driver = group.entry.build(group.devices, context)
            mapping = self.records.mapping(group.entry.records)
            for device in group.devices:
                self._mappings[device.id] = mapping
                if isinstance(driver, Prompter):
                    self.prompters[device.id] = driver
            runners.append((group.name, self._runner(driver)))
        return runners

    def _runner(self, driver: Driver) -> Runner:
        async def run() -> None:
            await driver.run(self)

        return run

    # -- prompting (keypads) -------------------------------------------------------------------

    async def _prompt(self, device: DeviceSection, session: int, timeout_s: int, text: str) -> None:
        prompter = self.prompters[device.id]
        await prompter.prompt(device.id, session, min(timeout_s, prompter.max_prompt_s), text)

    async def _cancel(self, device: DeviceSection, session: int) -> None:
        await self.prompters[device.id].cancel(device.id, session)

    async def _show(self, device: DeviceSection, text: str) -> None:
        """A keypad's SHOW (the window's state, §12); nothing for a device without a display."""
        prompter = self.prompters.get(device.id)
        if prompter is not None:
            await prompter.show(device.id, text)

    def _thank_soon(self, device: DeviceSection) -> None:
        """After a rating is stored, thank the citizen on the device's display (if it has one)."""
        if device.id in self.prompters:
            self._spawn(self._thank(device))

    async def _thank(self, device: DeviceSection) -> None:
        with contextlib.suppress(Exception):
            await self.prompters[device.id].show(device.id, self.config.evaluation.thanks_text)

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
        mapping = self._mappings.get(device.id)
        if mapping is None:
            entry = entry_for(device)
            if entry is None:
                log.warning("%s: unexpected event %s", device.id, type(event).__name__)
                return Outcome.REJECTED
            mapping = self._mappings[device.id] = self.records.mapping(entry.records)
        try:
            return await mapping(device, event)
        except StoreUnavailable as exc:
            log.error("%s: event not stored (%s); the device will be asked again", device.id, exc)
            return Outcome.FAILED

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
