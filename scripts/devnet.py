"""`scripts/devnet`: a local network of separate node processes on 127.0.0.1 that acts out the whole consent story.

Every step goes through the nodes' own command lines, as a person or a service would use them; the script only
narrates, checks each outcome, and exits non-zero if any step of the story did not happen as it should.
"""

from __future__ import annotations

import argparse
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
from typing import ClassVar

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
READY_TIMEOUT = 60.0
STOP_GRACE = 10.0
PASSPHRASE = "devnet passphrase (local test network only)"

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
    work = []
    year = start
    for _ in range(rng.randint(1, 3)):
        end = year + rng.randint(1, 4)
        work.append({"name": rng.choice(EMPLOYERS), "position": rng.choice(ROLES), "startDate": f"{year}-0{rng.randint(1, 9)}-01",
                     "endDate": f"{end}-0{rng.randint(1, 9)}-01", "summary": "Built and ran production systems.",
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


@dataclass
class NodeProc:
    name: str
    home: Path
    log: Path
    proc: subprocess.Popen | None = None
    info: dict = field(default_factory=dict)

    def cli(self, *args: str, check: bool = True, stdin: str | None = None, json_out: bool = False):
        cmd = [str(BIN / "mydata"), *args, "--home", str(self.home)]
        if json_out:
            cmd.append("--json")
        result = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120,
                                env=node_env(self.home))
        if check and result.returncode != 0:
            raise StoryFailed(f"`mydata {' '.join(args)}` on {self.name} failed: {result.stderr.strip()}")
        if json_out and result.returncode == 0:
            return json.loads(result.stdout)
        return result

    ready_line: ClassVar[str] = "Press Ctrl-C to stop."
    run_args: ClassVar[tuple[str, ...]] = ()

    def configure(self, bootstrap: list[str]) -> None:
        """Point the node at the network's seed nodes (config.toml in its home)."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            'listen = ["/ip4/127.0.0.1/tcp/0"]\n' + f"bootstrap = {json.dumps(bootstrap)}\n")

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "mydata"), "run", *self.run_args, "--home", str(self.home), "--listen", "/ip4/127.0.0.1/tcp/0"],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT, env=node_env(self.home),
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def peak_rss_mib(self) -> float:
        """The process's peak resident memory so far (VmHWM), in MiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

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

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class SeedProc(NodeProc):
    """A bootstrap-only node: a DHT seed with no vault and no store."""

    run_args: ClassVar[tuple[str, ...]] = ("--bootstrap-only",)

    @property
    def multiaddr(self) -> str:
        return self.info["listen"]  # /ip4/127.0.0.1/tcp/N/p2p/<PeerID>


def node_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYDATA_")}
    env["MYDATA_PASSPHRASE"] = PASSPHRASE
    return env


class Story:
    def __init__(self) -> None:
        self.steps: list[tuple[str, bool, str]] = []

    def say(self, text: str) -> None:
        print(f"  {text}", flush=True)

    def step(self, title: str, fn, *args):
        print(f"\n== {title}", flush=True)
        try:
            result = fn(*args)
        except StoryFailed as exc:
            self.steps.append((title, False, str(exc)))
            print(f"  FAILED: {exc}", flush=True)
            raise
        self.steps.append((title, True, ""))
        return result

    def expect(self, condition: bool, what: str) -> None:
        if not condition:
            raise StoryFailed(what)
        self.say(f"ok: {what}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/devnet", description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5, help="personal nodes to start (default 5)")
    parser.add_argument("--dir", type=Path, default=ROOT / "devnet-data", help="where the nodes' homes live")
    parser.add_argument("--keep", action="store_true", help="leave the network running to explore it")
    parser.add_argument("--seed", type=int, default=7, help="seed for the generated CVs and decisions")
    args = parser.parse_args(argv)
    if args.nodes < 3:
        parser.error("--nodes must be at least 3 (one approves all, one part, one denies)")

    rng = random.Random(args.seed)
    if args.dir.exists():
        shutil.rmtree(args.dir)
    args.dir.mkdir(parents=True)
    people = [NodeProc(f"person-{i + 1}", args.dir / f"person-{i + 1}", args.dir / f"person-{i + 1}.log")
              for i in range(args.nodes)]
    service = NodeProc("cv-service", args.dir / "cv-service", args.dir / "cv-service.log")
    everyone = [*people, service]
    story = Story()

    def stop_all(*_):
        for n in everyone:
            n.stop()

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    ok = False
    try:
        story.step(f"Create {args.nodes} personal nodes and a CV service, each with its own keys", create, story,
                   people, service, rng)
        story.step("Start every node as its own process on 127.0.0.1", start, story, everyone)
        decisions = story.step("The CV service asks every person for consent", ask, story, people, service)
        story.step("Each person decides through their own node's CLI", decide, story, people, decisions, rng)
        story.step("The service reads what it was granted, and only that", read, story, people, service, decisions)
        story.step("One person revokes; the very next read is refused", revoke, story, people, service, decisions)
        story.step("Every person's audit log is intact and shows every access", audit, story, people, decisions)
        ok = True
    except StoryFailed:
        pass
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every node", flush=True)
    finally:
        summary(story, everyone)
        if args.keep and ok:
            explore(everyone)
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass
        stop_all()
        print("every node stopped", flush=True)
    return 0 if ok else 1


def create(story: Story, people: list[NodeProc], service: NodeProc, rng: random.Random) -> None:
    for n in [*people, service]:
        info = n.cli("init", "--kdf-profile", "interactive", json_out=True)
        n.info["did"] = info["did"]
        story.say(f"{n.name:<11} {info['did']}")
    for i, person in enumerate(people):
        cv = resume_for(rng, i)
        path = person.home / "resume.json"
        path.write_text(json.dumps(cv))
        person.cli("import-resume", str(path))
        path.unlink()
        story.say(f"{person.name} imported the CV of {cv['basics']['name']}, {cv['basics']['label']}")


def start(story: Story, nodes: list[NodeProc]) -> None:
    for n in nodes:  # staggered: dozens of Python processes importing at once starve two cores
        n.start()
        n.wait_ready()
        story.say(f"{n.name:<11} listening, api {n.info['api']}")


def ask(story: Story, people: list[NodeProc], service: NodeProc) -> dict:
    decisions = {}
    for person in people:
        answer = service.cli("remote", "request", person.info["link"], "--scope", "list:cv/", "--scope", "read:cv/",
                             "--scope", "write:cv/certificates/", "--purpose", "Match you with open positions",
                             "--description", "We read your CV to suggest jobs and may add certificates we issue.",
                             "--days", "30", json_out=True)
        story.expect(answer["status"] == "pending", f"{person.name} has the request waiting: {answer['request'][:20]}…")
        decisions[person.name] = {"request": answer["request"]}
    return decisions


def decide(story: Story, people: list[NodeProc], decisions: dict, rng: random.Random) -> None:
    for i, person in enumerate(people):
        (pending,) = person.cli("requests", json_out=True)
        request = decisions[person.name]["request"]
        story.expect(pending["id"] == request, f"{person.name} sees who asks and why: \"{pending['purpose']}\"")
        kind = ["all", "part", "deny"][i % 3]
        if kind == "all":
            person.cli("approve", request)
        elif kind == "part":
            person.cli("approve", request, "--scope", "list:cv/", "--scope", "read:cv/")
        else:
            person.cli("deny", request, "--reason", "Not looking for a job right now")
        decisions[person.name]["kind"] = kind
        story.say(f"{person.name} " + {"all": "approves everything", "part": "approves reading, not writing",
                                      "deny": "denies"}[kind])


def _status(service: NodeProc, person: NodeProc, request: str) -> dict:
    return service.cli("remote", "status", person.info["link"], request, json_out=True)


def read(story: Story, people: list[NodeProc], service: NodeProc, decisions: dict) -> None:
    for person in people:
        d = decisions[person.name]
        status = _status(service, person, d["request"])
        expected = "denied" if d["kind"] == "deny" else "granted"
        story.expect(status["status"] == expected, f"the service holds the answer of {person.name}: {expected}")
        if d["kind"] == "deny":
            refused = service.cli("remote", "read", person.info["link"], "cv/basics", check=False)
            story.expect(refused.returncode == 1, f"reading {person.name}'s CV without consent is refused")
            continue
        listing = service.cli("remote", "ls", person.info["link"], "cv/", json_out=True)
        basics = json.loads(service.cli("remote", "read", person.info["link"], "cv/basics").stdout)
        story.expect(len(listing["entries"]) > 3,
                     f"read {person.name}'s CV: {basics['value']['name']}, {len(listing['entries'])} records")
        cert = json.dumps({"name": "Interview passed", "issuer": "CV service", "date": "2026-11-22"})
        wrote = service.cli("remote", "write", person.info["link"], "cv/certificates/interview", stdin=cert,
                            check=False)
        if d["kind"] == "all":
            story.expect(wrote.returncode == 0, f"wrote a certificate into {person.name}'s CV")
        else:
            story.expect(wrote.returncode == 1, f"writing into {person.name}'s CV is refused (not granted)")


def revoke(story: Story, people: list[NodeProc], service: NodeProc, decisions: dict) -> None:
    person = next(p for p in people if decisions[p.name]["kind"] == "all")
    grants = person.cli("grants", json_out=True)
    person.cli("revoke", "--requester", service.info["did"])
    story.say(f"{person.name} revokes all {len(grants)} delegations held by the service")
    refused = service.cli("remote", "read", person.info["link"], "cv/basics", check=False)
    story.expect(refused.returncode == 1, f"the next read of {person.name}'s CV is refused")
    story.expect(_status(service, person, decisions[person.name]["request"])["status"] == "revoked",
                 "the service knows the consent is revoked")
    decisions[person.name]["revoked"] = True


def audit(story: Story, people: list[NodeProc], decisions: dict) -> None:
    for person in people:
        report = person.cli("audit", "--verify", json_out=True)
        entries = person.cli("audit", json_out=True)
        kinds = [e["kind"] for e in entries]
        accepted = kinds.count("invocation.accepted")
        refused = kinds.count("invocation.refused")
        story.expect(report["ok"], f"{person.name}: {report['count']} audit entries, chain intact; "
                                   f"{accepted} accesses accepted, {refused} refused")
        if decisions[person.name]["kind"] != "deny":
            story.expect(accepted >= 2, f"{person.name}'s log shows the service's reads")


def summary(story: Story, nodes: list[NodeProc]) -> None:
    print("\n== Summary")
    for title, passed, why in story.steps:
        print(f"  [{'ok' if passed else 'FAILED'}] {title}" + (f": {why}" if why else ""))
    print(f"  {sum(p for _, p, _ in story.steps)} of {len(story.steps)} steps passed; logs in "
          f"{nodes[0].log.parent}")


def explore(nodes: list[NodeProc]) -> None:
    print("\nThe network keeps running. Explore it (passphrase for every node: in MYDATA_PASSPHRASE below):")
    print(f"  export MYDATA_PASSPHRASE='{PASSPHRASE}'")
    for n in nodes:
        print(f"  {BIN / 'mydata'} status --home {n.home}")
    print(f"  {BIN / 'mydata'} audit --home {nodes[0].home}\nPress Ctrl-C to stop every node.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
