"""scripts/netns.py: hosts in their own network namespaces reach each other through the bridge and nothing else, real
`mydata run` nodes talk across the veth links, and every namespace goes away on exit, exception, signal or kill."""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import netns  # noqa: E402
from netns import Netns, NetnsUnavailable, check_available, cleanup_stale  # noqa: E402

try:
    check_available()
except NetnsUnavailable as exc:
    pytest.skip(f"--netns is not available here: {exc}", allow_module_level=True)

PREFIX = "mydn-t"  # not `mydn-<digits>`, so a devnet's cleanup_stale never sees these, and we never see its
MYDATA = str(Path(sys.executable).parent / "mydata")
DEADLINE = 60  # against hangs on a busy machine, never a performance claim
PASS = "netns test passphrase"

pytestmark = pytest.mark.slow


def ours() -> list[str]:
    return [n for n in os.listdir(netns.NETNS_DIR) if n.startswith(PREFIX)] if os.path.isdir(netns.NETNS_DIR) else []


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True, timeout=DEADLINE)
    return {link["ifname"] for link in json.loads(out.stdout)}


@pytest.fixture
def clean():
    """Asserts the test left no namespace of ours and no new link in the root namespace."""
    links = root_links()
    yield
    assert ours() == []
    assert root_links() == links


@pytest.fixture
def net(clean):
    with Netns(3, prefix=PREFIX) as n:
        yield n


def in_ns(net: Netns, i: int, code: str, *args: str, timeout: float = DEADLINE) -> subprocess.CompletedProcess:
    return subprocess.run(net.wrap([sys.executable, "-c", textwrap.dedent(code), *args], i), capture_output=True,
                          text=True, timeout=timeout)


CONNECT = """
    import socket, sys
    s = socket.socket()
    s.settimeout(10)
    try:
        s.connect((sys.argv[1], int(sys.argv[2])))
    except OSError as e:
        print(e.errno)
    else:
        s.sendall(b"hello from ns0")
        print("sent", s.recv(100).decode())
"""

LISTEN = """
    import socket, sys
    s = socket.socket()
    s.settimeout(30)
    s.bind((sys.argv[1], 0))
    s.listen()
    print(s.getsockname()[1], flush=True)
    c, peer = s.accept()
    c.sendall(b"ack " + c.recv(100))
    print(peer[0], flush=True)
"""


def test_hosts_get_distinct_addresses_on_one_private_subnet(net):
    addrs = [net.addr(i) for i in range(3)]
    assert len(set(addrs)) == 3 and all(a.startswith("10.203.") for a in addrs)
    assert net.subnet.prefixlen == 24 and net.subnet.is_private
    assert net.listen(1) == f"/ip4/{net.addr(1)}/tcp/0"
    eth = subprocess.run(net.wrap(["ip", "-j", "-4", "addr", "show", "eth0"], 1), capture_output=True, text=True,
                         timeout=DEADLINE)
    assert json.loads(eth.stdout)[0]["addr_info"][0]["local"] == net.addr(1)
    routes = subprocess.run(net.wrap(["ip", "-j", "route", "show"], 1), capture_output=True, text=True,
                            timeout=DEADLINE)
    assert [r["dst"] for r in json.loads(routes.stdout)] == [str(net.subnet)]  # no default route, nothing out


@pytest.mark.skipif(shutil.which("ping") is None, reason="ping (iputils-ping) is not installed")
def test_every_host_pings_every_other_through_the_bridge(net):
    for i in range(3):
        for j in range(3):
            if i != j:
                ping = subprocess.run(net.wrap(["ping", "-c1", "-W2", net.addr(j)], i), capture_output=True,
                                      text=True, timeout=DEADLINE)
                assert ping.returncode == 0, ping.stdout + ping.stderr


def test_tcp_from_ns0_to_a_listener_in_ns2(net):
    listener = subprocess.Popen(net.wrap([sys.executable, "-c", textwrap.dedent(LISTEN), net.addr(2)], 2),
                                stdout=subprocess.PIPE, text=True)
    try:
        port = listener.stdout.readline().strip()
        client = in_ns(net, 0, CONNECT, net.addr(2), port)
        assert client.stdout.strip() == "sent ack hello from ns0", client.stderr
        out, _ = listener.communicate(timeout=DEADLINE)
        assert out.strip() == net.addr(0)  # the peer address seen is ns0's own, so it came over the veths
    finally:
        listener.kill()
        listener.wait()


def test_nothing_outside_the_namespaces_is_reachable(net):
    # Every address of the root namespace, and beyond it, is unreachable from inside: no route, no packet leaves.
    out = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True, timeout=DEADLINE)
    root_addrs = [a["local"] for link in json.loads(out.stdout) for a in link["addr_info"]
                  if not a["local"].startswith("127.")]
    for target in [*root_addrs, "1.1.1.1", str(net.subnet.broadcast_address + 1)]:
        result = in_ns(net, 0, CONNECT, target, "80")
        assert result.stdout.strip() == str(errno.ENETUNREACH), (target, result.stdout, result.stderr)
    # ... and the root namespace gained no route into the subnet, so it cannot reach in either.
    assert not any(net.subnet.overlaps(dst) for dst in root_routes())


def root_routes() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-j", "-4", "route", "show", "table", "all"], capture_output=True, text=True,
                         check=True, timeout=DEADLINE)
    return [ipaddress.ip_network(r["dst"], strict=False) for r in json.loads(out.stdout) if r["dst"] != "default"]


def test_real_nodes_in_two_namespaces_exchange_a_consent_request(net, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYDATA_")} | {"MYDATA_PASSPHRASE": PASS}

    def mydata(i: int, *args: str) -> subprocess.CompletedProcess:
        result = subprocess.run(net.wrap([MYDATA, *args], i), capture_output=True, text=True, env=env,
                                timeout=DEADLINE * 2)
        assert result.returncode == 0, f"mydata {' '.join(args)}: {result.stderr}"
        return result

    homes = [tmp_path / "owner", tmp_path / "service"]
    procs, infos = [], []
    try:
        for i, home in enumerate(homes):
            mydata(i, "init", "--home", str(home), "--kdf-profile", "interactive")
            log = home / "run.out"
            procs.append(subprocess.Popen(net.wrap([MYDATA, "run", "--home", str(home), "--listen", net.listen(i)], i),
                                          stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env))
            infos.append(wait_ready(procs[-1], log))
        owner_link = infos[0]["link"]
        assert f"/ip4/{net.addr(0)}/tcp/" in owner_link and "127.0.0.1" not in owner_link
        before = eth0_bytes(net, 0)

        asked = json.loads(mydata(1, "remote", "request", "--home", str(homes[1]), owner_link, "--scope", "read:cv/",
                                  "--purpose", "Cross-namespace test", "--days", "1", "--json").stdout)
        assert asked["status"] == "pending"
        (pending,) = json.loads(mydata(0, "requests", "--home", str(homes[0]), "--json").stdout)
        assert pending["id"] == asked["request"] and pending["purpose"] == "Cross-namespace test"
        after = eth0_bytes(net, 0)
        assert after[0] > before[0] and after[1] > before[1]  # the request really went through ns0's interface
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def wait_ready(proc: subprocess.Popen, log: Path) -> dict:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        text = log.read_text()
        if "Press Ctrl-C to stop." in text:
            info = {}
            for line in text.splitlines():
                key, _, value = line.strip().partition(":")
                info.setdefault(key, value.strip())
            return info
        assert proc.poll() is None, f"node exited at start: {text}"
        time.sleep(0.1)
    raise AssertionError(f"node did not start: {log.read_text()}")


def eth0_bytes(net: Netns, i: int) -> tuple[int, int]:
    out = subprocess.run(net.wrap(["ip", "-j", "-s", "link", "show", "eth0"], i), capture_output=True, text=True,
                         timeout=DEADLINE)
    stats = json.loads(out.stdout)[0]["stats64"]
    return stats["rx"]["bytes"], stats["tx"]["bytes"]


# ------------------------------------------------------------------------------------------------ cleanup


def test_exit_removes_every_namespace_and_kills_what_still_runs_inside(clean):
    with Netns(4, prefix=PREFIX) as n:
        made = [n.switch, *n.hosts]
        assert sorted(ours()) == sorted(made)
        straggler = subprocess.Popen(n.wrap(["sh", "-c", "echo inside; exec sleep 120"], 3), stdout=subprocess.PIPE)
        assert straggler.stdout.readline() == b"inside\n"
    assert straggler.wait(DEADLINE) == -signal.SIGKILL  # left running, it would keep its namespace alive


def test_an_exception_inside_the_context_still_cleans_up(clean):
    with pytest.raises(ZeroDivisionError):
        with Netns(3, prefix=PREFIX):
            assert len(ours()) == 4
            1 / 0


def test_a_failing_setup_removes_what_it_made_and_only_that(clean):
    taken = f"{PREFIX}{os.getpid()}-h1"  # someone else's namespace under the name host 1 would get
    subprocess.run(["ip", "netns", "add", taken], check=True, timeout=DEADLINE)
    try:
        with pytest.raises(NetnsUnavailable, match="creating namespace"):
            with Netns(3, prefix=PREFIX):
                pass
        assert ours() == [taken]
    finally:
        subprocess.run(["ip", "netns", "del", taken], check=True, timeout=DEADLINE)


CHILD = """
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from netns import Netns
    with Netns(3, prefix=sys.argv[2]) as n:
        print(" ".join([n.switch, *n.hosts]), flush=True)
        time.sleep(120)
"""


def start_child() -> tuple[subprocess.Popen, list[str]]:
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CHILD), str(ROOT / "scripts"), PREFIX],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    names = child.stdout.readline().split()
    assert len(names) == 4 and sorted(ours()) == sorted(names), child.stderr.read() if not names else names
    return child, names


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_inside_the_context_cleans_up(clean, sig):
    child, _ = start_child()
    child.send_signal(sig)
    _, err = child.communicate(timeout=DEADLINE)
    assert "KeyboardInterrupt" in err


def test_cleanup_stale_removes_a_killed_runs_namespaces_only(clean):
    child, names = start_child()
    child.kill()
    child.wait()
    assert sorted(ours()) == sorted(names)  # SIGKILL leaves them behind
    foreign = f"{PREFIX}x-sw"  # not a name this module makes
    subprocess.run(["ip", "netns", "add", foreign], check=True, timeout=DEADLINE)
    try:
        with Netns(2, prefix=PREFIX) as live:
            assert sorted(cleanup_stale(PREFIX)) == sorted(names)
            assert sorted(ours()) == sorted([live.switch, *live.hosts, foreign])  # a live run and others untouched
            assert cleanup_stale(PREFIX) == []
            assert cleanup_stale("mydn-") == []  # the devnet's own prefix does not match test names
    finally:
        subprocess.run(["ip", "netns", "del", foreign], check=True, timeout=DEADLINE)


# ------------------------------------------------------------------------------------------ errors and inputs


@pytest.mark.parametrize("count", [0, -1, 255, 1000])
def test_count_outside_one_subnet_is_refused(count):
    with pytest.raises(ValueError):
        Netns(count, prefix=PREFIX)


def test_host_index_out_of_range_is_refused(net):
    for bad in (-1, 3, 99):
        with pytest.raises(IndexError):
            net.wrap(["true"], bad)
        with pytest.raises(IndexError):
            net.addr(bad)


def test_addresses_are_chosen_on_entering():
    with pytest.raises(RuntimeError):
        Netns(2, prefix=PREFIX).addr(0)


def test_picked_subnet_overlaps_no_route_of_this_machine():
    subnet = netns.pick_subnet()
    assert subnet.subnet_of(netns.SUBNET_POOL) and not any(subnet.overlaps(dst) for dst in root_routes())


def test_a_subnet_too_small_is_refused():
    with pytest.raises(ValueError):
        Netns(3, prefix=PREFIX, subnet=ipaddress.ip_network("10.203.9.0/30"))


UNAVAILABLE = """
    import sys
    sys.path.insert(0, sys.argv[1])
    from netns import Netns, NetnsUnavailable
    try:
        with Netns(2, prefix=sys.argv[2]):
            pass
    except NetnsUnavailable as e:
        print(e)
"""


def _unavailable(prefix_cmd: list[str], **kw) -> str:
    result = subprocess.run([*prefix_cmd, sys.executable, "-c", textwrap.dedent(UNAVAILABLE), str(ROOT / "scripts"),
                             PREFIX], capture_output=True, text=True, timeout=DEADLINE, **kw)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return result.stdout.strip()


def test_not_root_says_so_in_one_sentence(clean):
    os.seteuid(65534)  # root may step down to nobody and back (the saved uid stays 0)
    try:
        with pytest.raises(NetnsUnavailable) as said:
            with Netns(2, prefix=PREFIX):
                pass
    finally:
        os.seteuid(0)
    assert "need root" in str(said.value) and "\n" not in str(said.value)


def test_ip_missing_says_so(clean, tmp_path):
    said = _unavailable([], env={**os.environ, "PATH": str(tmp_path)})
    assert "`ip` command (iproute2) is not installed" in said


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is not installed")
def test_a_container_without_netns_permission_says_so(clean):
    # Root inside an unprivileged user namespace: uid 0, but no right to make network namespaces.
    said = _unavailable(["unshare", "-Ur"])
    assert "does not permit network namespaces" in said
