"""Shared fixtures for the contextfs integration tests.

The binary under test is $CONTEXTFS_BIN (default <repo>/build/tools/contextfs).
Fixtures written by the reference live in $CONTEXTFS_FIXTURES (default
<repo>/../shared/fixtures/contextsdk-0.4, i.e. /work/shared/... here). Nothing is
skipped silently: a missing binary or fixture directory fails the test with a
message saying what to build or set.

Run:  /usr/bin/python3 -m pytest tests/integration   (Debian python3-pytest,
python3-cryptography and the zstd CLI are required).
"""

import collections
import hashlib
import json
import os
import secrets
import shutil
import stat
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import refreader  # noqa: E402

CONTEXTFS_BIN = os.environ.get("CONTEXTFS_BIN") or os.path.join(REPO, "build", "tools", "contextfs")
FIXTURES = os.environ.get("CONTEXTFS_FIXTURES") or os.path.normpath(
    os.path.join(REPO, "..", "shared", "fixtures", "contextsdk-0.4"))
if not os.path.isdir(FIXTURES) and os.path.isdir("/work/shared/fixtures/contextsdk-0.4"):
    FIXTURES = "/work/shared/fixtures/contextsdk-0.4"

# A contextfs a test starts without a cache directory of its own (commit
# caches, default mount staging) caches in this session's private
# directory, not in the running user's ~/.cache. Tests that need a
# particular one set XDG_CACHE_HOME or HOME themselves.
_SESSION_CACHE = None


def pytest_configure(config):
    global _SESSION_CACHE
    import tempfile
    _SESSION_CACHE = tempfile.mkdtemp(prefix="contextfs-test-cache-")
    os.environ["XDG_CACHE_HOME"] = _SESSION_CACHE


def pytest_unconfigure(config):
    if not _SESSION_CACHE:
        return
    with open("/proc/self/mountinfo") as f:  # never descend into a mount left behind
        if any(ln.split()[4].startswith(_SESSION_CACHE + "/") for ln in f):
            return
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


PASSPHRASE = "integration-pass-Ω-1"
FIXTURE_PASSPHRASE = "interop-passphrase-1"
TEST_SCRYPT_COST = "1024"

# exit codes documented by the CLI (brief: common.md)
EXIT_OK, EXIT_ERR, EXIT_USAGE, EXIT_NOTFOUND, EXIT_LOCKED, EXIT_AUTH, EXIT_UNSAFE, EXIT_IO = range(8)

DEFAULT_ROOTS = ["workspace", "memory", "artifacts", "logs", "config"]


def require_binary():
    if not (os.path.isfile(CONTEXTFS_BIN) and os.access(CONTEXTFS_BIN, os.X_OK)):
        pytest.fail("contextfs binary not found at %s: build it (meson setup build && ninja -C build) "
                    "or set CONTEXTFS_BIN" % CONTEXTFS_BIN, pytrace=False)
    return CONTEXTFS_BIN


def require_fixtures():
    if not os.path.isdir(FIXTURES):
        pytest.fail("reference fixtures not found at %s: set CONTEXTFS_FIXTURES" % FIXTURES, pytrace=False)
    return FIXTURES


Result = collections.namedtuple("Result", "rc out err json")


class Cli:
    """Runs contextfs with a private environment (HOME, store, key material)."""

    def __init__(self, binary, store, workdir, passphrase=None, raw_key_hex=None):
        self.binary = binary
        self.store = store
        self.workdir = workdir
        self.passphrase = passphrase
        self.raw_key_hex = raw_key_hex
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTEXTSDK_")}
        env.pop("CONTEXTFS_SCRYPT_COST", None)
        env.pop("XDG_CACHE_HOME", None)  # caches under the private HOME
        env["HOME"] = os.path.join(workdir, "home")
        os.makedirs(env["HOME"], exist_ok=True)
        env["CONTEXTSDK_STORAGE_DIR"] = store
        env["LC_ALL"] = "C.UTF-8"
        if passphrase is not None:
            env["CONTEXTSDK_PASSPHRASE"] = passphrase
        if raw_key_hex is not None:
            env["CONTEXTSDK_KEY_HEX"] = raw_key_hex
        self.env = env

    def run(self, *args, env=None, unset=(), stdin=subprocess.DEVNULL, input=None, timeout=300, cwd=None):
        e = dict(self.env)
        if env:
            e.update(env)
        for k in unset:
            e.pop(k, None)
        p = subprocess.run([self.binary] + [str(a) for a in args], env=e, cwd=cwd or self.workdir,
                           stdin=None if input is not None else stdin, input=input,
                           capture_output=True, timeout=timeout)
        out = p.stdout.decode("utf-8", errors="replace")
        err = p.stderr.decode("utf-8", errors="replace")
        doc = None
        if "--json" in args:
            try:
                doc = json.loads(out)
            except ValueError:
                doc = None
        return Result(p.returncode, out, err, doc)

    def json(self, *args, expect=0, **kw):
        """Runs with --json; asserts the exit code and the ok/error JSON shape."""
        r = self.run(*args, "--json", **kw)
        assert r.json is not None, "stdout of %s --json is not one JSON document: %r (stderr %r)" % (
            args, r.out[:500], r.err[:500])
        assert isinstance(r.json, dict) and isinstance(r.json.get("ok"), bool), r.json
        if expect is not None:
            assert r.rc == expect, "contextfs %s: exit %d, expected %d; stderr: %s; json %s" % (
                " ".join(map(str, args)), r.rc, expect, r.err.strip(), json.dumps(r.json)[:800])
        if r.rc == 0:
            assert r.json["ok"] is True, r.json
        else:
            assert r.json["ok"] is False, r.json
            err = r.json.get("error")
            assert isinstance(err, dict) and isinstance(err.get("code"), str) and isinstance(
                err.get("message"), str) and err["message"], r.json
        return r

    def ok(self, *args, **kw):
        r = self.run(*args, **kw)
        assert r.rc == 0, "contextfs %s: exit %d; stderr: %s" % (" ".join(map(str, args)), r.rc, r.err.strip())
        return r

    def fails(self, expect_rc, *args, **kw):
        r = self.run(*args, **kw)
        assert r.rc == expect_rc, "contextfs %s: exit %d, expected %d; stderr: %s; stdout: %s" % (
            " ".join(map(str, args)), r.rc, expect_rc, r.err.strip(), r.out.strip()[:500])
        assert_one_error_line(r)
        return r

    def read_tree(self, ctx_id, manifest=None):
        return refreader.read_tree(self.store, ctx_id, passphrase=self.passphrase,
                                   raw_key_hex=self.raw_key_hex, manifest=manifest)

    def manifest(self, ctx_id):
        return refreader.load_manifest(self.store, ctx_id)


def assert_one_error_line(r):
    """A failing command explains itself in exactly one non-empty stderr line
    (a usage error may add its `usage: contextfs CMD ...` hint)."""
    lines = [ln for ln in r.err.splitlines() if ln.strip() and not ln.startswith("usage: contextfs ")]
    assert len(lines) == 1, "expected one error line on stderr, got %d: %r" % (len(lines), r.err)
    return lines[0]


# --------------------------------------------------------------------------
# filesystem helpers


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def snapshot_dir(root, include_root=False):
    """{relpath: (type, mode, size, sha256-or-linktarget)} of everything under root;
    lstat-based, never follows symlinks."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                snap[rel] = ("symlink", None, 0, os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                snap[rel] = ("dir", mode, 0, None)
            elif stat.S_ISREG(st.st_mode):
                snap[rel] = ("file", mode, st.st_size, sha256_file(p))
            else:
                snap[rel] = ("other", mode, 0, None)
    if include_root:
        snap["."] = ("dir", stat.S_IMODE(os.lstat(root).st_mode), 0, None)
    return snap


def store_state(store):
    """Every file of a store with its content hash (sidecars included): used to
    assert that a failing command left the store byte-for-byte unchanged."""
    return snapshot_dir(store)


def entries_by_path(entries):
    return {e["path"]: e for e in entries}


def write_file(root, rel, data, mode=0o644):
    p = os.path.join(root, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode("utf-8"))
    os.chmod(p, mode)
    return p


def copy_fixture_store(name, dest):
    src = os.path.join(require_fixtures(), name, "store")
    shutil.copytree(src, dest, symlinks=True)
    # the shared copy may be read-only (CI): make our copy writable
    for dirpath, dirnames, filenames in os.walk(dest):
        os.chmod(dirpath, 0o700)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o600)
    return dest


def load_expected(name):
    with open(os.path.join(require_fixtures(), name, "expected.json"), encoding="utf-8") as f:
        return json.load(f)


def new_raw_key():
    return secrets.token_hex(32)


# --------------------------------------------------------------------------
# pytest fixtures


@pytest.fixture(scope="session")
def contextfs_bin():
    return require_binary()


@pytest.fixture
def workdir(tmp_path):
    d = tmp_path / "work"
    d.mkdir()
    return str(d)


@pytest.fixture
def store(tmp_path):
    d = tmp_path / "store"
    d.mkdir()
    return str(d)


@pytest.fixture
def cli(contextfs_bin, store, workdir):
    """contextfs with a passphrase (scrypt cost for new contexts set per init)."""
    return Cli(contextfs_bin, store, workdir, passphrase=PASSPHRASE)


@pytest.fixture
def cli_raw(contextfs_bin, store, workdir):
    """contextfs with a raw 32-byte key (CONTEXTSDK_KEY_HEX)."""
    return Cli(contextfs_bin, store, workdir, raw_key_hex=new_raw_key())


@pytest.fixture
def make_cli(contextfs_bin, workdir):
    def _make(store, passphrase=None, raw_key_hex=None):
        return Cli(contextfs_bin, store, workdir, passphrase=passphrase, raw_key_hex=raw_key_hex)
    return _make


# --------------------------------------------------------------------------
# the reference's policy and manifest shape

DEFAULT_EXCLUDE = ["**/node_modules/**", "**/.pnpm-store/**", "**/.npm/**", "**/.yarn/cache/**",
                   "**/.next/**", "**/dist/**", "**/build/**", "**/.venv/**", "**/__pycache__/**"]
LAYOUT = ["workspace", "memory", "artifacts", "logs", "cache", "config"]


def excluded(rel, patterns=DEFAULT_EXCLUDE):
    """REFERENCE.md §5.3 (runtime packer): fnmatch on the pattern or on the pattern
    without a trailing /**, or a prefix match on that trimmed pattern."""
    import fnmatch
    rel = rel.replace("\\", "/")
    for pat in patterns:
        trimmed = pat[:-3] if pat.endswith("/**") else pat
        if fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(rel, trimmed):
            return True
        t = trimmed.rstrip("/")
        if t and rel.startswith(t + "/"):
            return True
    return False


def packed_view(root, roots=DEFAULT_ROOTS, patterns=DEFAULT_EXCLUDE):
    """What a commit of `root` must store: snapshot_dir entries under contextsdk.json
    and the policy roots, minus excluded subtrees (and unsafe links, dropped by the
    packer). .contextsdk/ is written by the commit itself and is not compared."""
    snap = snapshot_dir(root)
    out = {}
    for rel, v in snap.items():
        top = rel.split("/")[0]
        if rel != "contextsdk.json" and top not in roots:
            continue
        if excluded(rel, patterns) or any(excluded(a, patterns) for a in _ancestors(rel)):
            continue
        if v[0] == "symlink" and refreader.unsafe(v[3]):
            continue
        out[rel] = v
    return out


def _ancestors(rel):
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def assert_tree_equals_view(entries, view):
    """refreader entries (tar) vs packed_view (filesystem). Hard links: the second
    path of an inode is a `hardlink` entry naming the first one."""
    got = {e["path"]: e for e in entries if not (e["path"] == ".contextsdk" or e["path"].startswith(".contextsdk/"))}
    assert set(got) == set(view), "only in bundle: %s; only in tree: %s" % (
        sorted(set(got) - set(view)), sorted(set(view) - set(got)))
    for rel, (kind, mode, size, extra) in view.items():
        e = got[rel]
        if e["type"] == "hardlink":
            assert kind == "file", rel
            first = view[e["linkname"]]
            assert first[0] == "file" and first[3] == extra, "%s hard link to %s: different content" % (
                rel, e["linkname"])
            continue
        assert e["type"] == kind, (rel, e["type"], kind)
        if kind == "symlink":
            assert e["linkname"] == extra, rel
            continue
        assert e["mode"] == oct(mode), "%s: bundle mode %s, tree mode %s" % (rel, e["mode"], oct(mode))
        if kind == "file":
            assert e["size"] == size and e["sha256"] == extra, rel


ISO_MS = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"


def assert_encryption_metadata(meta, kdf, cost=None):
    import base64
    assert meta["version"] == 1 and meta["algorithm"] == "aes-256-gcm", meta
    assert meta["keyDerivation"] == kdf, meta
    assert len(base64.b64decode(meta["nonce"], validate=True)) == 12
    assert len(base64.b64decode(meta["authTag"], validate=True)) == 16
    if kdf == "raw":
        assert "salt" not in meta and "scrypt" not in meta, meta
    else:
        assert len(base64.b64decode(meta["salt"], validate=True)) == 16
        assert meta["scrypt"] == {"cost": cost, "blockSize": 8, "parallelization": 1}, meta["scrypt"]


def assert_manifest_shape(store, ctx_id, kdf, cost=None):
    """REFERENCE.md §6 field names, types and layout of a manifest contextfs wrote."""
    import re
    path = os.path.join(store, "contexts", ctx_id, "manifest.json")
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    m = json.loads(raw)
    assert raw == json.dumps(m, indent=2, ensure_ascii=False), \
        "manifest is not JSON.stringify(manifest, null, 2) layout (2-space, no trailing newline)"
    ints = ("version", "sizeBytes", "generation", "checkpointGeneration")
    for k in ints:
        assert isinstance(m[k], int) and not isinstance(m[k], bool), k
    assert m["version"] == 1 and m["id"] == ctx_id
    assert m["format"] == "tree" and m["filesystem"] == "tree"
    assert m["layout"] == LAYOUT
    assert isinstance(m["imageKey"], str) and m["imageKey"].startswith("contexts/%s/image/" % ctx_id)
    assert re.match(r"^contexts/%s/(tree/\d{8,}-[0-9a-f]{8}\.tree|checkpoints/\d{8,}\.tree)\.tar\.zst\.enc$"
                    % re.escape(ctx_id), m["treeKey"]), m["treeKey"]
    obj = os.path.join(store, m["treeKey"])
    assert os.path.getsize(obj) == m["sizeBytes"], "sizeBytes must be the bundle size (= ciphertext size)"
    assert m["treeEncryption"] == m["encryption"]
    assert_encryption_metadata(m["treeEncryption"], kdf, cost)
    pol = m["persistencePolicy"]
    assert pol["roots"] == DEFAULT_ROOTS and pol["exclude"] == DEFAULT_EXCLUDE, pol
    assert re.match(ISO_MS, m["createdAt"]) and re.match(ISO_MS, m["updatedAt"]), (m["createdAt"], m["updatedAt"])
    assert isinstance(m["versions"], list) and len(m["versions"]) <= 50
    for v in m["versions"]:
        for k, t in (("version", int), ("generation", int), ("timestamp", str), ("author", str),
                     ("message", str), ("changedPaths", list), ("files", list)):
            assert isinstance(v[k], t), (k, v)
        assert v["parentGeneration"] is None or isinstance(v["parentGeneration"], int)
        assert v["files"] == []
        for c in v["changedPaths"]:
            assert set(c) == {"path", "type"} and c["type"] in ("added", "modified", "removed"), c
    if m["versions"]:
        lv = dict(m["latestVersion"])
        assert lv["generation"] == m["versions"][-1]["generation"]
    if m["checkpointGeneration"]:
        lc = m["latestCheckpoint"]
        assert lc["version"] == 1 and lc["generation"] == m["checkpointGeneration"]
        assert isinstance(lc["reason"], str) and isinstance(lc["timestamp"], str)
        assert lc["treeKey"] == "contexts/%s/checkpoints/%08d.tree.tar.zst.enc" % (ctx_id, lc["generation"])
        assert isinstance(lc["sizeBytes"], int)
    return m
