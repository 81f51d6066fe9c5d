import pytest

from node.crypto import IntegrityError, derive_key, random_key, seal, unseal


def test_seal_roundtrip_and_associated_data_binding():
    key = random_key()
    blob = seal(key, b"secret", b"record-1|v1")
    assert unseal(key, blob, b"record-1|v1") == b"secret"
    with pytest.raises(IntegrityError):
        unseal(key, blob, b"record-1|v2")  # a rolled-back version must not authenticate
    with pytest.raises(IntegrityError):
        unseal(random_key(), blob, b"record-1|v1")


def test_any_flipped_byte_is_detected():
    key = random_key()
    blob = bytearray(seal(key, b"x" * 40, b"ad"))
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 1
        with pytest.raises(IntegrityError):
            unseal(key, bytes(bad), b"ad")


def test_truncated_ciphertext_is_an_integrity_error():
    with pytest.raises(IntegrityError):
        unseal(random_key(), b"short", b"")


def test_subkeys_differ_by_purpose():
    master = random_key()
    assert derive_key(master, "records") != derive_key(master, "paths")
    assert derive_key(master, "records") == derive_key(master, "records")


def test_keyed_hash_is_libsodiums_keyed_blake2b():
    import nacl.encoding
    import nacl.hash

    from node.crypto import keyed_hash

    key = random_key()
    for data in (b"", b"data\x00cv/basics", bytes(range(256)) * 9):
        assert keyed_hash(key, data) == nacl.hash.blake2b(data, digest_size=32, key=key, encoder=nacl.encoding.RawEncoder)
