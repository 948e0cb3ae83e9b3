"""`hallhub doctor`: check a node before (or instead of) guessing why it does not work.

Every check yields findings: `ok`, `warning` (works, but a technician should know) or `error` (the
hub will not work as configured), one line each, with the fix a technician can act on. Checks run
concurrently, each under a timeout, so doctor answers in seconds even with a dead broker.

One module per family of checks:

- `config`: the config file, judged by `load_config` exactly as `hallhub config check` and
  `hallhub run` judge it; the secret files; the node secret; the national crypto (SM3/SM4);
- `ports`: every serial port (exists, readable and writable by the service user, opens, answers its
  protocol), `pcsc`: PC/SC readers, `camera`: cameras (one frame); the device itself is probed by
  its driver (`drivers.<kind>.probe`), doctor only words the result and the fix;
- `broker`: log in with the configured credentials, publish and receive on a scratch topic under
  the node's root, and the MQTT devices' retained state;
- `central`: DNS, TLS, the token; `clock`: the clock skew from central's `Date` header and clock
  synchronisation; `disk`: free space against `outbox.max_mb`; `systemd`: the unit and its watchdog;
- `access`: who the hub runs as (`--user`, else the `User=` of hallhub.service, else a `hallhub`
  account if one exists, else the current user), whose permissions the checks judge;
- `report`: findings, the report, its text and JSON; `runner`: running it all, and the command.

An invalid config does not stop doctor: every check whose sections are valid still runs, and each
check that needs an invalid section (or a secret file that cannot be read) is reported `SKIP` with
the keys it waits for.

Secrets and personal data never reach the output (`hub.privacy.redact`): values of the keys in `TO_REDACT`
are replaced, and every text is scrubbed of the resolved passwords, tokens and the node secret, of
URL user information, bearer tokens and ID numbers. Doctor never reads a card, decodes a camera
frame or stores anything.

Run doctor while the hub is stopped: the hub holds its serial ports exclusively.

Not checked: pcscd's readers cannot be judged for another user (pcscd decides), and a camera is
opened as the user doctor runs as.
"""

from __future__ import annotations

from hub.ops.doctor.access import ServiceUser
from hub.ops.doctor.base import DoctorOptions
from hub.ops.doctor.report import Finding, Level, Report
from hub.ops.doctor.runner import main, run_doctor

__all__ = ["DoctorOptions", "Finding", "Level", "Report", "ServiceUser", "main", "run_doctor"]
