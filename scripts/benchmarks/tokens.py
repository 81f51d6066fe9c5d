"""`scripts/bench tokens`: UCAN chain validations per second (1, 2, 3 delegations) against bare Ed25519 verifies.

Each validation starts from the envelope bytes, as a node receives them: parse the invocation and its proofs,
then validate_invocation. "cold" verifies every signature; "warm" reuses a VerifiedCache holding the
delegations, so only the fresh invocation's signature is checked (the node's steady state).
"""

from __future__ import annotations

import nacl.signing

from consent.envelope import parse_token, sign_delegation, sign_invocation
from consent.validate import VerifiedCache, validate_invocation
from harness import Row, compare
from protocol.ids import did_from_public_key, public_key_from_did

NOW = 1_800_000_000


def _chain(length: int) -> tuple[bytes, list[bytes]]:
    """Owner KEYS[0] -> ... -> KEYS[length], who invokes /pds/read with a typical consent policy."""
    keys = [nacl.signing.SigningKey(bytes([i + 1]) * 32) for i in range(length + 1)]
    dids = [did_from_public_key(bytes(k.verify_key)) for k in keys]
    dlgs = [
        sign_delegation(keys[i], aud=dids[i + 1], sub=dids[0], cmd="/pds/read", pol=[["like", ".path", "cv/*"]],
                        exp=NOW + 3600, meta={"purpose": "benchmark", "redelegate": True})
        for i in range(length)
    ]
    inv = sign_invocation(keys[length], sub=dids[0], cmd="/pds/read", args={"path": "cv/basics"},
                          prf=[d.cid for d in dlgs], exp=NOW + 300)
    return inv.raw, [d.raw for d in dlgs]


def run(quick: bool) -> list[Row]:
    ops, repeat = (50, 3) if quick else (1000, 7)
    inv_raw, _ = _chain(1)
    sample = parse_token(inv_raw)
    verify_key = nacl.signing.VerifyKey(public_key_from_did(sample.iss))
    payload, signature = sample.sig_payload_bytes, sample.signature

    def bare_verify(n: int) -> None:
        for _ in range(n):
            verify_key.verify(payload, signature)

    rows: list[Row] = []
    for length in (1, 2, 3):
        inv_raw, proof_raws = _chain(length)

        def cold(n: int, inv_raw=inv_raw, proof_raws=proof_raws) -> None:
            for _ in range(n):
                validate_invocation(parse_token(inv_raw), [parse_token(r) for r in proof_raws], now=NOW)

        cache = VerifiedCache()
        warm_proofs = [parse_token(r) for r in proof_raws]
        validate_invocation(parse_token(inv_raw), warm_proofs, now=NOW, verified=cache)

        def warm(n: int, inv_raw=inv_raw, proof_raws=proof_raws, cache=cache) -> None:
            for _ in range(n):
                inv = parse_token(inv_raw)
                cache.discard(inv.cid)  # as if each invocation were fresh: its signature is checked every time
                validate_invocation(inv, [parse_token(r) for r in proof_raws], now=NOW, verified=cache)

        cold_rows = compare(f"chain validation, {length} delegation(s), cold", cold, "bare Ed25519 verify",
                            bare_verify, ops=ops, repeat=repeat, unit="ops/s")
        warm_rows = compare(f"chain validation, {length} delegation(s), warm", warm, "bare Ed25519 verify",
                            bare_verify, ops=ops, repeat=repeat, unit="ops/s")
        if not rows:
            rows.append(cold_rows[0])
        rows += [cold_rows[1], warm_rows[1]]
    return rows
