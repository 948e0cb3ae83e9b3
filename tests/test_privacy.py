"""Privacy primitives: masking, citizen references, national crypto vectors, sealing, the secret file."""

from __future__ import annotations

import hashlib
import hmac
import logging
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from drivers.base import CitizenIdentifier
from hub.privacy.sealing import (
    MIN_SECRET_BYTES,
    NodeIdentifier,
    SealedIdentity,
    SecretFileError,
    UnsealError,
    check_national_crypto,
    citizen_ref,
    derive_seal_key,
    load_or_create_secret,
    mask_id_number,
)

SECRET = bytes(range(32))
NUMBER = "37010219900307123X"
NAME = "测试姓名"


# -- masking ---------------------------------------------------------------------------------


def test_mask_keeps_first_six_and_last_four() -> None:
    assert mask_id_number("370102199003071234") == "370102********1234"


def test_mask_upper_cases_and_strips() -> None:
    assert mask_id_number(" 37010219900307123x ") == "370102********123X"


def test_mask_fifteen_character_permit() -> None:
    assert mask_id_number("USA110085010112") == "USA110*****0112"


@pytest.mark.parametrize(
    ("number", "masked"),
    [("H12345678", "H1*****78"), ("12345678", "12****78"), ("ABCD", "A**D"), ("ABC", "***")],
)
def test_mask_short_numbers_hide_at_least_half(number: str, masked: str) -> None:
    assert mask_id_number(number) == masked
    assert masked.count("*") * 2 >= len(number)


def test_mask_rejects_empty() -> None:
    with pytest.raises(ValueError, match="empty"):
        mask_id_number("  ")


# -- citizen_ref -----------------------------------------------------------------------------


def _hmac_sm3_by_hand(key: bytes, message: bytes) -> str:
    """RFC 2104 HMAC built from the SM3 hash alone (block size 64), to cross-check HMAC-SM3."""

    def sm3(data: bytes) -> bytes:
        digest = hashes.Hash(hashes.SM3())
        digest.update(data)
        return digest.finalize()

    block = key.ljust(64, b"\x00") if len(key) <= 64 else sm3(key).ljust(64, b"\x00")
    inner = sm3(bytes(b ^ 0x36 for b in block) + message)
    return sm3(bytes(b ^ 0x5C for b in block) + inner).hex()


def test_citizen_ref_is_hmac_sm3_by_default() -> None:
    assert citizen_ref(NUMBER, SECRET) == _hmac_sm3_by_hand(SECRET, NUMBER.encode())
    assert len(citizen_ref(NUMBER, SECRET)) == 64


def test_citizen_ref_sha256_matches_stdlib_hmac() -> None:
    expected = hmac.new(SECRET, NUMBER.encode(), hashlib.sha256).hexdigest()
    assert citizen_ref(NUMBER, SECRET, "sha256") == expected


@pytest.mark.parametrize("algorithm", ["sm3", "sha256"])
def test_citizen_ref_upper_cases_the_number(algorithm: str) -> None:
    lower = citizen_ref("37010219900307123x", SECRET, algorithm)  # type: ignore[arg-type]
    upper = citizen_ref("37010219900307123X", SECRET, algorithm)  # type: ignore[arg-type]
    assert lower == upper


def test_citizen_ref_depends_on_secret_and_algorithm() -> None:
    other = bytes(32)
    assert citizen_ref(NUMBER, SECRET) != citizen_ref(NUMBER, other)
    assert citizen_ref(NUMBER, SECRET) != citizen_ref(NUMBER, SECRET, "sha256")


def test_citizen_ref_is_not_a_bare_hash() -> None:
    bare = hashes.Hash(hashes.SM3())
    bare.update(NUMBER.encode())
    assert citizen_ref(NUMBER, SECRET) != bare.finalize().hex()


def test_citizen_ref_refuses_short_secret_and_unknown_algorithm() -> None:
    with pytest.raises(ValueError, match="at least"):
        citizen_ref(NUMBER, b"short")
    with pytest.raises(ValueError, match="sm3"):
        citizen_ref(NUMBER, SECRET, "md5")  # type: ignore[arg-type]


# -- national crypto test vectors -----------------------------------------------------------


def test_sm3_standard_vector() -> None:
    digest = hashes.Hash(hashes.SM3())
    digest.update(b"abc")
    assert digest.finalize().hex() == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"


def test_sm4_standard_vector() -> None:
    block = bytes.fromhex("0123456789abcdeffedcba9876543210")
    encryptor = Cipher(algorithms.SM4(block), modes.ECB()).encryptor()
    assert (encryptor.update(block) + encryptor.finalize()).hex() == "681edf34d206965e86b3e94f536e4246"


def test_sm4_gcm_rfc8998_vector() -> None:
    """The authenticated mode used for sealing is standard SM4-GCM (RFC 8998, appendix A.1)."""
    key = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    iv = bytes.fromhex("00001234567800000000ABCD")
    aad = bytes.fromhex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2")
    plaintext = bytes.fromhex(
        "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD"
        "EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA"
    )
    encryptor = Cipher(algorithms.SM4(key), modes.GCM(iv)).encryptor()
    encryptor.authenticate_additional_data(aad)
    ciphertext = encryptor.update(plaintext) + encryptor.finalize()
    assert ciphertext.hex().upper() == (
        "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735"
        "D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D"
    )
    assert encryptor.tag.hex().upper() == "83DE3541E4C2B58177E065A9BF7B62EC"


def test_check_national_crypto_passes() -> None:
    check_national_crypto()


# -- sealing ---------------------------------------------------------------------------------


def test_seal_unseal_round_trip() -> None:
    key = derive_seal_key(SECRET)
    token = SealedIdentity(cert_key_gov=NUMBER, user_name=NAME).seal(key)
    opened = SealedIdentity.unseal(token, key)
    assert opened.national_fields() == {"certkeyGOV": NUMBER, "userName": NAME}
    assert NUMBER not in token
    assert NAME not in token


def test_seal_without_name_and_fresh_nonces() -> None:
    key = derive_seal_key(SECRET)
    sealed = SealedIdentity(cert_key_gov=NUMBER)
    first, second = sealed.seal(key), sealed.seal(key)
    assert first != second
    assert SealedIdentity.unseal(first, key).user_name is None


def test_sealed_identity_repr_hides_fields() -> None:
    text = repr(SealedIdentity(cert_key_gov=NUMBER, user_name=NAME))
    assert NUMBER not in text
    assert NAME not in text


def test_unseal_rejects_wrong_key_tampering_and_garbage() -> None:
    key = derive_seal_key(SECRET)
    token = SealedIdentity(cert_key_gov=NUMBER, user_name=NAME).seal(key)
    with pytest.raises(UnsealError, match="authentication"):
        SealedIdentity.unseal(token, derive_seal_key(bytes(32)))
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    with pytest.raises(UnsealError):
        SealedIdentity.unseal(flipped, key)
    for garbage in ("", "v2.abc", "v1.!!!", "v1.AAAA"):
        with pytest.raises(UnsealError):
            SealedIdentity.unseal(garbage, key)


def test_seal_key_must_be_sixteen_bytes() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        SealedIdentity(cert_key_gov=NUMBER).seal(b"x" * 15)


def test_derive_seal_key_is_stable_and_separate_from_secret() -> None:
    key = derive_seal_key(SECRET)
    assert key == derive_seal_key(SECRET)
    assert len(key) == 16
    assert key not in SECRET
    assert key != derive_seal_key(bytes(32))


# -- NodeIdentifier ---------------------------------------------------------------------------


def test_node_identifier_default_mode() -> None:
    identifier: CitizenIdentifier = NodeIdentifier(SECRET)
    identity = identifier.identify("37010219900307123x", NAME)
    assert identity.masked == "370102********123X"
    assert identity.ref == citizen_ref(NUMBER, SECRET)
    assert identity.sealed is None


def test_node_identifier_sha256() -> None:
    identity = NodeIdentifier(SECRET, hmac="sha256").identify(NUMBER)
    assert identity.ref == citizen_ref(NUMBER, SECRET, "sha256")


def test_node_identifier_encrypted_mode_uses_derived_key() -> None:
    identity = NodeIdentifier(SECRET, identity_mode="encrypted").identify(NUMBER, NAME)
    assert identity.sealed is not None
    opened = SealedIdentity.unseal(identity.sealed, derive_seal_key(SECRET))
    assert (opened.cert_key_gov, opened.user_name) == (NUMBER, NAME)
    assert NUMBER not in repr(identity)
    assert NAME not in repr(identity)


def test_node_identifier_encrypted_mode_with_explicit_key() -> None:
    key = bytes(range(100, 116))
    identity = NodeIdentifier(SECRET, identity_mode="encrypted", seal_key=key).identify(NUMBER)
    assert identity.sealed is not None
    assert SealedIdentity.unseal(identity.sealed, key).cert_key_gov == NUMBER


def test_node_identifier_validates_and_hides_secret() -> None:
    identifier = NodeIdentifier(SECRET)
    assert SECRET.hex() not in repr(identifier)
    assert identifier.hmac_algorithm == "sm3"
    assert identifier.identity_mode == "none"
    with pytest.raises(ValueError, match="at least"):
        NodeIdentifier(b"short")
    with pytest.raises(ValueError, match=r"privacy\.identity"):
        NodeIdentifier(SECRET, identity_mode="plain")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"privacy\.hmac"):
        NodeIdentifier(SECRET, hmac="md5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="16 bytes"):
        NodeIdentifier(SECRET, identity_mode="encrypted", seal_key=b"x")


# -- the secret file --------------------------------------------------------------------------


def test_secret_file_created_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "hallhub" / "secret"
    secret = load_or_create_secret(path)
    assert len(secret) == MIN_SECRET_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text(encoding="ascii")
    assert text.strip() == secret.hex()
    assert len(text.strip()) == 64
    assert load_or_create_secret(path) == secret
    assert [p.name for p in path.parent.iterdir()] == ["secret"]


def test_secret_file_accepts_str_path_and_existing_secret(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(("ab" * 40) + "\n", encoding="ascii")
    path.chmod(0o600)
    assert load_or_create_secret(str(path)) == bytes([0xAB]) * 40


@pytest.mark.parametrize(
    ("content", "problem"),
    [("abcd\n", "too short"), ("", "empty"), ("not hex at all, sorry" * 4, "hexadecimal")],
)
def test_secret_file_errors_name_the_path(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "secret"
    path.write_text(content, encoding="ascii")
    with pytest.raises(SecretFileError, match=problem) as caught:
        load_or_create_secret(path)
    assert caught.value.path == path
    assert str(path) in str(caught.value)


def test_secret_file_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.mkdir()
    with pytest.raises(SecretFileError, match="cannot read") as caught:
        load_or_create_secret(path)
    assert str(path) in str(caught.value)


def test_secret_file_not_text(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"\xff\xfe" * 40)
    with pytest.raises(SecretFileError, match="not hex text"):
        load_or_create_secret(path)


def test_secret_file_open_to_others_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "secret"
    path.write_text("cd" * 32, encoding="ascii")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="hub.privacy.sealing"):
        load_or_create_secret(path)
    assert "chmod 600" in caplog.text
    assert "cd" * 32 not in caplog.text
