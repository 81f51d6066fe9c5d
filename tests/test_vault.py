"""The key vault: wrap/unwrap under Argon2id, rewrap, and every way its file can be wrong."""

import json
import stat
import unicodedata

import pytest

from node.home import Home, HomeError, write_private_atomically
from node.vault import CorruptVault, Vault, VaultError, WrongPassphrase


@pytest.fixture(scope="module")
def made():
    return Vault.create("hunter2 but longer", profile="interactive")


def test_create_and_unlock(made, tmp_path):
    vault, identity = made
    path = tmp_path / "vault.json"
    vault.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = Vault.load(path)
    assert loaded == vault
    again = loaded.unlock("hunter2 but longer")
    assert again == identity
    assert len(identity.seed) == 32 and len(identity.store_key) == 32 and identity.seed != identity.store_key
    assert loaded.did == identity.did and loaded.did.startswith("did:key:z6Mk")
    assert loaded.peer_id == identity.peer_id and loaded.peer_id.startswith("12D3KooW")


def test_secrets_are_not_in_the_file(made):
    vault, identity = made
    data = vault.to_bytes()
    for secret in (identity.seed, identity.store_key):
        assert secret not in data and secret.hex().encode() not in data


def test_wrong_passphrase(made):
    vault, _ = made
    with pytest.raises(WrongPassphrase, match="wrong passphrase"):
        vault.unlock("hunter3 but longer")


def test_empty_passphrase_refused(made):
    vault, _ = made
    with pytest.raises(VaultError, match="empty"):
        vault.unlock("")
    with pytest.raises(VaultError, match="empty"):
        Vault.create("", profile="interactive")


def test_unicode_passphrase_is_normalised():
    composed = "lösenord-ärligt"
    vault, identity = Vault.create(composed, profile="interactive")
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    assert vault.unlock(decomposed.encode()) == identity


def test_rewrap_keeps_keys_and_changes_salt(made):
    vault, identity = made
    new = vault.rewrap(identity, "a new passphrase")
    assert new.salt != vault.salt and new.wrapped != vault.wrapped
    assert (new.opslimit, new.memlimit) == (vault.opslimit, vault.memlimit)
    assert new.unlock("a new passphrase") == identity
    with pytest.raises(WrongPassphrase):
        new.unlock("hunter2 but longer")


def test_unknown_profile(made):
    with pytest.raises(VaultError, match="unknown KDF profile"):
        Vault.create("x", profile="turbo")


@pytest.mark.parametrize(
    "field, value",
    [("did", "did:key:z6MkSomebodyElse"), ("peer_id", "12D3KooWSomebodyElse"), (("kdf", "opslimit"), 3)],
)
def test_edited_header_does_not_unlock(made, field, value):
    vault, _ = made
    doc = json.loads(vault.to_bytes())
    if isinstance(field, tuple):
        doc[field[0]][field[1]] = value
    else:
        doc[field] = value
    edited = Vault.from_bytes(json.dumps(doc).encode())
    with pytest.raises(WrongPassphrase):
        edited.unlock("hunter2 but longer")


def test_truncated_vault_at_every_length_is_a_clear_error(made):
    vault, _ = made
    data = vault.to_bytes()
    for n in range(0, len(data) - 2, 7):  # the last bytes are whitespace
        with pytest.raises(VaultError):
            Vault.from_bytes(data[:n]).unlock("hunter2 but longer")


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda d: d.update(version=2), "format version"),
        (lambda d: d.update(format="other"), "damaged"),
        (lambda d: d.update(wrapped="!!notbase64"), "base64"),
        (lambda d: d.pop("wrapped"), "missing"),
        (lambda d: d["kdf"].update(memlimit=1 << 42), "out of range"),
        (lambda d: d["kdf"].update(opslimit="3"), "out of range"),
        (lambda d: d["kdf"].update(salt="AAAA"), "salt"),
        (lambda d: d.update(public_key="AAAA"), "identity"),
        (lambda d: d.update(did=None), "identity"),
        (lambda d: d.pop("kdf"), "key derivation"),
    ],
)
def test_malformed_vault_fields(made, mutate, words):
    vault, _ = made
    doc = json.loads(vault.to_bytes())
    mutate(doc)
    with pytest.raises(CorruptVault, match=words):
        Vault.from_bytes(json.dumps(doc).encode())


@pytest.mark.parametrize("data", [b"", b"\xff\xfe", b"[]", b'"vault"', b"null"])
def test_not_a_vault(data):
    with pytest.raises(CorruptVault, match="damaged"):
        Vault.from_bytes(data)


def test_missing_vault_file(tmp_path):
    with pytest.raises(VaultError, match="mydata init"):
        Vault.load(tmp_path / "nope.json")


def test_home_resolution_and_creation(tmp_path, monkeypatch):
    monkeypatch.setenv("MYDATA_HOME", str(tmp_path / "env-home"))
    assert Home.resolve().path == tmp_path / "env-home"
    assert Home.resolve(tmp_path / "explicit").path == tmp_path / "explicit"
    monkeypatch.delenv("MYDATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert Home.resolve().path == tmp_path / "user" / ".local/share/mydata"
    h = Home(tmp_path / "a" / "b")
    with pytest.raises(HomeError, match="mydata init"):
        h.require()
    h.create()
    assert stat.S_IMODE(h.path.stat().st_mode) == 0o700
    with pytest.raises(HomeError, match="no vault"):
        h.require()


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "f"
    write_private_atomically(target, b"one")
    write_private_atomically(target, b"two")
    assert target.read_bytes() == b"two" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f"]
