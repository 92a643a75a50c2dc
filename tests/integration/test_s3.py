"""contextfs on S3-compatible storage, against a real Ceph RADOS Gateway.

The session fixture `rgw` uses the server named by $S3_ENDPOINT ($S3_BUCKET,
$S3_ACCESS_KEY, $S3_SECRET_KEY, $S3_REGION) when it is set; otherwise it
starts one with tests/s3/rgw into a temp dir (on free loopback ports) and
stops it at the end of the session. Every test works under its own prefix
of the bucket, so tests never see each other's contexts.

Covered: storage resolution (--store s3://, CONTEXTSDK_S3_* variables, the
config file), the CLI lifecycle, the reference's key layout seen by a raw
SigV4 listing (curl --aws-sigv4), a context read back by the independent
reader after a raw download, mounts with git and sqlite remounted on a
second "machine" (another cache dir), two machines taking turns through the
lock, credential errors, doctor, and a fake server that ignores conditional
writes (refused for writing, exit 7).

Run:  /usr/bin/python3 -m pytest tests/integration/test_s3.py
"""
import hashlib
import http.server
import json
import os
import re
import secrets
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN = os.environ.get("CONTEXTFS_BIN", os.path.join(ROOT, "build", "tools", "contextfs"))
RGW = os.path.join(ROOT, "tests", "s3", "rgw")

import refreader  # noqa: E402  (conftest puts HERE on sys.path)

PASS = "s3-integration-passphrase"
HAVE_FUSE = os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None
CTX_RE = r"[a-z0-9][a-z0-9-]*"


# ---- the server ---------------------------------------------------------------


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports():
    """S3, monitor and OSD ports (below the ephemeral range) that are free:
    the defaults, else another set (another RGW may run on this host)."""
    for s3, mon, osd_min, osd_max in ((7480, 3300, 6800, 7300), (7490, 3310, 7310, 7400),
                                      (7500, 3320, 7410, 7470), (7520, 3330, 7530, 7600)):
        if port_free(s3) and port_free(mon) and port_free(mon + 1) and port_free(osd_min):
            return {"S3_PORT": str(s3), "S3_MON_PORT": str(mon),
                    "S3_OSD_PORT_MIN": str(osd_min), "S3_OSD_PORT_MAX": str(osd_max)}
    pytest.fail("no free ports for a test RGW", pytrace=False)


class Server:
    def __init__(self, endpoint, bucket, access, secret, region):
        self.endpoint = endpoint.rstrip("/")
        self.bucket = bucket
        self.access = access
        self.secret = secret
        self.region = region or "us-east-1"

    def curl(self, path, query="", out=None, method="GET"):
        """One raw request signed by curl's own SigV4 (independent of ours).
        curl 7.88 signs the query as written: keys sorted, values encoded."""
        url = "%s/%s/%s" % (self.endpoint, self.bucket, path)
        if query:
            url += "?" + query
        args = ["curl", "-sS", "--fail-with-body", "-X", method,
                "--aws-sigv4", "aws:amz:%s:s3" % self.region,
                "--user", "%s:%s" % (self.access, self.secret),
                "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", url]
        if out:
            args[1:1] = ["-o", out]
        p = subprocess.run(args, capture_output=True, timeout=60)
        assert p.returncode == 0, "curl %s: %s %s" % (url, p.stdout[:300], p.stderr[:300])
        return p.stdout

    def list(self, prefix):
        """Every key under prefix (ListObjectsV2, continuation followed)."""
        keys, token = [], None
        while True:
            q = []
            if token:
                q.append("continuation-token=" + urllib.parse.quote(token, safe="-_.~"))
            q.append("list-type=2")
            q.append("prefix=" + urllib.parse.quote(prefix, safe="-_.~"))
            doc = ET.fromstring(self.curl("", "&".join(q)))
            ns = {"s3": doc.tag.split("}")[0][1:]} if doc.tag.startswith("{") else {}
            tag = (lambda t: "s3:" + t) if ns else (lambda t: t)
            keys += [c.find(tag("Key"), ns).text for c in doc.findall(tag("Contents"), ns)]
            trunc = doc.find(tag("IsTruncated"), ns)
            if trunc is None or trunc.text != "true":
                return keys
            token = doc.find(tag("NextContinuationToken"), ns).text

    def download(self, prefix, dest):
        """Copies every object under prefix/ into dest as a local store."""
        n = 0
        for key in self.list(prefix + "/"):
            rel = key[len(prefix) + 1:]
            path = os.path.join(dest, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self.curl(urllib.parse.quote(key), out=path)
            n += 1
        return n


@pytest.fixture(scope="session")
def rgw(tmp_path_factory):
    if os.environ.get("S3_ENDPOINT"):
        yield Server(os.environ["S3_ENDPOINT"], os.environ.get("S3_BUCKET", "test-bucket"),
                     os.environ["S3_ACCESS_KEY"], os.environ["S3_SECRET_KEY"],
                     os.environ.get("S3_REGION"))
        return
    if shutil.which("curl") is None:
        pytest.fail("curl is needed (apt-get install curl)", pytrace=False)
    state = str(tmp_path_factory.mktemp("rgw") / "state")
    env = dict(os.environ)
    env.update(pick_ports())
    t0 = time.monotonic()
    p = subprocess.run([RGW, "start", state], env=env, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        subprocess.run([RGW, "stop", state], capture_output=True, timeout=120)
        pytest.fail("tests/s3/rgw start failed:\n%s" % p.stderr[-3000:], pytrace=False)
    exports = dict(re.findall(r"^export (\w+)='([^']*)'$", p.stdout, re.M))
    print("RGW started in %.1fs at %s" % (time.monotonic() - t0, exports.get("S3_ENDPOINT")))
    try:
        yield Server(exports["S3_ENDPOINT"], exports["S3_BUCKET"], exports["S3_ACCESS_KEY"],
                     exports["S3_SECRET_KEY"], exports.get("S3_REGION"))
    finally:
        subprocess.run([RGW, "stop", state], capture_output=True, timeout=300)


# ---- contextfs on a prefix of the bucket ----------------------------------------


def tree_hashes(root, skip_top=(".contextsdk",)):
    out = {}
    for d, dirs, files in os.walk(root):
        if os.path.relpath(d, root) == ".":
            dirs[:] = [x for x in dirs if x not in skip_top]
        for f in files:
            p = os.path.join(d, f)
            if os.path.islink(p):
                continue
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def is_mounted(path):
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4].replace("\\040", " ") == real and "fuse.contextfs" in line
                   for line in f)


class S3Cli:
    """contextfs on s3://BUCKET/<unique prefix> with a private HOME."""

    def __init__(self, srv, tmp, name):
        self.srv = srv
        self.tmp = tmp
        self.prefix = "it-%s-%s" % (name[:30].replace("_", "-"), secrets.token_hex(4))
        self.url = "s3://%s/%s" % (srv.bucket, self.prefix)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CONTEXTSDK_", "AWS_", "CONTEXTFS_", "S3_"))}
        env.update({"HOME": os.path.join(tmp, "home"), "LC_ALL": "C.UTF-8",
                    "CONTEXTSDK_PASSPHRASE": PASS, "CONTEXTFS_SCRYPT_COST": "1024",
                    "CONTEXTSDK_S3_ENDPOINT": srv.endpoint, "AWS_REGION": srv.region,
                    "AWS_ACCESS_KEY_ID": srv.access, "AWS_SECRET_ACCESS_KEY": srv.secret})
        os.makedirs(env["HOME"], exist_ok=True)
        self.env = env
        self.mounts = []

    def run(self, *args, env=None, unset=(), store=True, timeout=180):
        e = dict(self.env)
        e.update(env or {})
        for k in unset:
            e.pop(k, None)
        argv = [BIN] + (["--store", self.url] if store else []) + [str(a) for a in args]
        p = subprocess.run(argv, env=e, cwd=self.tmp, capture_output=True, text=True, timeout=timeout)
        return p

    def ok(self, *args, **kw):
        p = self.run(*args, **kw)
        assert p.returncode == 0, "contextfs %s -> %d\n%s\n%s" % (args, p.returncode, p.stdout, p.stderr)
        return p

    def json(self, *args, expect=0, **kw):
        p = self.run("--json", *args, **kw)
        assert p.returncode == expect, "contextfs %s -> %d, expected %d\n%s\n%s" % (
            args, p.returncode, expect, p.stdout, p.stderr)
        doc = json.loads(p.stdout)
        assert doc["ok"] is (expect == 0), doc
        return doc

    def mount(self, ref, name, cache, opts="", expect=0):
        mp = os.path.join(self.tmp, name)
        os.makedirs(mp, exist_ok=True)
        o = "cache=%s,lock_ttl=30" % cache + ("," + opts if opts else "")
        p = self.run("mount", ref, mp, "-o", o, "--log-file", os.path.join(self.tmp, name + ".log"))
        assert p.returncode == expect, "mount %s -> %d (expected %d)\n%s" % (ref, p.returncode, expect, p.stderr)
        if p.returncode == 0:
            self.mounts.append(mp)
            return mp
        return p

    def umount(self, mp):
        self.ok("umount", mp, store=False)
        assert not is_mounted(mp)

    def cleanup(self):
        for mp in self.mounts:
            if is_mounted(mp):
                subprocess.run(["fusermount3", "-u", mp], capture_output=True)
                for _ in range(100):
                    if not is_mounted(mp):
                        break
                    time.sleep(0.05)
                if is_mounted(mp):
                    subprocess.run(["fusermount3", "-uz", mp], capture_output=True)

    def keys(self, sub=""):
        return sorted(k[len(self.prefix) + 1:] for k in self.srv.list(self.prefix + "/" + sub))


@pytest.fixture
def s3(rgw, tmp_path, request):
    if not (os.path.isfile(BIN) and os.access(BIN, os.X_OK)):
        pytest.fail("contextfs binary not found at %s (build it or set CONTEXTFS_BIN)" % BIN, pytrace=False)
    c = S3Cli(rgw, str(tmp_path), request.node.name)
    yield c
    c.cleanup()


def fill(root):
    """A small tree with text, binary, nested, empty and larger files."""
    rnd = secrets.token_bytes
    files = {
        "workspace/notes.md": b"# notes\n" * 20,
        "workspace/src/app.py": b"print('hello')\n",
        "workspace/src/deep/a/b/c.bin": rnd(70000),
        "workspace/empty.txt": b"",
        "memory/facts.json": json.dumps({"k": list(range(50))}).encode(),
        "artifacts/blob.bin": rnd(1 << 20),
        "logs/run.log": b"line\n" * 1000,
    }
    for rel, data in files.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
    return files


# ---- storage resolution -------------------------------------------------------------


def test_resolution_env_config_and_errors(s3, tmp_path):
    srv = s3.srv
    env = {"CONTEXTSDK_S3_BUCKET": srv.bucket, "CONTEXTSDK_S3_PREFIX": s3.prefix,
           "CONTEXTSDK_S3_FORCE_PATH_STYLE": "1",
           "CONTEXTSDK_S3_ACCESS_KEY_ID": srv.access, "CONTEXTSDK_S3_SECRET_ACCESS_KEY": srv.secret}
    aws = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    # the CONTEXTSDK_S3_* variables alone (no --store, no AWS_* keys)
    s3.ok("init", "envctx", env=env, unset=aws, store=False)
    assert "contexts/envctx/manifest.json" in s3.keys("contexts/")
    # either half of the explicit pair -> both required, exit 2
    for missing in ("CONTEXTSDK_S3_ACCESS_KEY_ID", "CONTEXTSDK_S3_SECRET_ACCESS_KEY"):
        p = s3.run("status", "envctx", env=env, unset=(missing,), store=False)
        assert p.returncode == 2 and "%s is required" % missing in p.stderr, p.stderr
    # no credentials at all (and no AWS shared files)
    p = s3.run("status", "envctx", unset=aws,
               env={"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/c", "AWS_CONFIG_FILE": "/nonexistent/f"})
    assert p.returncode == 2 and "credentials are required" in p.stderr, p.stderr

    # config storage.type "s3" with bucket / prefix / endpoint / forcePathStyle
    cfg = tmp_path / "s3.json"
    cfg.write_text(json.dumps({"storage": {"type": "s3", "bucket": srv.bucket, "prefix": s3.prefix,
                                           "endpoint": srv.endpoint, "region": srv.region,
                                           "forcePathStyle": True}}))
    doc = s3.json("status", "envctx", env={"CONTEXTSDK_CONFIG": str(cfg)},
                  unset=("CONTEXTSDK_S3_ENDPOINT",), store=False)
    assert doc["generation"] == 1
    # storage.type "fs" ignores a stray CONTEXTSDK_S3_BUCKET
    fsdir = tmp_path / "fsstore"
    cfg2 = tmp_path / "fs.json"
    cfg2.write_text(json.dumps({"storage": {"type": "fs", "directory": str(fsdir)}}))
    s3.ok("init", "fsctx", env={"CONTEXTSDK_CONFIG": str(cfg2), "CONTEXTSDK_S3_BUCKET": srv.bucket},
          store=False)
    assert (fsdir / "contexts" / "fsctx" / "manifest.json").is_file()
    assert "contexts/fsctx/manifest.json" not in s3.keys("contexts/")
    # a bad type and a bad forcePathStyle are config errors
    cfg.write_text(json.dumps({"storage": {"type": "gcs", "bucket": "x"}}))
    p = s3.run("list", env={"CONTEXTSDK_CONFIG": str(cfg)}, store=False)
    assert p.returncode == 6 and "storage.type" in p.stderr, p.stderr
    cfg.write_text(json.dumps({"storage": {"type": "s3"}}))
    p = s3.run("list", env={"CONTEXTSDK_CONFIG": str(cfg)}, store=False)
    assert p.returncode == 2 and "bucket" in p.stderr, p.stderr
    # --store s3:// without a bucket
    p = s3.run("--store", "s3://", "list", store=False)
    assert p.returncode == 2, p.stderr
    # virtual-hosted style (endpoint by name: <bucket>.localhost)
    port = urllib.parse.urlsplit(srv.endpoint).port
    doc = s3.json("status", "envctx", env={"CONTEXTSDK_S3_ENDPOINT": "http://localhost:%d" % port})
    assert doc["generation"] == 1


def test_aws_shared_credentials_and_config_files(s3, tmp_path):
    """No credential variables: the AWS CLI's files are read, with the
    profile from AWS_PROFILE (else "default"); the region from the config
    file; the secret never printed."""
    srv = s3.srv
    creds = tmp_path / "credentials"
    creds.write_text("# comment\n[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n\n"
                     "[ci]\naws_access_key_id=%s\naws_secret_access_key=%s\n"
                     % (srv.access, "wrong-secret-000000000000000000000000000", srv.access, srv.secret))
    config = tmp_path / "config"
    config.write_text("[default]\nregion = %s\n[profile ci]\nregion = %s\ns3 =\n  addressing_style = path\n"
                      % (srv.region, srv.region))
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(creds), "AWS_CONFIG_FILE": str(config), "AWS_PROFILE": "ci"}
    unset = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
             "CONTEXTSDK_S3_REGION", "CONTEXTSDK_S3_ACCESS_KEY_ID", "CONTEXTSDK_S3_SECRET_ACCESS_KEY")
    s3.ok("init", "profctx", env=env, unset=unset)
    doc = s3.json("status", "profctx", env=env, unset=unset)
    assert doc["generation"] == 1
    doc = s3.json("doctor", env=env, unset=unset)
    assert doc["storage"]["credentials"] == "profile ci in %s" % creds, doc["storage"]
    assert srv.secret not in json.dumps(doc)
    # the default profile holds a wrong secret: refused by the server (exit 7)
    p = s3.run("status", "profctx", env={**env, "AWS_PROFILE": ""}, unset=unset)
    assert p.returncode == 7 and "denied" in p.stderr, p.stderr
    assert "wrong-secret" not in p.stderr + p.stdout
    # a profile that does not exist: a clear error before any request
    p = s3.run("status", "profctx", env={**env, "AWS_PROFILE": "nope"}, unset=unset)
    assert p.returncode == 2 and "AWS_PROFILE=nope: no such profile" in p.stderr, p.stderr
    # variables still win over the files
    p = s3.run("status", "profctx", env={**env, "AWS_ACCESS_KEY_ID": srv.access,
                                         "AWS_SECRET_ACCESS_KEY": "wrong-too-00000000000000000000000000"},
               unset=unset[2:])
    assert p.returncode == 7, p.stderr


# ---- lifecycle --------------------------------------------------------------------


def test_cli_lifecycle(s3, tmp_path):
    t0 = time.monotonic()
    s3.ok("init", "life")
    work = str(tmp_path / "work")
    s3.ok("export", "life", work)
    fill(work)
    doc = s3.json("commit", "life", "--from", work, "-m", "first on s3", "--author", "it")
    assert doc["generation"] == 2
    want2 = tree_hashes(work)
    assert {"workspace/notes.md", "artifacts/blob.bin"} <= set(want2)

    # export: every file, byte for byte
    out = str(tmp_path / "out2")
    s3.ok("export", "life", out)
    assert tree_hashes(out) == want2

    # second commit: modify, remove, add
    with open(os.path.join(work, "workspace/notes.md"), "ab") as f:
        f.write(b"more\n")
    os.unlink(os.path.join(work, "logs/run.log"))
    with open(os.path.join(work, "memory/new.md"), "w") as f:
        f.write("new\n")
    doc = s3.json("commit", "life", "--from", work, "-m", "second", "--expect-generation", "2")
    assert doc["generation"] == 3
    changed = {(c["path"], c["type"]) for c in doc["changedPaths"]}
    assert {("workspace/notes.md", "modified"), ("logs/run.log", "removed"),
            ("memory/new.md", "added")} <= changed, changed
    # a stale expectation loses: exit 4
    p = s3.run("commit", "life", "--from", work, "--expect-generation", "2")
    assert p.returncode == 4, p.stderr

    s3.json("checkpoint", "life", "--from", work, "--reason", "it")
    log = s3.json("log", "life")
    assert sorted(v["generation"] for v in log["versions"]) == [1, 2, 3], log["versions"]
    assert any(v.get("message") == "first on s3" for v in log["versions"])
    assert len(log["checkpoints"]) == 1

    # older generations export; verify authenticates everything
    out = str(tmp_path / "at2")
    s3.ok("export", "life@2", out)
    assert tree_hashes(out) == want2
    v = s3.json("verify", "life")
    assert v["objects"] and all(o["ok"] for o in v["objects"]), v

    # restore gen 2 as gen 5 (4 is none: checkpoints do not bump the generation)
    r = s3.json("restore", "life@2", "-m", "back")
    out = str(tmp_path / "restored")
    s3.ok("export", "life", out)
    assert tree_hashes(out) == want2
    st = s3.json("status", "life")
    assert st["generation"] == r["generation"] and st["lock"] is None

    # gc keeps the last generation's data only; the others are gone from the bucket
    before = s3.keys("contexts/life/tree/")
    g = s3.json("gc", "life", "--keep", "1")
    after = s3.keys("contexts/life/tree/")
    assert len(after) == 1 and len(before) > 1, (before, after)
    assert g["ok"]
    p = s3.run("export", "life@3", str(tmp_path / "gone"))
    assert p.returncode == 3, p.stderr
    s3.ok("export", "life", str(tmp_path / "still"))
    assert tree_hashes(str(tmp_path / "still")) == want2
    assert s3.json("verify", "life")["ok"]
    lst = s3.json("list")
    assert [c["id"] for c in lst["contexts"]] == ["life"], lst
    print("lifecycle on S3: %.1fs" % (time.monotonic() - t0))


def test_key_layout_and_reference_reader(s3, tmp_path):
    s3.ok("init", "lay")
    work = str(tmp_path / "w")
    s3.ok("export", "lay", work)
    fill(work)
    s3.ok("commit", "lay", "--from", work, "-m", "m")
    keys = s3.keys()
    # exactly the reference's layout under the prefix; no probe or lock left over
    assert "contexts/lay/manifest.json" in keys
    trees = [k for k in keys if k.startswith("contexts/lay/tree/")]
    assert len(trees) == 2, keys
    for k in trees:
        assert re.fullmatch(r"contexts/lay/tree/0000000[12]-[0-9a-f]{8}\.tree\.tar\.zst\.enc", k), k
    assert set(keys) == {"contexts/lay/manifest.json"} | set(trees), keys
    # a raw download of the objects is a store the independent reader decrypts
    local = str(tmp_path / "local")
    assert s3.srv.download(s3.prefix, local) == len(keys)
    m = refreader.load_manifest(local, "lay")
    assert m["generation"] == 2 and m["treeKey"] in trees
    entries = refreader.read_tree(local, "lay", passphrase=PASS)
    got = {e["path"]: e["sha256"] for e in entries if e["type"] == "file"
           and not e["path"].startswith(".contextsdk/")}
    assert got == tree_hashes(work), "reader and exported tree differ"


# ---- mounts -------------------------------------------------------------------------


def git(repo, *args, env=None):
    ge = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@e", GIT_COMMITTER_NAME="t",
              GIT_COMMITTER_EMAIL="t@e", HOME="/nonexistent")
    p = subprocess.run(["git", "-C", repo, *args], env=ge, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, "git %s -> %d\n%s\n%s" % (args, p.returncode, p.stdout, p.stderr)
    return p.stdout


@pytest.mark.skipif(not HAVE_FUSE or shutil.which("git") is None, reason="needs FUSE and git")
def test_mount_git_sqlite_second_machine(s3, tmp_path):
    t0 = time.monotonic()
    s3.ok("init", "mnt")
    # a small origin repository to clone
    src = str(tmp_path / "src")
    os.makedirs(src)
    git(src, "init", "-q")
    for i in range(30):
        os.makedirs(os.path.join(src, "pkg%d" % (i % 4)), exist_ok=True)
        with open(os.path.join(src, "pkg%d" % (i % 4), "m%d.py" % i), "w") as f:
            f.write("x = %d\n" % i * 40)
    git(src, "add", "-A")
    git(src, "commit", "-qm", "origin")

    # machine A: git clone + commits, then a few hundred sqlite transactions
    # (fsync=local: durable in the staging area, committed at unmount)
    cache_a = str(tmp_path / "cache-a")
    mp = s3.mount("mnt", "mp-a", cache_a, opts="fsync=local")
    repo = os.path.join(mp, "workspace", "repo")
    git(os.path.join(mp, "workspace"), "clone", "-q", "file://" + src, "repo")
    for c in range(3):
        with open(os.path.join(repo, "pkg0", "c%d.txt" % c), "w") as f:
            f.write("commit %d\n" % c)
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "in mount %d" % c)
    head = git(repo, "rev-parse", "HEAD").strip()
    t_git = time.monotonic() - t0
    con = sqlite3.connect(os.path.join(mp, "workspace", "t.db"))
    con.execute("pragma journal_mode=wal")
    con.execute("create table t(i integer primary key, v text)")
    con.commit()
    for i in range(300):
        con.execute("insert into t(v) values (?)", ("row %d" % i,))
        con.commit()
    con.execute("pragma wal_checkpoint(truncate)")
    con.close()
    want = tree_hashes(mp)
    t_a = time.monotonic() - t0
    s3.umount(mp)
    assert s3.json("status", "mnt")["lock"] is None

    # machine B: another cache directory, nothing local in common
    mp2 = s3.mount("mnt", "mp-b", str(tmp_path / "cache-b"))
    repo2 = os.path.join(mp2, "workspace", "repo")
    assert tree_hashes(mp2) == want  # before git refreshes its index
    assert git(repo2, "rev-parse", "HEAD").strip() == head
    git(repo2, "fsck", "--full", "--strict")
    assert git(repo2, "status", "--porcelain") == ""
    db2 = os.path.join(mp2, "workspace", "t.db")
    con = sqlite3.connect(db2)
    assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
    assert con.execute("select count(*) from t").fetchone()[0] == 300
    # default fsync=commit: every transaction's fsync is a commit to S3
    gen0 = s3.json("status", "mnt")["generation"]
    t1 = time.monotonic()
    for i in range(60):
        con.execute("insert into t(v) values (?)", ("b %d" % i,))
        con.commit()
    t_commits = time.monotonic() - t1
    con.close()
    assert s3.json("status", "mnt")["generation"] > gen0
    git(repo2, "commit", "--allow-empty", "-qm", "on B")
    head2 = git(repo2, "rev-parse", "HEAD").strip()
    s3.umount(mp2)

    # machine A again, its cache now stale: it must see B's state
    mp3 = s3.mount("mnt", "mp-a", cache_a)
    repo3 = os.path.join(mp3, "workspace", "repo")
    assert git(repo3, "rev-parse", "HEAD").strip() == head2
    git(repo3, "fsck", "--full", "--strict")
    con = sqlite3.connect(os.path.join(mp3, "workspace", "t.db"))
    assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
    assert con.execute("select count(*) from t").fetchone()[0] == 360
    con.close()
    s3.umount(mp3)
    print("mount on S3: git %.1fs, +300 sqlite txns %.1fs, 60 fsync=commit txns %.1fs, total %.1fs"
          % (t_git, t_a - t_git, t_commits, time.monotonic() - t0))


@pytest.mark.skipif(not HAVE_FUSE, reason="needs FUSE")
def test_two_machines_take_turns(s3, tmp_path):
    s3.ok("init", "turns")
    cache_a, cache_b = str(tmp_path / "ca"), str(tmp_path / "cb")
    mp_a = s3.mount("turns", "a", cache_a)
    with open(os.path.join(mp_a, "workspace", "from-a.txt"), "w") as f:
        f.write("written on A\n")
    s3.ok("commit", mp_a, store=False)
    owner = s3.json("status", "turns")["lock"]["owner"]
    assert owner

    # B is refused while A holds the lock, and is told who holds it
    p = s3.mount("turns", "b", cache_b, expect=4)
    assert "locked by" in p.stderr and owner in p.stderr, p.stderr
    assert not is_mounted(os.path.join(s3.tmp, "b"))
    # so is a plain CLI commit from B
    d = str(tmp_path / "bdir")
    s3.ok("export", "turns", d)
    assert s3.run("commit", "turns", "--from", d).returncode == 4

    with open(os.path.join(mp_a, "workspace", "from-a.txt"), "a") as f:
        f.write("last words of A\n")
    s3.umount(mp_a)
    gen_a = s3.json("status", "turns")["generation"]

    mp_b = s3.mount("turns", "b", cache_b)
    with open(os.path.join(mp_b, "workspace", "from-a.txt")) as f:
        assert f.read() == "written on A\nlast words of A\n"
    with open(os.path.join(mp_b, "workspace", "from-b.txt"), "w") as f:
        f.write("written on B\n")
    # the daemon holds the S3 secret in memory only, not in its environment
    st = s3.json("mount-status", mp_b, store=False)
    pid = st.get("pid")
    if pid:
        with open("/proc/%d/environ" % pid, "rb") as f:
            environ = f.read()
        assert s3.srv.secret.encode() not in environ and PASS.encode() not in environ
    s3.umount(mp_b)
    assert s3.json("status", "turns")["generation"] > gen_a

    # A again, with its old cache: it sees B's work
    mp_a = s3.mount("turns", "a", cache_a)
    with open(os.path.join(mp_a, "workspace", "from-b.txt")) as f:
        assert f.read() == "written on B\n"
    s3.umount(mp_a)


# ---- errors and doctor ----------------------------------------------------------


def test_wrong_secret_and_missing_bucket(s3):
    s3.ok("init", "sec")
    bad = {"AWS_SECRET_ACCESS_KEY": "not-the-secret-0000000000000000000000000"}
    for args in (("status", "sec"), ("init", "other"), ("list",)):
        p = s3.run(*args, env=bad)
        assert p.returncode == 7, (args, p.returncode, p.stderr)
        assert "SECRET_ACCESS_KEY" in p.stderr and "denied" in p.stderr, p.stderr
        assert bad["AWS_SECRET_ACCESS_KEY"] not in p.stderr + p.stdout
    doc = s3.json("doctor", env=bad, expect=7)
    access = [c for c in doc["checks"] if c["name"] == "s3-access"][0]
    assert not access["ok"] and "SECRET_ACCESS_KEY" in access["hint"], access
    assert doc["storage"]["reachable"] is False
    p = s3.run("--store", "s3://no-such-bucket-%s" % secrets.token_hex(3), "status", "sec", store=False)
    assert p.returncode == 7 and "does not exist" in p.stderr, p.stderr


def test_doctor_json(s3):
    s3.ok("init", "doc1")
    s3.ok("init", "doc2")
    doc = s3.json("doctor")
    st = doc["storage"]
    assert st["mode"] == "s3" and st["bucket"] == s3.srv.bucket and st["prefix"] == s3.prefix, st
    assert st["endpoint"] == s3.srv.endpoint and st["source"] == "--store"
    assert st["reachable"] is True and st["conditionalWrites"] is True and st["contexts"] == 2, st
    assert st["credentials"] == "AWS_ACCESS_KEY_ID" and st["pathStyle"] is True
    names = {c["name"]: c["ok"] for c in doc["checks"]}
    assert names["storage"] and names["s3-access"] and names["s3-writes"], names
    # booleans only: no secret anywhere in the document
    assert s3.srv.secret not in json.dumps(doc) and PASS not in json.dumps(doc)
    assert doc["env"]["awsSecretKey"] is True and doc["env"]["s3SecretKey"] is False
    # the probe left nothing behind
    assert not [k for k in s3.keys() if "probe" in k]


# ---- a server that ignores conditional writes ---------------------------------


class FakeS3(http.server.BaseHTTPRequestHandler):
    """s3rver-like: stores objects, accepts any signature, and ignores
    If-None-Match / If-Match (the behaviour contextfs must refuse)."""
    objects = {}
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _send(self, code, body=b"", headers=()):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _key(self):
        path = urllib.parse.urlsplit(self.path).path.lstrip("/")
        return urllib.parse.unquote(path.split("/", 1)[1]) if "/" in path else ""

    def do_PUT(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        self.objects[self._key()] = body
        self._send(200, headers=[("ETag", '"%s"' % hashlib.md5(body).hexdigest())])

    def do_GET(self):
        key = self._key()
        if not key:
            q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            pfx = q.get("prefix", [""])[0]
            items = "".join("<Contents><Key>%s</Key><Size>%d</Size></Contents>" % (k, len(v))
                            for k, v in sorted(self.objects.items()) if k.startswith(pfx))
            xml = ('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult>'
                   "<IsTruncated>false</IsTruncated>%s</ListBucketResult>" % items)
            return self._send(200, xml.encode(), [("Content-Type", "application/xml")])
        if key not in self.objects:
            return self._send(404, b"<Error><Code>NoSuchKey</Code></Error>")
        body = self.objects[key]
        self._send(200, body, [("ETag", '"%s"' % hashlib.md5(body).hexdigest())])

    def do_HEAD(self):
        self.do_GET()

    def do_DELETE(self):
        self.objects.pop(self._key(), None)
        self._send(204)


def test_server_ignoring_conditions_is_refused_for_writes(s3):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeS3)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        env = {"CONTEXTSDK_S3_ENDPOINT": "http://127.0.0.1:%d" % srv.server_address[1],
               "CONTEXTFS_S3_RETRIES": "1"}
        p = s3.run("init", "fake", env=env)
        assert p.returncode == 7, (p.returncode, p.stderr)
        assert "ignores If-None-Match" in p.stderr, p.stderr
        assert not [k for k in FakeS3.objects if "contexts/" in k], FakeS3.objects.keys()
        doc = s3.json("doctor", env=env, expect=7)
        checks = {c["name"]: c for c in doc["checks"]}
        assert checks["s3-access"]["ok"] is True
        w = checks["s3-writes"]
        assert w["ok"] is False and "NOT usable for writes" in w["message"], w
        assert doc["storage"]["conditionalWrites"] is False
        # reads still work there (nothing to read: not found, exit 3)
        assert s3.run("status", "fake", env=env).returncode == 3
    finally:
        srv.shutdown()
        srv.server_close()
