"""Opening a node's persistent state: the encrypted record store and the audit log, one SQLite file in the home."""

from __future__ import annotations

from node.audit import AuditLog
from node.crypto import derive_key
from node.home import Home
from node.store import Store
from node.vault import Identity


def open_state(home: Home, identity: Identity) -> tuple[Store, AuditLog]:
    store = Store.open(home.db_path, identity.store_key)
    try:
        audit = AuditLog.open(home.db_path, derive_key(identity.store_key, "audit"))
    except BaseException:
        store.close()
        raise
    return store, audit
