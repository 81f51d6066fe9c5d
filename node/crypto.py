"""Symmetric primitives for data at rest: XChaCha20-Poly1305 sealing, keyed hashes, subkey derivation.

Every encrypted byte the node writes goes through `seal`; every keyed index through `keyed_hash`.
Subkeys are derived per purpose from the one store key, so a leak of one use never serves another.
"""

from __future__ import annotations

import hashlib

import nacl.bindings as sodium
import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.utils

KEY_SIZE = 32
NONCE_SIZE = sodium.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES  # 24
TAG_SIZE = sodium.crypto_aead_xchacha20poly1305_ietf_ABYTES  # 16


class IntegrityError(Exception):
    """Ciphertext failed authentication: tampered, swapped, rolled back, or the wrong key."""


def random_key() -> bytes:
    return nacl.utils.random(KEY_SIZE)


def derive_key(master: bytes, purpose: str) -> bytes:
    """A 256-bit subkey of `master` for one named purpose (BLAKE2b keyed, purpose as personalisation)."""
    person = purpose.encode()
    if len(person) > 16:
        raise ValueError("purpose label must be at most 16 bytes")
    return nacl.hash.blake2b(
        b"mydata subkey",
        digest_size=KEY_SIZE,
        key=master,
        person=person.ljust(16, b"\0"),
        encoder=nacl.encoding.RawEncoder,
    )


def keyed_hash(key: bytes, data: bytes) -> bytes:
    """BLAKE2b-256 keyed with `key` (libsodium's generichash); hashlib's is several times cheaper per call."""
    return hashlib.blake2b(data, key=key, digest_size=32).digest()


def seal(key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """nonce || ciphertext+tag. A fresh random 192-bit nonce per call is safe with XChaCha20."""
    nonce = nacl.utils.random(NONCE_SIZE)
    return nonce + sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, associated_data, nonce, key)


def unseal(key: bytes, blob: bytes, associated_data: bytes) -> bytes:
    if len(blob) < NONCE_SIZE + TAG_SIZE:
        raise IntegrityError("ciphertext is truncated")
    try:
        return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
            blob[NONCE_SIZE:], associated_data, blob[:NONCE_SIZE], key
        )
    except nacl.exceptions.CryptoError as exc:
        raise IntegrityError("ciphertext does not authenticate") from exc
