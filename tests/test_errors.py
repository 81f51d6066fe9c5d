from protocol.errors import ErrorCode, ProtocolError


def test_error_answer_carries_code_and_message():
    err = ProtocolError(ErrorCode.REPLAY, "this invocation was already used")
    assert err.to_wire() == {"code": "Replay", "message": "this invocation was already used"}


def test_unknown_code_is_rejected():
    import pytest

    with pytest.raises(ValueError):
        ProtocolError("NoSuchCode")
