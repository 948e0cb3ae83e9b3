"""Who the hub runs as, and what that account may open: permissions are judged for it, not for doctor.

For another user than the current one the check follows the file's owner, group and mode bits (as
the kernel does without ACLs); root may read and write anything.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from hub.ops.doctor.base import DoctorOptions
from hub.ops.doctor.systemd import UnitInfo

__all__ = ["ServiceUser", "group_name", "owner_name", "service_user"]


@dataclass(frozen=True, slots=True)
class ServiceUser:
    """The account whose permissions are checked."""

    name: str
    uid: int
    groups: frozenset[int]
    source: str

    @classmethod
    def lookup(cls, name: str, source: str) -> ServiceUser:
        """The account by name; KeyError if there is none."""
        entry = pwd.getpwnam(name)
        return cls(name, entry.pw_uid, frozenset(os.getgrouplist(name, entry.pw_gid)), source)

    @classmethod
    def current(cls) -> ServiceUser:
        """The user doctor runs as."""
        uid = os.geteuid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        return cls(name, uid, frozenset({os.getegid(), *os.getgroups()}), "the current user")

    def may(self, path: str | Path, mode: int) -> bool:
        """Whether this user may access `path` with `mode` (os.R_OK | os.W_OK | os.X_OK)."""
        if self.uid == os.geteuid():
            return os.access(path, mode)
        if self.uid == 0:
            return True
        info = Path(path).stat()
        if info.st_uid == self.uid:
            bits = (info.st_mode >> 6) & 7
        elif info.st_gid in self.groups:
            bits = (info.st_mode >> 3) & 7
        else:
            bits = info.st_mode & 7
        return bits & mode == mode


def group_name(gid: int) -> str:
    """The group's name, or its number if it has none."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def owner_name(uid: int) -> str:
    """The account's name, or its number if it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def service_user(options: DoctorOptions, unit: UnitInfo | None) -> ServiceUser:
    """Whose permissions count: --user, the unit's User=, a `hallhub` account, or the current user.

    The unit's Group= and SupplementaryGroups= count for that user, as systemd grants them.
    """
    if options.user:
        return ServiceUser.lookup(options.user, "--user")
    if unit is not None and unit.user:
        with contextlib.suppress(KeyError):
            user = ServiceUser.lookup(unit.user, f"User= of {options.unit_name}")
            extra = set()
            for name in unit.groups:
                with contextlib.suppress(KeyError):
                    extra.add(grp.getgrnam(name).gr_gid)
            return ServiceUser(user.name, user.uid, user.groups | extra, user.source)
    with contextlib.suppress(KeyError):
        return ServiceUser.lookup("hallhub", "the hallhub account")
    return ServiceUser.current()
