"""The error vocabulary of the wire (PROTOCOL.md §3) and the one exception type that carries it.

Every layer raises `ProtocolError(code, message)`; handlers turn it into an error answer unchanged, so the
code a test expects is the code a remote peer sees.
"""

from __future__ import annotations

import enum


class ErrorCode(str, enum.Enum):
    MALFORMED = "Malformed"
    TOO_LARGE = "TooLarge"
    UNKNOWN_OP = "UnknownOp"
    UNAUTHORIZED = "Unauthorized"
    INVALID_CLAIM = "InvalidClaim"
    UNAVAILABLE_PROOF = "UnavailableProof"
    INVALID_SIGNATURE = "InvalidSignature"
    EXPIRED = "Expired"
    TOO_EARLY = "TooEarly"
    REVOKED = "Revoked"
    INVALID_AUDIENCE = "InvalidAudience"
    INVALID_SUBJECT = "InvalidSubject"
    MATCH_ERROR = "MatchError"
    REPLAY = "Replay"
    NOT_FOUND = "NotFound"
    CONFLICT = "Conflict"
    RATE_LIMITED = "RateLimited"
    UNAVAILABLE = "Unavailable"
    INTERNAL = "Internal"

    def __str__(self) -> str:
        return self.value


class ProtocolError(Exception):
    """A refusal with a wire error code and one human sentence."""

    def __init__(self, code: ErrorCode | str, message: str = "") -> None:
        self.code = ErrorCode(code)
        self.message = message or self.code.value
        super().__init__(f"{self.code.value}: {self.message}")

    def to_wire(self) -> dict:
        return {"code": self.code.value, "message": self.message}
