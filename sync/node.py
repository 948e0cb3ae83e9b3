"""A node's composition root: the hub core with the sync parts its config asks for.

`hub` knows nothing of `sync` (DESIGN, second round): the national mapping reaches the outbox as an
evaluation hook, and the push uplink is one more service. The CLI, the demo and the tests build a
node here.
"""

from __future__ import annotations

from typing import Any

from hub.app import Hub
from hub.clock import Clock
from hub.config import HubConfig, Secrets
from sync.annotate import make_evaluation_hook


def build_hub(
    config: HubConfig, secrets: Secrets, *, clock: Clock | None = None, **uplink_options: Any
) -> Hub:
    """A hub that annotates evaluations with their national record and, with `central.url`, pushes.

    `clock` times the evaluation sessions (tests move a fake one); `uplink_options` go to
    `sync.uplink.Uplink` (tests shorten its timings).
    """
    hub = Hub(config, secrets, evaluation_hook=make_evaluation_hook(config), clock=clock)
    if config.central.url:
        from sync.uplink import Uplink  # noqa: PLC0415 (lazy, for memory: only when push is on)

        uplink = Uplink(
            config,
            outbox=hub.outbox,
            metrics=hub.metrics,
            sync=hub.sync,
            central_token=secrets.central_token,
            **uplink_options,
        )
        hub.add_service("uplink", uplink.run)
    return hub


__all__ = ["build_hub"]
