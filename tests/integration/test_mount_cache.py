"""The kernel's caches of a contextfs mount never go stale.

A mount lets the kernel keep attributes, names and absences for a day
(attr_timeout, default 86400 s; docs/SEMANTICS.md "Caching"): only the
daemon changes the staging tree, and the kernel learns of each change it
asked for. These cases make the changes that could slip past that argument
(another name of the same inode, a rename over a cached entry, a cached
absence, the extra links a commit's snapshot holds) and compare what the
mount shows, right after, with the staging tree itself. Every case runs on
the write-through mount, with -o writeback_cache, and with allow_other (the
kernel checks permissions then; without it a root mount skips them).

Run:  CONTEXTFS_BIN=build-x/tools/contextfs /usr/bin/python3 -m pytest tests/integration/test_mount_cache.py
"""
import errno
import os
import subprocess

import pytest

from test_mount import BIN, Env  # noqa: F401  (BIN: the binary under test)

MODES = ["", "writeback_cache", "allow_other"]


@pytest.fixture(params=MODES, ids=["writethrough", "writeback_cache", "allow_other"])
def mnt(tmp_path, request):
    base = str(tmp_path)
    os.chmod(base, 0o755)
    env = Env(base)
    env.run("init", "ctx")
    mp = env.mount("ctx", opts=request.param)
    st = env.status(mp)
    ws = os.path.join(mp, "workspace")
    env.mode = request.param
    yield env, mp, ws, os.path.join(st["staging"], "workspace")
    try:
        if os.path.ismount(mp):
            env.umount(mp)
        assert env.log_errors() == []
    finally:
        env.cleanup()


def wfile(path, data):
    with open(path, "wb") as f:
        f.write(data)


def rfile(path):
    with open(path, "rb") as f:
        return f.read()


def view(st):
    return (st.st_mode, st.st_nlink, st.st_size, st.st_mtime_ns)


def same_as_staging(ws, stg, *names):
    """What the mount shows for each name equals the staging file's own
    attributes (no commit runs now, so no snapshot link is counted)."""
    for nm in names:
        m, s = os.lstat(os.path.join(ws, nm)), os.lstat(os.path.join(stg, nm))
        assert view(m) == view(s), (nm, view(m), view(s))


def commit(env, mp):
    env.run("commit", mp, "-m", "cache test")


def test_defaults_reported(mnt):
    env, mp, ws, stg = mnt
    st = env.status(mp)
    assert st["attrTimeout"] == 86400
    # root without allow_other: only root reaches the mount, no kernel checks
    assert st["kernelPermissionChecks"] is (env.mode == "allow_other")


def test_attr_timeout_and_default_permissions_options(tmp_path):
    env = Env(str(tmp_path))
    env.run("init", "ctx")
    try:
        mp = env.mount("ctx", opts="attr_timeout=0,default_permissions")
        st = env.status(mp)
        assert st["attrTimeout"] == 0 and st["kernelPermissionChecks"] is True
        env.umount(mp)
        p = env.mount("ctx", name="m2", opts="attr_timeout=86401", check=False)
        assert p.returncode != 0 and "attr_timeout" in p.stderr
    finally:
        env.cleanup()


def test_link_count_through_other_names(mnt):
    env, mp, ws, stg = mnt
    f, g, h = (os.path.join(ws, x) for x in ("f", "g", "h"))
    wfile(f, b"hello")
    assert os.stat(f).st_nlink == 1  # cached now
    os.link(f, g)
    assert os.stat(f).st_nlink == 2 and os.stat(g).st_nlink == 2
    os.link(g, h)
    assert os.stat(f).st_nlink == 3
    same_as_staging(ws, stg, "f", "g", "h")
    os.unlink(g)
    assert os.stat(f).st_nlink == 2 and os.stat(h).st_nlink == 2
    with pytest.raises(FileNotFoundError):
        os.stat(g)
    os.unlink(h)
    assert os.stat(f).st_nlink == 1
    same_as_staging(ws, stg, "f")


def test_link_count_across_commits(mnt):
    """A commit's snapshot hard-links every single-link file while it is
    packed: that link must never show, neither while cached nor after."""
    env, mp, ws, stg = mnt
    f, g = os.path.join(ws, "f"), os.path.join(ws, "g")
    wfile(f, b"one")
    os.makedirs(os.path.join(ws, "d"))
    assert os.stat(f).st_nlink == 1
    commit(env, mp)
    assert os.stat(f).st_nlink == 1
    os.link(f, g)
    assert os.stat(f).st_nlink == 2
    commit(env, mp)
    assert os.stat(g).st_nlink == 2
    os.unlink(g)
    assert os.stat(f).st_nlink == 1
    commit(env, mp)
    assert os.stat(f).st_nlink == 1 and os.stat(os.path.join(ws, "d")).st_nlink == 2
    # a write after the commit (the file is no longer shared) and after a
    # rename of a committed file
    wfile(f, b"two!")
    os.rename(f, g)
    assert os.stat(g).st_nlink == 1 and os.stat(g).st_size == 4
    same_as_staging(ws, stg, "g", "d")


def test_size_and_content_through_another_name(mnt):
    env, mp, ws, stg = mnt
    f, g = os.path.join(ws, "f"), os.path.join(ws, "g")
    wfile(f, b"0123456789")
    assert os.stat(f).st_size == 10 and rfile(f) == b"0123456789"
    os.link(f, g)
    os.truncate(g, 3)
    assert os.stat(f).st_size == 3 and rfile(f) == b"012"
    with open(g, "ab") as fh:
        fh.write(b"abc")
    assert os.stat(f).st_size == 6 and rfile(f) == b"012abc"
    os.chmod(g, 0o600)
    assert os.stat(f).st_mode & 0o777 == 0o600
    same_as_staging(ws, stg, "f", "g")


def test_rename_over_cached_entry(mnt):
    env, mp, ws, stg = mnt
    a, b = os.path.join(ws, "a"), os.path.join(ws, "b")
    wfile(a, b"A")
    wfile(b, b"BBBB")
    ino_a = os.stat(a).st_ino
    assert os.stat(b).st_size == 4 and rfile(b) == b"BBBB"  # cached
    os.rename(a, b)
    st = os.stat(b)
    assert st.st_ino == ino_a and st.st_size == 1 and rfile(b) == b"A"
    with pytest.raises(FileNotFoundError):
        os.stat(a)
    # a directory renamed over an empty one
    os.makedirs(os.path.join(ws, "d1/sub"))
    os.makedirs(os.path.join(ws, "d2"))
    assert os.listdir(os.path.join(ws, "d2")) == []
    os.rename(os.path.join(ws, "d1"), os.path.join(ws, "d2"))
    assert os.listdir(os.path.join(ws, "d2")) == ["sub"]
    assert not os.path.exists(os.path.join(ws, "d1"))
    same_as_staging(ws, stg, "b", "d2", "d2/sub")


def test_unlinked_and_absent_names(mnt):
    """Absences are cached too: a name that did not exist must appear once
    created (by create, mkdir, link, rename or symlink), and one that was
    removed must be gone at once."""
    env, mp, ws, stg = mnt
    x = os.path.join(ws, "x")
    wfile(x, b"x")
    assert os.path.exists(x)
    os.unlink(x)
    for fn in (os.stat, os.lstat, rfile):
        with pytest.raises(FileNotFoundError):
            fn(x)
    names = ["n_create", "n_mkdir", "n_link", "n_rename", "n_symlink"]
    for nm in names:  # cache every absence
        assert not os.path.lexists(os.path.join(ws, nm))
    wfile(os.path.join(ws, "src"), b"s")
    wfile(os.path.join(ws, "n_create"), b"c")
    os.mkdir(os.path.join(ws, "n_mkdir"))
    os.link(os.path.join(ws, "src"), os.path.join(ws, "n_link"))
    wfile(os.path.join(ws, "tmp"), b"r")
    os.rename(os.path.join(ws, "tmp"), os.path.join(ws, "n_rename"))
    os.symlink("src", os.path.join(ws, "n_symlink"))
    for nm in names:
        assert os.path.lexists(os.path.join(ws, nm)), nm
    assert rfile(os.path.join(ws, "n_symlink")) == b"s"
    assert not os.path.exists(os.path.join(ws, "tmp"))
    os.rmdir(os.path.join(ws, "n_mkdir"))
    with pytest.raises(FileNotFoundError):
        os.listdir(os.path.join(ws, "n_mkdir"))
    assert sorted(os.listdir(ws)) == sorted(os.listdir(stg))


def test_times_after_write_and_utime(mnt):
    env, mp, ws, stg = mnt
    f = os.path.join(ws, "f")
    wfile(f, b"1")
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))
    assert os.stat(f).st_mtime_ns == 2_000_000_000
    with open(f, "r+b") as fh:
        fh.write(b"2")
        fh.flush()
        os.fsync(fh.fileno())
    assert os.stat(f).st_mtime_ns > 2_000_000_000
    same_as_staging(ws, stg, "f")


def test_directory_link_count_and_size(mnt):
    env, mp, ws, stg = mnt
    d = os.path.join(ws, "d")
    os.mkdir(d)
    assert os.stat(d).st_nlink == 2
    for i in range(3):
        os.mkdir(os.path.join(d, "s%d" % i))
    assert os.stat(d).st_nlink == 5
    os.rmdir(os.path.join(d, "s1"))
    assert os.stat(d).st_nlink == 4
    os.rename(os.path.join(d, "s2"), os.path.join(ws, "s2"))
    assert os.stat(d).st_nlink == 3
    same_as_staging(ws, stg, "d", "s2")


def test_root_only_mount_keeps_root_semantics(mnt):
    """Without the kernel's checks, root still cannot execute a file without
    execute bits, and access(2) answers as on a local filesystem."""
    env, mp, ws, stg = mnt
    f = os.path.join(ws, "script")
    wfile(f, b"#!/bin/sh\nexit 0\n")
    os.chmod(f, 0o644)
    assert not os.access(f, os.X_OK)
    assert os.access(f, os.R_OK | os.W_OK)
    with pytest.raises(PermissionError):
        subprocess.run([f], check=True)
    os.chmod(f, 0o744)
    assert os.access(f, os.X_OK)
    subprocess.run([f], check=True)
    os.chmod(f, 0o000)
    assert rfile(f).startswith(b"#!")  # root reads a mode-000 file
    d = os.path.join(ws, "locked")
    os.mkdir(d, 0o500)
    wfile(os.path.join(d, "inside"), b"root may")  # ... and writes a 0500 dir
    assert os.listdir(d) == ["inside"]
    with pytest.raises(OSError) as e:
        os.rmdir(d)
    assert e.value.errno == errno.ENOTEMPTY


def test_close_without_flush_still_delivers(mnt):
    """On a staging filesystem whose close(2) reports nothing (ext4, xfs,
    btrfs, tmpfs, f2fs) the mount answers FLUSH with ENOSYS once and the
    kernel stops sending it. What close(2) covers must not change: with
    -o writeback_cache the kernel still hands its dirty pages over before
    close returns, so the staging file has them at once."""
    env, mp, ws, stg = mnt
    fstype = subprocess.run(["stat", "-f", "-c", "%T", stg], capture_output=True,
                            text=True, check=True).stdout.strip()
    silent = fstype in ("ext2/ext3", "xfs", "btrfs", "tmpfs", "f2fs")
    assert env.status(mp)["flushOnClose"] is (not silent)
    for i in range(20):
        data = os.urandom(3000 + i * 1000)
        p = os.path.join(ws, "c%d" % i)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data[:1000])
        os.pwrite(fd, data[1000:], 1000)
        os.close(fd)
        assert rfile(os.path.join(stg, "c%d" % i)) == data, i
        assert rfile(p) == data
    if env.mode != "writeback_cache":
        # (the kernel sends its own mtime for written-back pages later)
        same_as_staging(ws, stg, "c0", "c19")
