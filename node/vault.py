"""The key vault: the node's Ed25519 identity seed and its store key, wrapped under Argon2id of the passphrase.

The file (JSON) keeps the public identity in clear so `whoami` needs no passphrase; the secrets are one sealed blob
whose associated data is the whole header, so editing any clear field (identity, KDF parameters) breaks unlock.
Changing the passphrase rewraps that blob under a fresh salt; the data it protects is never re-encrypted.
"""

from __future__ import annotations

import base64
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import nacl.pwhash.argon2id as argon2id
import nacl.signing
import nacl.utils

from node.crypto import KEY_SIZE, IntegrityError, random_key, seal, unseal
from node.home import write_private_atomically
from protocol.ids import did_from_public_key, peer_id_from_public_key

FORMAT = "mydata-vault"
FORMAT_VERSION = 1

KDF_PROFILES = {
    "interactive": (argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE),
    "moderate": (argon2id.OPSLIMIT_MODERATE, argon2id.MEMLIMIT_MODERATE),
    "sensitive": (argon2id.OPSLIMIT_SENSITIVE, argon2id.MEMLIMIT_SENSITIVE),
}
DEFAULT_PROFILE = "moderate"
# A damaged or hostile vault file must not be able to make unlock allocate or spin without bound.
_MAX_OPSLIMIT = 4 * argon2id.OPSLIMIT_SENSITIVE
_MAX_MEMLIMIT = argon2id.MEMLIMIT_SENSITIVE
_SECRETS_SIZE = 2 * KEY_SIZE


class VaultError(Exception):
    """The vault cannot be used; the message is one sentence for the owner."""


class WrongPassphrase(VaultError):
    pass


class CorruptVault(VaultError):
    pass


@dataclass(frozen=True)
class Identity:
    """What an unlocked vault yields."""

    seed: bytes
    store_key: bytes

    @property
    def signing_key(self) -> nacl.signing.SigningKey:
        return nacl.signing.SigningKey(self.seed)

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def did(self) -> str:
        return did_from_public_key(self.public_key)

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.public_key)


def _normalise(passphrase: str | bytes) -> bytes:
    if isinstance(passphrase, bytes):
        passphrase = passphrase.decode("utf-8")
    # The same passphrase typed on two keyboards must give the same key.
    passphrase = unicodedata.normalize("NFC", passphrase)
    if not passphrase:
        raise VaultError("the passphrase must not be empty")
    return passphrase.encode("utf-8")


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: object, what: str) -> bytes:
    if not isinstance(s, str):
        raise CorruptVault(f"the vault file is damaged: {what} is missing")
    try:
        return base64.b64decode(s, validate=True)
    except ValueError:
        raise CorruptVault(f"the vault file is damaged: {what} is not valid base64") from None


@dataclass(frozen=True)
class Vault:
    public_key: bytes
    did: str
    peer_id: str
    salt: bytes
    opslimit: int
    memlimit: int
    wrapped: bytes

    # -- the file -------------------------------------------------------------------------------------------

    def _header(self) -> dict:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "public_key": _b64(self.public_key),
            "did": self.did,
            "peer_id": self.peer_id,
            "kdf": {"alg": "argon2id", "salt": _b64(self.salt), "opslimit": self.opslimit, "memlimit": self.memlimit},
        }

    def _associated_data(self) -> bytes:
        return json.dumps(self._header(), sort_keys=True, separators=(",", ":")).encode()

    def to_bytes(self) -> bytes:
        return (json.dumps({**self._header(), "wrapped": _b64(self.wrapped)}, indent=2) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Vault":
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise CorruptVault("the vault file is damaged (truncated or not a vault file)") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise CorruptVault("the vault file is damaged (truncated or not a vault file)")
        if doc.get("version") != FORMAT_VERSION:
            raise CorruptVault(f"the vault file has format version {doc.get('version')!r}; this program reads 1")
        kdf = doc.get("kdf")
        if not isinstance(kdf, dict) or kdf.get("alg") != "argon2id":
            raise CorruptVault("the vault file is damaged: its key derivation parameters are missing")
        ops, mem = kdf.get("opslimit"), kdf.get("memlimit")
        if not (type(ops) is int and argon2id.OPSLIMIT_MIN <= ops <= _MAX_OPSLIMIT) or not (
            type(mem) is int and argon2id.MEMLIMIT_MIN <= mem <= _MAX_MEMLIMIT
        ):
            raise CorruptVault("the vault file is damaged: its key derivation parameters are out of range")
        vault = cls(
            public_key=_unb64(doc.get("public_key"), "the public key"),
            did=doc.get("did"),
            peer_id=doc.get("peer_id"),
            salt=_unb64(kdf.get("salt"), "the salt"),
            opslimit=ops,
            memlimit=mem,
            wrapped=_unb64(doc.get("wrapped"), "the wrapped keys"),
        )
        if not isinstance(vault.did, str) or not isinstance(vault.peer_id, str) or len(vault.public_key) != 32:
            raise CorruptVault("the vault file is damaged: its identity fields are missing")
        if len(vault.salt) != argon2id.SALTBYTES:
            raise CorruptVault("the vault file is damaged: the salt has the wrong length")
        return vault

    @classmethod
    def load(cls, path: Path) -> "Vault":
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise VaultError(f"there is no vault at {path}; run 'mydata init' first") from None
        except OSError as exc:
            raise VaultError(f"cannot read the vault at {path}: {exc.strerror}") from None
        return cls.from_bytes(data)

    def save(self, path: Path) -> None:
        write_private_atomically(Path(path), self.to_bytes())

    # -- keys -----------------------------------------------------------------------------------------------

    @classmethod
    def _wrap(cls, identity: Identity, passphrase: str | bytes, profile: str) -> "Vault":
        if profile not in KDF_PROFILES:
            raise VaultError(f"unknown KDF profile {profile!r}; choose one of {', '.join(KDF_PROFILES)}")
        secret = _normalise(passphrase)
        ops, mem = KDF_PROFILES[profile]
        unsealed = cls(
            public_key=identity.public_key,
            did=identity.did,
            peer_id=identity.peer_id,
            salt=nacl.utils.random(argon2id.SALTBYTES),
            opslimit=ops,
            memlimit=mem,
            wrapped=b"",
        )
        kek = argon2id.kdf(KEY_SIZE, secret, unsealed.salt, opslimit=ops, memlimit=mem)
        wrapped = seal(kek, identity.seed + identity.store_key, unsealed._associated_data())
        return cls(**{**unsealed.__dict__, "wrapped": wrapped})

    @classmethod
    def create(cls, passphrase: str | bytes, *, profile: str = DEFAULT_PROFILE) -> tuple["Vault", Identity]:
        """A fresh identity and store key, wrapped under `passphrase`. The caller saves the vault."""
        identity = Identity(seed=random_key(), store_key=random_key())
        return cls._wrap(identity, passphrase, profile), identity

    def unlock(self, passphrase: str | bytes) -> Identity:
        secret = _normalise(passphrase)
        kek = argon2id.kdf(KEY_SIZE, secret, self.salt, opslimit=self.opslimit, memlimit=self.memlimit)
        try:
            secrets = unseal(kek, self.wrapped, self._associated_data())
        except IntegrityError:
            raise WrongPassphrase(
                "wrong passphrase: it does not unlock this vault (or the vault file was altered)"
            ) from None
        if len(secrets) != _SECRETS_SIZE:
            raise CorruptVault("the vault file is damaged: the wrapped keys have the wrong length")
        identity = Identity(seed=secrets[:KEY_SIZE], store_key=secrets[KEY_SIZE:])
        if identity.public_key != self.public_key:
            raise CorruptVault("the vault file is damaged: its public key does not match its identity")
        return identity

    def rewrap(self, identity: Identity, new_passphrase: str | bytes, *, profile: str | None = None) -> "Vault":
        """The same identity and store key under a new passphrase and a fresh salt."""
        if profile is None:
            profile = next((n for n, p in KDF_PROFILES.items() if p == (self.opslimit, self.memlimit)), DEFAULT_PROFILE)
        return self._wrap(identity, new_passphrase, profile)
