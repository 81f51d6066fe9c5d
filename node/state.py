"""Opening a node's persistent state: the encrypted record store and the audit log, one SQLite file in the home."""

from __future__ import annotations

from node.audit import AuditLog
from node.config import write_default_config
from node.crypto import derive_key
from node.home import Home
from node.store import Store
from node.vault import Identity, Vault


def open_state(home: Home, identity: Identity) -> tuple[Store, AuditLog]:
    store = Store.open(home.db_path, identity.store_key)
    try:
        audit = AuditLog.open(home.db_path, derive_key(identity.store_key, "audit"))
    except BaseException:
        store.close()
        raise
    return store, audit


def create_node(home: Home, passphrase: str, *, profile: str, force: bool = False) -> Vault:
    """Make a node in `home`: a new identity and store key locked by the passphrase, an empty store, the default
    config. With `force`, the previous vault and database are dropped (the caller asked the person first)."""
    vault, identity = Vault.create(passphrase, profile=profile)
    home.create()
    if force:
        home.remove_node_files()
    vault.save(home.vault_path)
    Store.open(home.db_path, identity.store_key).close()
    write_default_config(home.path)
    return vault
