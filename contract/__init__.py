"""The contracts of CONTRACTS.md, written once: everything on a wire or in a record is defined here.

`hub`, `drivers`' simulators, `sync`, the tests and the benchmarks import these; none of them spells
a topic, a record kind, an identifier pattern, a timestamp or a body by hand.

| module | what |
| --- | --- |
| `contract.records` | §1: identifier patterns, UUIDv7 ids, kinds, channels, UTC timestamps, `Record` |
| `contract.topics` | the §2 topic tree and its leaves |
| `contract.mqtt` | §2 payloads (devices, window PCs, hub state) and their bounded decoding |
| `contract.wire` | §6 uplink: batch body and headers, the answer, a record as the platform checks it |
| `contract.http` | §5 pull API bodies |
| `contract.jsonbounds` | JSON from outside with bounded numbers and nesting (§9) |
| `contract.validation` | msgspec checks with every bad field named in one sentence each |
"""

from __future__ import annotations

from contract.records import KINDS, Channel, Kind, Record, new_record_id, utc_now
from contract.topics import ACKED_LEAVES, DEVICE_LEAVES, Leaf, Topics

__all__ = [
    "ACKED_LEAVES",
    "DEVICE_LEAVES",
    "KINDS",
    "Channel",
    "Kind",
    "Leaf",
    "Record",
    "Topics",
    "new_record_id",
    "utc_now",
]
