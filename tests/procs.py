"""Start real `mydata` node processes for tests and benchmarks: init a home, run the node, wait until it is ready,
read what it printed (DID, PeerID, listen addresses, API URL), and stop or SIGKILL it. Deadlines everywhere."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from node.apiclient import API_FILE, ApiClient
from protocol.links import Link, parse_link

BIN = Path(sys.executable).parent
MYDATA = str(BIN / "mydata")
PASSPHRASE = "test passphrase (processes)"
READY_LINE = "Press Ctrl-C to stop."
READY_TIMEOUT = 90.0  # many Python start-ups at once on two busy cores are slow; a deadline, not a claim
STOP_TIMEOUT = 20.0
CLI_TIMEOUT = 120.0


def node_env(passphrase: str = PASSPHRASE) -> dict:
    """The environment of a node process: ours without any MYDATA_* setting, plus the passphrase."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYDATA_")}
    env["MYDATA_PASSPHRASE"] = passphrase
    return env


class NodeProcess:
    """One node home and, while running, its `mydata run` process (in its own session, so a kill reaches it alone)."""

    def __init__(self, home: Path, *, passphrase: str = PASSPHRASE, log: Path | None = None) -> None:
        self.home = Path(home)
        self.passphrase = passphrase
        self.log = Path(log) if log is not None else self.home.parent / f"{self.home.name}.out"
        self.proc: subprocess.Popen | None = None
        self.info: dict[str, str] = {}

    # -- the CLI on this home

    def cli(self, *args: str, check: bool = True, stdin: str | None = None,
            timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
        result = subprocess.run([MYDATA, *args, "--home", str(self.home)], input=stdin, capture_output=True,
                                text=True, env=node_env(self.passphrase), timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"`mydata {' '.join(args)}` exited {result.returncode}: {result.stderr.strip()}")
        return result

    def init(self) -> "NodeProcess":
        self.cli("init", "--kdf-profile", "interactive")
        return self

    # -- the running node

    def start(self, listen: str = "/ip4/127.0.0.1/tcp/0", *extra: str) -> "NodeProcess":
        """Run the node and return once it printed its ready line; raises if it exits or stalls instead."""
        self.info = {}
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([MYDATA, "run", "--home", str(self.home), "--listen", listen, *extra],
                                         stdout=out, stderr=subprocess.STDOUT, env=node_env(self.passphrase),
                                         start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            text = self.log.read_text()
            if READY_LINE in text:
                for line in text.splitlines():
                    key, _, value = line.strip().partition(":")
                    if key in ("did", "peer id", "api", "link", "listen"):
                        self.info.setdefault(key, value.strip())
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"the node exited while starting (code {self.proc.returncode}): {text[-800:]}")
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"the node did not start within {READY_TIMEOUT:.0f} s: {self.log.read_text()[-800:]}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def link(self) -> Link:
        return parse_link(self.info["link"])

    def api(self) -> ApiClient:
        """A control-API client for the running node (the caller closes it)."""
        token = json.loads((self.home / API_FILE).read_text())["token"]
        return ApiClient(self.info["api"], token)

    def peak_rss_mib(self) -> float:
        """The process's peak resident memory so far (VmHWM), in MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM line in /proc/<pid>/status")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not stop in time. Returns the exit code (None if not running)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed or closed by the process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT)
