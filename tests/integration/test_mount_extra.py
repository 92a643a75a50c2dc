"""More integration tests of `contextfs mount` (real FUSE mounts): commit and
status on a mountpoint, periodic commits and checkpoints, dead (stale) mounts,
kill -9 and `contextfs recover`, doctor's inventory, the mount(8) helper and
every reference fixture mounted read-only and read-write.

Uses the Env helper and `env` fixture of test_mount.py (same teardown: every
mount is unmounted, daemon logs are checked for unexpected errors).
"""
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

import refreader
from conftest import FIXTURE_PASSPHRASE, copy_fixture_store, load_expected, require_fixtures, snapshot_dir
from test_mount import BIN, Env, env, expect_errno, is_mounted, tree_hashes  # noqa: F401 (env is a fixture)

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
    reason="needs /dev/fuse and fusermount3",
)


def wait_for(pred, timeout=10.0, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


def kill9(env, mp):
    """Kills the daemon of mp with SIGKILL and waits until it is gone; the
    mountpoint is left dead (ENOTCONN)."""
    pid = env.status(mp)["pid"]
    os.kill(pid, signal.SIGKILL)

    def dead():
        try:
            os.stat(mp)
        except OSError as e:
            return e.errno == errno.ENOTCONN
        return False

    assert wait_for(dead), "the mount of a SIGKILLed daemon should fail with ENOTCONN"
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"))
    return pid


def ref_files(env):
    """{path: entry} of the current tree, read by the independent reader."""
    return refreader.read_tree_files(env.store, "ctx", passphrase=env.env["CONTEXTSDK_PASSPHRASE"])


def sha(b):
    return hashlib.sha256(b).hexdigest()


def cache_env(env):
    """Makes the default cache (XDG_CACHE_HOME) the one the mounts use, so
    that recover and doctor find it without options."""
    env.env["XDG_CACHE_HOME"] = env.cache
    return env


# ---- commit / status on a mountpoint ------------------------------------------


def test_commit_and_status_on_mountpoint(env):
    mp = env.mount("ctx")
    with open(os.path.join(mp, "workspace/c.txt"), "w") as fh:
        fh.write("commit me")
    rc, st = env.json("status", mp)
    assert rc == 0 and st["state"] == "dirty" and st["dirty"] is True
    # write-through by default; killpriv v2 negotiated through the INIT shim
    assert st["writebackCache"] is False and st["handleKillprivV2"] is True, st
    assert st["generation"] == 1 and st["checkpointGeneration"] == 0
    assert st["pendingError"] is None and st["mountpoint"] == os.path.realpath(mp)
    rc, doc = env.json("commit", mp, "-m", "via commit MOUNTPOINT")
    assert rc == 0 and doc["generation"] == 2 and doc["state"] == "clean"
    _, log = env.json("log", "ctx")
    assert any(v.get("message") == "via commit MOUNTPOINT" for v in log["versions"])
    p = env.run("status", mp)
    assert "clean, generation 2 of ctx" in p.stdout
    # `status ID` is still the context's status
    _, s = env.json("status", "ctx")
    assert s["generation"] == 2 and s["lock"]["runtimeId"].startswith("fuse:")
    # store-commit options make no sense for a mount
    p = env.run("commit", mp, "--from", env.tmp, check=False)
    assert p.returncode == 2 and "takes only -m" in p.stderr
    # a relative mountpoint works too, and the old `sync` alias stays
    with open(os.path.join(mp, "memory/m.md"), "w") as fh:
        fh.write("m")
    p = subprocess.run([BIN, "--store", env.store, "commit", "mnt"], cwd=env.tmp, env=env.env,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "generation 3 of ctx landed" in p.stdout
    rc, doc = env.json("sync", mp)
    assert doc["generation"] == 3  # nothing changed: no new generation
    env.umount(mp)
    assert env.json("status", "ctx")[1]["generation"] == 3


# Holds a file open and writes each line it reads from stdin into it (no
# fsync, no close): the pages stay in the kernel under -o writeback_cache.
# A separate process, because a file the test itself holds open would be
# flushed by every fork+exec of the CLI (the child's copy closes at exec).
WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
for line in sys.stdin:
    os.write(fd, line.encode())
    print("ok", flush=True)
"""


def test_writeback_cache_commit_and_sigterm_keep_unflushed_writes(env):
    """-o writeback_cache: the kernel holds written pages; `contextfs commit`
    and SIGTERM must still land what write(2) accepted on a file that stays
    open (never fsynced, never closed)."""
    mp = env.mount("ctx", opts="writeback_cache")
    st = env.status(mp)
    assert st["writebackCache"] is True and st["handleKillprivV2"] is True, st
    w = subprocess.Popen(["/usr/bin/python3", "-c", WRITER, os.path.join(mp, "workspace/open.log")],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        w.stdin.write("first line, still open\n")
        w.stdin.flush()
        assert w.stdout.readline() == "ok\n"
        rc, doc = env.json("commit", mp, "-m", "while open")
        assert rc == 0 and doc["generation"] == 2
        assert ref_files(env)["workspace/open.log"]["sha256"] == sha(b"first line, still open\n")
        w.stdin.write("second line, then SIGTERM\n")
        w.stdin.flush()
        assert w.stdout.readline() == "ok\n"
        pid = env.status(mp)["pid"]
        os.kill(pid, signal.SIGTERM)
        assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=30)
    finally:
        w.kill()
        w.wait()
    assert not is_mounted(mp)
    assert ref_files(env)["workspace/open.log"]["sha256"] == sha(
        b"first line, still open\nsecond line, then SIGTERM\n")
    assert env.json("status", "ctx")[1]["generation"] == 3


def test_status_of_read_only_mount_and_commit_refused(env):
    ro = env.mount("ctx", name="ro", opts="ro")
    rc, st = env.json("status", ro)
    assert st["readOnly"] is True and st["state"] == "clean"
    p = env.run("commit", ro, check=False)
    assert p.returncode == 2 and "read-only" in p.stderr
    env.umount(ro)


# ---- periodic commits and checkpoints ------------------------------------------


def test_checkpoint_interval(env):
    mp = env.mount("ctx", opts="checkpoint_interval=1")
    st = env.status(mp)
    assert st["checkpointInterval"] == 1 and st["checkpointGeneration"] == 0
    with open(os.path.join(mp, "workspace/ck.txt"), "w") as fh:
        fh.write("checkpointed")
    st = wait_for(lambda: (lambda s: s if s["checkpointGeneration"] >= 1 else None)(env.status(mp)))
    assert st, env.status(mp)
    assert st["checkpoints"] >= 1 and st["lastCheckpointAt"] and st["checkpointError"] is None
    # a checkpoint is not a generation: the change is still to be committed
    assert st["dirty"] is True and st["generation"] == 1
    _, s = env.json("status", "ctx")
    assert s["generation"] == 1 and s["checkpointGeneration"] >= 1
    assert s["treeKey"].startswith("contexts/ctx/checkpoints/")
    # the independent reader decrypts the checkpoint the manifest points to
    assert ref_files(env)["workspace/ck.txt"]["sha256"] == sha(b"checkpointed")
    # no change since: no further checkpoints
    n = env.status(mp)["checkpointGeneration"]
    time.sleep(2.5)
    assert env.status(mp)["checkpointGeneration"] == n
    env.umount(mp)
    _, s = env.json("status", "ctx")
    assert s["generation"] == 2 and s["checkpointGeneration"] == n
    assert ref_files(env)["workspace/ck.txt"]["sha256"] == sha(b"checkpointed")


def test_commit_interval(env):
    mp = env.mount("ctx", opts="commit_interval=1")
    with open(os.path.join(mp, "logs/p.log"), "w") as fh:
        fh.write("periodic")
    assert wait_for(lambda: env.json("status", "ctx")[1]["generation"] == 2)
    assert wait_for(lambda: env.status(mp)["state"] == "clean")
    _, log = env.json("log", "ctx")
    assert log["versions"][-1]["message"] == "periodic commit"
    env.umount(mp)


def test_bad_interval_option(env):
    p = env.mount("ctx", opts="checkpoint_interval=soon", check=False)
    assert p.returncode == 2 and "checkpoint_interval" in p.stderr


# ---- dead mounts ---------------------------------------------------------------


def test_mount_over_dead_mount_cleans_up_and_recovers(env):
    mp = env.mount("ctx")
    with open(os.path.join(mp, "workspace/unsaved.txt"), "w") as fh:
        fh.write("staged only")
    kill9(env, mp)
    # status and commit say what happened instead of "not a mountpoint"
    p = env.run("status", mp, check=False)
    assert p.returncode == 7 and "daemon is gone" in p.stderr and "contextfs recover ctx" in p.stderr
    p = env.run("commit", mp, check=False)
    assert p.returncode == 7 and "daemon is gone" in p.stderr
    # mounting again on the same directory: the dead mount is cleaned up,
    # the dead daemon's lock (same host, pid gone) is taken over and the
    # leftover staged tree (base = current generation) is served again
    # (env.mount's makedirs would trip over the dead mount: run it directly)
    env.run("mount", "ctx", mp, "-o", f"cache={env.cache},lock_ttl=30", "--log-file", env.logs[0])
    assert is_mounted(mp)
    assert open(os.path.join(mp, "workspace/unsaved.txt")).read() == "staged only"
    assert env.status(mp)["dirty"] is True
    env.umount(mp)
    d = os.path.join(env.tmp, "ex")
    env.run("export", "ctx", d)
    assert open(os.path.join(d, "workspace/unsaved.txt")).read() == "staged only"
    errs = [e for e in env.log_errors() if "took over" not in e]
    assert errs == []


def test_umount_dead_mount(env):
    mp = env.mount("ctx")
    kill9(env, mp)
    p = env.run("umount", mp)
    assert not is_mounted(mp)
    assert "daemon is gone" in p.stderr
    os.listdir(mp)  # a plain directory again
    # a live lock of another, running owner is never taken over
    env.run("unlock", "ctx", "--force")


def test_live_lock_of_other_owner_not_taken_over(env):
    mp = env.mount("ctx")
    p = env.mount("ctx", name="mnt2", cache=os.path.join(env.tmp, "c2"), check=False)
    assert p.returncode == 4 and "locked by" in p.stderr
    env.umount(mp)


# ---- recover ---------------------------------------------------------------


def test_recover_commits_when_base_is_current(env):
    cache_env(env)
    mp = env.mount("ctx")
    owner = env.status(mp)["owner"]
    os.makedirs(os.path.join(mp, "workspace/deep/er"))
    with open(os.path.join(mp, "workspace/deep/er/r.txt"), "w") as fh:
        fh.write("recover me")
    os.unlink(os.path.join(mp, "workspace/README.md"))
    want = tree_hashes(mp)
    kill9(env, mp)
    # doctor lists the dead mount and the leftover staged tree
    rc, doc = env.json("doctor", check=False)
    fz = doc["fuse"]
    dead = [m for m in fz["mounts"] if m["mountpoint"] == os.path.realpath(mp)]
    assert dead and dead[0]["alive"] is False and dead[0]["id"] == "ctx"
    left = [l for l in fz["leftovers"] if l["id"] == "ctx"]
    assert left and left[0]["kind"] == "staged" and left[0]["baseGeneration"] == 1
    p = env.run("doctor", check=False)
    assert "DEAD" in p.stdout and "contextfs recover" in p.stdout
    # recover: base 1 is current -> commit (taking over the dead lock)
    rc, r = env.json("recover", "ctx")
    assert r["action"] == "committed" and r["generation"] == 2 and r["baseGeneration"] == 1
    assert r["tookOverLockOf"] == owner
    assert r["unmounted"] == os.path.realpath(mp) and not is_mounted(mp)
    _, s = env.json("status", "ctx")
    assert s["generation"] == 2 and s["lock"] is None
    # read back by the independent reader
    files = ref_files(env)
    assert files["workspace/deep/er/r.txt"]["sha256"] == sha(b"recover me")
    assert "workspace/README.md" not in files
    d = os.path.join(env.tmp, "ex")
    env.run("export", "ctx", d)
    assert tree_hashes(d) == want
    # nothing left: recover is a no-op, doctor shows no leftover
    rc, r = env.json("recover", "ctx")
    assert r["action"] == "none"
    rc, doc = env.json("doctor", check=False)
    assert not [l for l in doc["fuse"]["leftovers"] if l["id"] == "ctx"]
    env.logs.clear()


def test_recover_moves_aside_when_context_moved_on(env):
    cache_env(env)
    mp = env.mount("ctx")
    with open(os.path.join(mp, "workspace/mine.txt"), "w") as fh:
        fh.write("mine")
    kill9(env, mp)
    env.run("umount", mp)
    # another writer lands generation 2 meanwhile
    env.run("unlock", "ctx", "--force")
    other = os.path.join(env.tmp, "other")
    env.run("export", "ctx", other)
    with open(os.path.join(other, "workspace/theirs.txt"), "w") as fh:
        fh.write("theirs")
    env.run("commit", "ctx", "--from", other)
    into = os.path.join(env.tmp, "saved")
    rc, r = env.json("recover", "ctx", "--into", into)
    assert r["action"] == "moved" and r["path"] == into
    assert r["baseGeneration"] == 1 and r["currentGeneration"] == 2
    assert open(os.path.join(into, "workspace/mine.txt")).read() == "mine"
    _, s = env.json("status", "ctx")
    assert s["generation"] == 2  # nothing committed over the other writer
    # the next mount starts from generation 2, with no leftover
    mp2 = env.mount("ctx", name="mnt2")
    assert os.path.exists(os.path.join(mp2, "workspace/theirs.txt"))
    assert not os.path.exists(os.path.join(mp2, "workspace/mine.txt"))
    env.umount(mp2)


def test_recover_default_aside_dir_and_refusals(env):
    cache_env(env)
    # nothing to recover
    rc, r = env.json("recover", "ctx")
    assert r["action"] == "none"
    # refused while a mount uses the staging area
    mp = env.mount("ctx")
    p = env.run("recover", "ctx", check=False)
    assert p.returncode == 4 and "in use" in p.stderr
    with open(os.path.join(mp, "workspace/x.txt"), "w") as fh:
        fh.write("x")
    kill9(env, mp)
    env.run("umount", mp)
    env.run("unlock", "ctx", "--force")
    env.run("restore", "ctx@1", "-m", "move on")  # generation 2
    # --into a non-empty directory is refused, nothing moves
    busy = os.path.join(env.tmp, "busy")
    os.makedirs(os.path.join(busy, "x"))
    p = env.run("recover", "ctx", "--into", busy, check=False)
    assert p.returncode == 4 and "not empty" in p.stderr
    rc, r = env.json("recover", "ctx")
    assert r["action"] == "moved"
    assert os.path.dirname(r["path"]) == os.path.join(env.cache, "contextfs/mounts/ctx")
    assert os.path.basename(r["path"]).startswith("recovered-")
    assert open(os.path.join(r["path"], "workspace/x.txt")).read() == "x"
    rc, doc = env.json("doctor", check=False)
    aside = [l for l in doc["fuse"]["leftovers"] if l["id"] == "ctx"]
    assert aside and aside[0]["kind"] == "set-aside" and aside[0]["path"] == r["path"]
    assert aside[0]["baseGeneration"] == 1


# ---- mount(8) helper -------------------------------------------------------------

HELPERS = ["/sbin/mount.fuse.contextfs", "/sbin/mount.contextfs"]


@pytest.fixture
def helpers():
    """Temporary /sbin/mount.fuse.contextfs and /sbin/mount.contextfs symlinks to
    the binary under test (removed in teardown; an existing installation is
    never touched)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to install a mount helper in /sbin")
    made = []
    for h in HELPERS:
        if os.path.lexists(h):
            pytest.skip(f"{h} already exists; not replacing it")
    try:
        for h in HELPERS:
            os.symlink(os.path.abspath(BIN), h)
            made.append(h)
        yield made
    finally:
        for h in made:
            os.unlink(h)


def run_mount(args, env_vars, timeout=60):
    return subprocess.run(args, env=env_vars, capture_output=True, text=True, timeout=timeout)


def plain_env(env):
    """The test environment without any key material or store variables."""
    e = {k: v for k, v in env.env.items() if not k.startswith("CONTEXTSDK_")}
    return e


def secret_file(path, text, mode=0o600):
    with open(path, "w") as fh:
        fh.write(text)
    os.chmod(path, mode)
    return path


def wait_unmounted_and_idle(env, mp, pid):
    assert wait_for(lambda: not is_mounted(mp))
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=30)


def test_mount_t_fuse_contextfs(env, helpers):
    mp = os.path.join(env.tmp, "mt")
    os.makedirs(mp)
    pf = secret_file(os.path.join(env.tmp, "pass"), env.env["CONTEXTSDK_PASSPHRASE"] + "\n")
    log = os.path.join(env.tmp, "mt.log")
    env.logs.append(log)
    env.mounts.append(mp)
    opts = (f"store={env.store},passphrase_file={pf},cache={env.cache},lock_ttl=30,"
            f"log_file={log},noatime,nosuid,nodev,x-systemd.automount,_netdev")
    p = run_mount(["mount", "-t", "fuse.contextfs", "ctx", mp, "-o", opts], plain_env(env))
    assert p.returncode == 0, p.stderr
    assert is_mounted(mp)
    st = env.status(mp)
    assert st["id"] == "ctx" and not st["readOnly"]
    # key material never reaches any command line
    with open(f"/proc/{st['pid']}/cmdline", "rb") as fh:
        assert env.env["CONTEXTSDK_PASSPHRASE"].encode() not in fh.read()
    with open(os.path.join(mp, "workspace/via-mount8.txt"), "w") as fh:
        fh.write("mount(8)")
    # plain umount(8) ends the daemon, which commits and releases the lock
    p = run_mount(["umount", mp], plain_env(env))
    assert p.returncode == 0, p.stderr
    wait_unmounted_and_idle(env, mp, st["pid"])
    _, s = env.json("status", "ctx")
    assert s["generation"] == 2 and s["lock"] is None
    assert ref_files(env)["workspace/via-mount8.txt"]["sha256"] == sha(b"mount(8)")
    # -t contextfs goes through /sbin/mount.contextfs; read-only this time
    p = run_mount(["mount", "-t", "contextfs", "ctx", mp, "-o",
                   f"ro,store={env.store},passphrase_file={pf},cache={env.cache},log_file={log}"],
                  plain_env(env))
    assert p.returncode == 0, p.stderr
    assert open(os.path.join(mp, "workspace/via-mount8.txt")).read() == "mount(8)"
    expect_errno(errno.EROFS, open, os.path.join(mp, "workspace/no"), "w")
    env.umount(mp)
    assert env.log_errors() == []


def test_fstab_with_keyfile(env, helpers, tmp_path):
    key = os.urandom(32).hex()
    e = plain_env(env)
    e["CONTEXTSDK_KEY_HEX"] = key
    subprocess.run([BIN, "--store", env.store, "init", "rawctx"], env=e, check=True, capture_output=True)
    kf = secret_file(os.path.join(env.tmp, "key.hex"), key + "\n")
    mp = os.path.join(env.tmp, "fst")
    os.makedirs(mp)
    log = os.path.join(env.tmp, "fst.log")
    env.logs.append(log)
    env.mounts.append(mp)
    fstab = os.path.join(env.tmp, "fstab")
    with open(fstab, "w") as fh:
        fh.write("# test fstab\n")
        fh.write(f"rawctx {mp} fuse.contextfs noauto,nofail,store={env.store},keyfile={kf},"
                 f"cache={env.cache},lock_ttl=30,log_file={log},fsync=local 0 0\n")
    p = run_mount(["mount", "-T", fstab, mp], plain_env(env))
    assert p.returncode == 0, p.stderr
    st = env.status(mp)
    assert st["id"] == "rawctx" and st["fsync"] == "local"
    with open(os.path.join(mp, "memory/fstab.md"), "w") as fh:
        fh.write("from fstab")
    env.run("commit", mp, "-m", "fstab")
    files = refreader.read_tree_files(env.store, "rawctx", raw_key_hex=key)
    assert files["memory/fstab.md"]["sha256"] == sha(b"from fstab")
    env.umount(mp)
    # a keyfile others can read is refused, and nothing is mounted
    os.chmod(kf, 0o644)
    p = run_mount(["mount", "-T", fstab, mp], plain_env(env))
    assert p.returncode != 0 and "chmod 600" in p.stderr, p.stderr
    assert not is_mounted(mp)


def test_mount_helper_without_key_fails_cleanly(env, helpers):
    mp = os.path.join(env.tmp, "nokey")
    os.makedirs(mp)
    p = run_mount(["mount", "-t", "fuse.contextfs", "ctx", mp, "-o",
                   f"store={env.store},cache={env.cache}"], plain_env(env))
    assert p.returncode != 0
    assert "CONTEXTSDK_PASSPHRASE or CONTEXTSDK_KEY_HEX is required" in p.stderr
    assert not is_mounted(mp)
    # unknown options are named
    pf = secret_file(os.path.join(env.tmp, "pass"), env.env["CONTEXTSDK_PASSPHRASE"])
    p = run_mount(["mount", "-t", "fuse.contextfs", "ctx", mp, "-o",
                   f"store={env.store},passphrase_file={pf},bogus=1"], plain_env(env))
    assert p.returncode != 0 and "unknown mount option: bogus" in p.stderr
    assert not is_mounted(mp)


# ---- reference fixtures through the mount -------------------------------------------

FIXTURE_CTX = {"fresh": "interop-fresh", "passphrase": "interop-pass"}
FIXTURE_TREES = [("fresh", "latest"), ("passphrase", "latest"), ("passphrase", "checkpoint")]


@pytest.fixture
def fxenv(tmp_path):
    e = Env(str(tmp_path))
    e.env["CONTEXTSDK_PASSPHRASE"] = FIXTURE_PASSPHRASE
    e.env.pop("CONTEXTFS_SCRYPT_COST", None)
    yield e
    e.cleanup()


def fixture_store(env, fx, tree):
    copy_fixture_store(fx, env.store)
    if tree == "checkpoint":
        # the checkpoint is decryptable only with the manifest of that moment
        src = os.path.join(require_fixtures(), "passphrase", "manifest-at-checkpoint.json")
        dst = os.path.join(env.store, "contexts", FIXTURE_CTX[fx], "manifest.json")
        shutil.copyfile(src, dst)
        if os.path.exists(dst + ".etagid"):
            os.unlink(dst + ".etagid")


def assert_mount_shows(mp, tree):
    """The mount shows exactly the bundle's entries (type, permission bits,
    size, sha256, link target, hard links), plus only local things the
    reference's mount shows too (presentInMountButNotInBundle; cache/ here)."""
    got = snapshot_dir(mp)
    want = {e["path"]: e for e in tree["entriesInTarOrder"]}
    extra = set(got) - set(want)
    missing = set(want) - set(got)
    assert not missing, sorted(missing)
    # cache/ is a layout root of every mount (local by design), even where
    # the reference's runtime had not created it yet (fresh)
    assert "cache" in extra
    assert extra <= set(tree["presentInMountButNotInBundle"]) | {"cache"}, sorted(extra)
    for path, e in want.items():
        kind, mode, size, info = got[path]
        if e["type"] == "hardlink":
            a, b = os.lstat(os.path.join(mp, path)), os.lstat(os.path.join(mp, e["linkname"]))
            assert kind == "file" and a.st_ino == b.st_ino, path
            continue
        assert kind == e["type"], (path, kind, e["type"])
        if kind == "symlink":
            assert info == e["linkname"], path
            continue
        assert oct(mode) == e["mode"], (path, oct(mode), e["mode"])
        if kind == "file":
            assert size == e["size"] and info == e["sha256"], path


@pytest.mark.parametrize("fx,tree", FIXTURE_TREES)
def test_fixture_mounts_read_only(fxenv, fx, tree):
    fixture_store(fxenv, fx, tree)
    exp = load_expected(fx)["trees"][tree]
    ctx = FIXTURE_CTX[fx]
    mp = fxenv.mount(ctx, name="ro", opts="ro")
    assert_mount_shows(mp, exp)
    st = fxenv.status(mp)
    assert st["readOnly"] and st["checkpointGeneration"] == exp["manifestCheckpointGeneration"]
    assert st["generation"] == exp["manifestGeneration"]
    expect_errno(errno.EROFS, open, os.path.join(mp, "workspace/new"), "w")
    fxenv.umount(mp)
    if tree == "checkpoint":
        # also as a historical mount of the checkpoint by number
        mp = fxenv.mount(f"{ctx}@checkpoint:1", name="hist")
        assert_mount_shows(mp, exp)
        fxenv.umount(mp)
    assert fxenv.log_errors() == []


@pytest.mark.parametrize("fx,tree", FIXTURE_TREES)
def test_fixture_mounts_read_write_and_commits_for_the_reference_reader(fxenv, fx, tree):
    fixture_store(fxenv, fx, tree)
    exp = load_expected(fx)["trees"][tree]
    ctx = FIXTURE_CTX[fx]
    mp = fxenv.mount(ctx)
    assert_mount_shows(mp, exp)
    # change a little: a new file, a new directory, one rewritten file
    with open(os.path.join(mp, "workspace/from-mount.txt"), "wb") as fh:
        fh.write(b"written through contextfs mount\n")
    os.makedirs(os.path.join(mp, "artifacts/mnt/deep"))
    with open(os.path.join(mp, "artifacts/mnt/deep/t.txt"), "w") as fh:
        fh.write("t")
    os.symlink("t.txt", os.path.join(mp, "artifacts/mnt/deep/ln"))
    # as in the reference, links with a ".." segment or an absolute target
    # stay local (never packed)
    os.symlink("../deep/t.txt", os.path.join(mp, "artifacts/mnt/dotdot"))
    os.symlink("/etc/hostname", os.path.join(mp, "artifacts/mnt/abs"))
    with open(os.path.join(mp, "memory/session.md"), "ab") as fh:
        fh.write(b"\nappended by the mount\n")
    os.chmod(os.path.join(mp, "workspace/from-mount.txt"), 0o640)
    want = snapshot_dir(mp)
    fxenv.umount(mp)
    m = refreader.load_manifest(fxenv.store, ctx)
    assert m["generation"] == exp["manifestGeneration"] + 1
    # the independent reader (python, no contextfs code) decrypts and walks it
    entries = refreader.read_tree_files(fxenv.store, ctx, passphrase=FIXTURE_PASSPHRASE)
    local = {"artifacts/mnt/dotdot", "artifacts/mnt/abs"}
    persisted = {p: v for p, v in want.items()
                 if p != "cache" and not p.startswith("cache/") and p not in local}
    assert not local & set(entries)
    for path, (kind, mode, size, info) in persisted.items():
        if path.startswith(".contextsdk"):
            continue  # version records are rewritten by every commit
        e = entries.get(path)
        assert e is not None, f"{path} missing from the committed bundle"
        assert e["type"] == kind, path
        if kind == "symlink":
            assert e["linkname"] == info, path
        else:
            assert e["mode"] == oct(mode), path
        if kind == "file":
            assert e["size"] == size and e["sha256"] == info, path
    assert entries["workspace/from-mount.txt"]["mode"] == "0o640"
    assert entries["artifacts/mnt/deep/ln"]["linkname"] == "t.txt"
    gen = exp["manifestGeneration"] + 1
    assert f".contextsdk/versions/{gen}.json" in entries
    assert not [p for p in entries if p == "cache" or p.startswith("cache/")]
    # and a fresh mount shows the same tree (without the local-only links)
    mp = fxenv.mount(ctx, name="again")
    again = snapshot_dir(mp)
    assert {p: v for p, v in again.items() if not p.startswith(".contextsdk")} == \
        {p: v for p, v in want.items() if not p.startswith(".contextsdk") and p not in local}
    fxenv.umount(mp)
    assert fxenv.log_errors() == []


def test_dead_read_only_mount_staging_is_swept(env):
    ro = env.mount("ctx", name="ro", opts="ro")
    pid = kill9(env, ro)
    area = os.path.join(env.cache, "contextfs/mounts/ctx", f"ro-{pid}")
    assert os.path.isdir(area)  # a read-only mount that died leaves its copy
    env.run("umount", ro)
    mp = env.mount("ctx")  # the next mount of ctx removes it
    assert not os.path.exists(area)
    env.umount(mp)


def write_lock(env, owner, runtime_id, ttl_s=600):
    """A lock.json as another writer would have left it (no ETag sidecar: the
    fs store then uses the body's sha256)."""
    now = time.time()

    def iso(t):
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".000Z"

    doc = {"version": 1, "contextId": "ctx", "owner": owner, "runtimeId": runtime_id,
           "createdAt": iso(now), "heartbeatAt": iso(now), "expiresAt": iso(now + ttl_s)}
    with open(os.path.join(env.store, "contexts/ctx/lock.json"), "w") as fh:
        json.dump(doc, fh, indent=2)


@pytest.mark.parametrize("runtime", ["fuse:{host}:/some/mountpoint", "recover:{host}"])
def test_dead_local_lock_taken_over(env, runtime):
    import socket
    host = socket.gethostname()
    p = subprocess.Popen(["true"])
    p.wait()  # a pid that no longer runs
    dead = f"{host}:{p.pid}:00000000-0000-4000-8000-000000000000"
    write_lock(env, dead, runtime.format(host=host))
    mp = env.mount("ctx")
    _, s = env.json("status", "ctx")
    assert s["lock"]["owner"] == env.status(mp)["owner"] != dead
    env.umount(mp)
    assert [l for l in env.log_errors()] == []


@pytest.mark.parametrize("case", ["live-pid", "other-host", "not-a-mount"])
def test_other_locks_not_taken_over(env, case):
    import socket
    host = socket.gethostname()
    owner = f"{host}:{os.getpid()}:00000000-0000-4000-8000-000000000000"  # alive
    runtime = f"fuse:{host}:/x"
    if case == "other-host":
        owner = f"{host}-elsewhere:999999:00000000-0000-4000-8000-000000000000"
        runtime = f"fuse:{host}-elsewhere:/x"
    elif case == "not-a-mount":
        p = subprocess.Popen(["true"])
        p.wait()
        owner = f"{host}:{p.pid}:00000000-0000-4000-8000-000000000000"
        runtime = "some-sandbox-runtime"
    write_lock(env, owner, runtime)
    p = env.mount("ctx", check=False)
    assert p.returncode == 4 and "locked by" in p.stderr
    _, s = env.json("status", "ctx")
    assert s["lock"]["owner"] == owner
