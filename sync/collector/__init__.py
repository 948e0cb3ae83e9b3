"""The pull collector behind `hallhub central pull` (CONTRACTS §16).

It pulls the nodes' pending records through their local API (§5), stores them in the receiver's
table with each node's cursor in the same transaction, and acks each node only after that commit.
Several collector processes share one node list through leases in the database; a node whose
collector died is taken over once its lease runs out.
"""

from sync.collector._collector import (
    DEFAULT_LEASE_S,
    DEFAULT_PAGE,
    Backoff,
    Collector,
    CollectorTotals,
    new_owner_id,
)
from sync.collector._fetch import Page, PullError, ack, fetch_page, parse_page
from sync.collector._nodes import NodesFileError, NodeSpec, is_loopback_url, load_nodes, parse_nodes

__all__ = [
    "DEFAULT_LEASE_S",
    "DEFAULT_PAGE",
    "Backoff",
    "Collector",
    "CollectorTotals",
    "NodeSpec",
    "NodesFileError",
    "Page",
    "PullError",
    "ack",
    "fetch_page",
    "is_loopback_url",
    "load_nodes",
    "new_owner_id",
    "parse_nodes",
    "parse_page",
]
