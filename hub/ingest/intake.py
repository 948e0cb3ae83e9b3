"""From a validated device message to records in the outbox: the one path every source shares."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from contract.mqtt import PrintPayload, RatingPayload, ScanPayload
from contract.records import Channel, Kind, Record, evaluation_data, normalized_utc
from drivers.base import CardEvent, CitizenIdentity, DeviceEvent, Outcome
from drivers.keypad.events import KeyPressed
from drivers.qr.events import CodeScanned
from drivers.registry import KINDS, RecordMapping
from hub.config import DeviceSection, HubConfig
from hub.hall.sessions import Attribution, SessionManager
from hub.ingest.scans import ScanRecorder
from hub.metrics import HubMetrics
from hub.privacy.sealing import NodeIdentifier, load_or_create_secret
from hub.store.outbox import DedupKey, Duplicate, Outbox, Rejected, Stored, StoreResult

log = logging.getLogger(__name__)


def channel_of(kind: str) -> Channel:
    """The channel a kind's evaluations carry (the driver registry's `KINDS`; a terminal's if none)."""
    rule = KINDS.get(kind)
    return Channel(rule.channel) if rule is not None and rule.channel else Channel.TERMINAL


class Intake:
    """Builds records for a device's message and stores them, counting what happened."""

    def __init__(self, config: HubConfig, outbox: Outbox, metrics: HubMetrics) -> None:
        self.config = config
        self.outbox = outbox
        self.metrics = metrics
        self.scans = ScanRecorder(
            lambda: NodeIdentifier(load_or_create_secret(config.node.secret_file), config.privacy.hmac)
        )

    def evaluation(
        self,
        device: DeviceSection,
        *,
        level: int,
        reasons: list[str],
        comment: str | None = None,
        case_no: str | None = None,
        item_code: str | None = None,
        item_name: str | None = None,
        window: str | None = None,
        staff_id: str | None = None,
        session: int | None = None,
        device_ts: str | None = None,
        citizen: CitizenIdentity | None = None,
        flags: list[str] | None = None,
        user_prop: int | None = None,
    ) -> list[Record]:
        """An evaluation record, plus an `alert` record when it is a bad review.

        `user_prop` (1 a person, 2 a legal person) comes from the session's evaluate request (§15).
        """
        node = self.config.node
        data = evaluation_data(
            level=level,
            reasons=list(reasons),
            comment=comment,
            channel=str(channel_of(device.kind)),
            device_id=device.id,
            window=window or device.window,
            staff_id=staff_id,
            case_no=case_no,
            item_code=item_code,
            session=session,
            citizen_ref=citizen.ref if citizen else None,
            citizen_masked=citizen.masked if citizen else None,
            device_ts=device_ts,
            node_id=node.id,
            hall_code=node.hall_code,
            flags=list(flags or []),
        )
        if item_name is not None:
            data["item_name"] = item_name
        if user_prop is not None:
            data["user_prop"] = user_prop
        evaluation = Record(kind=Kind.EVALUATION, data=data, sealed=citizen.sealed if citizen else None)
        records = [evaluation]
        if level <= self.config.evaluation.bad_level and "suspect" not in data["flags"]:
            records.append(self.bad_review_alert(evaluation))
        return records

    def bad_review_alert(self, evaluation: Record) -> Record:
        """The alert that makes the hall call the citizen back within the hour."""
        data = evaluation.data
        return Record(
            kind=Kind.ALERT,
            data={
                "type": "bad_review",
                "evaluation_id": evaluation.id,
                "level": data["level"],
                "window": data["window"],
                "staff_id": data["staff_id"],
                "case_no": data["case_no"],
                "item_code": data["item_code"],
                "device_id": data["device_id"],
                "node_id": data["node_id"],
            },
        )

    def rating(self, device: DeviceSection, payload: RatingPayload, attribution: Attribution) -> list[Record]:
        """Records for an MQTT `rating`; its attribution fills what the payload leaves out.

        Staff come from the session only, never from the device (docs/contracts.md §2): the gateway
        has refused a `staff_id` from a terminal, and a pad's is not used.
        """
        context = attribution.context
        return self.evaluation(
            device,
            level=payload.level,
            reasons=list(payload.reasons),
            comment=payload.comment,
            case_no=payload.case_no or (context.case_no if context else None),
            item_code=payload.item_code or (context.item_code if context else None),
            item_name=payload.item_name or (context.item_name if context else None),
            window=attribution.window,
            staff_id=context.staff_id if context else None,
            session=payload.session or None,
            device_ts=normalized_utc(payload.ts) if payload.ts else None,
            citizen=attribution.citizen,
            flags=attribution.flags,
            user_prop=context.user_prop if context else None,
        )

    def key_rating(self, device: DeviceSection, event: KeyPressed, attribution: Attribution) -> list[Record]:
        """Records for a keypad's key press, attributed like any rating."""
        context = attribution.context
        return self.evaluation(
            device,
            level=event.level,
            reasons=list(event.reasons),
            case_no=context.case_no if context else None,
            item_code=context.item_code if context else None,
            item_name=context.item_name if context else None,
            window=attribution.window,
            staff_id=context.staff_id if context else None,
            session=event.session or None,
            citizen=attribution.citizen,
            flags=attribution.flags,
            user_prop=context.user_prop if context else None,
        )

    def scan(self, device: DeviceSection, payload: ScanPayload) -> list[Record]:
        """Records for an MQTT `scan`."""
        return [self.scan_record(device, payload.data, payload.symbology, "mqtt")]

    def scan_record(self, device: DeviceSection, code: str, symbology: str | None, source: str) -> Record:
        """The scan record of any scanner: classified, ID numbers masked (`ScanRecorder`)."""
        data: dict[str, Any] = {
            "device_id": device.id,
            "window": device.window,
            "node_id": self.config.node.id,
        }
        data.update(source=source, **self.scans.fields(code, symbology))
        return Record(kind=Kind.SCAN, data=data)

    def print_job(self, device: DeviceSection, payload: PrintPayload) -> list[Record]:
        """Records for an MQTT `print` report."""
        data = {
            "device_id": device.id,
            "job_id": payload.job_id,
            "state": payload.state,
            "pages": payload.pages,
            "error": payload.error,
            "node_id": self.config.node.id,
        }
        return [Record(kind=Kind.PRINT, data=data)]

    def device_status(self, device_id: str, status: dict[str, Any]) -> Record:
        """A telemetry record (online state, health); the first kind shed under pressure."""
        return Record(
            kind=Kind.DEVICE_STATUS,
            data={"device_id": device_id, "node_id": self.config.node.id, **status},
        )

    async def store(self, records: list[Record], dedup: DedupKey | None = None) -> StoreResult:
        """Commit records and count the outcome; StoreUnavailable propagates (no ack)."""
        try:
            result = await self.outbox.store(records, dedup)
        except Exception:
            self.metrics.store_failures.inc()
            raise
        self.count(result)
        return result

    def store_soon(self, records: list[Record], dedup: DedupKey | None = None) -> asyncio.Future[StoreResult]:
        """`store` for callbacks: the caller passes the future's outcome to `count` or `count_failure`."""
        return self.outbox.store_soon(records, dedup)

    def count(self, result: StoreResult) -> None:
        """Count a store's outcome in the metrics."""
        if isinstance(result, Stored):
            for record in result.records:
                self.metrics.inc(self.metrics.records_stored, record.kind)
        elif isinstance(result, Duplicate):
            self.metrics.duplicates.inc()
        elif isinstance(result, Rejected):
            self.metrics.rejects.labels(reason="outbox_full").inc()

    def count_failure(self) -> None:
        """Count a store that could not commit."""
        self.metrics.store_failures.inc()


FREE_RATING_DEDUP_WINDOW_S: Final = 60.0
"""How long a free rating (no session) with the same SEQ counts as a retransmission of the first.

A keypad's SEQ wraps at 255, so an old SEQ means a new press after a while; a prompted rating is
one per session and level, whenever it comes."""


def rating_dedup(event: KeyPressed) -> DedupKey:
    """What makes a key press a repeat of one already stored: the hub decides, not the driver."""
    if event.session:
        return DedupKey(event.device_id, f"session-{event.session}-level-{event.level}", None)
    return DedupKey(event.device_id, f"free-seq-{event.seq}", FREE_RATING_DEDUP_WINDOW_S)


EventMapping = Callable[[DeviceSection, DeviceEvent], Awaitable[Outcome]]
"""Turns one event a driver submitted into records, stores them and says what became of it."""


class DriverRecords:
    """The record mappings a driver registry entry names (`drivers.registry.RecordMapping`).

    A driver reports what it knows; this decides what it means: a key press is an evaluation in
    the window's session, a card remembers its citizen for the window's next rating, a code is a
    scan. `StoreUnavailable` propagates: the caller answers FAILED so the device is asked again.
    """

    def __init__(
        self,
        config: HubConfig,
        intake: Intake,
        sessions: SessionManager,
        thank: Callable[[DeviceSection], None],
    ) -> None:
        self.config = config
        self.intake = intake
        self.sessions = sessions
        self._thank = thank
        self._mappings: dict[RecordMapping, EventMapping] = {
            "rating": self.rating,
            "card": self.card,
            "scan": self.scan,
        }

    def mapping(self, name: RecordMapping) -> EventMapping:
        """The mapping a registry entry names."""
        return self._mappings[name]

    @staticmethod
    def _unexpected(device: DeviceSection, event: DeviceEvent) -> Outcome:
        log.warning("%s: unexpected event %s", device.id, type(event).__name__)
        return Outcome.REJECTED

    async def rating(self, device: DeviceSection, event: DeviceEvent) -> Outcome:
        """A key press: an evaluation (and alert) filled from the window's session, then thanks."""
        if not isinstance(event, KeyPressed):
            return self._unexpected(device, event)
        async with self.sessions.lock_for(device.id):
            return await self._rating_locked(device, event)

    async def _rating_locked(self, device: DeviceSection, event: KeyPressed) -> Outcome:
        attribution = self.sessions.attribute(device, event.session)
        records = self.intake.key_rating(device, event, attribution)
        result = await self.intake.store(records, rating_dedup(event))
        if isinstance(result, Stored):
            await self.sessions.rated(device.id, event.session, event.level, result.records[0].id)
            self._thank(device)
            return Outcome.STORED
        if isinstance(result, Duplicate):
            return Outcome.DUPLICATE
        assert isinstance(result, Rejected)
        return Outcome.REJECTED

    async def card(self, device: DeviceSection, event: DeviceEvent) -> Outcome:
        """A card: a `card` record; its citizen is remembered for the window's next rating."""
        if not isinstance(event, CardEvent):
            return self._unexpected(device, event)
        card = event
        identity = card.identity
        if identity is not None and device.window:
            self.sessions.remember_citizen(device.window, identity)
        data: dict[str, Any] = {
            "device_id": device.id,
            "window": device.window,
            "node_id": self.config.node.id,
            "card_type": str(card.card_type),
            "citizen_masked": identity.masked if identity else None,
            "citizen_ref": identity.ref if identity else None,
        }
        data.update(card.card_fields())
        record = Record(kind=Kind.CARD, data=data, sealed=identity.sealed if identity else None)
        result = await self.intake.store([record])
        return Outcome.STORED if isinstance(result, Stored) else Outcome.REJECTED

    async def scan(self, device: DeviceSection, event: DeviceEvent) -> Outcome:
        """A code read by a scanner: a `scan` record (classified, ID numbers masked)."""
        if not isinstance(event, CodeScanned):
            return self._unexpected(device, event)
        record = self.intake.scan_record(device, event.data, event.symbology, str(event.source))
        result = await self.intake.store([record])
        return Outcome.STORED if isinstance(result, Stored) else Outcome.REJECTED
