"""contextfs run / probe on the e2b and vercel runtimes, against local fakes of
their HTTP APIs (fakes/e2b_fake.py, fakes/vercel_fake.py) that really run the
commands in a private directory.

The fakes are kept honest first: the vendors' official npm SDKs (`e2b`,
`@vercel/sandbox`) drive them through create / run / write+read / kill, so a
fake answers only shapes the real clients accept (their validators reject
drift). Then contextfs itself runs sessions through them: the tree's contents,
modes and symlinks survive the round trip, exit codes and output pass
through, timeouts and dead sandboxes are errors, a bad key is a clear
authentication error, and no key ever appears in a URL or in the output.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import EXIT_AUTH, EXIT_IO, EXIT_USAGE, assert_one_error_line, entries_by_path
from test_run import LISTING, ctx, export, generation, local_listing, parse_listing  # noqa: F401

HERE = os.path.dirname(os.path.abspath(__file__))
FAKES = os.path.join(HERE, "fakes")
sys.path.insert(0, FAKES)
from e2b_fake import E2BFake  # noqa: E402
from vercel_fake import VercelFake  # noqa: E402

PROVIDERS = ["e2b", "vercel"]
SDK_PACKAGES = ["e2b@2.51.0", "@vercel/sandbox@3.5.0"]
SDK_DIR = os.path.join(os.path.expanduser("~"), ".cache", "contextfs-tests", "npm")


# --------------------------------------------------------------------------
# fixtures


class Provider:
    def __init__(self, name):
        self.name = name
        self.fake = E2BFake() if name == "e2b" else VercelFake()
        self.env = self.fake.env()
        self.secret = self.env["E2B_API_KEY"] if name == "e2b" else self.env["VERCEL_TOKEN"]

    def bad_env(self):
        if self.name == "e2b":
            return self.fake.env(api_key="e2b_" + "f" * 40)
        return self.fake.env(token="wrong-token")

    def user_commands(self, needle):
        """Commands the fake ran whose script contains needle."""
        if self.name == "e2b":
            return [s for s in self.fake.started if needle in " ".join(s["request"]["process"]["args"])]
        return [c for c in self.fake.commands if needle in " ".join(c.get("args") or [])]

    def assert_clean(self, *outputs):
        """Every sandbox it created is gone; the secret never left a header."""
        assert self.fake.sandboxes, "no sandbox was created"
        assert self.fake.live() == [], "a sandbox was left running"
        for method, path, _names, _headers in self.fake.requests:
            assert self.secret not in path, (method, path)
        for text in outputs:
            assert self.secret not in text


@pytest.fixture(params=PROVIDERS)
def prov(request):
    p = Provider(request.param)
    try:
        yield p
    finally:
        p.fake.stop()


@pytest.fixture(scope="session")
def sdk_dir():
    """The official SDKs, installed once into a cache directory."""
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node and npm are not installed (tools/setup-deps --test)")
    # both SDKs declare node >=20.18.1 (Debian 12's own nodejs is 18)
    v = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    try:
        ver = tuple(int(x) for x in v.lstrip("v").split(".")[:3])
    except ValueError:
        ver = (0,)
    if ver < (20, 18, 1):
        pytest.skip("the e2b and @vercel/sandbox SDKs need Node.js >= 20.18.1 (found %s)" % v)
    want = {"e2b": "2.51.0", "@vercel/sandbox": "3.5.0"}

    def installed():
        for pkg, ver in want.items():
            try:
                with open(os.path.join(SDK_DIR, "node_modules", pkg, "package.json")) as f:
                    if json.load(f)["version"] != ver:
                        return False
            except (OSError, ValueError, KeyError):
                return False
        return True

    if not installed():
        os.makedirs(SDK_DIR, exist_ok=True)
        pkg_json = os.path.join(SDK_DIR, "package.json")
        if not os.path.exists(pkg_json):
            with open(pkg_json, "w") as f:
                json.dump({"name": "contextfs-sdk-tests", "private": True}, f)
        try:
            p = subprocess.run(["npm", "install", "--no-audit", "--no-fund"] + SDK_PACKAGES,
                               cwd=SDK_DIR, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            pytest.skip("npm install of %s timed out (registry unreachable?)" % " ".join(SDK_PACKAGES))
        if p.returncode != 0:
            tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
            if any(w in (p.stderr + p.stdout) for w in ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED",
                                                         "ETIMEDOUT", "network")):
                pytest.skip("npm cannot reach the registry: %s" % " | ".join(tail))
            pytest.fail("npm install failed: %s" % " | ".join(tail))
        assert installed(), "npm install did not produce %s" % want
    return SDK_DIR


def committed(cli, ctx_id, path):
    """sha256 of a file in the context's current generation."""
    return entries_by_path(cli.read_tree(ctx_id))[path]["sha256"]


def sha(data):
    return hashlib.sha256(data).hexdigest()


def run_sdk(script, env, sdk):
    e = dict(os.environ, SDK_DIR=sdk, **env)
    p = subprocess.run(["node", os.path.join(FAKES, script)], env=e, capture_output=True, text=True,
                       timeout=180)
    assert p.returncode == 0, "%s against the fake: %s" % (script, p.stderr[-3000:])
    return json.loads(p.stdout)


# --------------------------------------------------------------------------
# the fakes, checked with the vendors' SDKs


@pytest.mark.parametrize("envd_version", ["0.4.0", "0.5.7"])
def test_e2b_sdk_accepts_the_fake(sdk_dir, envd_version):
    with E2BFake(envd_version=envd_version) as fake:
        out = run_sdk("sdk_e2b.cjs", fake.env(), sdk_dir)
        home = out["home"]
        assert home.startswith(fake.base) and out["stdout"] == "hello\n%s\n" % home
        assert out["stderr"] == "oops\n" and out["exitCode"] == 0
        assert out["written"] == home + "/dir/sdk.txt"
        assert out["readBack"] == out["catBySandbox"] == "written by the sdk\n"
        assert out["madeByCommand"] == "from a command"
        assert out["failure"] == {"exitCode": 7, "stdout": "before-fail\n", "stderr": "bad\n"}
        assert out["missing"] == "FileNotFoundError"
        assert out["running"] is True and out["killed"] is True
        assert fake.live() == [] and fake.deleted == [out["sandboxId"]]
        assert fake.keepalives == 1
        paths = [r[1].split("?")[0] for r in fake.requests]
        assert "/process.Process/Start" in paths and "/files" in paths


def test_vercel_sdk_accepts_the_fake(sdk_dir):
    with VercelFake() as fake:
        out = run_sdk("sdk_vercel.cjs", dict(fake.env(), FAKE_URL=fake.url), sdk_dir)
        cwd = out["cwd"]
        assert cwd.startswith(fake.base)
        assert out["exitCode"] == 0 and out["stdout"] == "hello\n%s\n" % cwd
        assert out["stderr"] == "oops\n"
        assert out["readBack"] == out["relRead"] == out["catBySandbox"] == "written by the sdk\n"
        assert out["mode"] == "644"
        assert out["failure"] == {"exitCode": 7, "stdout": "before-fail\n", "stderr": "bad\n"}
        assert out["detached"] == {"exitCode": 0, "stdout": "detached\n"}
        assert out["missing"] is None and out["stopped"] is True
        assert fake.live() == [] and len(fake.stopped) == 1
        assert fake.extensions == [60000]
        assert not os.path.exists(cwd)


# --------------------------------------------------------------------------
# contextfs through the fakes


def test_cloud_round_trip(cli, ctx, workdir, prov):  # noqa: F811
    name, src = ctx
    before = local_listing(src)
    script = LISTING + r"""
echo '--- after'
printf 'changed\n' >> workspace/keep.txt
rm workspace/gone.txt workspace/link
chmod 700 workspace/tool.sh
head -c 70000 /dev/urandom > workspace/new.bin
chmod 600 workspace/new.bin
ln -s sub/deep/x.txt workspace/link2
mkdir -p workspace/node_modules/pkg artifacts/out
echo 'module.exports = 1' > workspace/node_modules/pkg/index.js
echo report > artifacts/out/report.txt
""" + LISTING
    r = cli.run("run", name, "--runtime", prov.name, "--", "bash", "-c", script, env=prov.env)
    assert r.rc == 0, r.err
    attached, after = r.out.split("--- after\n")
    assert parse_listing(attached) == before
    after = parse_listing(after)
    assert "workspace/node_modules/pkg/index.js" in after
    assert generation(cli, name) == 3

    out = export(cli, name, os.path.join(workdir, "out-" + prov.name))
    got = local_listing(out)
    assert got == {p: v for p, v in after.items() if "/node_modules" not in p}
    assert not os.path.lexists(os.path.join(out, "workspace/gone.txt"))
    assert os.readlink(os.path.join(out, "workspace/link2")) == "sub/deep/x.txt"
    with open(os.path.join(out, "workspace/keep.txt")) as f:
        assert f.read() == "keep me\nchanged\n"
    assert os.stat(os.path.join(out, "workspace/tool.sh")).st_mode & 0o777 == 0o700
    assert os.stat(os.path.join(out, "workspace/new.bin")).st_mode & 0o777 == 0o600
    assert cli.manifest(name)["latestVersion"]["message"] == "contextfs run"
    # the bundles travelled as files, the sandbox is gone, the key stayed in headers
    if prov.name == "e2b":
        assert any(r[0] == "POST" and r[1].startswith("/files?") for r in prov.fake.requests)
        assert any(r[0] == "GET" and r[1].startswith("/files?") for r in prov.fake.requests)
        assert prov.fake.created[0]["secure"] is True
        assert all(s["user"] == "root" for s in prov.fake.started)
    else:
        assert prov.fake.writes >= 1
        assert prov.fake.created[0]["persistent"] is False
        assert prov.fake.created[0]["runtime"] == "python3.13"
    prov.assert_clean(r.out, r.err)


def test_cloud_nonzero_exit_is_a_result(cli, ctx, prov):  # noqa: F811
    name, _ = ctx
    r = cli.run("run", name, "--runtime", prov.name, "--", "sh", "-c",
                "echo to-out; echo to-err >&2; echo saved > workspace/f.txt; exit 42", env=prov.env)
    assert r.rc == 42, r.err
    assert r.out == "to-out\n"
    assert r.err == "to-err\n"
    assert generation(cli, name) == 3
    assert committed(cli, name, "workspace/f.txt") == sha(b"saved\n")

    r = cli.run("run", name, "--runtime", prov.name, "--json", "--",
                "sh", "-c", "printf 'a b'; printf 'E' >&2; exit 3", env=prov.env)
    assert r.rc == 3, r.err
    doc = json.loads(r.out)
    assert doc["ok"] is False
    assert doc["result"] == {"exitCode": 3, "stdout": "a b", "stderr": "E"}
    assert generation(cli, name) == 4
    prov.assert_clean(r.out, r.err)


def test_cloud_timeout_is_an_error(cli, ctx, prov):  # noqa: F811
    name, _ = ctx
    t0 = time.monotonic()
    r = cli.run("run", name, "--runtime", prov.name, "--timeout", "1s", "--",
                "bash", "-c", "echo before > workspace/t.txt; sleep 30; echo never > workspace/t.txt",
                env=prov.env)
    elapsed = time.monotonic() - t0
    assert r.rc == EXIT_IO, r.err
    assert "timed out after 1000 ms" in r.err
    assert elapsed < 20, elapsed
    # the provider was told, so it killed the command itself
    cmds = prov.user_commands("sleep 30")
    assert len(cmds) == 1
    if prov.name == "e2b":
        assert cmds[0]["timeout_ms"] == 1000
    else:
        assert cmds[0]["timeout"] == 1000
    # what the command did before the timeout was saved by the failure save
    assert cli.manifest(name)["latestVersion"]["message"] == "contextfs run failure save"
    assert committed(cli, name, "workspace/t.txt") == sha(b"before\n")
    prov.assert_clean(r.out, r.err)


def test_cloud_sandbox_killed_mid_run(cli, ctx, store, prov):  # noqa: F811
    name, _ = ctx
    a = subprocess.Popen([cli.binary, "run", name, "--runtime", prov.name, "--",
                          "bash", "-c", "echo x > workspace/k.txt; sleep 60"],
                         env=dict(cli.env, **prov.env), cwd=cli.workdir,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not prov.user_commands("sleep 60"):
            assert a.poll() is None, a.communicate()
            assert time.monotonic() < deadline, "the command never started"
            time.sleep(0.05)
        time.sleep(0.5)
        t0 = time.monotonic()
        prov.fake.kill_all()  # the provider loses the sandbox
        out, err = a.communicate(timeout=60)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    err = err.decode()
    assert a.returncode == EXIT_IO, err
    assert time.monotonic() - t0 < 15
    first = err.splitlines()[-1]  # the error, after the save warning
    assert "was cut before the command ended" in first and "killed" in first, err
    # the save could not reach the dead sandbox either: said so, nothing committed
    assert "could not save after the failure" in err and "is gone" in err, err
    assert generation(cli, name) == 2
    assert not os.path.exists(os.path.join(store, "contexts", name, "lock.json"))
    prov.assert_clean(out.decode(), err)


def test_cloud_sigterm_kills_the_command_and_saves(cli, ctx, prov):  # noqa: F811
    name, _ = ctx
    a = subprocess.Popen([cli.binary, "run", name, "--runtime", prov.name, "--",
                          "bash", "-c", "echo kept > workspace/sig.txt; sleep 61"],
                         env=dict(cli.env, **prov.env), cwd=cli.workdir,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not prov.user_commands("sleep 61"):
            assert a.poll() is None, a.communicate()
            assert time.monotonic() < deadline, "the command never started"
            time.sleep(0.05)
        time.sleep(0.5)
        t0 = time.monotonic()
        a.send_signal(15)
        out, err = a.communicate(timeout=60)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    assert a.returncode == 143, err
    assert time.monotonic() - t0 < 10
    # the command was killed in the sandbox, not only abandoned
    if prov.name == "e2b":
        assert [s for _pid, s in prov.fake.signals] == ["SIGNAL_SIGKILL"]
    else:
        assert prov.fake.kills == [{"signal": 9}]
    assert cli.manifest(name)["latestVersion"]["message"] == "contextfs run SIGTERM save"
    assert committed(cli, name, "workspace/sig.txt") == sha(b"kept\n")
    prov.assert_clean(out.decode(), err.decode())


def test_cloud_keep_alive_during_a_long_command(cli, ctx, prov):  # noqa: F811
    name, _ = ctx
    t0 = time.time()
    r = cli.run("run", name, "--runtime", prov.name, "--lock-ttl", "3s", "--",
                "sleep", "3.5", env=prov.env)
    wall_ms = (time.time() - t0) * 1000
    assert r.rc == 0, r.err
    if prov.name == "e2b":
        # the timeout call sets the whole lifetime again, from now
        assert prov.fake.keepalives >= 2
    else:
        # extend-timeout adds: only the time that passed is asked for, so the
        # deadline stays near now + lifetime instead of racing to the plan cap
        ext = prov.fake.extensions
        assert len(ext) >= 1 and all(d >= 1000 for d in ext), ext
        assert sum(ext) <= wall_ms + 1000, (ext, wall_ms)
    prov.assert_clean(r.out, r.err)


def test_cloud_bad_key(cli, ctx, prov):  # noqa: F811
    name, _ = ctx
    bad = prov.bad_env()
    secret = bad["E2B_API_KEY"] if prov.name == "e2b" else bad["VERCEL_TOKEN"]
    for args in (["run", name, "--runtime", prov.name, "--", "true"],
                 ["probe", "--runtime", prov.name]):
        r = cli.fails(EXIT_AUTH, *args, env=bad)
        line = assert_one_error_line(r)
        assert "rejected" in line and "HTTP 401" in line, line
        assert ("E2B_API_KEY" if prov.name == "e2b" else "VERCEL_TOKEN") in line
        assert secret not in r.err and secret not in r.out
    r = cli.json("probe", "--runtime", prov.name, env=bad, expect=EXIT_AUTH)
    assert r.json["error"]["code"] == "authentication"
    assert secret not in r.out
    assert generation(cli, name) == 2
    assert prov.fake.sandboxes == {}
    # no credentials at all: a usage error naming the variables
    unset = ["E2B_API_KEY"] if prov.name == "e2b" else ["VERCEL_TOKEN", "VERCEL_TEAM_ID",
                                                         "VERCEL_PROJECT_ID", "VERCEL_OIDC_TOKEN"]
    r = cli.fails(EXIT_USAGE, "probe", "--runtime", prov.name, env=prov.env, unset=unset)
    assert ("E2B_API_KEY" if prov.name == "e2b" else "VERCEL_TOKEN") in r.err


def test_cloud_probe(cli, prov):
    r = cli.json("probe", "--runtime", prov.name, env=prov.env)
    p = r.json["probe"]
    assert p["ok"] is True and p["missingTools"] == []
    assert p["provider"] == prov.name
    sid = next(iter(prov.fake.sandboxes))
    assert p["runtimeId"] == "%s:%s" % (prov.name, sid)
    assert p["capabilities"]["directoryBundle"] is True
    prov.assert_clean(r.out, r.err)


def test_cloud_unreachable_endpoint(cli):
    r = cli.fails(EXIT_IO, "probe", "--runtime", "e2b",
                  env={"E2B_API_KEY": "e2b_" + "0" * 40, "E2B_API_URL": "http://127.0.0.1:9"})
    line = assert_one_error_line(r)
    assert "e2b create sandbox: cannot reach http://127.0.0.1:9/v2/sandboxes" in line, line
    r = cli.fails(EXIT_IO, "probe", "--runtime", "vercel",
                  env={"VERCEL_TOKEN": "t", "VERCEL_TEAM_ID": "team", "VERCEL_PROJECT_ID": "p",
                       "VERCEL_SANDBOX_API_URL": "http://127.0.0.1:9"})
    assert "vercel create sandbox: cannot reach" in assert_one_error_line(r)
