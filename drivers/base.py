"""The small interface between a device driver and the hub.

A driver owns its device handle, reconnects by itself, and reports through an `EventSink`.
It knows its wire protocol and nothing else: no MQTT, no SQLite, no central platform.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class Outcome(enum.Enum):
    """What the hub did with an event that needs a durable answer (e.g. a KEY press)."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    FAILED = "failed"  # not stored (e.g. disk full): the device must not be acked and will retry


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """Base of every event a driver emits; `device_id` is the configured id."""

    device_id: str


@dataclass(frozen=True, slots=True)
class DeviceOnline(DeviceEvent):
    """The device answered (first contact, or back after being offline)."""

    detail: str = ""


@dataclass(frozen=True, slots=True)
class DeviceOffline(DeviceEvent):
    """The device stopped answering or its port disappeared; `reason` is for technicians."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class DeviceFault(DeviceEvent):
    """A device-reported fault condition (display fault, tamper, no paper...)."""

    faults: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class FrameDropped(DeviceEvent):
    """A frame failed a check and was dropped; `reason` is a short metric label (e.g. `bad_crc`)."""

    reason: str = "unknown"


class EventSink(Protocol):
    """Where a driver reports. `submit` returns once the hub has decided (stored, duplicate...)."""

    def submit(self, event: DeviceEvent) -> Awaitable[Outcome]:
        """Hand one event to the hub; await the answer before acknowledging the device."""
        ...

    def notify(self, event: DeviceEvent) -> None:
        """Report an event that needs no durable answer (online, offline, dropped frame)."""
        ...


class Driver(Protocol):
    """A running driver: `run` serves the device until cancelled, reopening it after errors."""

    device_id: str

    async def run(self, sink: EventSink) -> None:
        """Serve the device until cancelled. Never returns on device errors: it reconnects."""
        ...


@runtime_checkable
class Prompter(Protocol):
    """A driver whose devices show rating prompts (keypads): the hub's sessions drive it by device id."""

    max_prompt_s: int
    """The longest prompt the devices accept; the hub shortens longer session timeouts to it."""

    async def prompt(self, device_id: str, session: int, timeout_s: int, text: str) -> None:
        """Show a rating prompt for `session`; return once the device has it."""
        ...

    async def cancel(self, device_id: str, session: int) -> None:
        """End the prompt of `session`."""
        ...

    async def show(self, device_id: str, text: str) -> None:
        """Show a short message (the thanks after a rating)."""
        ...


@dataclass(frozen=True, slots=True)
class CitizenIdentity:
    """What may be kept of a citizen: a masked number, a keyed reference, optionally sealed fields.

    `sealed` is the SM4-encrypted real-name payload, set only when `privacy.identity = "encrypted"`.
    """

    masked: str
    ref: str
    sealed: str | None = None


@runtime_checkable
class CardEvent(Protocol):
    """A card a reader identified (`CardRead`, `CardIdentified`): what the hub's `card` record takes."""

    @property
    def device_id(self) -> str:
        """The configured id of the reader."""
        ...

    @property
    def card_type(self) -> str:
        """What card it is (`resident`, `contactless`...)."""
        ...

    @property
    def identity(self) -> CitizenIdentity | None:
        """What may be kept of the citizen, if the card says who it is."""
        ...

    def card_fields(self) -> dict[str, object]:
        """The fields of the record that only this reader knows (validity, UID...), in record order."""
        ...


class CitizenIdentifier(Protocol):
    """Turns a full ID number (and name) into a `CitizenIdentity`; the only place that sees both."""

    def identify(self, id_number: str, name: str | None = None) -> CitizenIdentity:
        """Mask, HMAC and (if configured) seal; the caller drops the inputs right after."""
        ...
