"""config.toml: defaults, standing policies, and one clear sentence for every kind of bad file."""

import pytest

from node.config import DEFAULT_TEXT, ConfigError, load_config, parse_config, write_default_config

ALICE = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
BOB = "did:key:z6MkffDZCkCTWreg8868fG1FGFogcJj5X6PY93pPcWDn9bob"


def test_default_text_parses_to_defaults(tmp_path):
    assert parse_config(DEFAULT_TEXT).listen == ["/ip4/0.0.0.0/tcp/4001"]
    assert load_config(tmp_path).answer_deadline_days == 7  # no file: defaults
    write_default_config(tmp_path)
    assert (tmp_path / "config.toml").stat().st_mode & 0o777 == 0o600
    assert load_config(tmp_path).policies == []


def test_policies_decide_whole_requests_in_order():
    cfg = parse_config(
        f"""
[[policies]]
action = "deny"
requester = "{BOB}"

[[policies]]
action = "approve"
requester = "{ALICE}"
path = "cv/"
purpose = "Job matching"
"""
    )
    read_cv = [{"cmd": "/pds/read", "path": "cv/"}, {"cmd": "/pds/list", "path": "cv/work/"}]
    assert cfg.decide(BOB, "anything", read_cv).action == "deny"
    assert cfg.decide(ALICE, "Job matching", read_cv).action == "approve"
    assert cfg.decide(ALICE, "Advertising", read_cv) is None  # other purpose: the owner decides
    assert cfg.decide(ALICE, "Job matching", read_cv + [{"cmd": "/pds/write", "path": "cv/"}]) is None
    assert cfg.decide(ALICE, "Job matching", [{"cmd": "/pds/read", "path": "health/"}]) is None


@pytest.mark.parametrize(
    "text, words",
    [
        ("listen = [", "not valid TOML"),
        ("listen = '/ip4/1.2.3.4/tcp/1'", "'listen' must be a list"),
        ("api_port = -1", "'api_port' must be a non-negative integer"),
        ("api_port = true", "'api_port' must be a non-negative integer"),
        ("answer_deadline_days = 0", "at least 1"),
        ("colour = 'blue'", "unknown setting 'colour'"),
        ("policies = 3", "array of tables"),
        ("[[policies]]\naction = 'maybe'", "'action' must be"),
        ("[[policies]]\naction = 'deny'\nrequester = 'bob'", "'requester' must be a did:key"),
        (f"[[policies]]\naction = 'approve'\nrequester = '{ALICE}'\npath = 'cv'", "ending in '/'"),
    ],
)
def test_bad_config_is_one_clear_error(text, words):
    with pytest.raises(ConfigError, match=words):
        parse_config(text)


def test_unreadable_config_file(tmp_path):
    (tmp_path / "config.toml").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)
