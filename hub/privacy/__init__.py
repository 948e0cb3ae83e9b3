"""hub.privacy: what keeps a citizen's identity off disk, logs, MQTT and the uplink: keyed references,
sealed real-name fields, ID numbers found and masked in free text, and one set of redaction rules.
"""

from hub.privacy.id_numbers import mask_id_numbers
from hub.privacy.redact import Scrubber, redact
from hub.privacy.sealing import (
    NodeIdentifier,
    SealedIdentity,
    SecretFileError,
    citizen_ref,
    derive_seal_key,
    load_or_create_secret,
)

__all__ = [
    "NodeIdentifier",
    "Scrubber",
    "SealedIdentity",
    "SecretFileError",
    "citizen_ref",
    "derive_seal_key",
    "load_or_create_secret",
    "mask_id_numbers",
    "redact",
]
