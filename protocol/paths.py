"""The record path grammar (PROTOCOL.md §4): paths, prefixes, and which paths a prefix covers.

A path is segments of `[a-z0-9._-]+` joined by `/` with no `/` at either end; a prefix is `""` or a path plus `/`.
The same grammar holds in every store space and on the wire.
"""

from __future__ import annotations

import re

from protocol.errors import ErrorCode, ProtocolError

MAX_PATH_BYTES = 512
MAX_SEGMENTS = 32

_SEGMENT = re.compile(r"[a-z0-9._-]+")


def validate_path(path: object) -> str:
    """Return `path` unchanged if it is a record path, else raise ProtocolError(MALFORMED)."""
    if not isinstance(path, str):
        raise ProtocolError(ErrorCode.MALFORMED, f"a record path must be text, not {type(path).__name__}")
    if not path:
        raise ProtocolError(ErrorCode.MALFORMED, "a record path must not be empty")
    # Grammar is ASCII-only, so the character count is the byte count once segments have matched.
    if len(path) > MAX_PATH_BYTES:
        raise ProtocolError(ErrorCode.MALFORMED, f"record path is longer than {MAX_PATH_BYTES} bytes")
    segments = path.split("/")
    if len(segments) > MAX_SEGMENTS:
        raise ProtocolError(ErrorCode.MALFORMED, f"record path has more than {MAX_SEGMENTS} segments")
    for seg in segments:
        if not seg:
            raise ProtocolError(ErrorCode.MALFORMED, f"record path {path!r} has an empty segment or a '/' at an end")
        if not _SEGMENT.fullmatch(seg):
            raise ProtocolError(
                ErrorCode.MALFORMED, f"record path segment {seg!r} may only contain a-z, 0-9, '.', '_' and '-'"
            )
        if seg in (".", ".."):
            raise ProtocolError(ErrorCode.MALFORMED, f"record path {path!r} must not contain '.' or '..' segments")
    return path


def validate_prefix(prefix: object) -> str:
    """Return `prefix` unchanged if it is `""` or a record path followed by `/`, else raise MALFORMED."""
    if not isinstance(prefix, str):
        raise ProtocolError(ErrorCode.MALFORMED, f"a path prefix must be text, not {type(prefix).__name__}")
    if prefix == "":
        return prefix
    if not prefix.endswith("/"):
        raise ProtocolError(ErrorCode.MALFORMED, f"path prefix {prefix!r} must be empty or end with '/'")
    validate_path(prefix[:-1])
    return prefix


def is_under(path: str, prefix: str) -> bool:
    """True when the record `path` lies under `prefix` (whole segments, since a prefix ends with '/')."""
    validate_path(path)
    validate_prefix(prefix)
    return path.startswith(prefix)
