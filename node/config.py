"""The node's `config.toml`: listen addresses, bootstrap peers, timing, and the owner's standing consent policies.

Read with the standard library's tomllib; written once, as commented text, by `mydata init`. A bad file is a
`ConfigError` naming the key and what is wrong with it, never a traceback.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from protocol.ids import is_did

CONFIG_FILE = "config.toml"

DEFAULT_TEXT = """\
# mydata node configuration. `mydata config` shows the effective values.

# Multiaddrs the node listens on (port 0 picks a free port).
listen = ["/ip4/0.0.0.0/tcp/4001"]

# Peers to contact at start, as multiaddrs ending in /p2p/<PeerID>.
bootstrap = []

# Find peers on the local network by mDNS (off by default); optionally only on one interface's IP address.
mdns = false
mdns_interface = ""

# Port of the local control API on 127.0.0.1 (0 picks a free port; it is written to api.json).
api_port = 0

# Days a consent request waits for your answer before it expires.
answer_deadline_days = 7

# Standing policies, checked in order; the first that matches a whole request decides it.
# Deny everything from one requester:
#   [[policies]]
#   action = "deny"
#   requester = "did:key:z6Mk..."
# Approve at once read/list access under a prefix, for one requester and purpose:
#   [[policies]]
#   action = "approve"
#   requester = "did:key:z6Mk..."
#   path = "cv/"
#   purpose = "Job matching"        # optional: the request's purpose must equal it
"""

# Commands a standing approval may cover: reading only, never writing or deleting.
READ_COMMANDS = ("/pds/read", "/pds/list")


class ConfigError(Exception):
    """The config file is unreadable or has a bad value; the message says which and how to fix it."""


@dataclass(frozen=True)
class Policy:
    action: str  # "approve" | "deny"
    requester: str
    path: str = ""
    purpose: str | None = None

    def covers(self, requester: str, purpose: str, scopes: list[dict]) -> bool:
        """True when this policy speaks for the whole request (every scope, for an approval)."""
        if requester != self.requester:
            return False
        if self.action == "deny":
            return True
        if self.purpose is not None and purpose != self.purpose:
            return False
        # A scope, prefix ("cv/work/") or record ("cv/basics"), lies under the policy's prefix when it starts with it.
        return all(s["cmd"] in READ_COMMANDS and s["path"].startswith(self.path) for s in scopes)


@dataclass(frozen=True)
class Config:
    listen: list[str] = field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/4001"])
    bootstrap: list[str] = field(default_factory=list)
    api_port: int = 0
    answer_deadline_days: int = 7
    policies: list[Policy] = field(default_factory=list)
    mdns: bool = False
    mdns_interface: str = ""

    def decide(self, requester: str, purpose: str, scopes: list[dict]) -> Policy | None:
        for policy in self.policies:
            if policy.covers(requester, purpose, scopes):
                return policy
        return None

    def to_json(self) -> dict:
        return {
            "listen": self.listen,
            "bootstrap": self.bootstrap,
            "api_port": self.api_port,
            "answer_deadline_days": self.answer_deadline_days,
            "mdns": self.mdns,
            "mdns_interface": self.mdns_interface,
            "policies": [{k: v for k, v in vars(p).items() if v is not None} for p in self.policies],
        }


def _expect(table: dict, key: str, kind, default, where: str):
    value = table.get(key, default)
    if kind is list:
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ConfigError(f"{where}: '{key}' must be a list of strings.")
    elif kind is int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{where}: '{key}' must be a non-negative integer.")
    elif not isinstance(value, kind):
        raise ConfigError(f"{where}: '{key}' must be a {kind.__name__}.")
    return value


def parse_config(text: str, where: str = CONFIG_FILE) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML ({exc}); fix it or delete it to get the defaults.") from None
    known = {"listen", "bootstrap", "api_port", "answer_deadline_days", "policies", "mdns", "mdns_interface"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown setting '{unknown[0]}'; known settings are {', '.join(sorted(known))}.")
    policies = []
    raw_policies = data.get("policies", [])
    if not isinstance(raw_policies, list):
        raise ConfigError(f"{where}: 'policies' must be an array of tables ([[policies]]).")
    for i, raw in enumerate(raw_policies, 1):
        here = f"{where}: policy {i}"
        if not isinstance(raw, dict):
            raise ConfigError(f"{here} must be a table.")
        action = raw.get("action")
        if action not in ("approve", "deny"):
            raise ConfigError(f"{here}: 'action' must be \"approve\" or \"deny\".")
        requester = raw.get("requester")
        if not isinstance(requester, str) or not is_did(requester):
            raise ConfigError(f"{here}: 'requester' must be a did:key DID.")
        path = _expect(raw, "path", str, "", here)
        if path and not path.endswith("/"):
            raise ConfigError(f"{here}: 'path' must be a prefix ending in '/', such as \"cv/\".")
        purpose = raw.get("purpose")
        if purpose is not None and not isinstance(purpose, str):
            raise ConfigError(f"{here}: 'purpose' must be a string.")
        policies.append(Policy(action, requester, path, purpose))
    days = _expect(data, "answer_deadline_days", int, 7, where)
    if days < 1:
        raise ConfigError(f"{where}: 'answer_deadline_days' must be at least 1.")
    return Config(
        listen=_expect(data, "listen", list, ["/ip4/0.0.0.0/tcp/4001"], where),
        bootstrap=_expect(data, "bootstrap", list, [], where),
        api_port=_expect(data, "api_port", int, 0, where),
        answer_deadline_days=days,
        policies=policies,
        mdns=_expect(data, "mdns", bool, False, where),
        mdns_interface=_expect(data, "mdns_interface", str, "", where),
    )


def load_config(home: Path) -> Config:
    path = Path(home) / CONFIG_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Config()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}.") from None
    return parse_config(text, str(path))


def write_default_config(home: Path) -> Path:
    path = Path(home) / CONFIG_FILE
    if not path.exists():
        path.write_text(DEFAULT_TEXT)
        path.chmod(0o600)
    return path
