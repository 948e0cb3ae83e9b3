"""Process settings that keep an idle hub small, applied by `hallhub run` before aiohttp is imported.

Measured with `bench/footprint.py` (50 pads, bytecode compiled): 47.8 MB RSS before, 44.7 after.

- aiohttp builds two TLS client contexts when it is imported, each parsing the system's CA bundle
  (~140 certificates, ~1 MB each). The hub never uses them: the uplink builds its own context.
  With `SSL_CERT_FILE` pointing at an empty file those two parse nothing (OpenSSL still finds a CA
  in the hashed `/etc/ssl/certs` directory when asked, one file per lookup). The bundle's path is
  kept in `HALLHUB_SYSTEM_CA_FILE`, and the uplink loads it into its own context explicitly
  (`system_ca_file`), so the platform's certificate is checked against the same CAs as before.
  A bundle the operator chose with `SSL_CERT_FILE` is the one kept and loaded by the uplink.
- frozenlist's compiled extension is C++ and loads libstdc++ (0.9 MB resident) for the few lists
  aiohttp freezes once at start; `FROZENLIST_NO_EXTENSIONS` is frozenlist's documented switch to
  its pure-Python class.
"""

from __future__ import annotations

import os
import ssl
from typing import Final

__all__ = ["SYSTEM_CA_FILE_ENV", "lean_process", "system_ca_file"]

SYSTEM_CA_FILE_ENV: Final = "HALLHUB_SYSTEM_CA_FILE"
"""Where `lean_process` keeps the path of the system CA bundle it kept aiohttp from loading."""


def lean_process() -> None:
    """Set the environment as the module docstring says; call it before importing aiohttp."""
    os.environ.setdefault("FROZENLIST_NO_EXTENSIONS", "1")
    if SYSTEM_CA_FILE_ENV in os.environ:
        return  # done already
    bundle = ssl.get_default_verify_paths().cafile  # SSL_CERT_FILE or the default; None if missing
    if bundle:
        os.environ[SYSTEM_CA_FILE_ENV] = bundle
        os.environ["SSL_CERT_FILE"] = os.devnull


def system_ca_file() -> str | None:
    """The system CA bundle a TLS client must load itself in a lean process (None otherwise)."""
    return os.environ.get(SYSTEM_CA_FILE_ENV) or None
