"""The TLS context for the central platform, one for the uplink and for `doctor`'s check of it."""

from __future__ import annotations

import ssl

from hub.config import CentralSection
from hub.ops.lean import system_ca_file

__all__ = ["CentralTlsError", "central_tls_context"]


class CentralTlsError(Exception):
    """A TLS file cannot be used; the message names the config key and the fix."""


def central_tls_context(central: CentralSection) -> ssl.SSLContext:
    """The system CAs, or only `central.ca_file`; the client certificate if configured.

    In a process `hub.ops.lean` slimmed, the system CA bundle is loaded here explicitly, so the
    platform is checked against the same CAs either way.
    """
    try:
        context = ssl.create_default_context(cafile=central.ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise CentralTlsError(
            f"central.ca_file: cannot load {central.ca_file}: {exc} (a PEM file of the platform's CA)"
        ) from exc
    bundle = None if central.ca_file else system_ca_file()
    if bundle is not None:
        try:
            context.load_verify_locations(cafile=bundle)
        except (OSError, ssl.SSLError) as exc:
            raise CentralTlsError(
                f"the system CA bundle {bundle}: {exc} (reinstall ca-certificates, or set central.ca_file)"
            ) from exc
    if central.cert_file:
        try:
            context.load_cert_chain(central.cert_file, central.key_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise CentralTlsError(
                f"central.cert_file/key_file: cannot load {central.cert_file}: {exc} "
                "(PEM certificate and its private key, readable by the hallhub user)"
            ) from exc
    elif central.key_file:
        raise CentralTlsError("central.key_file is set without central.cert_file: set both or neither")
    return context
