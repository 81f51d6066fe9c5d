"""Tampering with the store's SQLite file is detected and reported, never returned as data; no plaintext on disk."""

import sqlite3

import pytest

from node.crypto import IntegrityError, random_key
from node.store import Store, StoreIntegrityError
from protocol.errors import ProtocolError


@pytest.fixture
def db(tmp_path):
    return tmp_path / "node.db"


def raw(db):
    return sqlite3.connect(db, isolation_level=None)


def rows(db):
    with raw(db) as c:
        return c.execute("SELECT space, hkey, version, pblob, vblob FROM store_records ORDER BY hkey").fetchall()


def row_of(db, store, path, space="data"):
    hkey = store._hkey(space.encode(), path)
    with raw(db) as c:
        return c.execute(
            "SELECT version, pblob, vblob FROM store_records WHERE space = ? AND hkey = ?", (space, hkey)
        ).fetchone(), hkey


def set_row(db, hkey, version, pblob, vblob, space="data"):
    c = raw(db)
    c.execute(
        "UPDATE store_records SET version = ?, pblob = ?, vblob = ? WHERE space = ? AND hkey = ?",
        (version, pblob, vblob, space, hkey),
    )
    c.close()


def flip(blob: bytes, i: int) -> bytes:
    b = bytearray(blob)
    b[i] ^= 0x01
    return bytes(b)


@pytest.mark.parametrize("where", [0, 24, -1])  # nonce, ciphertext, tag
def test_flipped_value_byte_is_detected_on_get(db, store_key, where):
    with Store.open(db, store_key) as s:
        s.put("cv/basics", {"name": "Ada"})
        s.put("cv/other", 1)
        (version, pblob, vblob), hkey = row_of(db, s, "cv/basics")
        set_row(db, hkey, version, pblob, flip(vblob, where))
        with pytest.raises(StoreIntegrityError, match="cv/basics"):
            s.get("cv/basics")
        assert s.get("cv/other").value == 1  # the damage stays with the one record


def test_flipped_path_byte_is_detected_on_list_and_write(db, store_key):
    with Store.open(db, store_key) as s:
        s.put("cv/basics", 1)
        (version, pblob, vblob), hkey = row_of(db, s, "cv/basics")
        set_row(db, hkey, version, flip(pblob, 30), vblob)
        with pytest.raises(StoreIntegrityError):
            s.list()
        with pytest.raises(StoreIntegrityError):
            s.put("cv/basics", 2)


def test_swapped_ciphertexts_are_detected(db, store_key):
    with Store.open(db, store_key) as s:
        s.put("cv/a", "value of a")
        s.put("cv/b", "value of b")
        (va, pa, xa), ha = row_of(db, s, "cv/a")
        (vb, pb, xb), hb = row_of(db, s, "cv/b")
        set_row(db, ha, vb, pb, xb)
        set_row(db, hb, va, pa, xa)
        for p in ("cv/a", "cv/b"):
            with pytest.raises(StoreIntegrityError):
                s.get(p)
        with pytest.raises(StoreIntegrityError):
            s.list()


def test_record_moved_to_the_other_space_is_detected(db, store_key):
    with Store.open(db, store_key) as s:
        s.put("grants/1", "secret grant", space="node")
        with raw(db) as c:
            c.execute("UPDATE store_records SET space = 'data'")
        with pytest.raises(ProtocolError):
            s.get("grants/1")  # its index hash is bound to the node space: not found in data
        with pytest.raises(StoreIntegrityError):
            s.list()  # and its seal does not open as a data record


def test_edited_version_number_is_detected(db, store_key):
    with Store.open(db, store_key) as s:
        s.put("x", 1)
        s.put("x", 2)
        with raw(db) as c:
            c.execute("UPDATE store_records SET version = 7")
        with pytest.raises(StoreIntegrityError):
            s.get("x")


def test_rolled_back_row_is_detected_on_open(db, store_key):
    with Store.open(db, store_key) as s:
        s.put("cv/basics", {"salary": 1000})
        (old, hkey) = row_of(db, s, "cv/basics")
        s.put("cv/basics", {"salary": 2000})
        s.put("cv/other", 1)
    set_row(db, hkey, *old)  # a validly sealed older copy of the same record
    with pytest.raises(StoreIntegrityError, match="rolled back"):
        Store.open(db, store_key)


def test_rolled_back_row_is_detected_by_verify_of_an_open_store(db, store_key):
    with Store.open(db, store_key) as s:
        s.put("k", "v1")
        old, hkey = row_of(db, s, "k")
        s.put("k", "v2")
        set_row(db, hkey, *old)
        with pytest.raises(StoreIntegrityError):
            s.verify()


def test_undeleted_record_is_detected(db, store_key):
    with Store.open(db, store_key) as s:
        s.put("k", "secret")
        old, hkey = row_of(db, s, "k")
        s.delete("k")
    set_row(db, hkey, *old)
    with pytest.raises(StoreIntegrityError):
        Store.open(db, store_key)


def test_deleted_or_added_rows_are_detected(db, store_key, tmp_path):
    with Store.open(db, store_key) as s:
        s.put("a", 1)
        s.put("b", 2)
    with raw(db) as c:
        victim = c.execute("SELECT hkey FROM store_records LIMIT 1").fetchone()[0]
        c.execute("DELETE FROM store_records WHERE hkey = ?", (victim,))
    with pytest.raises(StoreIntegrityError):
        Store.open(db, store_key)

    other = tmp_path / "other.db"
    with Store.open(other, store_key) as s:
        s.put("c", 3)
    with raw(other) as c:
        stray = c.execute("SELECT * FROM store_records").fetchone()
    db2 = tmp_path / "db2"
    with Store.open(db2, store_key) as s:
        s.put("a", 1)
    with raw(db2) as c:
        c.execute("INSERT INTO store_records VALUES (?, ?, ?, ?, ?)", stray)
    with pytest.raises(StoreIntegrityError):
        Store.open(db2, store_key)


def test_head_tampering_and_removal_are_detected(db, store_key):
    with Store.open(db, store_key) as s:
        s.put("a", 1)
    with raw(db) as c:
        (head,) = c.execute("SELECT blob FROM store_head").fetchone()
        c.execute("UPDATE store_head SET blob = ?", (flip(head, 30),))
    with pytest.raises(StoreIntegrityError):
        Store.open(db, store_key)
    with raw(db) as c:
        c.execute("DELETE FROM store_head")
    with pytest.raises(StoreIntegrityError, match="head is missing"):
        Store.open(db, store_key)


def test_wrong_key_does_not_open(db, store_key):
    with Store.open(db, store_key) as s:
        s.put("a", 1)
    with pytest.raises(IntegrityError):
        Store.open(db, random_key())


def test_damaged_database_file_is_a_clear_error(db, store_key):
    with Store.open(db, store_key) as s:
        s.put("a", 1)
    data = bytearray(db.read_bytes())
    data[:16] = b"garbage garbage!"
    db.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    with pytest.raises(StoreIntegrityError, match="damaged"):
        Store.open(db, store_key)


# -- canary: nothing readable reaches the disk ------------------------------------------------------------

CANARY_VALUE = "zebra-canary-7f3a91 Ünïcødé value"
CANARY_PATH = "cv/work/canary-path-5be0c2"


def encodings(text: str) -> list[bytes]:
    out = []
    for enc in ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le"):
        b = text.encode(enc)
        out.append(b)
    out.append(text.encode("utf-8").hex().encode())
    return out


def scan(directory, needles):
    found = []
    for f in sorted(p for p in directory.rglob("*") if p.is_file()):
        data = f.read_bytes()
        found += [(f.name, n) for n in needles if n in data]
    return found


def test_canary_strings_never_reach_the_disk(tmp_path, store_key):
    needles = []
    for t in (CANARY_VALUE, CANARY_PATH, "canary-path-5be0c2", "zebra-canary-7f3a91"):
        needles += encodings(t)
    db = tmp_path / "node.db"
    s = Store.open(db, store_key)
    for i in range(30):
        s.put(f"{CANARY_PATH}/{i}", {"text": CANARY_VALUE, "n": i, CANARY_PATH: [CANARY_VALUE] * 3})
        s.put(CANARY_PATH, CANARY_VALUE * 50)
    s.delete(f"{CANARY_PATH}/0")
    s.list("cv/")
    s.get(CANARY_PATH)
    assert (tmp_path / "node.db-wal").exists()  # scanned while the WAL still holds the writes
    assert scan(tmp_path, needles) == []
    s.close()  # checkpoint into the main file
    assert scan(tmp_path, needles) == []
    # control: the scan does see a plaintext when one is there
    (tmp_path / "control").write_bytes(b"..." + CANARY_VALUE.encode("utf-16-le"))
    assert {name for name, _ in scan(tmp_path, needles)} == {"control"}
