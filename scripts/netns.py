"""Linux network namespaces for `scripts/devnet --netns`: one isolated host per node on a private /24, joined by a
bridge inside a switch namespace, with no route out; everything it makes lives inside namespaces it names and removes.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Sequence

PREFIX = "mydn-"
NETNS_DIR = "/run/netns"  # where `ip netns add` pins named namespaces
SUBNET_POOL = ipaddress.ip_network("10.203.0.0/16")
IP_TIMEOUT = 60.0  # against a hung `ip`, not a performance claim
BRIDGE = "br0"
HOST_IF = "eth0"


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no `ip`, or the container forbids them)."""


def _ip() -> str:
    path = shutil.which("ip")
    if path is None:
        raise NetnsUnavailable("the `ip` command (iproute2) is not installed or not on PATH, so network namespaces "
                               "cannot be made.")
    return path


def _run(args: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([_ip(), *args], input=stdin, capture_output=True, text=True, timeout=IP_TIMEOUT)


def check_available() -> None:
    """Raise NetnsUnavailable with one sentence unless this process can make namespaces, bridges and veth pairs."""
    if os.geteuid() != 0:
        raise NetnsUnavailable("network namespaces need root; run as root (e.g. with sudo).")
    _ip()
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = _run(["netns", "add", probe])
    if made.returncode != 0:
        raise NetnsUnavailable("this system does not permit network namespaces here "
                               f"(`ip netns add` said: {made.stderr.strip() or made.returncode}).")
    try:
        links = _run(["-n", probe, "-batch", "-"],
                     stdin=f"link add {BRIDGE} type bridge\nlink add v0 type veth peer name v1\n")
        if links.returncode != 0:
            raise NetnsUnavailable("this kernel cannot make bridges or veth pairs inside a namespace "
                                   f"(`ip` said: {links.stderr.strip() or links.returncode}).")
    finally:
        _run(["netns", "del", probe])


def pick_subnet() -> ipaddress.IPv4Network:
    """The first /24 of 10.203.0.0/16 that overlaps no route and no address of this machine (root namespace)."""
    taken: list[ipaddress.IPv4Network] = []
    for args in (["-j", "-4", "route", "show", "table", "all"], ["-j", "-4", "addr", "show"]):
        out = _run(args)
        if out.returncode != 0:
            raise NetnsUnavailable(f"cannot read this machine's routes (`ip` said: {out.stderr.strip()}).")
        for entry in json.loads(out.stdout or "[]"):
            dsts = [entry.get("dst")] + [f"{a['local']}/{a['prefixlen']}" for a in entry.get("addr_info", [])]
            for dst in dsts:
                if dst and dst != "default":  # the default route overlaps everything and carries nothing of ours
                    taken.append(ipaddress.ip_network(dst, strict=False))
    for candidate in SUBNET_POOL.subnets(new_prefix=24):
        if not any(candidate.overlaps(net) for net in taken if net.prefixlen > 0):
            return candidate
    raise NetnsUnavailable(f"every /24 of {SUBNET_POOL} is already routed on this machine.")


def _ours(prefix: str) -> re.Pattern:
    return re.compile(rf"^{re.escape(prefix)}(\d+)-(sw|h\d+|probe)$")


def _namespaces() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(names: Sequence[str]) -> None:
    """Kill what still runs inside the named namespaces, then delete them (their veths and bridge go with them)."""
    present = [n for n in names if os.path.exists(os.path.join(NETNS_DIR, n))]
    if not present:
        return
    # A process left inside would keep its namespace, and so its links, alive after the name is gone.
    inodes = set()
    for n in present:
        st = os.stat(os.path.join(NETNS_DIR, n))
        inodes.add((st.st_dev, st.st_ino))
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
            if (st.st_dev, st.st_ino) in inodes:
                os.kill(int(entry), signal.SIGKILL)
        except OSError:
            continue
    _run(["-force", "-batch", "-"], stdin="".join(f"netns del {n}\n" for n in present))


def cleanup_stale(prefix: str = PREFIX) -> list[str]:
    """Remove namespaces left by runs of this tool that were killed; returns their names.

    Only names this module makes (`<prefix><pid>-sw|h<i>`) whose maker pid is no longer alive are touched, so a
    run still in progress keeps its network.
    """
    pattern = _ours(prefix)
    stale = [n for n in _namespaces() if (m := pattern.match(n)) and not _pid_alive(int(m.group(1)))]
    _remove(stale)
    return stale


class Netns:
    """`count` hosts, each its own network namespace with one address on `subnet`, on one bridge; a context manager.

    Host i has `eth0` = addr(i); the switch namespace holds the bridge and the other veth ends. No default route, no
    NAT, no link to the root namespace: traffic to anything outside the subnet fails with "network unreachable".
    """

    def __init__(self, count: int, prefix: str = PREFIX, subnet: ipaddress.IPv4Network | None = None) -> None:
        if not 1 <= count <= 254:
            raise ValueError(f"count must be 1..254 (one /24), not {count}")
        if subnet is not None and count > subnet.num_addresses - 2:
            raise ValueError(f"{subnet} has no room for {count} hosts")
        self.count = count
        self.prefix = prefix
        self._subnet = subnet
        tag = f"{prefix}{os.getpid()}"
        self.switch = f"{tag}-sw"
        self.hosts = [f"{tag}-h{i}" for i in range(count)]
        self._made: list[str] = []
        self._old_sigterm = None

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        if self._subnet is None:
            raise RuntimeError("the subnet is chosen on entering the context")
        return self._subnet

    def addr(self, i: int) -> str:
        """Host i's IPv4 address (on its eth0)."""
        return str(self.subnet[i + 1]) if 0 <= i < self.count else self._no_host(i)

    def listen(self, i: int, port: int = 0) -> str:
        """The multiaddr a node in host i should listen on."""
        return f"/ip4/{self.addr(i)}/tcp/{port}"

    def wrap(self, cmd: Sequence[str], i: int) -> list[str]:
        """The argv that runs `cmd` inside host i (same pid namespace, environment and files; only the network differs)."""
        if not 0 <= i < self.count:
            self._no_host(i)
        return [_ip(), "netns", "exec", self.hosts[i], *cmd]

    def _no_host(self, i: int):
        raise IndexError(f"no host {i}: this network has hosts 0..{self.count - 1}")

    def __enter__(self) -> Netns:
        check_available()
        self._catch_sigterm()
        try:
            if self._subnet is None:
                self._subnet = pick_subnet()
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _build(self) -> None:
        for name in [self.switch, *self.hosts]:
            self._made.append(name)  # recorded first: an interrupt between the two still gets it removed
            made = _run(["netns", "add", name])
            if made.returncode != 0:
                self._made.pop()  # e.g. the name exists: not ours, so not ours to remove
                self._check(made, f"creating namespace {name}")
        lines = ["link set lo up", f"link add {BRIDGE} type bridge", f"link set {BRIDGE} up"]
        for i, host in enumerate(self.hosts):
            lines += [f"link add p{i} type veth peer name {HOST_IF} netns {host}",
                      f"link set p{i} master {BRIDGE}", f"link set p{i} up"]
        self._check(_run(["-n", self.switch, "-batch", "-"], stdin="\n".join(lines) + "\n"), "building the bridge")
        for i, host in enumerate(self.hosts):
            setup = f"link set lo up\naddr add {self.addr(i)}/{self.subnet.prefixlen} dev {HOST_IF}\nlink set {HOST_IF} up\n"
            self._check(_run(["-n", host, "-batch", "-"], stdin=setup), f"configuring {host}")

    @staticmethod
    def _check(result: subprocess.CompletedProcess, what: str) -> None:
        if result.returncode != 0:
            raise NetnsUnavailable(f"{what} failed (`ip` said: {result.stderr.strip() or result.returncode}).")

    def close(self) -> None:
        """Remove every namespace this network made (and so every link); safe to call twice."""
        blocked = threading.current_thread() is threading.main_thread()
        if blocked:  # a second Ctrl-C must not cut the cleanup short; it is delivered once we are done
            old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            _remove(list(reversed(self._made)))  # hosts first, so their veth ends leave the bridge before it goes
            self._made.clear()
        finally:
            self._restore_sigterm()
            if blocked:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def _catch_sigterm(self) -> None:
        # SIGTERM's default kills without unwinding; turn it into KeyboardInterrupt so __exit__ runs. A handler the
        # caller installed is left alone.
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            self._old_sigterm = signal.signal(signal.SIGTERM, _interrupt)

    def _restore_sigterm(self) -> None:
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
