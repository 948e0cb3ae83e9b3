"""The national 好差评 record added to each evaluation as it is stored (CONTRACTS §6a).

`make_evaluation_hook(config)` returns the outbox's `evaluation_hook`. It runs inside the writer's
transaction with the levels of the case's earlier counted ratings from the case ledger (CONTRACTS
§15, `hub/store/ledger.py`), which the outbox updates in the same transaction: two ratings of one
case committed together cannot both count as the first, and a case is remembered for
`national.case_history_days` whatever record retention and quota shedding delete.

- 一次一评: only the earlier counted ratings of the same case *and the same channel* count. None:
  the record gets `data.national` with `assessNumber` 1. One, and it was a bad review:
  `assessNumber` 2 (the re-evaluation after 整改). Anything else is a repeat: `data.flags` gains
  `"repeat"` and the record has no `data.national`; it is still stored, acknowledged and delivered.
- A `suspect` press (beyond the misuse limits) gets no `data.national` and does not count: it is
  never a case's first or second rating. A repeat does not count either.
- An evaluation without a case number (a free rating) always gets `assessNumber` 1.
- A record that cannot be mapped (an unknown channel, invalid data) is stored without
  `data.national` and the reason is logged: nothing a citizen entered is thrown away.

The real-name fields (`certkeyGOV`, `userName`) are never written here: the uplink adds them to
`data.national` only inside the TLS request body (see `sync.uplink`).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from contract.records import Record
from hub.config import HubConfig
from hub.store.outbox import EvaluationHook
from sync.national import (
    NationalMappingError,
    NationalOptions,
    assess_number_for,
    national_for_new_evaluation,
)

__all__ = ["REPEAT_FLAG", "SUSPECT_FLAG", "make_evaluation_hook", "national_options"]

log = logging.getLogger(__name__)

REPEAT_FLAG = "repeat"
SUSPECT_FLAG = "suspect"


def national_options(config: HubConfig) -> NationalOptions:
    """`NationalOptions` from `[national]`; `area_code` defaults to `node.hall_code`."""
    section = config.national
    return NationalOptions(
        level_order=section.level_order,
        dept_code=section.dept_code,
        area_code=section.area_code or config.node.hall_code,
        pf=section.pf,
        reasons=section.reasons,
        timezone=section.timezone,
        fields=section.fields,
    )


def make_evaluation_hook(config: HubConfig) -> EvaluationHook:
    """The outbox hook that sets `data.national` or flags a repeat, and answers whether the rating
    counts in the case ledger (see the module docstring)."""
    options = national_options(config)
    bad_level = config.evaluation.bad_level

    def hook(record: Record, earlier: tuple[int, ...]) -> bool:
        data = record.data
        data.pop("national", None)
        flags = list(data["flags"]) if isinstance(data.get("flags"), list) else []
        if SUSPECT_FLAG in flags:
            return False
        number = assess_number_for(earlier, bad_level) if data.get("case_no") else 1
        if number is None:
            if REPEAT_FLAG not in flags:
                flags.append(REPEAT_FLAG)
            data["flags"] = flags
            return False
        try:
            created_at = datetime.fromisoformat(record.created_at[:-1]).replace(tzinfo=UTC)
            data["national"] = national_for_new_evaluation(record.id, created_at, data, options, number)
        except (NationalMappingError, ValueError) as exc:
            log.warning("national: evaluation %s stored without a national record: %s", record.id, exc)
        return True

    return hook
