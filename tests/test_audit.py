"""The audit log: round trips, tamper detection (edit, delete, swap, renumber, forge, truncate), crash safety, no plaintext on disk."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.audit import AuditLog
from node.crypto import IntegrityError, random_key
from protocol.errors import ErrorCode, ProtocolError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def key():
    return random_key()


@pytest.fixture
def db(tmp_path):
    return tmp_path / "node.db"


def fill(db, key, n=5):
    log = AuditLog.open(db, key)
    for i in range(1, n + 1):
        log.append("invocation.accepted", {"i": i, "cmd": "/pds/read", "invocation": bytes([i]) * 40}, at=1000 + i)
    log.close()


def raw(db):
    return sqlite3.connect(db, isolation_level=None)


def report(db, key):
    log = AuditLog.open(db, key)
    try:
        return log.verify()
    finally:
        log.close()


def test_append_and_read_back(db, key):
    log = AuditLog.open(db, key)
    a = log.append("consent.requested", {"requester": "did:key:z6Mkabc", "scopes": [{"cmd": "/pds/read", "path": "cv/"}]}, at=10)
    b = log.append("invocation.refused", {"code": "Expired", "invocation": b"\x00\x01raw"}, at=11)
    assert (a.seq, b.seq) == (1, 2)
    got = log.entries()
    assert [(e.seq, e.at, e.kind, e.fields, e.entry_hash) for e in got] == [
        (1, 10, a.kind, a.fields, a.entry_hash),
        (2, 11, b.kind, b.fields, b.entry_hash),
    ]
    assert a.entry_hash != b.entry_hash and len(a.entry_hash) == 32
    assert [e.seq for e in log.entries(since_seq=1)] == [2]
    assert [e.seq for e in log.entries(limit=1)] == [1]
    assert log.entries(since_seq=2) == []
    assert log.verify().ok and log.verify().count == 2
    log.close()
    # survives reopening, and appends continue the chain
    log = AuditLog.open(db, key)
    assert log.append("owner.write", {"path": "cv/basics"}, at=12).seq == 3
    assert log.verify().ok
    log.close()


def test_empty_log_verifies(db, key):
    assert report(db, key).ok and report(db, key).count == 0


def test_bad_arguments(db, key):
    with pytest.raises(ValueError):
        AuditLog.open(db, b"short")
    log = AuditLog.open(db, key)
    for kind, fields, at in [("", {}, 1), ("k", [], 1), ("k", {}, -1), ("k", {}, "1"), (3, {}, 1)]:
        with pytest.raises(ValueError):
            log.append(kind, fields, at=at)
    for bad in [{"x": object()}, {"x": float("nan")}, {1: "non-text key"}]:
        with pytest.raises(ProtocolError) as e:
            log.append("k", bad, at=1)  # not DAG-CBOR-able
        assert e.value.code is ErrorCode.MALFORMED
    assert log.verify().ok and log.verify().count == 0
    log.close()


def test_wrong_key_fails_at_first_entry(db, key):
    fill(db, key)
    r = report(db, random_key())
    assert not r.ok and r.first_bad_seq == 1


# -- tampering: each case names the first bad seq


def test_edit_a_ciphertext_byte(db, key):
    fill(db, key)
    with raw(db) as c:
        (blob,) = c.execute("SELECT blob FROM audit_entries WHERE seq = 3").fetchone()
        blob = bytearray(blob)
        blob[30] ^= 1
        c.execute("UPDATE audit_entries SET blob = ? WHERE seq = 3", (bytes(blob),))
    r = report(db, key)
    assert (r.ok, r.first_bad_seq, r.count) == (False, 3, 2)
    assert "authenticate" in r.reason
    log = AuditLog.open(db, key)
    with pytest.raises(IntegrityError):
        log.entries()
    assert [e.seq for e in log.entries(limit=2)] == [1, 2]
    log.close()


def test_edit_a_stored_hash(db, key):
    fill(db, key)
    with raw(db) as c:
        c.execute("UPDATE audit_entries SET hash = ? WHERE seq = 4", (bytes(32),))
    r = report(db, key)
    assert (r.ok, r.first_bad_seq) == (False, 4) and "chain" in r.reason


def test_delete_a_middle_row(db, key):
    fill(db, key)
    with raw(db) as c:
        c.execute("DELETE FROM audit_entries WHERE seq = 2")
    r = report(db, key)
    assert (r.ok, r.first_bad_seq) == (False, 2) and "missing" in r.reason
    log = AuditLog.open(db, key)
    with pytest.raises(IntegrityError):
        log.entries()
    with pytest.raises(IntegrityError):
        log.entries(since_seq=2)
    log.close()


def test_delete_the_first_row(db, key):
    fill(db, key)
    with raw(db) as c:
        c.execute("DELETE FROM audit_entries WHERE seq = 1")
    r = report(db, key)
    assert (r.ok, r.first_bad_seq) == (False, 1)


def test_delete_the_newest_rows_is_detected_by_the_head(db, key):
    fill(db, key)
    with raw(db) as c:
        c.execute("DELETE FROM audit_entries WHERE seq >= 4")
    r = report(db, key)
    assert (r.ok, r.first_bad_seq, r.count) == (False, 4, 3) and "deleted" in r.reason
    # and the node refuses to extend (and so re-seal) a truncated log
    log = AuditLog.open(db, key)
    with pytest.raises(IntegrityError):
        log.append("owner.write", {}, at=1)
    log.close()
    assert report(db, key).first_bad_seq == 4


def test_swap_two_rows(db, key):
    fill(db, key)
    with raw(db) as c:
        rows = dict(c.execute("SELECT seq, blob FROM audit_entries WHERE seq IN (2, 4)").fetchall())
        c.execute("UPDATE audit_entries SET blob = ? WHERE seq = 2", (rows[4],))
        c.execute("UPDATE audit_entries SET blob = ? WHERE seq = 4", (rows[2],))
    r = report(db, key)
    assert (r.ok, r.first_bad_seq) == (False, 2)


def test_renumber_rows(db, key):
    fill(db, key)
    with raw(db) as c:  # swap the seq numbers of whole rows 2 and 3
        c.execute("UPDATE audit_entries SET seq = 100 WHERE seq = 2")
        c.execute("UPDATE audit_entries SET seq = 2 WHERE seq = 3")
        c.execute("UPDATE audit_entries SET seq = 3 WHERE seq = 100")
    r = report(db, key)
    assert (r.ok, r.first_bad_seq) == (False, 2)


def test_insert_forged_rows(db, key):
    fill(db, key)
    with raw(db) as c:
        (blob, h) = c.execute("SELECT blob, hash FROM audit_entries WHERE seq = 2").fetchone()
        c.execute("INSERT INTO audit_entries (seq, blob, hash) VALUES (6, ?, ?)", (blob, h))
    r = report(db, key)
    assert (r.ok, r.first_bad_seq) == (False, 6)

    with raw(db) as c:
        c.execute("DELETE FROM audit_entries WHERE seq = 6")
        c.execute("INSERT INTO audit_entries (seq, blob, hash) VALUES (0, ?, ?)", (os.urandom(80), os.urandom(32)))
    r = report(db, key)
    assert (r.ok, r.first_bad_seq) == (False, 0) and "forged" in r.reason


def test_head_missing_edited_or_rolled_back(db, key):
    fill(db, key, 3)
    with raw(db) as c:
        (old_head,) = c.execute("SELECT blob FROM audit_head").fetchone()
    log = AuditLog.open(db, key)
    log.append("owner.write", {}, at=1)
    log.append("owner.delete", {}, at=2)
    log.close()

    with raw(db) as c:
        (head,) = c.execute("SELECT blob FROM audit_head").fetchone()
        c.execute("UPDATE audit_head SET blob = ?", (old_head,))
    r = report(db, key)
    assert (r.ok, r.first_bad_seq) == (False, 4) and "head" in r.reason

    with raw(db) as c:
        c.execute("UPDATE audit_head SET blob = ?", (head[:-1] + bytes([head[-1] ^ 1]),))
    r = report(db, key)
    assert not r.ok and "head" in r.reason

    with raw(db) as c:
        c.execute("DELETE FROM audit_head")
    r = report(db, key)
    assert not r.ok and "head" in r.reason


def test_documented_limit_rollback_of_entries_and_head_together(db, key):
    """Truncating the newest entries AND restoring the matching older head is a whole-log rollback: undetectable here."""
    fill(db, key, 3)
    with raw(db) as c:
        (old_head,) = c.execute("SELECT blob FROM audit_head").fetchone()
    log = AuditLog.open(db, key)
    log.append("owner.write", {}, at=1)
    log.close()
    with raw(db) as c:
        c.execute("DELETE FROM audit_entries WHERE seq = 4")
        c.execute("UPDATE audit_head SET blob = ?", (old_head,))
    assert report(db, key).ok


# -- properties and durability

_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_entries = st.lists(
    st.tuples(
        st.sampled_from(["consent.granted", "invocation.refused", "owner.write"]),
        st.dictionaries(st.text(max_size=8), _values, max_size=5),
        st.integers(0, 2**40),
    ),
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_entries)
def test_any_sequence_of_appends_verifies(key, items):
    with tempfile.TemporaryDirectory() as d:
        log = AuditLog.open(Path(d) / "a.db", key)
        written = [log.append(kind, fields, at=at) for kind, fields, at in items]
        r = log.verify()
        assert r.ok and r.count == len(items)
        assert log.entries() == written
        log.close()


def test_no_plaintext_reaches_the_disk(db, key):
    canaries = [b"CANARY-did-7f3a9", b"CANARY-path-cv/zz", b"CANARY-bytes-\x00\x01\x02", b"CANARY-kind"]
    log = AuditLog.open(db, key)
    for i in range(50):
        log.append(
            "CANARY-kind",
            {"requester": "CANARY-did-7f3a9", "path": "CANARY-path-cv/zz", "invocation": b"CANARY-bytes-\x00\x01\x02"},
            at=i,
        )
    files = [p for p in db.parent.iterdir() if p.name.startswith(db.name)]
    assert any(p.name.endswith("-wal") for p in files)
    for p in files:  # while open: db, -wal, -shm
        data = p.read_bytes()
        for c in canaries:
            assert c not in data, (p.name, c)
    log.close()
    for p in db.parent.iterdir():
        data = p.read_bytes()
        for c in canaries:
            assert c not in data, (p.name, c)


def test_truncation_while_the_log_is_open_is_detected_at_the_next_append(db, key):
    # The open log remembers its head between appends; another connection's commit must make it look again.
    log = AuditLog.open(db, key)
    for i in range(5):
        log.append("invocation.accepted", {"i": i}, at=i, durable=False)
    with raw(db) as c:
        c.execute("DELETE FROM audit_entries WHERE seq >= 4")
    with pytest.raises(IntegrityError):
        log.append("owner.write", {}, at=9)
    log.close()
    assert report(db, key).first_bad_seq == 4


def test_durable_appends_are_fsynced_after_a_run_of_non_durable_ones(db, key):
    log = AuditLog.open(db, key)
    full, normal = 2, 1  # PRAGMA synchronous values
    log.append("invocation.accepted", {}, at=1, durable=False)
    assert log._conn.execute("PRAGMA synchronous").fetchone()[0] == normal
    log.append("owner.write", {}, at=2)
    assert log._conn.execute("PRAGMA synchronous").fetchone()[0] == full
    log.close()


def test_two_writers_on_one_file_keep_one_chain(db, key):
    a, b = AuditLog.open(db, key), AuditLog.open(db, key)
    for i in range(20):
        (a if i % 2 else b).append("owner.write", {"i": i}, at=i)
    assert [e.fields["i"] for e in a.entries()] == list(range(20))
    assert a.verify().ok and b.verify().count == 20
    a.close()
    b.close()


_WRITER = textwrap.dedent(
    """
    import sys
    from node.audit import AuditLog
    log = AuditLog.open(sys.argv[1], bytes.fromhex(sys.argv[2]))
    durable = sys.argv[3] == "durable"
    i = 0
    while True:
        i += 1
        e = log.append("owner.write", {"i": i, "pad": b"x" * (i % 300)}, at=i, durable=durable)
        print(e.seq, e.entry_hash.hex(), flush=True)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["durable", "process-crash-safe"])  # fsynced, or WAL-only (reads, refusals)
def test_sigkill_while_appending_loses_no_acknowledged_entry(db, key, mode):
    stop_after = random.randint(20, 300)
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db), key.hex(), mode],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        text=True,
    )
    acked = {}
    try:
        for line in proc.stdout:
            seq, h = line.split()
            acked[int(seq)] = bytes.fromhex(h)
            if len(acked) >= stop_after:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert len(acked) == stop_after
    log = AuditLog.open(db, key)
    r = log.verify()
    assert r.ok and r.count >= stop_after
    got = {e.seq: e for e in log.entries()}
    for seq, h in acked.items():
        assert got[seq].entry_hash == h and got[seq].fields["i"] == seq
    log.append("owner.write", {"after": "crash"}, at=0)
    assert log.verify().ok
    log.close()
