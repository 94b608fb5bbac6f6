"""Ed25519 key files, key ids, trusted key sets, small-order points, and signatures."""

from __future__ import annotations

import hashlib
import shutil
import stat
import subprocess
from pathlib import Path

import craft
import pytest
from conftest import KeyPair
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bundler.errors import KeyFileError, SignatureError, TrustError
from bundler.formats.signing import (
    PRIVATE_KEY_NAME,
    PUBLIC_KEY_NAME,
    generate_keypair,
    is_small_order,
    key_id,
    load_private_key,
    load_public_key_bytes,
    load_trusted_keys,
    private_key_is_encrypted,
    public_key_pem,
    sign,
    verify_signature,
)

# ---- key pairs ----------------------------------------------------------------------------


def test_generate_keypair_writes_pem_files_and_returns_the_key_id(tmp_path: Path) -> None:
    kid = generate_keypair(tmp_path / "keys", None)
    private_path = tmp_path / "keys" / PRIVATE_KEY_NAME
    public_path = tmp_path / "keys" / PUBLIC_KEY_NAME
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert private_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    private = load_private_key(private_path, None)
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert kid == key_id(private.public_key()) == hashlib.sha256(raw).hexdigest()
    assert load_trusted_keys([public_path])[0].key_id == kid
    assert not private_key_is_encrypted(private_path)


def test_generate_keypair_never_overwrites_without_force(tmp_path: Path) -> None:
    first = generate_keypair(tmp_path, None)
    before = (tmp_path / PRIVATE_KEY_NAME).read_bytes()
    with pytest.raises(KeyFileError, match="already exists") as info:
        generate_keypair(tmp_path, None)
    assert "--force" in info.value.diagnostics()
    assert (tmp_path / PRIVATE_KEY_NAME).read_bytes() == before
    second = generate_keypair(tmp_path, None, force=True)
    assert second != first
    assert stat.S_IMODE((tmp_path / PRIVATE_KEY_NAME).stat().st_mode) == 0o600


def test_encrypted_private_key(tmp_path: Path) -> None:
    generate_keypair(tmp_path, b"correct horse")
    path = tmp_path / PRIVATE_KEY_NAME
    assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert private_key_is_encrypted(path)
    assert isinstance(load_private_key(path, b"correct horse"), Ed25519PrivateKey)
    with pytest.raises(KeyFileError, match="is encrypted") as info:
        load_private_key(path, None)
    assert "--passphrase-env" in info.value.diagnostics()
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_private_key(path, b"wrong")


def test_passphrase_for_an_unencrypted_key(publisher: KeyPair) -> None:
    with pytest.raises(KeyFileError, match="is not encrypted"):
        load_private_key(publisher.key, b"unneeded")


def test_private_key_that_is_not_ed25519(tmp_path: Path) -> None:
    path = tmp_path / "p256.key"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        load_private_key(path, None)


def test_missing_or_garbage_private_key(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read signing key"):
        load_private_key(tmp_path / "missing.key", None)
    (tmp_path / "garbage.key").write_bytes(b"not a key")
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        load_private_key(tmp_path / "garbage.key", None)


# ---- trusted keys -------------------------------------------------------------------------


def test_trusted_keys_from_a_folder(tmp_path: Path, publisher: KeyPair, attacker: KeyPair) -> None:
    folder = tmp_path / "trusted"
    folder.mkdir()
    shutil.copy(publisher.pub, folder / "team-a.pub")
    shutil.copy(attacker.pub, folder / "team-b.pem")
    (folder / "README").write_text("not a key, ignored")
    (folder / "airgap.key").write_bytes(publisher.key.read_bytes())  # a private key: ignored
    (folder / "sub.pub").mkdir()  # a folder named like a key: ignored
    keys = load_trusted_keys([folder])
    assert [k.key_id for k in keys] == [publisher.key_id, attacker.key_id]
    assert [k.source.name for k in keys] == ["team-a.pub", "team-b.pem"]


def test_no_trusted_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TrustError, match="no trusted public key given"):
        load_trusted_keys([tmp_path])
    with pytest.raises(TrustError, match="no trusted public key given"):
        load_trusted_keys([])


def test_unreadable_or_oversized_trust_files(tmp_path: Path) -> None:
    with pytest.raises(TrustError, match="cannot read") as info:
        load_trusted_keys([tmp_path / "missing.pub"])
    assert info.value.member == str(tmp_path / "missing.pub")
    big = tmp_path / "big.pub"
    big.write_bytes(b"A" * (64 * 1024 + 1))
    with pytest.raises(TrustError, match="key file too large"):
        load_trusted_keys([big])


@pytest.mark.parametrize("name", list(craft.SMALL_ORDER_POINTS))
def test_small_order_points_are_detected(name: str) -> None:
    assert is_small_order(bytes.fromhex(craft.SMALL_ORDER_POINTS[name]))


@pytest.mark.parametrize("name", list(craft.SMALL_ORDER_POINTS))
def test_a_trusted_key_of_small_order_is_refused_when_loaded(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.pub"
    path.write_bytes(craft.raw_public_pem(bytes.fromhex(craft.SMALL_ORDER_POINTS[name])))
    with pytest.raises(TrustError, match="small-order point") as info:
        load_trusted_keys([path])
    assert info.value.member == str(path)
    assert "replace this file" in info.value.diagnostics()


def test_real_keys_are_not_small_order() -> None:
    for i in range(20):
        private = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(bytes([i])).digest())
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        assert not is_small_order(raw)


def test_trusted_key_that_is_not_ed25519(tmp_path: Path) -> None:
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(TrustError, match="not an Ed25519 public key"):
        load_public_key_bytes(pem, tmp_path / "p256.pub")
    with pytest.raises(TrustError, match="not a PEM public key"):
        load_public_key_bytes(b"-----BEGIN PUBLIC KEY-----\nAAAA\n", tmp_path / "x.pub")


# ---- signatures -----------------------------------------------------------------------------


def test_sign_and_verify(publisher: KeyPair, attacker: KeyPair) -> None:
    message = b'{"name":"demo"}\n'
    signature = sign(publisher.private, message)
    assert len(signature) == 64
    assert sign(publisher.private, message) == signature  # Ed25519 is deterministic
    keys = load_trusted_keys([attacker.pub, publisher.pub])
    assert verify_signature(message, signature, keys, None).key_id == publisher.key_id


def test_unknown_signer_message_names_the_claimed_key(
    publisher: KeyPair, attacker: KeyPair
) -> None:
    signature = sign(attacker.private, b"m")
    with pytest.raises(SignatureError, match=f"signed by key {attacker.key_id[:16]}") as info:
        verify_signature(b"m", signature, load_trusted_keys([publisher.pub]), attacker.key_id)
    assert info.value.member == "manifest.json.sig"
    assert "pass --trust" in info.value.diagnostics()


def test_bad_signature_from_a_claimed_trusted_key(publisher: KeyPair) -> None:
    keys = load_trusted_keys([publisher.pub])
    signature = sign(publisher.private, b"m")
    with pytest.raises(SignatureError, match="does not verify with any trusted key"):
        verify_signature(b"M", signature, keys, publisher.key_id)
    with pytest.raises(SignatureError, match="signature is 65 bytes, not 64"):
        verify_signature(b"m", signature + b"\x00", keys, publisher.key_id)


def test_signatures_interoperate_with_openssl(tmp_path: Path, publisher: KeyPair) -> None:
    message = tmp_path / "manifest.json"
    message.write_bytes(b'{"made by":"openssl"}\n')
    sig = tmp_path / "manifest.json.sig"
    subprocess.run(
        [
            "openssl",
            "pkeyutl",
            "-sign",
            "-rawin",
            "-inkey",
            str(publisher.key),
            "-in",
            str(message),
            "-out",
            str(sig),
        ],
        check=True,
        capture_output=True,
    )
    keys = load_trusted_keys([publisher.pub])
    assert verify_signature(message.read_bytes(), sig.read_bytes(), keys, None) == keys[0]
    assert sig.read_bytes() == sign(publisher.private, message.read_bytes())
    assert public_key_pem(keys[0].public) == publisher.pub.read_bytes()
