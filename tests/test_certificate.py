"""Signed work certificates: sign/parse round trip, every forgery and broken input refused, the resume entry."""

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consent.certificate import (
    CERTIFICATE_TAG, ENTRY_FIELD, certificate_entry, check_date, parse_certificate, read_certificate,
    sign_certificate, verify_entry,
)
from consent.envelope import seal_envelope
from protocol import dagcbor
from protocol.errors import ErrorCode, ProtocolError
from protocol.ids import did_from_public_key

AGENT = nacl.signing.SigningKey(bytes(range(32)))
PERSON = nacl.signing.SigningKey(bytes(range(1, 33)))
MALLORY = nacl.signing.SigningKey(bytes(range(2, 34)))
PERSON_DID = did_from_public_key(bytes(PERSON.verify_key))
AGENT_DID = did_from_public_key(bytes(AGENT.verify_key))


def cert(**over):
    fields = dict(sub=PERSON_DID, employer="Acme AB", role="Engineer", start="2021-03-01", end="2024-06-30",
                  iat=1_700_000_000)
    fields.update(over)
    return sign_certificate(AGENT, **fields)


def payload(**over):
    p = {"iss": AGENT_DID, "sub": PERSON_DID, "employer": "Acme AB", "role": "Engineer", "from": "2021-03-01",
         "to": "2024-06-30", "iat": 1_700_000_000, "nonce": bytes(16)}
    p.update(over)
    return {k: v for k, v in p.items() if v is not ...}


def code_of(raw) -> ErrorCode:
    with pytest.raises(ProtocolError) as err:
        parse_certificate(raw)
    return err.value.code


def test_round_trip():
    c = cert()
    back = parse_certificate(c.raw)
    assert back == c and back.iss == AGENT_DID and back.sub == PERSON_DID
    assert (back.employer, back.role, back.start, back.end) == ("Acme AB", "Engineer", "2021-03-01", "2024-06-30")
    assert str(back.cid).startswith("bafy")


def test_forged_signatures_are_refused():
    # Signed by someone else while claiming to be the agent.
    assert code_of(seal_envelope(MALLORY, CERTIFICATE_TAG, payload())) is ErrorCode.INVALID_SIGNATURE
    # A real certificate with its role changed after signing.
    env = dagcbor.decode(cert().raw)
    env[1][CERTIFICATE_TAG]["role"] = "CEO"
    assert code_of(dagcbor.encode(env)) is ErrorCode.INVALID_SIGNATURE
    # The signature of one certificate on another's payload.
    env[0] = dagcbor.decode(cert(role="Other").raw)[0]
    assert code_of(dagcbor.encode(env)) is ErrorCode.INVALID_SIGNATURE


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_flipped_byte_is_refused(data):
    raw = bytearray(cert().raw)
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(ProtocolError):
        parse_certificate(bytes(raw))


@pytest.mark.parametrize("raw, code", [
    (b"", ErrorCode.MALFORMED),
    ("text", ErrorCode.MALFORMED),
    (None, ErrorCode.MALFORMED),
    (b"\x82\x40", ErrorCode.MALFORMED),  # truncated
    (b"\x00" * 9000, ErrorCode.TOO_LARGE),
])
def test_broken_bytes(raw, code):
    with pytest.raises(ProtocolError) as err:
        read_certificate(raw)
    assert err.value.code in (code, ErrorCode.MALFORMED)


def test_truncated_certificate():
    raw = cert().raw
    for n in (1, len(raw) // 2, len(raw) - 1):
        with pytest.raises(ProtocolError):
            parse_certificate(raw[:n])


@pytest.mark.parametrize("over, code", [
    ({"role": ""}, ErrorCode.INVALID_CLAIM),
    ({"role": 5}, ErrorCode.MALFORMED),
    ({"employer": "x" * 201}, ErrorCode.INVALID_CLAIM),
    ({"from": "2021-13-01"}, ErrorCode.INVALID_CLAIM),
    ({"to": "yesterday"}, ErrorCode.INVALID_CLAIM),
    ({"to": 2024}, ErrorCode.INVALID_CLAIM),
    ({"from": "2024-07-01"}, ErrorCode.INVALID_CLAIM),  # after its end
    ({"iat": "now"}, ErrorCode.MALFORMED),
    ({"iat": True}, ErrorCode.MALFORMED),
    ({"nonce": b"short"}, ErrorCode.INVALID_CLAIM),
    ({"sub": "did:example:x"}, ErrorCode.INVALID_CLAIM),
    ({"sub": ...}, ErrorCode.MALFORMED),
    ({"extra": 1}, ErrorCode.MALFORMED),
])
def test_bad_fields(over, code):
    with pytest.raises(ProtocolError) as err:
        read_certificate(seal_envelope(AGENT, CERTIFICATE_TAG, payload(**over)))
    assert err.value.code is code


def test_other_tags_are_not_certificates():
    assert code_of(seal_envelope(AGENT, "ucan/dlg@1.0.0", payload())) is ErrorCode.MALFORMED


def test_dates():
    assert check_date("2024") == "2024" and check_date("2024-02") == "2024-02" and check_date("2024-02-29")
    for bad in ("2023-02-29", "24-01-01", "2024-1-1", "", None, "2024-06-30T00:00"):
        with pytest.raises(ProtocolError):
            check_date(bad)
    assert cert(start="2021", end="2021-01").end == "2021-01"


def test_entry_round_trip_and_tampering():
    c = cert()
    entry = certificate_entry(c)
    assert entry["issuer"] == "Acme AB" and entry["date"] == "2024-06-30" and isinstance(entry[ENTRY_FIELD], str)
    assert verify_entry(entry, subject=PERSON_DID) == c
    with pytest.raises(ProtocolError) as err:
        verify_entry(entry, subject=AGENT_DID)  # a certificate copied into someone else's CV
    assert err.value.code is ErrorCode.INVALID_SUBJECT
    with pytest.raises(ProtocolError) as err:
        verify_entry(entry | {"issuer": "Google"})  # readable fields edited, signature left alone
    assert err.value.code is ErrorCode.INVALID_CLAIM
    for bad in ({**entry, ENTRY_FIELD: "!!!"}, {**entry, ENTRY_FIELD: 7}, {**entry, ENTRY_FIELD: "QUJD"},
                {"name": "x"}, "not an entry", {**entry, ENTRY_FIELD: "A" * 40000}):
        with pytest.raises(ProtocolError):
            verify_entry(bad)
