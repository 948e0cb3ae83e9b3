"""hub.hall: the hall's own work on top of the devices: evaluation sessions at each window and the
bad reviews someone must act on.
"""

from hub.hall.alerts import AlertBook
from hub.hall.sessions import SessionManager

__all__ = ["AlertBook", "SessionManager"]
