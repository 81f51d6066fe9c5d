"""Signed work certificates: a `mydata/certificate@1.0.0` envelope by an issuer (a service or employer) about a
person, and the JSON Resume `certificates` entry that carries it. Sign, read, verify; pure.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
from dataclasses import dataclass
from typing import Any

import nacl.signing
import nacl.utils

from consent.envelope import FieldReader, check_signature, open_envelope, seal_envelope
from protocol.cid import CID
from protocol.errors import ErrorCode, ProtocolError
from protocol.ids import did_from_public_key

__all__ = [
    "CERTIFICATE_TAG", "ENTRY_FIELD", "Certificate", "sign_certificate", "read_certificate", "parse_certificate",
    "certificate_entry", "verify_entry", "check_entry", "check_date",
]

CERTIFICATE_TAG = "mydata/certificate@1.0.0"
# The key under which a JSON Resume certificate entry carries the envelope (base64url text, since entries are JSON).
ENTRY_FIELD = "mydata:certificate"
MAX_CERTIFICATE_BYTES = 8 * 1024
MAX_TEXT = 200
NONCE_RANGE = (12, 32)
_DATE = re.compile(r"\d{4}(-\d{2}(-\d{2})?)?")


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_CLAIM, message)


def _malformed(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MALFORMED, message)


def check_date(text: Any, name: str = "date") -> str:
    """A JSON Resume date (YYYY, YYYY-MM or YYYY-MM-DD) that exists on the calendar."""
    if not isinstance(text, str) or not _DATE.fullmatch(text):
        raise _invalid(f"the {name} must be a date like 2024-06-30 (or 2024-06, or 2024), not {text!r}")
    y, m, d = (text.split("-") + ["01", "01"])[:3]
    try:
        datetime.date(int(y), int(m), int(d))
    except ValueError:
        raise _invalid(f"the {name} {text} is not a calendar date") from None
    return text


def _sort_key(date: str) -> str:
    # A shorter date sorts as its first day: "2024" is 2024-01-01.
    return (date + "-01-01")[:10] if len(date) == 4 else (date + "-01")[:10]


@dataclass(frozen=True, eq=False)
class Certificate:
    raw: bytes
    cid: CID
    signature: bytes
    sig_payload_bytes: bytes
    iss: str       # who signed it (did:key)
    sub: str       # whom it is about (did:key)
    employer: str
    role: str
    start: str     # "from" on the wire
    end: str       # "to" on the wire
    iat: int
    nonce: bytes

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Certificate) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)


def _text(f: FieldReader, name: str) -> str:
    v = f.text(name)
    if not v.strip():
        raise _invalid(f"certificate {name} must not be empty")
    if len(v) > MAX_TEXT:
        raise _invalid(f"certificate {name} is longer than {MAX_TEXT} characters")
    return v


def read_certificate(raw: Any) -> Certificate:
    """Decode and check every field of a certificate envelope. Does NOT verify the signature."""
    o = open_envelope(raw, lambda tag: tag == CERTIFICATE_TAG, max_size=MAX_CERTIFICATE_BYTES)
    f = FieldReader(o.payload, "certificate")
    iss, sub = f.did("iss"), f.did("sub")
    employer, role = _text(f, "employer"), _text(f, "role")
    start, end = check_date(f.raw("from"), "start date"), check_date(f.raw("to"), "end date")
    if _sort_key(end) < _sort_key(start):
        raise _invalid("a certificate's end date is before its start date")
    iat = f.time("iat", required=True, nullable=False)
    if iat < 0:
        raise _invalid("a certificate's iat must not be negative")
    nonce = f.nonce()
    if not NONCE_RANGE[0] <= len(nonce) <= NONCE_RANGE[1]:
        raise _invalid(f"a certificate nonce is {NONCE_RANGE[0]} to {NONCE_RANGE[1]} bytes")
    f.done()
    return Certificate(raw=o.raw, cid=CID.of_dagcbor(o.raw), signature=o.signature,
                       sig_payload_bytes=o.sig_payload_bytes, iss=iss, sub=sub, employer=employer, role=role,
                       start=start, end=end, iat=iat, nonce=nonce)


def parse_certificate(raw: Any) -> Certificate:
    """Decode, check every field, and verify the issuer's signature (InvalidSignature if forged)."""
    cert = read_certificate(raw)
    check_signature(cert.iss, cert.sig_payload_bytes, cert.signature)
    return cert


def sign_certificate(signing_key: nacl.signing.SigningKey, *, sub: str, employer: str, role: str, start: str,
                     end: str, iat: int, nonce: bytes | None = None) -> Certificate:
    payload = {
        "iss": did_from_public_key(bytes(signing_key.verify_key)), "sub": sub, "employer": employer, "role": role,
        "from": start, "to": end, "iat": iat, "nonce": nacl.utils.random(16) if nonce is None else nonce,
    }
    return read_certificate(seal_envelope(signing_key, CERTIFICATE_TAG, payload))


# ---------------------------------------------------------------- the JSON Resume entry


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str) or len(text) > 2 * MAX_CERTIFICATE_BYTES:
        raise _malformed(f"'{ENTRY_FIELD}' must be base64url text of a certificate envelope")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise _malformed(f"'{ENTRY_FIELD}' is not base64url text") from None


def certificate_entry(cert: Certificate) -> dict:
    """The JSON Resume `certificates` entry for a certificate: readable fields plus the signed envelope."""
    return {
        "name": f"Work certificate: {cert.role} at {cert.employer} ({cert.start} to {cert.end})",
        "date": cert.end,
        "issuer": cert.employer,
        ENTRY_FIELD: _b64(cert.raw),
    }


def verify_entry(entry: Any, *, subject: str | None = None) -> Certificate:
    """The verified certificate an entry carries; refused if forged, about someone else, or if the readable
    fields say something the signed envelope does not."""
    if not isinstance(entry, dict) or ENTRY_FIELD not in entry:
        raise _malformed(f"the entry carries no '{ENTRY_FIELD}'")
    cert = parse_certificate(_unb64(entry[ENTRY_FIELD]))
    if subject is not None and cert.sub != subject:
        raise ProtocolError(ErrorCode.INVALID_SUBJECT, f"the certificate is about {cert.sub}, not {subject}")
    expected = certificate_entry(cert)
    for name in ("name", "date", "issuer"):
        if entry.get(name) != expected[name]:
            raise _invalid(f"the entry's {name} differs from what the certificate's issuer signed")
    return cert


def check_entry(value: Any, *, subject: str | None = None) -> dict | None:
    """For showing a record: None if it carries no certificate, else {"issuer", "verified", ...}; never raises.

    `issuer` is the verified signer, or, when verification fails, the issuer the envelope claims (if readable).
    """
    if not isinstance(value, dict) or ENTRY_FIELD not in value:
        return None
    try:
        cert = verify_entry(value, subject=subject)
    except ProtocolError as err:
        try:
            claimed = read_certificate(_unb64(value[ENTRY_FIELD])).iss
        except ProtocolError:
            claimed = None
        return {"issuer": claimed, "verified": False, "reason": err.message}
    return {"issuer": cert.iss, "verified": True, "subject": cert.sub, "employer": cert.employer,
            "role": cert.role, "from": cert.start, "to": cert.end, "cid": str(cert.cid)}
