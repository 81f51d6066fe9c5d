import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import ErrorCode, ProtocolError
from protocol.paths import MAX_PATH_BYTES, MAX_SEGMENTS, is_under, validate_path, validate_prefix

segment = st.from_regex(r"[a-z0-9._-]{1,12}", fullmatch=True).filter(lambda s: s not in (".", ".."))
paths = st.lists(segment, min_size=1, max_size=6).map("/".join)


def malformed(fn, value):
    with pytest.raises(ProtocolError) as exc:
        fn(value)
    assert exc.value.code is ErrorCode.MALFORMED
    return exc.value


@pytest.mark.parametrize("good", ["cv/basics", "cv/work/acme-2021", "a", "a.b_c-d/0", "...", "x/.hidden"])
def test_valid_paths(good):
    assert validate_path(good) == good


@pytest.mark.parametrize(
    "bad",
    ["", "/cv", "cv/", "cv//basics", "CV/basics", "cv/bas ics", "cv/é", "cv/./x", "cv/../x", "..", ".",
     "cv\\x", "cv/x\n", "cv/x\x00", "cv/Work", "cv/*"],
)
def test_invalid_paths(bad):
    err = malformed(validate_path, bad)
    assert err.message  # one sentence for the user


@pytest.mark.parametrize("bad", [None, 1, b"cv/basics", ["cv"], {"p": 1}])
def test_non_text_is_malformed(bad):
    malformed(validate_path, bad)
    malformed(validate_prefix, bad)


def test_length_and_segment_caps():
    validate_path("a" * MAX_PATH_BYTES)
    malformed(validate_path, "a" * (MAX_PATH_BYTES + 1))
    validate_path("/".join(["a"] * MAX_SEGMENTS))
    malformed(validate_path, "/".join(["a"] * (MAX_SEGMENTS + 1)))


@pytest.mark.parametrize("good", ["", "cv/", "cv/work/"])
def test_valid_prefixes(good):
    assert validate_prefix(good) == good


@pytest.mark.parametrize("bad", ["/", "cv", "cv//", "/cv/", "cv/*", "CV/", "../"])
def test_invalid_prefixes(bad):
    malformed(validate_prefix, bad)


def test_is_under_matches_whole_segments():
    assert is_under("cv/basics", "")
    assert is_under("cv/basics", "cv/")
    assert not is_under("cvx/basics", "cv/")
    assert not is_under("cv", "cv/")
    malformed(lambda p: is_under(p, "cv/"), "cv/")


@given(paths)
def test_generated_paths_are_valid_and_prefixes_cover_them(path):
    assert validate_path(path) == path
    segs = path.split("/")
    for i in range(len(segs)):
        prefix = "/".join(segs[:i]) + "/" if i else ""
        assert validate_prefix(prefix) == prefix
        assert is_under(path, prefix)


@given(st.text(max_size=40))
def test_any_text_is_either_valid_or_malformed(text):
    try:
        validate_path(text)
    except ProtocolError as exc:
        assert exc.code is ErrorCode.MALFORMED
    else:
        assert all(s and s not in (".", "..") for s in text.split("/"))
        assert text.isascii() and text == text.lower()


@given(paths, paths)
def test_is_under_agrees_with_segments(a, b):
    under = is_under(a, b + "/")
    assert under == (a.split("/")[: len(b.split("/"))] == b.split("/") and a != b)
