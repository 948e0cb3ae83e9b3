"""Privacy primitives: masked ID numbers, keyed citizen references, sealed real-name fields.

The hub never keeps a full ID number or a name (CONTRACTS.md §1, DESIGN.md guarantee 6). What it
keeps of a citizen is:

- a masked number, first 6 and last 4 characters kept (`370102********1234`);
- `citizen_ref`: the hex HMAC of the upper-cased number under the node secret, HMAC-SM3 by default,
  HMAC-SHA256 if configured. A bare hash is never used: the number space is small enough to
  enumerate, so only the holder of the node secret can link two references to a number;
- only when `privacy.identity = "encrypted"`: the real-name fields `{"certkeyGOV", "userName"}`
  sealed with SM4-GCM (authenticated; `cryptography` supports GCM for SM4 with this OpenSSL, checked
  against the RFC 8998 test vector in the tests).

Keys. The node secret file holds 32 random bytes, hex-encoded, mode 0600 (`load_or_create_secret`).
The HMAC key is that secret itself. The SM4 seal key is derived from it with HKDF-SM3 (RFC 5869;
no salt; info = `SEAL_KEY_INFO`; 16 bytes), so the secret file is the one thing to protect and
back up, and the two uses of the secret can never be confused with each other.

Sealed token format: `v1.` + URL-safe base64 (no padding) of nonce (12 bytes) || ciphertext || tag
(16 bytes); the associated data is `SEAL_AAD`. The plaintext is compact UTF-8 JSON.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import importlib
import json
import logging
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, get_args

from drivers.base import CitizenIdentity

if TYPE_CHECKING:
    from cryptography.hazmat.primitives import hashes

# `cryptography` (with its libcrypto, ~7 MB resident) is imported inside the functions that use it,
# for memory: a hub whose devices never read an ID number and that seals nothing never loads it.
_CRYPTO_MODULES: Final = (
    "cryptography.exceptions",
    "cryptography.hazmat.primitives.hashes",
    "cryptography.hazmat.primitives.hmac",
    "cryptography.hazmat.primitives.ciphers",
    "cryptography.hazmat.primitives.kdf.hkdf",
)

__all__ = [
    "MIN_SECRET_BYTES",
    "SEAL_AAD",
    "SEAL_KEY_INFO",
    "HmacAlgorithm",
    "IdentityMode",
    "NationalCryptoUnavailableError",
    "NodeIdentifier",
    "SealedIdentity",
    "SecretFileError",
    "UnsealError",
    "check_national_crypto",
    "citizen_ref",
    "derive_seal_key",
    "load_or_create_secret",
    "mask_id_number",
    "preload_crypto",
]

logger = logging.getLogger(__name__)

HmacAlgorithm = Literal["sm3", "sha256"]
IdentityMode = Literal["none", "encrypted"]

MIN_SECRET_BYTES: Final = 32
"""The node secret is at least this long (the file holds it hex-encoded: 64 characters)."""

SEAL_KEY_INFO: Final = b"hallhub/v1 identity seal key SM4-GCM"
"""HKDF `info` label that derives the SM4 seal key from the node secret. Never change it: the
sealed fields of records still in the outbox could no longer be opened."""

SEAL_AAD: Final = b"hallhub/v1 sealed identity"
"""Associated data bound into every sealed token, so no other blob can pass for one."""

_SEAL_PREFIX: Final = "v1."
_SM4_KEY_BYTES: Final = 16
_GCM_NONCE_BYTES: Final = 12
_GCM_TAG_BYTES: Final = 16
_MASK_FULL_KEEP: Final = (6, 4)
_MASK_FULL_MIN_LEN: Final = 15  # 15-character old permits and 18-character numbers keep 6 + 4

# Published test vectors, checked at start-up by `check_national_crypto`.
_SM3_ABC: Final = "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
_SM4_KEY_AND_PLAIN: Final = "0123456789abcdeffedcba9876543210"
_SM4_CIPHER: Final = "681edf34d206965e86b3e94f536e4246"


class SecretFileError(Exception):
    """The node secret file cannot be used; `path` and `problem` say which file and why."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"node secret file {path}: {problem}")
        self.path = path
        self.problem = problem


class UnsealError(Exception):
    """A sealed token could not be opened (wrong key, altered, malformed); carries no plaintext."""


class NationalCryptoUnavailableError(Exception):
    """SM3/SM4 are missing or wrong in the installed OpenSSL; `detail` says which check failed."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"national cryptography unavailable: {detail}. The OpenSSL bundled with the "
            "'cryptography' package must provide SM3 and SM4; reinstall it from PyPI wheels, "
            'or set privacy.hmac = "sha256" (SM4 is still needed for '
            'privacy.identity = "encrypted")'
        )
        self.detail = detail


def _normalise(number: str) -> str:
    """Strip surrounding whitespace and upper-case (a trailing check letter `x` becomes `X`)."""
    normalised = number.strip().upper()
    if not normalised:
        raise ValueError("empty ID number")
    return normalised


def mask_id_number(number: str) -> str:
    """Mask an ID number, keeping the first 6 and last 4 characters: `370102********1234`.

    Numbers of 15 characters or more (resident numbers, permanent-residence numbers) keep 6 + 4.
    Shorter numbers (e.g. a 9-character travel permit) keep a quarter of their length at each end,
    so at least half of a short number is always hidden; 3 characters or fewer are hidden entirely.
    """
    normalised = _normalise(number)
    length = len(normalised)
    if length >= _MASK_FULL_MIN_LEN:
        head, tail = _MASK_FULL_KEEP
    else:
        head = tail = length // 4
    hidden = length - head - tail
    return normalised[:head] + "*" * hidden + (normalised[length - tail :] if tail else "")


def preload_crypto() -> None:
    """Import what this module uses of `cryptography` now rather than on first use.

    For a node with card readers, at start-up: the first card read then does not wait for it.
    """
    for module in _CRYPTO_MODULES:
        importlib.import_module(module)


def _check_algorithm(algorithm: HmacAlgorithm) -> None:
    """Refuse a hash name other than those `privacy.hmac` allows."""
    if algorithm not in get_args(HmacAlgorithm):
        raise ValueError(f'privacy.hmac must be "sm3" or "sha256", not {algorithm!r}')


def _hash_for(algorithm: HmacAlgorithm) -> hashes.HashAlgorithm:
    """Map the configured name (`privacy.hmac`) to the hash."""
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415 (lazy, for memory: see imports)

    _check_algorithm(algorithm)
    return hashes.SM3() if algorithm == "sm3" else hashes.SHA256()


def _check_secret(secret: bytes) -> None:
    """Refuse a node secret too short to be a key."""
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the node secret must be at least {MIN_SECRET_BYTES} bytes")


def citizen_ref(number: str, secret: bytes, algorithm: HmacAlgorithm = "sm3") -> str:
    """Hex HMAC (SM3 or SHA-256) of the upper-cased ID number under the node secret (§1).

    Surrounding whitespace is stripped first, so a number typed at a window PC and the same number
    read from a card give the same reference.
    """
    from cryptography.hazmat.primitives import hmac as crypto_hmac  # noqa: PLC0415 (lazy, for memory)

    _check_secret(secret)
    mac = crypto_hmac.HMAC(secret, _hash_for(algorithm))
    mac.update(_normalise(number).encode("utf-8"))
    return mac.finalize().hex()


def derive_seal_key(secret: bytes) -> bytes:
    """Derive the 16-byte SM4 seal key from the node secret: HKDF-SM3, info `SEAL_KEY_INFO`."""
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415 (lazy, for memory)
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # noqa: PLC0415

    _check_secret(secret)
    hkdf = HKDF(algorithm=hashes.SM3(), length=_SM4_KEY_BYTES, salt=None, info=SEAL_KEY_INFO)
    return hkdf.derive(secret)


def _check_seal_key(key: bytes) -> None:
    """SM4 takes 128-bit keys only."""
    if len(key) != _SM4_KEY_BYTES:
        raise ValueError(f"an SM4 seal key is {_SM4_KEY_BYTES} bytes, not {len(key)}")


@dataclass(frozen=True, slots=True)
class SealedIdentity:
    """The real-name fields a platform may require, sealed with SM4-GCM for the outbox.

    `seal` turns the fields into an opaque token for `CitizenIdentity.sealed`; `unseal` opens one
    (the uplink does this right before sending inside TLS). The repr never shows the fields.
    """

    cert_key_gov: str = field(repr=False)
    user_name: str | None = field(default=None, repr=False)

    def national_fields(self) -> dict[str, str | None]:
        """The fields under their national 好差评 names: `certkeyGOV`, `userName`."""
        return {"certkeyGOV": self.cert_key_gov, "userName": self.user_name}

    def seal(self, key: bytes) -> str:
        """Encrypt the fields under `key` (16 bytes) with a fresh random nonce."""
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: PLC0415 (memory)

        _check_seal_key(key)
        plaintext = json.dumps(self.national_fields(), ensure_ascii=False, separators=(",", ":")).encode(
            "utf-8"
        )
        nonce = secrets.token_bytes(_GCM_NONCE_BYTES)
        encryptor = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(SEAL_AAD)
        body = encryptor.update(plaintext) + encryptor.finalize()
        blob = nonce + body + encryptor.tag
        return _SEAL_PREFIX + base64.urlsafe_b64encode(blob).rstrip(b"=").decode("ascii")

    @classmethod
    def unseal(cls, token: str, key: bytes) -> SealedIdentity:
        """Decrypt and authenticate a token made by `seal`; raise `UnsealError` on any problem."""
        from cryptography.exceptions import InvalidTag  # noqa: PLC0415 (lazy, for memory)
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: PLC0415

        _check_seal_key(key)
        if not token.startswith(_SEAL_PREFIX):
            raise UnsealError("not a sealed identity token (unknown version prefix)")
        encoded = token[len(_SEAL_PREFIX) :]
        try:
            blob = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (binascii.Error, ValueError):
            raise UnsealError("sealed identity token is not valid base64") from None
        if len(blob) < _GCM_NONCE_BYTES + _GCM_TAG_BYTES:
            raise UnsealError("sealed identity token is too short")
        nonce = blob[:_GCM_NONCE_BYTES]
        tag = blob[-_GCM_TAG_BYTES:]
        body = blob[_GCM_NONCE_BYTES:-_GCM_TAG_BYTES]
        decryptor = Cipher(algorithms.SM4(key), modes.GCM(nonce, tag)).decryptor()
        decryptor.authenticate_additional_data(SEAL_AAD)
        try:
            plaintext = decryptor.update(body) + decryptor.finalize()
        except InvalidTag:
            raise UnsealError("sealed identity failed authentication (wrong key or altered)") from None
        try:
            fields = json.loads(plaintext.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UnsealError("sealed identity payload is not the expected JSON") from None
        number = fields.get("certkeyGOV") if isinstance(fields, dict) else None
        name = fields.get("userName") if isinstance(fields, dict) else None
        if not isinstance(number, str) or not (name is None or isinstance(name, str)):
            raise UnsealError("sealed identity payload lacks certkeyGOV/userName")
        return cls(cert_key_gov=number, user_name=name)


class NodeIdentifier:
    """The node's `CitizenIdentifier`: masks, HMACs and (in `encrypted` mode) seals.

    Built once at start-up from the secret file and `[privacy]`; every driver that reads an ID
    number gets this object and nothing else of the secret. `seal_key` defaults to the key derived
    from `secret` (`derive_seal_key`); it is used only when `identity_mode == "encrypted"`.
    """

    __slots__ = ("_algorithm", "_identity_mode", "_seal_key", "_secret")

    def __init__(
        self,
        secret: bytes,
        hmac: HmacAlgorithm = "sm3",
        identity_mode: IdentityMode = "none",
        seal_key: bytes | None = None,
    ) -> None:
        _check_secret(secret)
        _check_algorithm(hmac)
        if identity_mode not in ("none", "encrypted"):
            raise ValueError(f'privacy.identity must be "none" or "encrypted", not {identity_mode!r}')
        self._secret = bytes(secret)
        self._algorithm: HmacAlgorithm = hmac
        self._identity_mode: IdentityMode = identity_mode
        self._seal_key: bytes | None = None
        if identity_mode == "encrypted":
            key = derive_seal_key(secret) if seal_key is None else bytes(seal_key)
            _check_seal_key(key)
            self._seal_key = key

    def __repr__(self) -> str:
        """Show the configuration, never the keys."""
        return f"NodeIdentifier(hmac={self._algorithm!r}, identity_mode={self._identity_mode!r})"

    @property
    def hmac_algorithm(self) -> HmacAlgorithm:
        """The configured HMAC hash (`privacy.hmac`)."""
        return self._algorithm

    @property
    def identity_mode(self) -> IdentityMode:
        """The configured identity mode (`privacy.identity`)."""
        return self._identity_mode

    def identify(self, id_number: str, name: str | None = None) -> CitizenIdentity:
        """Mask, HMAC and (if configured) seal; the caller drops the inputs right after."""
        masked = mask_id_number(id_number)
        ref = citizen_ref(id_number, self._secret, self._algorithm)
        sealed: str | None = None
        if self._seal_key is not None:
            sealed = SealedIdentity(cert_key_gov=_normalise(id_number), user_name=name).seal(self._seal_key)
        return CitizenIdentity(masked=masked, ref=ref, sealed=sealed)


def _parse_secret(path: Path, text: str) -> bytes:
    """Decode the hex text of a secret file, checking its length."""
    cleaned = text.strip()
    if not cleaned:
        raise SecretFileError(path, "the file is empty; delete it to have a new secret generated")
    try:
        secret = bytes.fromhex(cleaned)
    except ValueError:
        raise SecretFileError(
            path,
            f"expected {2 * MIN_SECRET_BYTES} or more hexadecimal characters; delete the file to "
            "have a new secret generated (this changes every citizen_ref from now on)",
        ) from None
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretFileError(
            path,
            f"too short: {len(secret)} bytes, at least {MIN_SECRET_BYTES} needed "
            f"({2 * MIN_SECRET_BYTES} hex characters); delete the file to have a new one generated",
        )
    return secret


def _create_secret(path: Path) -> bool:
    """Write a new secret atomically (temp file, fsync, hard link); False if another process won."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise SecretFileError(path, f"cannot create its directory: {exc.strerror}") from exc
    content = (secrets.token_bytes(MIN_SECRET_BYTES).hex() + "\n").encode("ascii")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    except OSError as exc:
        raise SecretFileError(path, f"cannot create it: {exc.strerror}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    logger.info("created a new node secret file %s (mode 0600)", path)
    return True


def load_or_create_secret(path: str | os.PathLike[str]) -> bytes:
    """Read the node secret (`node.secret_file`); create it (32 random bytes, hex, 0600) if missing.

    Raises `SecretFileError` naming the path when the file is unreadable, malformed or too short.
    A file readable by group or others is used but logged as a warning.
    """
    secret_path = Path(path)
    if not secret_path.exists() and not secret_path.is_symlink():
        _create_secret(secret_path)
    try:
        text = secret_path.read_text(encoding="ascii")
        mode = secret_path.stat().st_mode
    except UnicodeDecodeError:
        raise SecretFileError(
            secret_path, "it is not hex text; delete it to have a new secret generated"
        ) from None
    except OSError as exc:
        raise SecretFileError(
            secret_path, f"cannot read it: {exc.strerror} (the hub's user must own it, mode 0600)"
        ) from exc
    secret = _parse_secret(secret_path, text)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning(
            "node secret file %s is accessible to other users (mode %o); run: chmod 600 %s",
            secret_path,
            stat.S_IMODE(mode),
            secret_path,
        )
    return secret


def check_national_crypto() -> None:
    """Check SM3 and SM4 against the standards' test vectors; raise if either is missing or wrong.

    SM3 of "abc" (GB/T 32905) and SM4 with key = plaintext = 0123…3210 (GB/T 32907). Meant for
    start-up and `hallhub doctor`: some OpenSSL builds leave the SM algorithms out.
    """
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415 (lazy, for memory)
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: PLC0415

    try:
        digest = hashes.Hash(hashes.SM3())
        digest.update(b"abc")
        sm3 = digest.finalize().hex()
    except Exception as exc:
        raise NationalCryptoUnavailableError(f"SM3 is not available ({exc})") from exc
    if sm3 != _SM3_ABC:
        raise NationalCryptoUnavailableError("SM3 gives a wrong digest for the standard's 'abc'")
    block = bytes.fromhex(_SM4_KEY_AND_PLAIN)
    try:
        # One block of the standard's vector: ECB is the mode the vector is defined in.
        encryptor = Cipher(algorithms.SM4(block), modes.ECB()).encryptor()  # noqa: S305
        sm4 = (encryptor.update(block) + encryptor.finalize()).hex()
    except Exception as exc:
        raise NationalCryptoUnavailableError(f"SM4 is not available ({exc})") from exc
    if sm4 != _SM4_CIPHER:
        raise NationalCryptoUnavailableError("SM4 gives a wrong ciphertext for GB/T 32907's vector")
