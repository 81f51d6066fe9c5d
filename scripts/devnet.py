"""`scripts/devnet`: a local network of separate node processes that acts out the whole mission.

A seed node, personal nodes holding generated CVs, and the CV agent, each its own process (with `--netns`, each its
own host in a Linux network namespace). Every step goes through the nodes' own command lines, as a person or the
service would use them; the script narrates, checks each outcome, shows the nodes' state as it changes, and exits
non-zero if any step of the story did not happen as it should.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
READY_TIMEOUT = 90.0
STOP_GRACE = 10.0
ANSWER_TIMEOUT = 60.0  # how long the story waits for something the network does by itself (a notify, a DHT record)
PASSPHRASE = "devnet passphrase (local test network only)"
LOOPBACK = "/ip4/127.0.0.1/tcp/0"

FIRST = ["Ada", "Linnea", "Omar", "Mei", "Jonas", "Priya", "Tomas", "Amara", "Erik", "Sofia", "Kenji", "Nadia",
         "Lars", "Fatima", "Mateo", "Ingrid", "Yusuf", "Elin", "Arjun", "Hanna"]
LAST = ["Lovelace", "Akesson", "Haddad", "Chen", "Berg", "Raman", "Novak", "Okafor", "Lind", "Rossi", "Sato",
        "Petrova", "Holm", "Diallo", "Garcia", "Nilsson", "Demir", "Strand", "Mehta", "Virtanen"]
EMPLOYERS = ["Nordlys Data AB", "Acme Logistics", "Fjord Health", "Tallinn Robotics", "Solstice Energy",
             "Blue Harbor Bank", "Kestrel Games", "Aurora Analytics"]
ROLES = ["Backend Engineer", "Data Scientist", "Product Manager", "Site Reliability Engineer", "UX Designer",
         "Security Analyst", "Frontend Developer", "Machine Learning Engineer"]
SCHOOLS = ["KTH Royal Institute of Technology", "Chalmers University of Technology", "University of Helsinki",
           "TU Delft", "Aalto University", "University of Oslo"]
SKILLS = ["Python", "Go", "Rust", "Kubernetes", "PostgreSQL", "Machine Learning", "Distributed Systems",
          "Accessibility", "Security", "TypeScript"]


class StoryFailed(Exception):
    """A step of the story did not happen as it should."""


def resume_for(rng: random.Random, i: int) -> dict:
    first, last = FIRST[i % len(FIRST)], LAST[(i * 7) % len(LAST)]
    start = rng.randint(2008, 2016)
    work, year = [], start
    for _ in range(rng.randint(1, 3)):
        end = year + rng.randint(1, 4)
        work.append({"name": rng.choice(EMPLOYERS), "position": rng.choice(ROLES),
                     "startDate": f"{year}-0{rng.randint(1, 9)}-01", "endDate": f"{end}-0{rng.randint(1, 9)}-01",
                     "summary": "Built and ran production systems.",
                     "highlights": ["Cut latency by a third", "Mentored two engineers"]})
        year = end
    return {
        "basics": {"name": f"{first} {last}", "label": work[-1]["position"],
                   "email": f"{first.lower()}.{last.lower()}@example.org",
                   "summary": f"{first} builds dependable software.",
                   "location": {"city": rng.choice(["Stockholm", "Oslo", "Helsinki", "Tallinn", "Gothenburg"]),
                                "countryCode": rng.choice(["SE", "NO", "FI", "EE"])}},
        "work": list(reversed(work)),
        "education": [{"institution": rng.choice(SCHOOLS), "area": "Computer Science", "studyType": "MSc",
                       "startDate": f"{start - 5}-09-01", "endDate": f"{start - 1}-06-15"}],
        "skills": [{"name": s, "level": rng.choice(["Intermediate", "Advanced", "Expert"])}
                   for s in rng.sample(SKILLS, 3)],
        "languages": [{"language": "English", "fluency": "Fluent"}],
    }


def node_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYDATA_")}
    env["MYDATA_PASSPHRASE"] = PASSPHRASE
    return env


@dataclass
class NodeProc:
    """One node process: its home, its log, how to run its commands (inside its namespace, under --netns)."""

    name: str
    home: Path
    log: Path
    program: str = "mydata"
    listen: str = LOOPBACK
    wrap: Callable[[list[str]], list[str]] = field(default=lambda cmd: cmd, repr=False)
    proc: subprocess.Popen | None = None
    info: dict = field(default_factory=dict)

    ready_line: ClassVar[str] = "Press Ctrl-C to stop."
    run_args: ClassVar[tuple[str, ...]] = ()

    def command(self, program: str, *args: str, check: bool = True, stdin: str | None = None,
                json_out: bool = False):
        cmd = [str(BIN / program), *args, "--home", str(self.home)] + (["--json"] if json_out else [])
        result = subprocess.run(self.wrap(cmd), input=stdin, capture_output=True, text=True, timeout=180,
                                env=node_env())
        if check and result.returncode != 0:
            raise StoryFailed(f"`{program} {' '.join(args)}` on {self.name} failed: {result.stderr.strip()}")
        if json_out and result.returncode == 0:
            return json.loads(result.stdout)
        return result

    def cli(self, *args: str, **kw):
        """A `mydata` command on this node (the agent's node answers them too)."""
        return self.command("mydata", *args, **kw)

    def configure(self, bootstrap: list[str]) -> None:
        """Point the node at the network's seed nodes (config.toml in its home)."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            f"listen = {json.dumps([self.listen])}\nbootstrap = {json.dumps(bootstrap)}\n")

    def start(self) -> None:
        self.info.clear()
        cmd = [str(BIN / self.program), "run", *self.run_args, "--home", str(self.home), "--listen", self.listen]
        self.proc = subprocess.Popen(self.wrap(cmd), stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                     env=node_env(), start_new_session=True)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            text = self.log.read_text() if self.log.exists() else ""
            if self.ready_line in text:
                for line in text.splitlines():
                    key, _, value = line.strip().partition(":")
                    if key in ("did", "peer id", "api", "link", "listen"):
                        self.info.setdefault(key, value.strip())
                return
            if self.proc.poll() is not None:
                raise StoryFailed(f"{self.name} exited while starting: {text.strip()[-500:]}")
            time.sleep(0.1)
        raise StoryFailed(f"{self.name} did not start within {READY_TIMEOUT:.0f} s (log: {self.log})")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if not self.running():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def peak_rss_mib(self) -> float:
        """The process's peak resident memory so far (VmHWM), in MiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


class SeedProc(NodeProc):
    """A bootstrap-only node: a DHT seed with no vault and no store."""

    run_args: ClassVar[tuple[str, ...]] = ("--bootstrap-only",)

    @property
    def multiaddr(self) -> str:
        return self.info["listen"]  # /ip4/.../tcp/N/p2p/<PeerID>


class Board:
    """Narration, checks, and a live table of the nodes' state (redrawn in place on a terminal)."""

    def __init__(self, nodes: list[NodeProc], poll_every: float) -> None:
        from rich.console import Console
        from rich.live import Live

        self.nodes = nodes
        self.console = Console(highlight=False)
        self.live = Live(console=self.console, auto_refresh=False, transient=False)
        self.steps: list[tuple[str, bool, str]] = []
        self.poll_every = poll_every
        self._polled = 0.0
        self._rows: dict[str, dict] = {}

    def __enter__(self) -> "Board":
        if self.console.is_terminal:
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.console.is_terminal:
            self.refresh(force=True)
            self.live.__exit__(*exc)

    def say(self, text: str) -> None:
        self.console.print(f"  {text}", markup=False)
        self.refresh()

    def expect(self, condition: bool, what: str) -> None:
        if not condition:
            raise StoryFailed(what)
        self.say(f"ok: {what}")

    def step(self, title: str, fn, *args):
        self.console.print(f"\n[bold]== {title}[/bold]")
        try:
            result = fn(self, *args)
        except StoryFailed as exc:
            self.steps.append((title, False, str(exc)))
            self.console.print(f"  [red]FAILED[/red]: {exc}", markup=True)
            raise
        self.steps.append((title, True, ""))
        self.refresh(force=True)
        return result

    def refresh(self, force: bool = False) -> None:
        if not self.console.is_terminal or (not force and time.monotonic() - self._polled < self.poll_every):
            return
        self._polled = time.monotonic()
        for n in self.nodes:
            if n.running() and not isinstance(n, SeedProc) and "api" in n.info:
                status = n.cli("status", check=False, json_out=False)
                if status.returncode == 0:
                    self._rows[n.name] = _parse_status(status.stdout)
        self.live.update(self.table(), refresh=True)

    def table(self):
        from rich.table import Table

        table = Table(title="the network now", expand=False)
        for column in ("node", "state", "peers", "pending requests", "active grants", "records", "outbox"):
            table.add_column(column)
        for n in self.nodes:
            row = self._rows.get(n.name, {})
            state = "running" if n.running() else "stopped"
            table.add_row(n.name, state, row.get("peers", "-"), row.get("pending", "-"), row.get("grants", "-"),
                          row.get("records", "-"), row.get("outbox", "-"))
        return table


def _parse_status(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key in ("peers", "pending", "grants", "records", "outbox"):
            out[key] = value.strip().split()[0]
    return out


def eventually(what: str, fn: Callable[[], bool], timeout: float = ANSWER_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            raise StoryFailed(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.5)


# ---------------------------------------------------------------- the story


def create(board: Board, seed: SeedProc, people: list[NodeProc], agent: NodeProc, rng: random.Random) -> None:
    seed.home.mkdir(parents=True)
    for n in people:
        n.command("mydata", "init", "--kdf-profile", "interactive", json_out=True)
    agent.command("cv-agent", "init", "--kdf-profile", "interactive", json_out=True)
    for i, person in enumerate(people):
        cv = resume_for(rng, i)
        path = person.home / "resume.json"
        path.write_text(json.dumps(cv))
        person.cli("import-resume", str(path))
        path.unlink()
        board.say(f"{person.name} keeps the CV of {cv['basics']['name']}, {cv['basics']['label']} (encrypted)")
    board.say("the CV agent has its own keys and store")


def start(board: Board, seed: SeedProc, people: list[NodeProc], agent: NodeProc) -> None:
    seed.start()
    seed.wait_ready()
    board.say(f"seed node listening at {seed.multiaddr}")
    for n in [*people, agent]:  # staggered: dozens of Python start-ups at once starve two cores
        n.configure([seed.multiaddr])
        n.start()
        n.wait_ready()
        board.say(f"{n.name:<10} {n.info['did']}  api {n.info['api']}")


def discover(board: Board, people: list[NodeProc], agent: NodeProc) -> None:
    agent_did = agent.info["did"]
    found: list[dict] = []

    def listed() -> bool:
        found[:] = people[0].cli("services", "cv", json_out=True)
        return any(s["did"] == agent_did for s in found)

    eventually("finding the CV agent on the network", listed)
    board.expect(True, f"{people[0].name} sees the CV service before it asks anything: {agent_did[:28]}…")


def ask(board: Board, people: list[NodeProc], agent: NodeProc) -> dict:
    decisions = {}
    for person in people:
        answer = agent.command("cv-agent", "request", person.info["did"], "--purpose",
                               "Match you with open positions", "--days", "30", json_out=True)
        board.expect(answer["status"] == "pending",
                     f"found {person.name} by its DID alone; the request waits for an answer")
        decisions[person.name] = {"request": answer["request"]}
    return decisions


def decide(board: Board, people: list[NodeProc], decisions: dict) -> None:
    for i, person in enumerate(people):
        (pending,) = person.cli("requests", json_out=True)
        request = decisions[person.name]["request"]
        board.expect(pending["id"] == request,
                     f"{person.name} sees who asks, for what and why: \"{pending['purpose']}\", "
                     f"{len(pending['scopes'])} scopes, kept {pending['retention_days']} days")
        kind = ["all", "part", "deny"][i % 3]
        if kind == "all":
            person.cli("approve", request)
        elif kind == "part":
            person.cli("approve", request, "--scope", "list:cv/", "--scope", "read:cv/")
        else:
            person.cli("deny", request, "--reason", "Not looking for a job right now")
        decisions[person.name]["kind"] = kind
        board.say(f"{person.name} " + {"all": "approves reading and writing", "part": "approves reading only",
                                      "deny": "denies"}[kind])


def use(board: Board, people: list[NodeProc], agent: NodeProc, decisions: dict, out_dir: Path) -> None:
    def answered() -> bool:
        statuses = {c["request"]: c["status"] for c in agent.command("cv-agent", "inbox", json_out=True)}
        return all(statuses.get(d["request"]) in ("granted", "denied") for d in decisions.values())

    eventually("every answer reaching the agent", answered)
    for person in people:
        did, kind = person.info["did"], decisions[person.name]["kind"]
        if kind == "deny":
            refused = agent.command("cv-agent", "fetch", did, check=False)
            board.expect(refused.returncode == 1, f"reading {person.name}'s CV without consent is refused")
            continue
        held = agent.command("cv-agent", "fetch", did, json_out=True)
        html = out_dir / f"{person.name}.html"
        agent.command("cv-agent", "render", did, "--out", str(html))
        board.expect(held["records"] > 3 and html.stat().st_size > 1000,
                     f"fetched {held['records']} records of {person.name} and rendered {html.name}")
        cert = agent.command("cv-agent", "certify", did, "--employer", "Nordlys Data AB", "--role", "Engineer",
                             "--from", "2020-01-01", "--to", "2024-06-30", check=False)
        if kind == "part":
            board.expect(cert.returncode == 1, f"writing a certificate into {person.name}'s CV is refused")
            continue
        board.expect(cert.returncode == 0, f"certified work into {person.name}'s CV")
        certs = [e["path"] for e in person.cli("ls", "cv/certificates/", json_out=True)]
        shown = person.cli("get", certs[-1], json_out=True)
        board.expect(shown.get("certificate", {}).get("verified") is True,
                     f"{person.name}'s own node shows the certificate with its issuer verified")


def revoke(board: Board, people: list[NodeProc], agent: NodeProc, decisions: dict) -> None:
    person = next(p for p in people if decisions[p.name]["kind"] == "all")
    did = person.info["did"]
    person.cli("revoke", "--requester", agent.info["did"])
    board.say(f"{person.name} revokes everything the CV agent holds")

    def deleted() -> bool:
        listed = agent.command("cv-agent", "list", json_out=True)
        return any(c.get("did") == did and c.get("deleted") for c in listed)

    eventually("the agent deleting its copy", deleted)
    board.expect(True, f"the agent deleted its copy of {person.name}'s CV on the pushed revocation")
    refused = agent.command("cv-agent", "fetch", did, check=False)
    board.expect(refused.returncode == 1, f"the next read of {person.name}'s CV is refused")
    rendered = agent.command("cv-agent", "render", did, "--out", "-", check=False)
    board.expect(rendered.returncode == 1 and "deleted" in rendered.stderr,
                 "rendering that CV again fails, saying the copy was deleted")
    decisions[person.name]["revoked"] = True


def audit(board: Board, people: list[NodeProc], decisions: dict) -> None:
    for person in people:
        report = person.cli("audit", "--verify", json_out=True)
        kinds = [e["kind"] for e in person.cli("audit", json_out=True)]
        accepted, refused = kinds.count("invocation.accepted"), kinds.count("invocation.refused")
        board.expect(report["ok"], f"{person.name}: {report['count']} audit entries, chain intact; "
                                   f"{accepted} accesses accepted, {refused} refused")
        if decisions[person.name]["kind"] != "deny":
            board.expect(accepted >= 2, f"{person.name}'s log shows every read of the agent")


# ---------------------------------------------------------------- running it


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/devnet", description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5, help="personal nodes to start (default 5)")
    parser.add_argument("--dir", type=Path, default=ROOT / "devnet-data", help="where the nodes' homes live")
    parser.add_argument("--keep", action="store_true", help="leave the network running to explore it")
    parser.add_argument("--seed", type=int, default=7, help="seed for the generated CVs")
    parser.add_argument("--netns", action="store_true",
                        help="each node its own host in a Linux network namespace (root; nothing leaves them)")
    args = parser.parse_args(argv)
    if not 3 <= args.nodes <= 200:
        parser.error("--nodes must be between 3 and 200 (one approves all, one part, one denies)")

    rng = random.Random(args.seed)
    if args.dir.exists():
        shutil.rmtree(args.dir)
    args.dir.mkdir(parents=True)
    seed = SeedProc("seed", args.dir / "seed", args.dir / "seed.log")
    people = [NodeProc(f"person-{i + 1}", args.dir / f"person-{i + 1}", args.dir / f"person-{i + 1}.log")
              for i in range(args.nodes)]
    agent = NodeProc("cv-agent", args.dir / "cv-agent", args.dir / "cv-agent.log", program="cv-agent")
    everyone: list[NodeProc] = [seed, *people, agent]

    # SIGTERM stops the story like Ctrl-C does, so every node is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    ok = False
    with contextlib.ExitStack() as stack:
        where = "as its own process on 127.0.0.1"
        if args.netns:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from netns import Netns, NetnsUnavailable, cleanup_stale

            try:
                cleanup_stale()
                net = stack.enter_context(Netns(len(everyone)))
            except NetnsUnavailable as exc:
                print(f"--netns is not available here: {exc}", file=sys.stderr)
                return 2
            for i, n in enumerate(everyone):
                n.wrap = (lambda i: lambda cmd: net.wrap(cmd, i))(i)
                n.listen = net.listen(i)
            where = f"as its own host in a network namespace on {net.subnet}"
        board = stack.enter_context(Board(everyone, poll_every=5.0 if args.nodes > 10 else 1.0))
        try:
            board.step(f"Create a seed node, {args.nodes} personal nodes with CVs, and the CV agent", create, seed,
                       people, agent, rng)
            board.step(f"Start every node {where}, joined through the seed node", start, seed, people, agent)
            board.step("A person finds which CV services exist on the network", discover, people, agent)
            decisions = board.step("The CV agent asks every person for consent", ask, people, agent)
            board.step("Each person decides through their own node's CLI", decide, people, decisions)
            board.step("The agent reads, renders and certifies what it was granted, and only that", use, people,
                       agent, decisions, args.dir)
            board.step("One person revokes; the agent deletes its copy and the next read is refused", revoke,
                       people, agent, decisions)
            board.step("Every person's audit log is intact and shows every access", audit, people, decisions)
            ok = True
        except StoryFailed:
            pass
        except KeyboardInterrupt:
            print("\ninterrupted: stopping every node", flush=True)
        summary(board, args.dir)
        try:
            if args.keep and ok:
                explore(everyone, args.netns)
                signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            for n in reversed(everyone):
                n.stop()
            print("every node stopped", flush=True)
    return 0 if ok else 1


def summary(board: Board, where: Path) -> None:
    print("\n== Summary")
    for title, passed, why in board.steps:
        print(f"  [{'ok' if passed else 'FAILED'}] {title}" + (f": {why}" if why else ""))
    print(f"  {sum(p for _, p, _ in board.steps)} of {len(board.steps)} steps passed; logs and rendered CVs in {where}")


def explore(nodes: list[NodeProc], netns: bool) -> None:
    print("\nThe network keeps running. Explore it:")
    print(f"  export MYDATA_PASSPHRASE='{PASSPHRASE}'")
    for n in nodes[1:]:
        line = " ".join(n.wrap([str(BIN / "mydata"), "status", "--home", str(n.home)]))
        print(f"  {line}")
    print(f"  {BIN / 'cv-agent'} list --home {nodes[-1].home}" + ("   (inside its namespace)" if netns else ""))
    print("Press Ctrl-C to stop every node.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
