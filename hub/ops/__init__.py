"""hub.ops: running and looking after a node: the process runner, logging, sd_notify, the private
broker, `hallhub init`, `hallhub device add` and `hallhub doctor`.

Only the light parts are exported here; `hub.ops.runner` and `hub.ops.doctor` are imported by the
commands that need them, so that `hallhub --help` starts fast.
"""

from hub.ops.broker import BrokerError, MosquittoBroker, free_port
from hub.ops.logsetup import setup_logging

__all__ = ["BrokerError", "MosquittoBroker", "free_port", "setup_logging"]
