"""Real tools on real contextfs mounts.

Each test drives an unmodified tool (git, sqlite3, tar, rsync, vim) or plain
python I/O (write, mmap) against a live mount, unmounts (the final commit),
mounts the context again FRESH (a new cache directory, so the tree comes from
the store and not from a leftover staging tree) and compares what it finds
with what the tool wrote. Where the mount's default fsync=commit makes a
durable point, the test also exports the context while it is still mounted
and checks that the fsync'd state already landed.

The binary comes from $CONTEXTFS_BIN (default build/tools/contextfs); the
helpers (Env, is_mounted) are those of test_mount.py. Every test fails when
the daemon logged an error. Timings of each phase are printed at the end of
the module (pytest -s shows them as they happen).

$CONTEXTFS_TOOLS_SQLITE_TXNS (default 2000) sets the transactions of the
fsync=local sqlite runs, $CONTEXTFS_TOOLS_SQLITE_COMMIT_TXNS (default 40)
those of the fsync=commit runs, where every transaction costs 1 (WAL) or 3
(rollback journal) full commits.
"""
import hashlib
import mmap
import os
import random
import shutil
import stat
import subprocess
import threading
import time

import pytest

from test_mount import Env, is_mounted

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
    reason="needs /dev/fuse and fusermount3",
)

SQLITE_TXNS = int(os.environ.get("CONTEXTFS_TOOLS_SQLITE_TXNS", "2000"))
SQLITE_COMMIT_TXNS = int(os.environ.get("CONTEXTFS_TOOLS_SQLITE_COMMIT_TXNS", "40"))

TIMINGS = []  # (test, phase, seconds, note)


def need(tool):
    """A missing tool fails (tools/setup-deps --test installs them all)."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail("%s not found: run tools/setup-deps --test" % tool, pytrace=False)
    return path


class Timer:
    def __init__(self, name):
        self.name = name
        self.t = time.monotonic()

    def lap(self, phase, note=""):
        now = time.monotonic()
        dt = now - self.t
        self.t = now
        TIMINGS.append((self.name, phase, dt, note))
        print("\n  [%s] %-28s %7.2fs %s" % (self.name, phase, dt, note), end="")
        return dt


@pytest.fixture(scope="module", autouse=True)
def timing_report(request):
    yield
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    if tr is None or not TIMINGS:
        return
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    with capman.global_and_fixture_disabled():
        tr.write_line("")
        tr.write_sep("-", "contextfs real-tool timings")
        per_test = {}
        for test, phase, dt, note in TIMINGS:
            per_test[test] = per_test.get(test, 0.0) + dt
            tr.write_line("%-26s %-32s %7.2fs  %s" % (test, phase, dt, note))
        for test, total in per_test.items():
            tr.write_line("%-26s %-32s %7.2fs" % (test, "TOTAL", total))


@pytest.fixture
def env(tmp_path, request):
    e = Env(str(tmp_path))
    e.run("init", "ctx")
    yield e
    e.cleanup()


@pytest.fixture
def timer(request):
    return Timer(request.node.name.replace("test_", "", 1))


def remount(env, mp, name):
    """Unmount (final commit) and mount again from the store alone."""
    env.umount(mp)
    assert not is_mounted(mp)
    return env.mount("ctx", name=name, cache=os.path.join(env.tmp, "cache-" + name))


def export(env, name):
    """The context as it is in the store now (while still mounted)."""
    d = os.path.join(env.tmp, name)
    env.run("export", "ctx", d)
    return d


def assert_no_daemon_errors(env):
    errs = env.log_errors()
    assert errs == [], "the daemon logged errors:\n" + "".join(errs)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def snapshot(root):
    """{rel: (kind, mode, size, sha256 | link target, mtime_ns_seconds)},
    lstat-based; the root itself is not included."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(d, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", None, 0, os.readlink(p), None)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode, 0, None, st.st_mtime_ns // 10**9)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", mode, st.st_size, sha256(p), st.st_mtime_ns // 10**9)
            else:
                out[rel] = ("other", mode, 0, None, None)
    return out


def assert_same_tree(got_root, want_root):
    got, want = snapshot(got_root), snapshot(want_root)
    only_got = sorted(set(got) - set(want))
    only_want = sorted(set(want) - set(got))
    assert not only_got and not only_want, "only in %s: %s; only in %s: %s" % (
        got_root, only_got[:20], want_root, only_want[:20])
    diff = [(k, got[k], want[k]) for k in sorted(want) if got[k] != want[k]]
    assert not diff, "%d entries differ (got, want), first: %s" % (len(diff), diff[:10])
    return len(want)


def hardlink_groups(root):
    groups = {}
    for d, dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(d, name)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                groups.setdefault(st.st_ino, []).append(os.path.relpath(p, root))
    return sorted(sorted(g) for g in groups.values())


# ---- a generated source-like tree ------------------------------------------

WORDS = ("static int return struct void char const unsigned size_t if else for while "
         "break goto out err rc len buf ptr node tree commit mount fsync rename").split()


def gen_tree(root, seed, nfiles, with_hardlinks=True):
    """A deterministic source-like tree: nested directories (some empty, some
    0700), text and binary files of mixed sizes, modes 0644/0755/0600/0640/0444,
    names with spaces and UTF-8, relative symlinks to files, directories and a
    missing name (all safe: no `..`, not absolute), hard links, an empty file,
    fixed mtimes. Returns the number of regular files."""
    rnd = random.Random(seed)
    os.makedirs(root)
    dirs = [""]
    for i in range(max(8, nfiles // 20)):
        parent = rnd.choice(dirs)
        if parent.count("/") >= 6:
            parent = ""
        name = rnd.choice(["src", "lib", "include", "tests", "docs", "pkg", "mod", "util", "ünï cødé", "dir"])
        d = os.path.join(parent, "%s%d" % (name, i)) if parent else "%s%d" % (name, i)
        os.makedirs(os.path.join(root, d))
        dirs.append(d)
    files = []
    for i in range(nfiles):
        d = rnd.choice(dirs)
        ext = rnd.choice([".c", ".h", ".py", ".md", ".txt", ".bin", ".sh", ""])
        name = "%s_%d%s" % (rnd.choice(WORDS), i, ext)
        if i % 97 == 0:
            name = "with space %d%s" % (i, ext)
        rel = os.path.join(d, name)
        r = rnd.random()
        if i == 0:
            data = b""
        elif i % 500 == 250:
            data = rnd.randbytes(1 << 20)
        elif ext == ".bin" or r < 0.02:
            data = rnd.randbytes(rnd.choice([100, 2000, 5000, 20000, 70000]))
        else:
            n = int(rnd.expovariate(1 / 2500)) + 1
            lines, size = [], 0
            while size < n:
                ln = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(1, 12))) + ";\n"
                lines.append(ln)
                size += len(ln)
            data = "".join(lines).encode()
        p = os.path.join(root, rel)
        with open(p, "wb") as f:
            f.write(data)
        mode = 0o755 if ext == ".sh" else rnd.choice([0o644] * 6 + [0o600, 0o640, 0o444])
        os.chmod(p, mode)
        files.append(rel)
    for i in range(max(4, nfiles // 40)):
        target = rnd.choice(files)
        d = os.path.dirname(target)
        kind = i % 4
        if kind == 0:  # same directory
            os.symlink(os.path.basename(target), os.path.join(root, d, "link_%d" % i))
        elif kind == 1:  # into a subdirectory, from the root
            os.symlink(target, os.path.join(root, "rootlink_%d" % i))
        elif kind == 2:  # a directory symlink
            sub = rnd.choice([x for x in dirs if x])
            os.symlink(sub, os.path.join(root, "dirlink_%d" % i))
        else:  # dangling, still safe
            os.symlink("missing_%d.h" % i, os.path.join(root, d, "dangling_%d" % i))
    if with_hardlinks:
        for i in range(max(4, nfiles // 50)):
            target = rnd.choice(files)
            os.link(os.path.join(root, target), os.path.join(root, os.path.dirname(target), "hard_%d" % i))
            if i % 3 == 0:  # a third name, in another directory
                os.link(os.path.join(root, target), os.path.join(root, "hard_other_%d" % i))
    for i in range(3):
        os.makedirs(os.path.join(root, "empty_%d" % i, "deeper"))
    os.chmod(os.path.join(root, "empty_1"), 0o700)
    # fixed mtimes (seconds with a fraction), bottom-up so directories keep theirs
    for d, ds, fs in os.walk(root, topdown=False):
        for name in fs + ds:
            p = os.path.join(d, name)
            t = 1_600_000_000 + rnd.randint(0, 10**8) + rnd.randint(0, 999) * 10**-3
            os.utime(p, (t, t), follow_symlinks=False)
    os.utime(root, (1_650_000_000, 1_650_000_000))
    return nfiles


# ---- git ---------------------------------------------------------------------


def git_env(env):
    e = dict(os.environ)
    home = os.path.join(env.tmp, "githome")
    os.makedirs(home, exist_ok=True)
    e.update(HOME=home, GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="tools", GIT_AUTHOR_EMAIL="tools@test",
             GIT_COMMITTER_NAME="tools", GIT_COMMITTER_EMAIL="tools@test", LC_ALL="C")
    with open(os.path.join(home, ".gitconfig"), "w") as f:
        f.write("[safe]\n\tdirectory = *\n[init]\n\tdefaultBranch = main\n[gc]\n\tauto = 0\n")
    return e


def git(ge, repo, *args, check=True):
    p = subprocess.run(["git", "-C", repo, *args], env=ge, capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError("git %s in %s -> %d\n%s\n%s" % (" ".join(args), repo, p.returncode, p.stdout, p.stderr))
    return p


def test_git(env, timer):
    need("git")
    ge = git_env(env)
    src = os.path.join(env.tmp, "gitsrc")
    bare = os.path.join(env.tmp, "origin.git")
    subprocess.run(["git", "init", "-q", src], env=ge, check=True)
    rnd = random.Random(7)
    for c in range(4):
        for i in range(30):
            d = os.path.join(src, "pkg%d" % (i % 5))
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "mod%d.py" % i), "a") as f:
                f.write("# commit %d\n" % c + "x = %d\n" % rnd.randint(0, 10**9) * 20)
        git(ge, src, "add", "-A")
        git(ge, src, "commit", "-qm", "origin commit %d" % c)
    subprocess.run(["git", "clone", "-q", "--bare", src, bare], env=ge, check=True)
    origin_log = git(ge, bare, "log", "--format=%H").stdout.split()
    assert len(origin_log) == 4
    timer.lap("setup (outside the mount)")

    mp = env.mount("ctx")
    repo = os.path.join(mp, "workspace/repo")
    # file:// takes the pack protocol (index-pack, fsync, rename), not a copy
    subprocess.run(["git", "clone", "-q", "file://" + bare, repo], env=ge, check=True, timeout=120)
    timer.lap("clone into the mount")
    for c in range(6):
        with open(os.path.join(repo, "pkg%d/mod%d.py" % (c % 5, c)), "a") as f:
            f.write("# mounted change %d\n" % c)
        if c == 1:
            os.makedirs(os.path.join(repo, "data"))
            with open(os.path.join(repo, "data/blob.bin"), "wb") as f:
                f.write(rnd.randbytes(200_000))
        if c == 2:
            git(ge, repo, "mv", "pkg0/mod0.py", "pkg0/renamed.py")
        if c == 3:
            git(ge, repo, "rm", "-q", "pkg1/mod1.py")
            os.symlink("renamed.py", os.path.join(repo, "pkg0/alias.py"))
        if c == 4:
            p = os.path.join(repo, "run.sh")
            with open(p, "w") as f:
                f.write("#!/bin/sh\necho hi\n")
            os.chmod(p, 0o755)
        git(ge, repo, "add", "-A")
        git(ge, repo, "commit", "-qm", "mounted commit %d" % c)
    git(ge, repo, "tag", "-a", "v1", "-m", "tagged in the mount")
    timer.lap("6 commits + tag")
    git(ge, repo, "gc", "-q", "--prune=now")
    timer.lap("gc --prune=now")
    fsck = git(ge, repo, "fsck", "--full", "--strict", "--no-dangling")
    assert fsck.stdout.strip() == "", fsck.stdout
    assert git(ge, repo, "status", "--porcelain", "--untracked-files=all").stdout == ""
    head = git(ge, repo, "rev-parse", "HEAD").stdout.strip()
    log = git(ge, repo, "log", "--format=%H").stdout.split()
    tree = git(ge, repo, "ls-tree", "-r", "HEAD").stdout
    assert len(log) == 10 and log[-4:] == origin_log
    counts = dict(ln.split(": ") for ln in git(ge, repo, "count-objects", "-v").stdout.splitlines())
    assert counts["count"] == "0" and counts["packs"] == "1", counts  # gc packed everything
    timer.lap("fsck + status", "%d commits by git's fsyncs so far" % env.status(mp)["commits"])

    mp2 = remount(env, mp, "again")
    timer.lap("unmount + fresh mount")
    repo2 = os.path.join(mp2, "workspace/repo")
    assert git(ge, repo2, "status", "--porcelain", "--untracked-files=all").stdout == ""
    fsck = git(ge, repo2, "fsck", "--full", "--strict", "--no-dangling")
    assert fsck.stdout.strip() == "" and "error" not in fsck.stderr, (fsck.stdout, fsck.stderr)
    assert git(ge, repo2, "rev-parse", "HEAD").stdout.strip() == head
    assert git(ge, repo2, "log", "--format=%H").stdout.split() == log
    assert git(ge, repo2, "ls-tree", "-r", "HEAD").stdout == tree
    assert git(ge, repo2, "describe").stdout.strip() == "v1"
    assert os.readlink(os.path.join(repo2, "pkg0/alias.py")) == "renamed.py"
    assert os.stat(os.path.join(repo2, "run.sh")).st_mode & 0o777 == 0o755
    git(ge, repo2, "diff", "--exit-code", "HEAD")
    # the remounted repository still works: push everything back to the origin
    git(ge, repo2, "push", "-q", "--follow-tags", "origin", "main")
    assert git(ge, bare, "log", "--format=%H").stdout.split() == log
    git(ge, bare, "fsck", "--full", "--strict")
    timer.lap("verify after remount + push")
    env.umount(mp2)
    assert_no_daemon_errors(env)


# ---- sqlite3 -----------------------------------------------------------------


def sqlite(db, sql, timeout=600):
    p = subprocess.run(["sqlite3", "-bail", db], input=sql, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, "sqlite3 %s -> %d\n%s\n%s" % (db, p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    return p.stdout


def sqlite_check(db):
    out = sqlite(db, "PRAGMA integrity_check;\nSELECT count(*), coalesce(max(i), 0), "
                     "coalesce(sum(length(v)), 0) FROM t;\n").split("\n")
    assert out[0] == "ok", out
    count, top, total = (int(x) for x in out[1].split("|"))
    return count, top, total


@pytest.mark.parametrize("journal,fsync,txns", [
    ("delete", "local", SQLITE_TXNS),
    ("wal", "local", SQLITE_TXNS),
    ("delete", "commit", SQLITE_COMMIT_TXNS),
    ("wal", "commit", SQLITE_COMMIT_TXNS),
])
def test_sqlite(env, timer, journal, fsync, txns):
    """sqlite3 (the CLI) in autocommit: one INSERT = one transaction, each
    fsync'd (synchronous=FULL). With fsync=commit every sqlite fsync is a full
    commit that has landed before sqlite goes on."""
    need("sqlite3")
    mp = env.mount("ctx", opts="fsync=" + fsync)
    db = os.path.join(mp, "workspace/db/t.db")
    os.makedirs(os.path.dirname(db))
    setup = "PRAGMA journal_mode=%s;\nPRAGMA synchronous=FULL;\n" % journal.upper()
    mode = sqlite(db, setup + "CREATE TABLE t(i INTEGER PRIMARY KEY, v TEXT NOT NULL);\n").strip()
    assert mode == journal, mode
    body = setup + "".join("INSERT INTO t(v) VALUES('row %d %s');\n" % (i, "x" * (i % 50)) for i in range(txns))
    t0 = time.monotonic()
    sqlite(db, body)
    dt = time.monotonic() - t0
    st = env.status(mp)
    timer.lap("%d transactions" % txns, "%.1f ms/txn, %d commits, fsync=%s" % (
        dt * 1000 / txns, st["commits"], fsync))
    expect = (txns, txns, sum(len("row %d %s" % (i, "x" * (i % 50))) for i in range(txns)))
    assert sqlite_check(db) == expect
    if fsync == "commit":
        # every transaction's fsync landed: the store already has them all
        # (rollback mode: the last commit point is the journal's unlink, which
        # sqlite does not fsync, so the fsync'd state may lack the last row)
        assert st["commits"] >= txns, st
        landed = sqlite_check(os.path.join(export(env, "ex"), "workspace/db/t.db"))
        if journal == "wal":
            assert landed == expect
        else:
            assert landed[0] in (txns - 1, txns), landed
        timer.lap("export while mounted", "rows landed by fsync: %d" % landed[0])
    else:
        assert st["commits"] == 0 and st["dirty"], st
    mp2 = remount(env, mp, "again")
    timer.lap("unmount + fresh mount")
    db2 = os.path.join(mp2, "workspace/db/t.db")
    assert sqlite_check(db2) == expect
    assert sqlite(db2, "PRAGMA journal_mode;").strip() == journal
    # the database stays writable after the remount
    sqlite(db2, "INSERT INTO t(v) VALUES('after remount');\n")
    assert sqlite_check(db2)[0] == txns + 1
    timer.lap("integrity_check + count")
    env.umount(mp2)
    assert_no_daemon_errors(env)


def test_nofollow_handle_survives_copy_on_write(env, timer):
    """Regression found by the sqlite WAL run with fsync=commit: sqlite opens
    every file with O_NOFOLLOW; a write through such a handle while a commit's
    snapshot shares the file makes the daemon copy the file (copy-on-write)
    and move the handle to the copy by reopening /proc/self/fd/N with the
    handle's flags. O_NOFOLLOW made that reopen fail (ELOOP): the write
    failed, and every later write through the handle went to the orphaned
    old inode while reporting success (lost at the next commit)."""
    mp = env.mount("ctx")
    w = os.path.join(mp, "workspace")
    blob = os.urandom(1 << 20)
    for i in range(16):  # makes a commit last long enough to write during it
        with open(os.path.join(w, "big%d" % i), "wb") as f:
            f.write(blob[i:] + blob[:i])
    p = os.path.join(w, "db")
    with open(p, "wb") as f:
        f.write(b"." * 4096)
    fd = os.open(p, os.O_RDWR | os.O_NOFOLLOW)
    want = bytearray(b"." * 4096)
    errors, off, rounds = [], 0, 0
    try:
        while env.status(mp)["copyOnWrites"] == 0 and rounds < 5:
            rounds += 1
            with open(os.path.join(w, "dirty"), "w") as f:
                f.write(str(rounds))
            t = threading.Thread(target=env.run, args=("sync", mp))
            t.start()
            while t.is_alive():
                try:
                    os.pwrite(fd, b"W", off)
                    want[off:off + 1] = b"W"
                except OSError as ex:
                    errors.append(ex)
                off = (off + 1) % 4096
                time.sleep(0.002)
            t.join()
        os.pwrite(fd, b"after", 0)  # after the commit: must reach the name
        want[0:5] = b"after"
    finally:
        os.close(fd)
    st = env.status(mp)
    timer.lap("writes during %d commits" % rounds, "%d copy-on-writes" % st["copyOnWrites"])
    assert errors == [], errors[:3]
    assert st["copyOnWrites"] >= 1, "no write landed during a commit: the test did not exercise copy-on-write"
    assert open(p, "rb").read() == bytes(want)
    mp2 = remount(env, mp, "again")
    assert open(os.path.join(mp2, "workspace/db"), "rb").read() == bytes(want)
    env.umount(mp2)
    assert_no_daemon_errors(env)


# ---- tar ---------------------------------------------------------------------

TAR_C = ["tar", "--sort=name", "--numeric-owner", "--format=gnu", "-cf", "-"]


def tar_roundtrip(env, timer, nfiles, seed, with_hardlinks):
    need("tar")
    src = os.path.join(env.tmp, "tsrc")
    gen_tree(src, seed=seed, nfiles=nfiles, with_hardlinks=with_hardlinks)
    archive = os.path.join(env.tmp, "src.tar")
    subprocess.run(["tar", "-C", src, "-cf", archive, "."], check=True)
    src_tar = subprocess.run(TAR_C + ["-C", src, "."], check=True, capture_output=True).stdout
    links = hardlink_groups(src)
    assert bool(links) == with_hardlinks
    timer.lap("generate tree", "%d files, %.1f MiB archive" % (nfiles, os.path.getsize(archive) / 2**20))

    mp = env.mount("ctx")
    dest = os.path.join(mp, "workspace/src")
    os.mkdir(dest)
    subprocess.run(["tar", "-C", dest, "-xf", archive], check=True, timeout=300)
    timer.lap("tar x into the mount")
    n = assert_same_tree(dest, src)
    assert hardlink_groups(dest) == links
    timer.lap("compare before unmount", "%d entries" % n)

    mp2 = remount(env, mp, "again")
    timer.lap("unmount + fresh mount")
    dest2 = os.path.join(mp2, "workspace/src")
    n = assert_same_tree(dest2, src)  # type, mode, size, sha256, link target, mtime
    got_links = hardlink_groups(dest2)
    assert got_links == links, (
        "hard links split by the commit: %d link groups in the source, %d after a remount "
        "(fuse/snapshot.c farm_dir copies every multi-link file per name)" % (len(links), len(got_links)))
    timer.lap("sha256 of every entry", "%d entries" % n)
    got_tar = subprocess.run(TAR_C + ["-C", dest2, "."], check=True, capture_output=True).stdout
    if got_tar != src_tar:
        a = os.path.join(env.tmp, "a.tar")
        b = os.path.join(env.tmp, "b.tar")
        with open(a, "wb") as f:
            f.write(src_tar)
        with open(b, "wb") as f:
            f.write(got_tar)
        la = subprocess.run(["tar", "--full-time", "-tvf", a], capture_output=True, text=True).stdout.splitlines()
        lb = subprocess.run(["tar", "--full-time", "-tvf", b], capture_output=True, text=True).stdout.splitlines()
        first = [(x, y) for x, y in zip(la, lb) if x != y][:5]
        pytest.fail("tar c of the mount differs from tar c of the source (%d vs %d members); first: %s" % (
            len(la), len(lb), first))
    timer.lap("tar c equals", "%.1f MiB" % (len(got_tar) / 2**20))
    env.umount(mp2)
    assert_no_daemon_errors(env)


def test_tar(env, timer):
    """tar x of a source-like tree (2,500 files, symlinks, modes, mtimes),
    sha256 of every file after a remount, tar c of the mount == of the source."""
    tar_roundtrip(env, timer, nfiles=2500, seed=11, with_hardlinks=False)


def test_tar_hardlinks(env, timer):
    """The same with hard links in the archive: a commit must keep them
    (REFERENCE.md 5.1: repeated inodes become hardlinks), so a remount shows
    one inode per link group and tar c stores them as links again."""
    tar_roundtrip(env, timer, nfiles=300, seed=12, with_hardlinks=True)


# ---- rsync -------------------------------------------------------------------


def rsync(*args):
    p = subprocess.run(["rsync", *args], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, "rsync %s -> %d\n%s\n%s" % (" ".join(args), p.returncode, p.stdout, p.stderr)
    return p.stdout


def test_rsync(env, timer):
    need("rsync")
    src = os.path.join(env.tmp, "rsrc")
    gen_tree(src, seed=23, nfiles=1000, with_hardlinks=False)
    timer.lap("generate tree", "1000 files")
    mp = env.mount("ctx")
    dest = os.path.join(mp, "workspace/rs")
    rsync("-a", src + "/", dest + "/")
    timer.lap("rsync -a into the mount")
    back = os.path.join(env.tmp, "rback")
    rsync("-a", dest + "/", back + "/")
    assert_same_tree(back, src)
    timer.lap("rsync -a back + compare")
    # change a few files through rsync's delta path (temp file + rename)
    for rel in sorted(os.listdir(src))[:3]:
        p = os.path.join(src, rel)
        if os.path.isfile(p) and not os.path.islink(p):
            os.chmod(p, 0o644)
            with open(p, "ab") as f:
                f.write(b"appended by the test\n")
    rsync("-a", "--delete", src + "/", dest + "/")
    timer.lap("rsync -a update")

    mp2 = remount(env, mp, "again")
    timer.lap("unmount + fresh mount")
    dest2 = os.path.join(mp2, "workspace/rs")
    out = rsync("-anci", "--delete", src + "/", dest2 + "/")
    assert out == "", "rsync -anc src -> mount reports differences:\n" + out[:3000]
    out = rsync("-anci", "--delete", dest2 + "/", src + "/")
    assert out == "", "rsync -anc mount -> src reports differences:\n" + out[:3000]
    assert_same_tree(dest2, src)
    timer.lap("rsync -anc both ways")
    env.umount(mp2)
    assert_no_daemon_errors(env)


# ---- editor-style saves --------------------------------------------------------


def test_editor_saves(env, timer):
    """vim (Ex mode, writebackup: rename the original away, write the new
    file, fsync, remove the backup) and python's write temp + fsync + rename +
    fsync(dir). With fsync=commit the saved content has landed when the
    editor returns."""
    need("vim")
    mp = env.mount("ctx")
    d = os.path.join(mp, "workspace/notes")
    os.mkdir(d)
    vimfile = os.path.join(d, "todo.txt")
    with open(vimfile, "w") as f:
        f.write("".join("line %d: todo\n" % i for i in range(500)))
    os.chmod(vimfile, 0o640)
    os.setxattr(vimfile, "user.tag", b"keep")
    p = subprocess.run(
        ["vim", "-Es", "-u", "NONE", "-i", "NONE", "-N",
         "-c", "set backupcopy=no writebackup nobackup fsync swapfile",
         "-c", "%s/todo/done/", "-c", "$put ='appended by vim'", "-c", "wq", vimfile],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, HOME=env.tmp))
    assert p.returncode == 0, (p.stdout, p.stderr)
    want_vim = "".join("line %d: done\n" % i for i in range(500)) + "appended by vim\n"
    assert open(vimfile).read() == want_vim
    assert sorted(os.listdir(d)) == ["todo.txt"], os.listdir(d)  # no backup, no swap file left
    assert os.stat(vimfile).st_mode & 0o777 == 0o640
    assert os.getxattr(vimfile, "user.tag") == b"keep"  # vim copies xattrs to the new file
    timer.lap("vim -Es edit + save", "%d commits" % env.status(mp)["commits"])
    # vim's fsync committed the new content (its backup may still be in that
    # snapshot: vim removes it after the fsync)
    ex = export(env, "ex1")
    assert open(os.path.join(ex, "workspace/notes/todo.txt")).read() == want_vim

    # python: the classic atomic save
    target = os.path.join(d, "config.json")
    for gen in range(5):
        tmp = os.path.join(d, ".config.json.tmp")
        with open(tmp, "w") as f:
            f.write('{"generation": %d, "pad": "%s"}\n' % (gen, "p" * 5000 * gen))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dfd)
        os.close(dfd)
    want_py = '{"generation": 4, "pad": "%s"}\n' % ("p" * 20000)
    timer.lap("5 x write/fsync/rename/fsyncdir", "%d commits in all" % env.status(mp)["commits"])
    ex = export(env, "ex2")
    exd = os.path.join(ex, "workspace/notes")
    assert sorted(os.listdir(exd)) == ["config.json", "todo.txt"], os.listdir(exd)
    assert open(os.path.join(exd, "config.json")).read() == want_py
    timer.lap("export while mounted")

    mp2 = remount(env, mp, "again")
    timer.lap("unmount + fresh mount")
    d2 = os.path.join(mp2, "workspace/notes")
    assert sorted(os.listdir(d2)) == ["config.json", "todo.txt"]
    assert open(os.path.join(d2, "todo.txt")).read() == want_vim
    assert os.stat(os.path.join(d2, "todo.txt")).st_mode & 0o777 == 0o640
    assert open(os.path.join(d2, "config.json")).read() == want_py
    timer.lap("verify after remount")
    env.umount(mp2)
    assert_no_daemon_errors(env)


# ---- python writes and mmap ----------------------------------------------------

PAGE = mmap.PAGESIZE


def test_python_write_and_mmap(env, timer):
    mp = env.mount("ctx")
    w = os.path.join(mp, "workspace/py")
    os.mkdir(w)
    rnd = random.Random(5)
    want = {}

    # 1. plain writes: sequential, pwrite at random offsets (holes), append,
    #    truncate down and up
    p = os.path.join(w, "plain.bin")
    buf = bytearray(rnd.randbytes(3 << 20))
    with open(p, "wb") as f:
        f.write(buf)
    fd = os.open(p, os.O_RDWR)
    for _ in range(200):
        off = rnd.randrange(0, 4 << 20)
        chunk = rnd.randbytes(rnd.randint(1, 20000))
        os.pwrite(fd, chunk, off)
        if off > len(buf):
            buf.extend(b"\0" * (off - len(buf)))
        buf[off:off + len(chunk)] = chunk
    os.ftruncate(fd, 2_500_001)
    del buf[2_500_001:]
    os.ftruncate(fd, 2_600_000)
    buf.extend(b"\0" * (2_600_000 - len(buf)))
    os.close(fd)
    with open(p, "ab") as f:
        f.write(b"tail")
    buf.extend(b"tail")
    want["plain.bin"] = bytes(buf)
    assert open(p, "rb").read() == want["plain.bin"]

    # 2. shared writable mmap of a sparse file, scattered pages, msync
    p = os.path.join(w, "mapped.bin")
    size = 4 << 20
    buf = bytearray(size)
    with open(p, "w+b") as f:
        f.truncate(size)
        mm = mmap.mmap(f.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        for i in range(300):
            off = rnd.randrange(0, size - 64)
            data = rnd.randbytes(rnd.randint(1, 64))
            mm[off:off + len(data)] = data
            buf[off:off + len(data)] = data
        mm[size - 1:size] = b"E"
        buf[size - 1:size] = b"E"
        mm.flush()  # msync(MS_SYNC)
        mm.close()
    want["mapped.bin"] = bytes(buf)

    # 3. mmap of an existing file: change a page range, msync just that range
    p = os.path.join(w, "partial.bin")
    buf = bytearray(rnd.randbytes(64 * PAGE))
    with open(p, "wb") as f:
        f.write(buf)
    with open(p, "r+b") as f:
        mm = mmap.mmap(f.fileno(), 0)
        mm[10 * PAGE:12 * PAGE] = b"M" * (2 * PAGE)
        buf[10 * PAGE:12 * PAGE] = b"M" * (2 * PAGE)
        mm.flush(10 * PAGE, 2 * PAGE)
        mm.close()
    want["partial.bin"] = bytes(buf)

    # 4. no msync: dirty pages written back when the mapping goes away
    p = os.path.join(w, "nomsync.bin")
    buf = bytearray(rnd.randbytes(16 * PAGE))
    with open(p, "wb") as f:
        f.write(buf)
    f = open(p, "r+b")
    mm = mmap.mmap(f.fileno(), 0)
    f.close()  # the mapping outlives the descriptor
    mm[PAGE:PAGE + 5] = b"dirty"
    buf[PAGE:PAGE + 5] = b"dirty"
    mm.close()
    want["nomsync.bin"] = bytes(buf)

    # 5. mmap writes mixed with write(): the same pages through both paths
    p = os.path.join(w, "mixed.bin")
    buf = bytearray(8 * PAGE)
    with open(p, "w+b") as f:
        f.truncate(8 * PAGE)
        mm = mmap.mmap(f.fileno(), 8 * PAGE)
        mm[0:4] = b"MMAP"
        buf[0:4] = b"MMAP"
        mm.flush()
        os.pwrite(f.fileno(), b"WRITE", 2)
        buf[2:7] = b"WRITE"
        assert mm[0:7] == bytes(buf[0:7])  # the mapping sees write()
        mm[3 * PAGE:3 * PAGE + 3] = b"abc"
        buf[3 * PAGE:3 * PAGE + 3] = b"abc"
        mm.flush()
        mm.close()
        os.fsync(f.fileno())
    want["mixed.bin"] = bytes(buf)
    timer.lap("writes + mmap", "%d commits (msync/fsync)" % env.status(mp)["commits"])

    for name, data in want.items():
        with open(os.path.join(w, name), "rb") as f:
            assert f.read() == data, name
    # the msync/fsync above committed: the store already has the mmap'd pages
    ex = os.path.join(export(env, "ex"), "workspace/py")
    for name in ("mapped.bin", "partial.bin", "mixed.bin"):
        with open(os.path.join(ex, name), "rb") as f:
            assert f.read() == want[name], name + " (landed by msync/fsync)"
    timer.lap("export while mounted")

    mp2 = remount(env, mp, "again")
    timer.lap("unmount + fresh mount")
    w2 = os.path.join(mp2, "workspace/py")
    assert sorted(os.listdir(w2)) == sorted(want)
    for name, data in want.items():
        p = os.path.join(w2, name)
        with open(p, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == hashlib.sha256(data).hexdigest(), name
        with open(p, "rb") as f:  # and through a read-only mapping
            if data:
                with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
                    assert mm[:] == data, name
    # a shared mapping of the remounted file still writes through
    with open(os.path.join(w2, "mapped.bin"), "r+b") as f:
        with mmap.mmap(f.fileno(), 0) as mm:
            mm[0:5] = b"again"
            mm.flush()
    with open(os.path.join(w2, "mapped.bin"), "rb") as f:
        assert f.read(5) == b"again"
    timer.lap("verify after remount")
    env.umount(mp2)
    assert_no_daemon_errors(env)

