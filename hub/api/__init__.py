"""hub.api: the local HTTP API (CONTRACTS §5, §9): who may call what, the listening socket, the
pull API and status, the routes for window PCs and hall staff, and the technician's status page.
"""

from hub.api.access import AccessGuard, AccessPolicy
from hub.api.routes import HubApi
from hub.api.server import ConnectionLimits, GuardedServer
from hub.api.status_page import status_page_routes
from hub.api.windows import window_and_alert_routes

__all__ = [
    "AccessGuard",
    "AccessPolicy",
    "ConnectionLimits",
    "GuardedServer",
    "HubApi",
    "status_page_routes",
    "window_and_alert_routes",
]
