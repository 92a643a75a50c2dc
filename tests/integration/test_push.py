"""contextfs push / contextfs-push on real FUSE mounts with the local runtime:
a live mount's snapshot carried into a sandbox, a command run there, and the
sandbox's changes merged back into the mount three-way (base = the pushed
generation, theirs = the sandbox, ours = the mount now).

Asserted on contents: sha256 and modes through the mountpoint, then again
after an unmount and a fresh mount of the committed generation. To change
the mount "while the sandbox runs", the command waits for a marker file the
test creates (the local sandbox root is a host directory) after it changed
the mount.
"""
import glob
import hashlib
import json
import os
import stat
import subprocess
import threading
import time

import pytest

from test_mount import BIN, Env, is_mounted  # noqa: F401 (skip marker)

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def listing(root):
    """{rel: (kind, mode, sha256-or-target)} of the managed roots."""
    out = {}
    for top in ["workspace", "memory", "artifacts", "logs", "config"]:
        for d, dirs, files in os.walk(os.path.join(root, top)):
            for n in dirs + files:
                p = os.path.join(d, n)
                rel = os.path.relpath(p, root)
                st = os.lstat(p)
                if stat.S_ISLNK(st.st_mode):
                    out[rel] = ("symlink", None, os.readlink(p))
                elif stat.S_ISREG(st.st_mode):
                    out[rel] = ("file", stat.S_IMODE(st.st_mode), sha(p))
    return out


def write(root, rel, data, mode=0o644):
    p = os.path.join(root, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    os.chmod(p, mode)


@pytest.fixture
def env(tmp_path):
    e = Env(str(tmp_path))
    e.env["XDG_CACHE_HOME"] = os.path.join(str(tmp_path), "xdg")
    e.env["TMPDIR"] = os.path.join(str(tmp_path), "tmp")
    os.makedirs(e.env["TMPDIR"])
    e.run("init", "ctx")
    yield e
    e.cleanup()
    assert e.log_errors() == []


def push(env, mp, *args, cmd, check=None, timeout=180):
    p = env.run("push", mp, "--runtime", "local", *args, "--", "bash", "-c", cmd,
                check=False, timeout=timeout)
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout, p.stderr)
    return p


def push_json(env, mp, *args, cmd=None, check=0):
    argv = ["--json", "push", mp, "--runtime", "local", *args]
    if cmd is not None:
        argv += ["--", "bash", "-c", cmd]
    p = env.run(*argv, check=False)
    assert p.returncode == check, (p.returncode, p.stdout, p.stderr)
    return json.loads(p.stdout)


def remount(env, mp):
    env.umount(mp)
    return env.mount("ctx", name="again")


def seed(mp):
    write(mp, "workspace/keep.txt", "keep me\n")
    write(mp, "workspace/tool.sh", "#!/bin/sh\necho tool\n", 0o755)
    write(mp, "workspace/secret.bin", os.urandom(100000), 0o600)
    write(mp, "workspace/gone.txt", "delete me\n")
    write(mp, "workspace/sub/deep/x.txt", "deep\n", 0o640)
    write(mp, "memory/notes.md", "notes\n")
    os.symlink("keep.txt", os.path.join(mp, "workspace/link"))


def test_round_trip(env):
    mp = env.mount("ctx")
    seed(mp)
    before = listing(mp)
    new_bin = os.urandom(70000)
    src = os.path.join(env.tmp, "new.bin")
    with open(src, "wb") as f:
        f.write(new_bin)
    script = r"""
set -e
test "$(cat workspace/keep.txt)" = "keep me"
test "$(readlink workspace/link)" = keep.txt
printf 'changed\n' >> workspace/keep.txt
rm workspace/gone.txt workspace/link
rm -r workspace/sub
chmod 700 workspace/tool.sh
printf 'fresh\n' > workspace/new.txt; chmod 640 workspace/new.txt
ln -s tool.sh workspace/link2
mkdir -p workspace/node_modules/pkg artifacts/out
echo 'module.exports = 1' > workspace/node_modules/pkg/index.js
echo report > artifacts/out/report.txt
echo out-line
echo err-line >&2
"""
    p = push(env, mp, cmd=script, check=0)
    assert p.stdout.startswith("out-line\n")
    assert "err-line" in p.stderr

    got = listing(mp)
    want = dict(before)
    del want["workspace/gone.txt"], want["workspace/link"], want["workspace/sub/deep/x.txt"]
    want["workspace/keep.txt"] = ("file", 0o644,
                                  hashlib.sha256(b"keep me\nchanged\n").hexdigest())
    want["workspace/tool.sh"] = ("file", 0o700, before["workspace/tool.sh"][2])
    want["workspace/new.txt"] = ("file", 0o640, hashlib.sha256(b"fresh\n").hexdigest())
    want["workspace/link2"] = ("symlink", None, "tool.sh")
    want["artifacts/out/report.txt"] = ("file", 0o644, hashlib.sha256(b"report\n").hexdigest())
    assert got == want
    assert not os.path.exists(os.path.join(mp, "workspace/node_modules"))
    assert not os.path.exists(os.path.join(mp, "workspace/sub"))

    # committed with a message naming the command, readable after a remount
    log = env.run("log", "ctx").stdout
    assert "push: bash -c" in log
    mp2 = remount(env, mp)
    assert listing(mp2) == want


def test_exit_code_and_output_pass_through(env):
    mp = env.mount("ctx")
    p = push(env, mp, cmd="echo to-out; echo to-err >&2; echo made > workspace/f; exit 7",
             check=7)
    assert "to-out" in p.stdout and "to-err" in p.stderr
    # a failing command's changes are still merged and committed
    assert open(os.path.join(mp, "workspace/f")).read() == "made\n"
    doc = push_json(env, mp, cmd="echo hi; exit 3", check=3)
    assert doc["result"] == {"exitCode": 3, "stdout": "hi\n", "stderr": ""}
    assert doc["ok"] is False and doc["conflicts"] == []


def test_contextfs_push_name(env, tmp_path):
    mp = env.mount("ctx")
    link = os.path.join(str(tmp_path), "contextfs-push")
    os.symlink(BIN, link)
    p = subprocess.run([link, "--store", env.store, mp, "--runtime", "local", "--",
                        "bash", "-c", "echo via-name > memory/n.md; exit 4"],
                       env=env.env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 4, p.stderr
    assert open(os.path.join(mp, "memory/n.md")).read() == "via-name\n"


def concurrent_push(env, mp, sandbox_cmd, change_mount, *args):
    """Runs a push whose command waits for a marker; meanwhile change_mount()
    edits the mount. Returns the finished process."""
    marker = "go.marker"
    # <root>/tmp seen from the mount dir <root>/mnt/contextsdk/ctx (the
    # sandbox's /tmp under bubblewrap, a host path without it)
    m = "../../../tmp/" + marker
    cmd = ("for i in $(seq 600); do [ -e %s ] && break; sleep 0.1; done\n"
           "[ -e %s ] || exit 99\n" % (m, m)) + sandbox_cmd
    p = subprocess.Popen([BIN, "--store", env.store, "--json", "push", mp, "--runtime",
                          "local", *args, "--", "bash", "-c", cmd],
                         env=env.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.time() + 60
    roots = []
    while time.time() < deadline and not roots:
        roots = [r for r in glob.glob(os.path.join(env.env["TMPDIR"], "contextfs-sandbox-*"))
                 + glob.glob(os.path.join(env.env["XDG_CACHE_HOME"], "contextfs/push/*/contextfs-sandbox-*"))
                 if os.path.isdir(os.path.join(r, "mnt/contextsdk/ctx/workspace"))]
        time.sleep(0.05)
    assert roots, "the sandbox never got the context"
    change_mount()
    open(os.path.join(roots[0], "tmp", marker), "w").close()
    out, err = p.communicate(timeout=180)
    return p.returncode, json.loads(out), err


def test_disjoint_changes_both_land(env):
    mp = env.mount("ctx")
    write(mp, "workspace/a.txt", "a0\n")
    write(mp, "workspace/b.txt", "b0\n")
    rc, doc, err = concurrent_push(
        env, mp, "echo b-sandbox > workspace/b.txt\n",
        lambda: write(mp, "workspace/a.txt", "a-mount\n"))
    assert rc == 0, err
    assert doc["conflicts"] == [] and doc["modified"] == 1
    assert open(os.path.join(mp, "workspace/a.txt")).read() == "a-mount\n"
    assert open(os.path.join(mp, "workspace/b.txt")).read() == "b-sandbox\n"
    mp2 = remount(env, mp)
    assert sha(os.path.join(mp2, "workspace/a.txt")) == hashlib.sha256(b"a-mount\n").hexdigest()
    assert sha(os.path.join(mp2, "workspace/b.txt")) == hashlib.sha256(b"b-sandbox\n").hexdigest()


def test_same_size_changes_and_identical_rewrites(env):
    """The merge compares the base and the sandbox by the hashes taken while
    both were extracted: a same-size rewrite with other bytes is a change
    (and conflicts with a mount change), a rewrite with the same bytes is
    none (the mount's concurrent change stays, no conflict)."""
    mp = env.mount("ctx")
    write(mp, "workspace/same-size.txt", "abc\n")
    write(mp, "workspace/rewritten.txt", "same\n")
    write(mp, "workspace/both.bin", b"\0" * 4096)
    write(mp, "workspace/hl-a", "linked\n")
    os.link(os.path.join(mp, "workspace/hl-a"), os.path.join(mp, "workspace/hl-b"))
    os.symlink("hl-a", os.path.join(mp, "workspace/ln-keep"))
    os.symlink("hl-a", os.path.join(mp, "workspace/ln-moved"))

    def mount_side():
        write(mp, "workspace/rewritten.txt", "mount\n")
        write(mp, "workspace/both.bin", b"\2" * 4096)
        os.unlink(os.path.join(mp, "workspace/ln-keep"))
        os.symlink("same-size.txt", os.path.join(mp, "workspace/ln-keep"))
        write(mp, "workspace/hl-b", "mount-linked\n")  # both names: one inode
    rc, doc, err = concurrent_push(
        env, mp,
        "printf 'xyz\\n' > workspace/same-size.txt\n"
        "sleep 0.01; printf 'same\\n' > workspace/rewritten.txt\n"
        "head -c 4096 /dev/zero | tr '\\0' '\\1' > workspace/both.bin\n"
        "ln -sfn hl-b workspace/ln-moved\n",
        mount_side)
    assert rc == 0, err
    # the base's hard links and symlinks (listed from its bundle) compare
    # equal to the sandbox's untouched copies: no change, no conflict
    assert [c["path"] for c in doc["conflicts"]] == ["workspace/both.bin"]
    assert doc["modified"] == 2
    assert os.readlink(os.path.join(mp, "workspace/ln-keep")) == "same-size.txt"
    assert os.readlink(os.path.join(mp, "workspace/ln-moved")) == "hl-b"
    for n in ("hl-a", "hl-b"):
        assert open(os.path.join(mp, "workspace", n)).read() == "mount-linked\n"
    assert open(os.path.join(mp, "workspace/same-size.txt")).read() == "xyz\n"
    assert open(os.path.join(mp, "workspace/rewritten.txt")).read() == "mount\n"
    assert open(os.path.join(mp, "workspace/both.bin"), "rb").read() == b"\2" * 4096
    assert open(os.path.join(mp, "workspace/both.bin.contextfs-sandbox"), "rb").read() == b"\1" * 4096


def test_conflict_keeps_mount_version(env):
    mp = env.mount("ctx")
    write(mp, "workspace/c.txt", "base\n")
    write(mp, "workspace/d.txt", "base-d\n")
    write(mp, "workspace/e.txt", "base-e\n")

    def change():
        write(mp, "workspace/c.txt", "mount\n")
        write(mp, "workspace/d.txt", "mount-d\n")   # sandbox deletes it
        os.unlink(os.path.join(mp, "workspace/e.txt"))  # sandbox modifies it
    rc, doc, err = concurrent_push(
        env, mp,
        "echo sandbox > workspace/c.txt\nrm workspace/d.txt\n"
        "echo sandbox-e > workspace/e.txt\n", change)
    assert rc == 0, err
    byp = {c["path"]: c for c in doc["conflicts"]}
    assert set(byp) == {"workspace/c.txt", "workspace/d.txt", "workspace/e.txt"}
    assert byp["workspace/c.txt"]["sandboxCopy"] == "workspace/c.txt.contextfs-sandbox"
    assert byp["workspace/d.txt"]["sandboxCopy"] is None
    assert "deleted in the sandbox" in byp["workspace/d.txt"]["kind"]
    assert "deleted in the mount" in byp["workspace/e.txt"]["kind"]
    for path in byp:
        assert "conflict: " + path in err
    # c: mount's version in place, sandbox's beside it
    assert open(os.path.join(mp, "workspace/c.txt")).read() == "mount\n"
    assert open(os.path.join(mp, "workspace/c.txt.contextfs-sandbox")).read() == "sandbox\n"
    # d: deleted in the sandbox, modified in the mount: the modification stays
    assert open(os.path.join(mp, "workspace/d.txt")).read() == "mount-d\n"
    # e: modified in the sandbox, deleted in the mount: stays deleted, copy beside
    assert not os.path.lexists(os.path.join(mp, "workspace/e.txt"))
    assert open(os.path.join(mp, "workspace/e.txt.contextfs-sandbox")).read() == "sandbox-e\n"
    mp2 = remount(env, mp)
    assert open(os.path.join(mp2, "workspace/c.txt")).read() == "mount\n"
    assert open(os.path.join(mp2, "workspace/c.txt.contextfs-sandbox")).read() == "sandbox\n"


def test_deletion_vs_unchanged(env):
    """Deleted in the sandbox, untouched in the mount: deleted; modified in
    the mount, untouched in the sandbox: kept."""
    mp = env.mount("ctx")
    write(mp, "workspace/del.txt", "x\n")
    write(mp, "workspace/mine.txt", "0\n")
    rc, doc, err = concurrent_push(
        env, mp, "rm workspace/del.txt\n",
        lambda: write(mp, "workspace/mine.txt", "mount-edit\n"))
    assert rc == 0, err
    assert doc["deleted"] == 1 and doc["conflicts"] == []
    assert not os.path.exists(os.path.join(mp, "workspace/del.txt"))
    assert open(os.path.join(mp, "workspace/mine.txt")).read() == "mount-edit\n"


def test_keep_then_pull_and_node_modules(env):
    mp = env.mount("ctx")
    write(mp, "workspace/app.js", "v1\n")
    doc = push_json(env, mp, "--keep", cmd=(
        "mkdir -p workspace/node_modules/dep && echo dep > workspace/node_modules/dep/i.js\n"
        "echo built > artifacts/b1\n"))
    sid = doc["sandbox"]
    assert sid and sid.startswith("push-")
    assert open(os.path.join(mp, "artifacts/b1")).read() == "built\n"
    assert not os.path.exists(os.path.join(mp, "workspace/node_modules"))

    # change the kept sandbox behind push's back, then --pull it
    roots = glob.glob(os.path.join(env.env["XDG_CACHE_HOME"], "contextfs/push", sid,
                                   "contextfs-sandbox-*"))
    assert len(roots) == 1
    ws = os.path.join(roots[0], "mnt/contextsdk/ctx")
    if not os.path.isdir(ws):  # plain sandbox paths are host paths
        pytest.fail("kept sandbox has no context at " + ws)
    write(ws, "memory/from-sandbox.md", "pulled\n")
    doc = push_json(env, mp, "--pull", "--sandbox-id", sid, "--keep")
    assert "result" not in doc and doc["added"] == 1 and doc["conflicts"] == []
    assert open(os.path.join(mp, "memory/from-sandbox.md")).read() == "pulled\n"
    # nothing pulled twice: the base moved on
    doc = push_json(env, mp, "--pull", "--sandbox-id", sid, "--keep")
    assert doc["added"] == doc["modified"] == doc["deleted"] == 0

    # a new push into the kept sandbox keeps its node_modules
    write(mp, "workspace/app.js", "v2\n")
    doc = push_json(env, mp, "--sandbox-id", sid, cmd=(
        "test \"$(cat workspace/app.js)\" = v2 || exit 10\n"
        "test -f workspace/node_modules/dep/i.js || exit 11\n"
        "echo ok > logs/run.log\n"))
    assert doc["result"]["exitCode"] == 0, doc
    assert open(os.path.join(mp, "logs/run.log")).read() == "ok\n"
    # without --keep the sandbox is gone now
    assert not os.path.exists(os.path.join(env.env["XDG_CACHE_HOME"], "contextfs/push", sid))
    p = env.run("push", mp, "--pull", "--sandbox-id", sid, check=False)
    assert p.returncode == 3, p.stderr
    mp2 = remount(env, mp)
    assert open(os.path.join(mp2, "memory/from-sandbox.md")).read() == "pulled\n"
    assert not os.path.exists(os.path.join(mp2, "workspace/node_modules"))


def test_usage_errors(env):
    mp = env.mount("ctx")
    assert env.run("push", mp, "--runtime", "local", check=False).returncode == 2
    assert env.run("push", env.tmp, "--runtime", "local", "--", "true",
                   check=False).returncode == 2
    assert env.run("push", mp, "--pull", "--sandbox-id", "../x",
                   check=False).returncode == 2


def test_push_over_ssh(env, tmp_path):
    """The same round trip through the ssh adapter (a real sshd in its own
    network namespace, test_run_ssh.py's fixture); the remote push
    directory is removed afterwards."""
    import test_run_ssh
    gen = test_run_ssh.sshd.__wrapped__(tmp_path_factory=_Factory(tmp_path))
    d = next(gen)
    try:
        mp = env.mount("ctx")
        write(mp, "workspace/a.txt", "a\n")
        write(mp, "workspace/x.sh", "#!/bin/sh\n", 0o755)
        remote = os.path.join(str(tmp_path), "remote")
        e = dict(env.env, CONTEXTFS_REAL_BIN=BIN)
        p = subprocess.run(
            [d["wrapper"], "--store", env.store, "--json", "push", mp, "--runtime", "ssh",
             "--ssh-host", "127.0.0.1", "--ssh-port", str(test_run_ssh.PORT),
             "--ssh-key", os.path.join(d["dir"], "id"),
             "--ssh-known-hosts", os.path.join(d["dir"], "known_hosts"),
             "--ssh-dir", remote, "--", "bash", "-c",
             "test -x workspace/x.sh || exit 9; echo ssh >> workspace/a.txt; "
             "ln -s a.txt workspace/l; rm workspace/x.sh; exit 5"],
            env=e, capture_output=True, text=True, timeout=180)
        assert p.returncode == 5, p.stderr
        doc = json.loads(p.stdout)
        assert doc["result"]["exitCode"] == 5 and doc["conflicts"] == []
        assert open(os.path.join(mp, "workspace/a.txt")).read() == "a\nssh\n"
        assert os.readlink(os.path.join(mp, "workspace/l")) == "a.txt"
        assert not os.path.exists(os.path.join(mp, "workspace/x.sh"))
        assert os.path.isdir(remote)
        assert glob.glob(os.path.join(remote, "**", "ctx-push-*"), recursive=True) == []
        mp2 = remount(env, mp)
        assert sha(os.path.join(mp2, "workspace/a.txt")) == hashlib.sha256(b"a\nssh\n").hexdigest()
    finally:
        gen.close()


class _Factory:
    def __init__(self, base):
        self.base = base

    def mktemp(self, name):
        p = os.path.join(str(self.base), name)
        os.makedirs(p)
        return p


def paused_push(env, mp, sandbox_cmd, change_mount, *args):
    """Runs a push whose merge pauses between deciding and applying
    (CONTEXTFS_TEST_PUSH_PAUSE_FILE, a hook only tests set: push creates
    the file there and waits until it is gone); change_mount() edits the
    mount in exactly that window. Returns (rc, json doc, stderr)."""
    pause = os.path.join(env.tmp, "push.pause")
    e = dict(env.env, CONTEXTFS_TEST_PUSH_PAUSE_FILE=pause)
    p = subprocess.Popen([BIN, "--store", env.store, "--json", "push", mp, "--runtime",
                          "local", *args, "--", "bash", "-c", sandbox_cmd],
                         env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not os.path.exists(pause) and p.poll() is None:
        time.sleep(0.05)
    reached = os.path.exists(pause)
    if reached:
        change_mount()
        os.unlink(pause)
    out, err = p.communicate(timeout=180)
    assert reached, ("push never paused before applying", p.returncode, err)
    return p.returncode, json.loads(out), err


def test_mount_changes_between_decide_and_apply_are_kept(env):
    """The mount stays writable while the merge applies: what the user made
    after the decision (a file where the sandbox adds one, an edit of a file
    the sandbox modifies or deletes, a removal of a file the sandbox
    modifies) is kept, and the sandbox's version goes beside it."""
    mp = env.mount("ctx")
    write(mp, "workspace/mod.txt", "base\n")
    write(mp, "workspace/del.txt", "base-del\n")
    write(mp, "workspace/gone.txt", "base-gone\n")
    write(mp, "workspace/plain.txt", "base-plain\n")
    ws = os.path.join(mp, "workspace")

    def change():
        write(mp, "workspace/new.txt", "mine\n")        # sandbox adds it
        os.symlink("mine", os.path.join(ws, "newlink"))  # sandbox adds a link
        write(mp, "workspace/mod.txt", "mine-mod\n")    # sandbox modifies it
        write(mp, "workspace/del.txt", "mine-del\n")    # sandbox deletes it
        os.unlink(os.path.join(ws, "gone.txt"))         # sandbox modifies it
    rc, doc, err = paused_push(
        env, mp,
        "echo sandbox-new > workspace/new.txt\nln -s theirs workspace/newlink\n"
        "echo sandbox-mod > workspace/mod.txt\nrm workspace/del.txt\n"
        "echo sandbox-gone > workspace/gone.txt\n"
        "echo sandbox-plain > workspace/plain.txt\n", change)
    assert rc == 0, err
    byp = {c["path"]: c for c in doc["conflicts"]}
    assert set(byp) == {"workspace/new.txt", "workspace/newlink", "workspace/mod.txt",
                        "workspace/del.txt", "workspace/gone.txt"}, doc
    assert byp["workspace/new.txt"]["sandboxCopy"] == "workspace/new.txt.contextfs-sandbox"
    assert byp["workspace/del.txt"]["sandboxCopy"] is None
    assert "deleted in the mount" in byp["workspace/gone.txt"]["kind"]
    assert doc["modified"] == 1 and doc["added"] == 0 and doc["deleted"] == 0
    want = {
        "workspace/new.txt": "mine\n",
        "workspace/new.txt.contextfs-sandbox": "sandbox-new\n",
        "workspace/mod.txt": "mine-mod\n",
        "workspace/mod.txt.contextfs-sandbox": "sandbox-mod\n",
        "workspace/del.txt": "mine-del\n",
        "workspace/gone.txt.contextfs-sandbox": "sandbox-gone\n",
        "workspace/plain.txt": "sandbox-plain\n",
    }
    for mnt in (mp, None):
        if mnt is None:
            mnt = remount(env, mp)
        for rel, data in want.items():
            assert open(os.path.join(mnt, rel)).read() == data, rel
        assert os.readlink(os.path.join(mnt, "workspace/newlink")) == "mine"
        assert os.readlink(os.path.join(mnt, "workspace/newlink.contextfs-sandbox")) == "theirs"
        assert not os.path.lexists(os.path.join(mnt, "workspace/gone.txt"))
        # no temporary names left behind
        assert sorted(n for n in os.listdir(os.path.join(mnt, "workspace"))
                      if n.startswith(".")) == []


def test_existing_conflict_copies_are_kept(env):
    """An entry already at NAME.contextfs-sandbox (the user's file, an
    earlier copy not yet reviewed, a symlink, an empty directory) is never
    replaced or removed: the new copy takes the next free .N name."""
    mp = env.mount("ctx")
    write(mp, "workspace/a.txt", "base-a\n")
    write(mp, "workspace/b.txt", "base-b\n")
    write(mp, "workspace/c.txt", "base-c\n")
    write(mp, "workspace/d.txt", "base-d\n")
    # an earlier copy, in the base (and so in the sandbox) already
    write(mp, "workspace/a.txt.contextfs-sandbox", "earlier copy\n")
    ws = os.path.join(mp, "workspace")

    def change():
        write(mp, "workspace/a.txt", "mount-a\n")
        write(mp, "workspace/b.txt", "mount-b\n")
        write(mp, "workspace/b.txt.contextfs-sandbox", "users own file\n")
        write(mp, "workspace/b.txt.contextfs-sandbox.1", "users other file\n")
        write(mp, "workspace/c.txt", "mount-c\n")
        os.symlink("nowhere", os.path.join(ws, "c.txt.contextfs-sandbox"))
        write(mp, "workspace/d.txt", "mount-d\n")
        os.mkdir(os.path.join(ws, "d.txt.contextfs-sandbox"))
    rc, doc, err = concurrent_push(
        env, mp, "for f in a b c d; do echo sandbox-$f > workspace/$f.txt; done\n", change)
    assert rc == 0, err
    byp = {c["path"]: c["sandboxCopy"] for c in doc["conflicts"]}
    assert byp == {
        "workspace/a.txt": "workspace/a.txt.contextfs-sandbox.1",
        "workspace/b.txt": "workspace/b.txt.contextfs-sandbox.2",
        "workspace/c.txt": "workspace/c.txt.contextfs-sandbox.1",
        "workspace/d.txt": "workspace/d.txt.contextfs-sandbox.1",
    }, doc
    for path, copy in byp.items():
        assert "the sandbox's is in " + copy in err
    mp2 = remount(env, mp)
    for mnt in (mp2,):
        rd = lambda rel: open(os.path.join(mnt, rel)).read()  # noqa: E731
        assert rd("workspace/a.txt.contextfs-sandbox") == "earlier copy\n"
        assert rd("workspace/b.txt.contextfs-sandbox") == "users own file\n"
        assert rd("workspace/b.txt.contextfs-sandbox.1") == "users other file\n"
        assert os.readlink(os.path.join(mnt, "workspace/c.txt.contextfs-sandbox")) == "nowhere"
        assert os.path.isdir(os.path.join(mnt, "workspace/d.txt.contextfs-sandbox"))
        for f in "abcd":
            assert rd("workspace/%s.txt" % f) == "mount-%s\n" % f
            assert rd(byp["workspace/%s.txt" % f]) == "sandbox-%s\n" % f


def test_sandbox_makes_name_and_its_conflict_name(env):
    """The sandbox writes both x and x.contextfs-sandbox while x conflicts:
    the sandbox's own x.contextfs-sandbox lands, the copy of its x goes to
    x.contextfs-sandbox.1 (neither overwrites the other)."""
    mp = env.mount("ctx")
    write(mp, "workspace/x", "base\n")
    rc, doc, err = concurrent_push(
        env, mp,
        "echo sandbox-x > workspace/x\n"
        "echo sandbox-own > workspace/x.contextfs-sandbox\n",
        lambda: write(mp, "workspace/x", "mount-x\n"))
    assert rc == 0, err
    assert [(c["path"], c["sandboxCopy"]) for c in doc["conflicts"]] == [
        ("workspace/x", "workspace/x.contextfs-sandbox.1")], doc
    assert doc["added"] == 1
    mp2 = remount(env, mp)
    for mnt in (mp2,):
        assert open(os.path.join(mnt, "workspace/x")).read() == "mount-x\n"
        assert open(os.path.join(mnt, "workspace/x.contextfs-sandbox")).read() == "sandbox-own\n"
        assert open(os.path.join(mnt, "workspace/x.contextfs-sandbox.1")).read() == "sandbox-x\n"
