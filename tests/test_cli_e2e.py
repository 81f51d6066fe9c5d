"""The real `mydata` console script in subprocesses: the main paths, exit codes, and a canary scan of the home."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
MYDATA = Path(sys.executable).parent / "mydata"
SAMPLE = Path(__file__).parent / "data" / "resume.json"
PASS = "e2e passphrase ÅÄÖ"


@pytest.fixture
def mydata(home, tmp_path):
    assert MYDATA.exists(), f"{MYDATA} is missing: install the project into the venv (scripts/test does)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYDATA_")}
    env["MYDATA_HOME"] = str(home)
    passfile = tmp_path / "passphrase"
    passfile.write_text(PASS + "\n")

    def run(*args, input=None, ok=True, pass_file=True):
        extra = ["--passphrase-file", str(passfile)] if pass_file else []
        r = subprocess.run([str(MYDATA), *args, *extra], input=input, capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=120)
        if ok:
            assert r.returncode == 0, r.stderr
        return r

    return run


def test_main_paths(mydata, home, tmp_path):
    out = json.loads(mydata("init", "--kdf-profile", "interactive", "--json").stdout)
    assert out["did"].startswith("did:key:z6Mk") and out["peer_id"].startswith("12D3KooW")
    who = mydata("whoami", pass_file=False).stdout
    assert out["did"] in who and out["peer_id"] in who

    assert "version 1" in mydata("put", "cv/basics", input='{"name": "Ada"}').stdout
    value = tmp_path / "v.json"
    value.write_text('{"name": "Ada", "label": "Engineer"}')
    assert json.loads(mydata("put", "cv/basics", str(value), "--if-version", "1", "--json").stdout)["version"] == 2
    assert json.loads(mydata("get", "cv/basics").stdout) == {"name": "Ada", "label": "Engineer"}
    assert json.loads(mydata("ls", "cv/", "--json").stdout) == [{"path": "cv/basics", "version": 2}]
    assert mydata("rm", "cv/basics").returncode == 0

    r = mydata("get", "cv/basics", ok=False)
    assert r.returncode == 1 and r.stdout == "" and r.stderr.strip() == "mydata: there is no record at cv/basics (it was deleted)"
    r = mydata("put", "cv/basics", "--if-version", "1", input="{}", ok=False)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = mydata("put", ok=False)
    assert r.returncode == 2
    r = mydata("init", ok=False)
    assert r.returncode == 1 and "already exists" in r.stderr


def test_resume_round_trip_through_the_console_script(mydata, tmp_path):
    mydata("init", "--kdf-profile", "interactive")
    mydata("import-resume", str(SAMPLE))
    exported = tmp_path / "out.json"
    exported.write_text(mydata("export", "--resume").stdout)
    assert json.loads(exported.read_text()) == json.loads(SAMPLE.read_text())
    # and the exported document imports again to the same records
    before = mydata("export", "--json").stdout
    mydata("import-resume", str(exported), "--replace")
    after = json.loads(mydata("export").stdout)
    assert [(r["path"], r["value"]) for r in after] == [(r["path"], r["value"]) for r in json.loads(before)]


def test_wrong_passphrase_and_missing_home(mydata, home):
    r = mydata("ls", ok=False)
    assert r.returncode == 1 and "no node home" in r.stderr
    mydata("init", "--kdf-profile", "interactive")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYDATA_")}
    r = subprocess.run([str(MYDATA), "ls", "--home", str(home)], capture_output=True, text=True,
                       env={**env, "MYDATA_PASSPHRASE": "nope"})
    assert r.returncode == 1 and r.stderr.startswith("mydata: wrong passphrase") and len(r.stderr.splitlines()) == 1


CANARIES = ["quokka-canary-61d2", "Säkerhetsnummer-880712"]


def test_canary_nothing_readable_under_the_home(mydata, home):
    mydata("init", "--kdf-profile", "interactive")
    for i in range(5):
        mydata("put", f"cv/{CANARIES[0]}/{i}", input=json.dumps({"note": CANARIES[1], "i": i}))
    doc = json.loads(SAMPLE.read_text())
    doc["basics"]["name"] = CANARIES[1]
    doc["work"][0]["name"] = CANARIES[0]
    mydata("import-resume", "-", input=json.dumps(doc))
    assert CANARIES[1] in mydata("export", "--resume").stdout  # it is really stored
    needles = []
    for text in [*CANARIES, "Linnéa", "Nordlys", PASS]:
        for enc in ("utf-8", "utf-16-le", "utf-16-be"):
            needles.append(text.encode(enc))
    files = [p for p in home.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"vault.json", "node.db"}
    for f in files:
        data = f.read_bytes()
        assert [n for n in needles if n in data] == [], f.name
