"""POSIX conformance of a contextfs mount, errno-exact, in the spirit of pjdfstest.

Every case runs the same operation on a directory of the mount and on a
native directory of the same kind of filesystem the staging tree lives on,
and asserts the identical outcome: the same return value, or the same errno
(and, where the expected errno is known, that errno). Cases that have no
native counterpart (the top-level layout, the xattr namespaces the mount
keeps, commits on fsync) assert the mount's documented behaviour.

One mount serves the whole module, in three modes: write-through and
-o writeback_cache, both with allow_other so that the non-root cases (run in
a forked child with uid/gid 65534) reach it and the kernel checks
permissions (default_permissions); and "rootonly", write-through without
allow_other, where only root can reach the mount and the daemon does not ask
the kernel for permission checks (fuse/mount.c serve()): there the non-root
cases check that uid 65534 is refused and skip the rest. The kernel keeps
attributes, names and absences for a day (attr_timeout), so every case is
also a check that nothing it cached went stale. The mount is unmounted at
the end, and the daemon must not have logged any error.

Run:  CONTEXTFS_BIN=build-x/tools/contextfs /usr/bin/python3 -m pytest tests/integration/test_posix.py
"""
import ctypes
import ctypes.util
import errno
import fcntl
import mmap
import os
import pickle
import shutil
import stat
import struct
import tempfile
import time

import pytest

from test_mount import Env, is_mounted  # the shared mount harness

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
    reason="needs /dev/fuse and fusermount3",
)

NOBODY = 65534

# ---- libc wrappers for what the os module does not expose ------------------

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 1, 2, 0x10
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
SEEK_DATA, SEEK_HOLE = 3, 4


def _check(r):
    if r == -1 or (isinstance(r, int) and r < 0):
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def renameat2(a, b, flags):
    _check(libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), flags))


def fallocate(fd, mode, off, length):
    _check(libc.fallocate(fd, mode, off, length))


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(Timespec), ctypes.c_int]


def utimensat(path, atime, mtime, follow=True):
    """atime/mtime: (sec, nsec) or UTIME_NOW / UTIME_OMIT."""
    ts = (Timespec * 2)()
    for i, t in enumerate((atime, mtime)):
        if t in (UTIME_NOW, UTIME_OMIT):
            ts[i].tv_sec, ts[i].tv_nsec = 0, t
        else:
            ts[i].tv_sec, ts[i].tv_nsec = t
    _check(libc.utimensat(AT_FDCWD, os.fsencode(path), ts, 0 if follow else 0x100))


libc.lgetxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
libc.lgetxattr.restype = ctypes.c_ssize_t
libc.llistxattr.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
libc.llistxattr.restype = ctypes.c_ssize_t


def getxattr_size(path, name, size):
    """lgetxattr with a caller-sized buffer (ERANGE when too small)."""
    buf = ctypes.create_string_buffer(max(size, 1))
    return _check(libc.lgetxattr(os.fsencode(path), name.encode(), buf if size else None, size))


def listxattr_size(path, size):
    buf = ctypes.create_string_buffer(max(size, 1))
    return _check(libc.llistxattr(os.fsencode(path), buf if size else None, size))


# opendir/readdir/telldir/seekdir, for offset consistency
libc.opendir.argtypes = [ctypes.c_char_p]
libc.opendir.restype = ctypes.c_void_p
libc.readdir.argtypes = [ctypes.c_void_p]
libc.readdir.restype = ctypes.c_void_p
libc.telldir.argtypes = [ctypes.c_void_p]
libc.telldir.restype = ctypes.c_long
libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
libc.rewinddir.argtypes = [ctypes.c_void_p]
libc.closedir.argtypes = [ctypes.c_void_p]
DIRENT_NAME_OFF = 8 + 8 + 2 + 1  # d_ino, d_off, d_reclen, d_type


class Dir:
    def __init__(self, path):
        ctypes.set_errno(0)
        self.d = libc.opendir(os.fsencode(path))
        if not self.d:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), path)

    def read(self):
        ctypes.set_errno(0)
        p = libc.readdir(self.d)
        if not p:
            e = ctypes.get_errno()
            if e:
                raise OSError(e, os.strerror(e))
            return None
        return ctypes.string_at(p + DIRENT_NAME_OFF).decode()

    def tell(self):
        return libc.telldir(self.d)

    def seek(self, off):
        libc.seekdir(self.d, off)

    def close(self):
        libc.closedir(self.d)


# ---- comparison harness ----------------------------------------------------


def outcome(fn, root):
    """('ok', value) or ('err', 'ENAME') of fn(root)."""
    try:
        return ("ok", fn(root))
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno, e.errno))


def in_child(fn, *args, uid=None, gid=None):
    """Runs fn(*args) in a forked child (optionally as uid/gid) and returns
    its outcome: ('ok', value) or ('err', 'ENAME'); any other exception
    fails the test with its text."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 0
        try:
            os.close(r)
            if gid is not None:
                os.setgroups([])
                os.setgid(gid)
            if uid is not None:
                os.setuid(uid)
            try:
                res = ("ok", fn(*args))
            except OSError as e:
                res = ("err", errno.errorcode.get(e.errno, e.errno))
            except BaseException as e:  # noqa
                res = ("exc", repr(e))
            os.write(w, pickle.dumps(res))
        except BaseException:  # noqa
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and data, "child failed"
    res = pickle.loads(data)
    assert res[0] != "exc", res[1]
    return res


def as_nobody(fn, *args):
    return in_child(fn, *args, uid=NOBODY, gid=NOBODY)


class Pair:
    """A test directory on the mount (m) and its native twin (n)."""

    def __init__(self, env, mp, m, n):
        self.env, self.mp, self.m, self.n = env, mp, m, n

    def both(self, fn):
        """Runs fn on both roots: returns (native outcome, mount outcome)."""
        return outcome(fn, self.n), outcome(fn, self.m)

    def setup(self, fn):
        """Runs fn on both; both must succeed."""
        n, m = self.both(fn)
        assert n[0] == "ok" and m[0] == "ok", "setup failed: native %r, mount %r" % (n, m)
        return n[1], m[1]

    def same(self, fn, err=None, value=None):
        """fn must give the same outcome on both; with err, that errno; else success
        (and, with value, that return value). Returns the common value."""
        n, m = self.both(fn)
        assert m == n, "mount %r != native %r" % (m, n)
        if err is not None:
            assert n == ("err", errno.errorcode[err]), "expected %s, both gave %r" % (errno.errorcode[err], n)
        else:
            assert n[0] == "ok", "expected success, both gave %r" % (n,)
            if value is not None:
                assert n[1] == value, n[1]
        return n[1]

    def other_users(self):
        """Non-root cases need allow_other: on the root-only mount, check
        that uid 65534 cannot reach it at all, and skip the rest."""
        if self.rootonly:
            assert as_nobody(os.stat, self.m) == ("err", "EACCES")
            assert self.env.status(self.mp)["kernelPermissionChecks"] is False
            pytest.skip("root-only mount: other users are refused by the kernel")
        assert self.env.status(self.mp)["kernelPermissionChecks"] is True

    def nobody(self, fn, err=None):
        self.other_users()
        n = as_nobody(fn, self.n)
        m = as_nobody(fn, self.m)
        assert m == n, "as uid %d: mount %r != native %r" % (NOBODY, m, n)
        if err is not None:
            assert n == ("err", errno.errorcode[err]), n
        else:
            assert n[0] == "ok", n
        return n[1]


def j(root, *parts):
    return os.path.join(root, *parts)


def wfile(path, data=b"", mode=0o644):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return len(data)


def with_fd(path, flags, fn):
    fd = os.open(path, flags)
    try:
        return fn(fd)
    finally:
        os.close(fd)


def rfile(path):
    with open(path, "rb") as f:
        return f.read()


def st_view(st, times=False):
    """The stat fields both sides must agree on."""
    v = (stat.filemode(st.st_mode), st.st_nlink, st.st_uid, st.st_gid,
         st.st_size if not stat.S_ISDIR(st.st_mode) else None)
    if times:
        v += (st.st_mtime_ns,)
    return v


# ---- fixtures ----------------------------------------------------------------


@pytest.fixture(scope="module", params=["writethrough", "writeback_cache", "rootonly"])
def mounted(request):
    """The default write-through mount, -o writeback_cache (the kernel
    buffers writes) and a root-only mount (no allow_other: no kernel
    permission checks): all must behave as the native filesystem."""
    # under /tmp, traversable by uid 65534 (pytest's tmp_path is 0700)
    base = tempfile.mkdtemp(prefix="cfs-posix-", dir="/tmp")
    os.chmod(base, 0o755)
    env = Env(base)
    env.run("init", "ctx")
    opts = {"writethrough": "allow_other", "writeback_cache": "allow_other,writeback_cache",
            "rootonly": ""}[request.param]
    mp = env.mount("ctx", opts=opts)
    os.chmod(j(mp, "workspace"), 0o755)
    native = j(base, "native")
    os.mkdir(native, 0o755)
    yield env, mp, native, request.param
    try:
        if is_mounted(mp):
            env.umount(mp)
        errs = env.log_errors()
        assert errs == [], errs
    finally:
        env.cleanup()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pp(mounted, request):
    env, mp, native, mode = mounted
    name = "t-" + request.node.name.replace("[", "-").replace("]", "")[:80]
    m = j(mp, "workspace", name)
    n = j(native, name)
    old = os.umask(0o022)
    os.mkdir(m, 0o755)
    os.mkdir(n, 0o755)
    pair = Pair(env, mp, m, n)
    pair.wb = mode == "writeback_cache"
    pair.rootonly = mode == "rootonly"
    yield pair
    os.umask(old)


# ---- open / creat ------------------------------------------------------------


def test_open_creat_flags(pp):
    pp.setup(lambda r: wfile(j(r, "f"), b"hello world"))
    pp.setup(lambda r: os.mkdir(j(r, "d")))
    pp.setup(lambda r: os.symlink("f", j(r, "sl")))
    pp.setup(lambda r: os.symlink("d", j(r, "sld")))
    pp.setup(lambda r: os.symlink("nowhere", j(r, "dangling")))

    def op(path, flags, mode=0o644):
        def f(r):
            fd = os.open(j(r, path), flags, mode)
            try:
                return os.fstat(fd).st_size
            finally:
                os.close(fd)
        return f

    pp.same(op("f", os.O_CREAT | os.O_EXCL | os.O_WRONLY), errno.EEXIST)
    pp.same(op("d", os.O_CREAT | os.O_EXCL | os.O_WRONLY), errno.EEXIST)
    pp.same(op("sl", os.O_CREAT | os.O_EXCL | os.O_WRONLY), errno.EEXIST)
    # O_EXCL does not follow a dangling link either
    pp.same(op("dangling", os.O_CREAT | os.O_EXCL | os.O_WRONLY), errno.EEXIST)
    pp.same(op("f", os.O_RDONLY | os.O_DIRECTORY), errno.ENOTDIR)
    pp.same(op("sl", os.O_RDONLY | os.O_NOFOLLOW), errno.ELOOP)
    pp.same(op("sld", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW), errno.ENOTDIR)
    pp.same(op("sld", os.O_RDONLY | os.O_DIRECTORY), value=os.stat(j(pp.n, "d")).st_size)
    pp.same(op("d", os.O_WRONLY), errno.EISDIR)
    pp.same(op("d", os.O_RDWR), errno.EISDIR)
    pp.same(op("missing", os.O_RDONLY), errno.ENOENT)
    pp.same(op("missing/x", os.O_RDONLY | os.O_CREAT), errno.ENOENT)
    pp.same(op("f/x", os.O_RDONLY), errno.ENOTDIR)
    pp.same(op("f/x", os.O_RDONLY | os.O_CREAT), errno.ENOTDIR)
    pp.same(op("new", os.O_CREAT | os.O_DIRECTORY | os.O_RDONLY), errno.EINVAL)
    # O_CREAT through a dangling symlink creates its target
    pp.same(op("dangling", os.O_CREAT | os.O_WRONLY), value=0)
    pp.same(lambda r: os.path.isfile(j(r, "nowhere")), value=True)
    # O_TRUNC
    pp.same(op("f", os.O_WRONLY | os.O_TRUNC), value=0)
    pp.same(lambda r: os.stat(j(r, "f")).st_size, value=0)
    # created mode honours the umask; O_CREAT on an existing file keeps mode
    pp.same(op("m1", os.O_CREAT | os.O_WRONLY, 0o777), value=0)
    pp.same(lambda r: oct(stat.S_IMODE(os.stat(j(r, "m1")).st_mode)), value="0o755")
    pp.same(op("m1", os.O_CREAT | os.O_WRONLY, 0o600), value=0)
    pp.same(lambda r: oct(stat.S_IMODE(os.stat(j(r, "m1")).st_mode)), value="0o755")


def test_o_append_and_rw_mode_errors(pp):
    pp.setup(lambda r: wfile(j(r, "f"), b"0123456789"))

    def append(r):
        fd = os.open(j(r, "f"), os.O_WRONLY | os.O_APPEND)
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, b"AB")
            os.pwrite(fd, b"CD", 0)  # Linux: pwrite on O_APPEND appends
            return os.lseek(fd, 0, os.SEEK_CUR)
        finally:
            os.close(fd)

    pp.same(append, value=12)  # pwrite does not move the file offset
    pp.same(lambda r: rfile(j(r, "f")), value=b"0123456789ABCD")

    def write_rdonly(r):
        fd = os.open(j(r, "f"), os.O_RDONLY)
        try:
            return os.write(fd, b"x")
        finally:
            os.close(fd)

    def read_wronly(r):
        fd = os.open(j(r, "f"), os.O_WRONLY)
        try:
            return os.read(fd, 1)
        finally:
            os.close(fd)

    pp.same(write_rdonly, errno.EBADF)
    pp.same(read_wronly, errno.EBADF)


def test_read_write_offsets_and_holes(pp):
    def scenario(r):
        p = j(r, "h")
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            out = []
            out.append(os.pwrite(fd, b"tail", 1 << 20))
            out.append(os.fstat(fd).st_size)
            out.append(os.pread(fd, 8, 4096) == b"\0" * 8)
            out.append(os.pread(fd, 100, (1 << 20) - 2))
            out.append(os.pread(fd, 10, 1 << 21))  # past EOF
            out.append(os.pwrite(fd, b"head", 3))
            out.append(os.pread(fd, 10, 0))
            out.append(os.lseek(fd, 0, SEEK_DATA))
            hole = os.lseek(fd, 0, SEEK_HOLE)
            if pp.wb:
                # -o writeback_cache: the kernel answers SEEK_HOLE from its
                # own size (pages may not be written back yet): no holes
                # before EOF (allowed by POSIX, docs/SEMANTICS.md)
                assert r == pp.n or hole == os.fstat(fd).st_size, hole
                hole = None
            out.append(hole)
            out.append(os.lseek(fd, 0, os.SEEK_END))
            out.append(os.lseek(fd, 100, os.SEEK_END))
            # a read at the new position sees nothing; a write leaves a hole
            out.append(os.read(fd, 5))
            out.append(os.write(fd, b"X"))
            out.append(os.fstat(fd).st_size)
            # unaligned overwrite across a page boundary
            out.append(os.pwrite(fd, b"y" * 5000, 4000))
            out.append(os.pread(fd, 5010, 3995))
            return out
        finally:
            os.close(fd)

    pp.same(scenario)
    pp.same(lambda r: with_fd(j(r, "h"), os.O_RDONLY, lambda fd: os.lseek(fd, 1 << 22, SEEK_DATA)), errno.ENXIO)
    pp.same(lambda r: with_fd(j(r, "h"), os.O_RDONLY, lambda fd: os.lseek(fd, -1, os.SEEK_SET)), errno.EINVAL)
    pp.same(lambda r: rfile(j(r, "h")))
    # big write in one go, read back in odd chunks
    blob = os.urandom(3 * 1024 * 1024 + 17)
    pp.setup(lambda r: wfile(j(r, "big"), blob))
    with open(j(pp.m, "big"), "rb") as f:
        parts = []
        while True:
            c = f.read(65537)
            if not c:
                break
            parts.append(c)
    assert b"".join(parts) == blob


def test_truncate_grow_shrink(pp):
    data = bytes(range(256)) * 40

    def scenario(r):
        p = j(r, "t")
        wfile(p, data)
        out = []
        os.truncate(p, 100)
        out.append(rfile(p))
        os.truncate(p, 20000)
        b = rfile(p)
        out.append((len(b), b[:100] == data[:100], b[100:] == b"\0" * 19900))
        fd = os.open(p, os.O_RDWR)
        try:
            os.ftruncate(fd, 5)
            out.append(os.pread(fd, 100, 0))
            os.ftruncate(fd, 0)
            out.append(os.fstat(fd).st_size)
        finally:
            os.close(fd)
        return out

    pp.same(scenario)
    pp.setup(lambda r: wfile(j(r, "u"), b"abc"))
    pp.setup(lambda r: os.mkdir(j(r, "d")))

    def ftrunc_ro(r):
        fd = os.open(j(r, "u"), os.O_RDONLY)
        try:
            os.ftruncate(fd, 1)
        finally:
            os.close(fd)

    pp.same(ftrunc_ro, errno.EINVAL)
    pp.same(lambda r: os.truncate(j(r, "d"), 0), errno.EISDIR)
    pp.same(lambda r: os.truncate(j(r, "u"), -1), errno.EINVAL)
    pp.same(lambda r: os.truncate(j(r, "nope"), 0), errno.ENOENT)
    pp.same(lambda r: rfile(j(r, "u")), value=b"abc")


# ---- directories -------------------------------------------------------------


def test_mkdir_rmdir_unlink_errors(pp):
    pp.setup(lambda r: os.makedirs(j(r, "d/sub")))
    pp.setup(lambda r: wfile(j(r, "f")))
    pp.setup(lambda r: os.symlink("d", j(r, "sl")))
    pp.same(lambda r: os.mkdir(j(r, "d")), errno.EEXIST)
    pp.same(lambda r: os.mkdir(j(r, "f")), errno.EEXIST)
    pp.same(lambda r: os.mkdir(j(r, "sl")), errno.EEXIST)
    pp.same(lambda r: os.mkdir(j(r, "no/x")), errno.ENOENT)
    pp.same(lambda r: os.mkdir(j(r, "f/x")), errno.ENOTDIR)
    pp.same(lambda r: os.rmdir(j(r, "d")), errno.ENOTEMPTY)
    pp.same(lambda r: os.rmdir(j(r, "f")), errno.ENOTDIR)
    pp.same(lambda r: os.rmdir(j(r, "sl")), errno.ENOTDIR)
    pp.same(lambda r: os.rmdir(j(r, "d/sub/.")), errno.EINVAL)
    pp.same(lambda r: os.rmdir(j(r, "nope")), errno.ENOENT)
    pp.same(lambda r: os.unlink(j(r, "d")), errno.EISDIR)
    pp.same(lambda r: os.unlink(j(r, "nope")), errno.ENOENT)
    pp.same(lambda r: os.unlink(j(r, "f/x")), errno.ENOTDIR)
    # mkdir mode and umask; parent link count follows subdirectories
    pp.same(lambda r: os.mkdir(j(r, "m"), 0o777))
    pp.same(lambda r: st_view(os.stat(j(r, "m"))))
    pp.same(lambda r: os.stat(r).st_nlink, value=4)  # . .. d m
    pp.same(lambda r: os.rmdir(j(r, "d/sub")))
    pp.same(lambda r: os.rmdir(j(r, "d")))
    pp.same(lambda r: os.unlink(j(r, "sl")))  # unlink removes the link, not d
    pp.same(lambda r: os.stat(r).st_nlink, value=3)
    pp.same(lambda r: sorted(os.listdir(r)), value=["f", "m"])


def test_enametoolong(pp):
    long = "n" * 256
    ok = "n" * 255
    pp.same(lambda r: wfile(j(r, long)), errno.ENAMETOOLONG)
    pp.same(lambda r: os.mkdir(j(r, long)), errno.ENAMETOOLONG)
    pp.same(lambda r: os.stat(j(r, long)), errno.ENAMETOOLONG)
    pp.same(lambda r: os.symlink("x", j(r, long)), errno.ENAMETOOLONG)
    pp.same(lambda r: wfile(j(r, ok), b"255"), value=3)
    pp.same(lambda r: os.rename(j(r, ok), j(r, long)), errno.ENAMETOOLONG)
    pp.same(lambda r: os.link(j(r, ok), j(r, long)), errno.ENAMETOOLONG)
    pp.same(lambda r: os.symlink("t" * 4096, j(r, "s")), errno.ENAMETOOLONG)
    pp.same(lambda r: os.symlink("t" * 4095, j(r, "s")))
    pp.same(lambda r: len(os.readlink(j(r, "s"))), value=4095)


def test_readdir_seekdir_telldir(pp):
    names = ["e%03d" % i for i in range(300)]

    def mk(r):
        for nm in names:
            wfile(j(r, nm))

    pp.setup(mk)
    for root in (pp.n, pp.m):
        d = Dir(root)
        try:
            seen, offs = [], []
            while True:
                offs.append(d.tell())
                nm = d.read()
                if nm is None:
                    break
                seen.append(nm)
            assert sorted(x for x in seen if x not in (".", "..")) == names, root
            assert len(seen) == len(set(seen)) == 302, root
            # seeking back to any told position resumes at the same entry
            for i in (0, 1, 2, 57, 150, 299, 301):
                d.seek(offs[i])
                assert d.read() == seen[i], (root, i)
                assert d.read() == (seen[i + 1] if i + 1 < len(seen) else None), (root, i)
            d.seek(offs[len(seen)])
            assert d.read() is None
            libc.rewinddir(d.d)
            assert d.read() == seen[0]
        finally:
            d.close()


def test_readdir_many_entries(pp):
    n = 5000

    def mk(r):
        for i in range(n):
            if i % 10 == 0:
                os.mkdir(j(r, "dir%05d" % i))
            else:
                wfile(j(r, "file-%05d-%s" % (i, "x" * (i % 60))))

    pp.setup(mk)

    def listing(r):
        return sorted((e.name, e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False))
                      for e in os.scandir(r))

    ls = pp.same(listing)
    assert len(ls) == n
    # a listing while entries are removed never repeats a name
    m = pp.m
    seen = []
    with os.scandir(m) as it:
        for k, e in enumerate(it):
            seen.append(e.name)
            if k == 1000:
                for i in range(1, 2000, 10):
                    os.unlink(j(m, "file-%05d-%s" % (i, "x" * (i % 60))))
    assert len(seen) == len(set(seen))
    assert len(os.listdir(m)) == n - 200


# ---- rename ------------------------------------------------------------------


def test_rename_errors(pp):
    def mk(r):
        wfile(j(r, "f"), b"F")
        wfile(j(r, "g"), b"G")
        os.makedirs(j(r, "d/sub"))
        os.makedirs(j(r, "full/x"))
        os.mkdir(j(r, "empty"))
        os.mkdir(j(r, "empty2"))

    pp.setup(mk)
    pp.same(lambda r: os.rename(j(r, "f"), j(r, "d")), errno.EISDIR)
    pp.same(lambda r: os.rename(j(r, "d"), j(r, "f")), errno.ENOTDIR)
    pp.same(lambda r: os.rename(j(r, "d"), j(r, "full")), errno.ENOTEMPTY)
    pp.same(lambda r: os.rename(j(r, "d"), j(r, "d/sub/in")), errno.EINVAL)
    pp.same(lambda r: os.rename(j(r, "d"), j(r, "d/sub")), errno.EINVAL)
    pp.same(lambda r: os.rename(j(r, "nope"), j(r, "x")), errno.ENOENT)
    pp.same(lambda r: os.rename(j(r, "f"), j(r, "nope/x")), errno.ENOENT)
    pp.same(lambda r: os.rename(j(r, "f"), j(r, "g/x")), errno.ENOTDIR)
    pp.same(lambda r: os.rename(j(r, "d/."), j(r, "x")), errno.EBUSY)
    # successes: file over file, dir over empty dir, onto itself
    pp.same(lambda r: os.rename(j(r, "f"), j(r, "f")))
    pp.same(lambda r: os.rename(j(r, "empty"), j(r, "empty2")))
    pp.same(lambda r: os.rename(j(r, "g"), j(r, "f")))
    pp.same(lambda r: (rfile(j(r, "f")), os.path.exists(j(r, "g"))), value=(b"G", False))
    pp.same(lambda r: sorted(os.listdir(r)), value=["d", "empty2", "f", "full"])


def test_rename_keeps_open_files(pp):
    def scenario(r):
        wfile(j(r, "a"), b"old a")
        wfile(j(r, "b"), b"old b")
        fa = os.open(j(r, "a"), os.O_RDWR)
        fb = os.open(j(r, "b"), os.O_RDWR)
        try:
            os.rename(j(r, "a"), j(r, "b"))  # b's inode loses its last name
            out = [os.pread(fb, 10, 0), os.fstat(fb).st_nlink, os.pread(fa, 10, 0)]
            os.pwrite(fa, b"NEW", 0)
            os.pwrite(fb, b"gone", 0)
            out += [rfile(j(r, "b")), os.fstat(fa).st_nlink, os.path.exists(j(r, "a"))]
            os.mkdir(j(r, "sub"))
            os.rename(j(r, "b"), j(r, "sub/c"))
            os.pwrite(fa, b"!", 5)
            out.append(rfile(j(r, "sub/c")))
            return out
        finally:
            os.close(fa)
            os.close(fb)

    pp.same(scenario, value=[b"old b", 0, b"old a", b"NEW a", 1, False, b"NEW a!"])


def test_renameat2_noreplace_and_exchange(pp):
    def mk(r):
        wfile(j(r, "f"), b"F")
        wfile(j(r, "g"), b"G")
        os.makedirs(j(r, "d/inner"))
        os.symlink("f", j(r, "sl"))

    pp.setup(mk)
    pp.same(lambda r: renameat2(j(r, "f"), j(r, "g"), RENAME_NOREPLACE), errno.EEXIST)
    pp.same(lambda r: renameat2(j(r, "f"), j(r, "d"), RENAME_NOREPLACE), errno.EEXIST)
    pp.same(lambda r: renameat2(j(r, "f"), j(r, "sl"), RENAME_NOREPLACE), errno.EEXIST)
    pp.same(lambda r: renameat2(j(r, "f"), j(r, "nope"), RENAME_EXCHANGE), errno.ENOENT)
    pp.same(lambda r: renameat2(j(r, "f"), j(r, "g"), RENAME_EXCHANGE | RENAME_NOREPLACE), errno.EINVAL)
    pp.same(lambda r: renameat2(j(r, "d"), j(r, "d/inner"), RENAME_EXCHANGE), errno.EINVAL)
    pp.same(lambda r: renameat2(j(r, "f"), j(r, "h"), RENAME_NOREPLACE))
    pp.same(lambda r: renameat2(j(r, "h"), j(r, "g"), RENAME_EXCHANGE))
    pp.same(lambda r: (rfile(j(r, "g")), rfile(j(r, "h"))), value=(b"F", b"G"))
    # exchange a file and a directory, then look through both names
    pp.same(lambda r: renameat2(j(r, "g"), j(r, "d"), RENAME_EXCHANGE))
    pp.same(lambda r: (rfile(j(r, "d")), os.listdir(j(r, "g"))), value=(b"F", ["inner"]))
    pp.same(lambda r: os.stat(j(r, "g/inner")).st_nlink, value=2)
    # the symlink now dangles (f was renamed)
    pp.same(lambda r: os.stat(j(r, "sl")), errno.ENOENT)


# ---- links -------------------------------------------------------------------


def test_symlink_readlink_lstat(pp):
    pp.setup(lambda r: wfile(j(r, "f"), b"target data"))
    pp.same(lambda r: os.symlink("f", j(r, "s")))
    pp.same(lambda r: os.symlink("f", j(r, "s")), errno.EEXIST)
    pp.same(lambda r: os.symlink("/abs/elsewhere", j(r, "abs")))
    pp.same(lambda r: os.symlink("s", j(r, "s2")))
    pp.same(lambda r: os.symlink("loop2", j(r, "loop1")))
    pp.same(lambda r: os.symlink("loop1", j(r, "loop2")))
    pp.same(lambda r: os.readlink(j(r, "s")), value="f")
    pp.same(lambda r: os.readlink(j(r, "abs")), value="/abs/elsewhere")
    pp.same(lambda r: os.readlink(j(r, "f")), errno.EINVAL)
    pp.same(lambda r: os.readlink(j(r, "nope")), errno.ENOENT)
    pp.same(lambda r: rfile(j(r, "s2")), value=b"target data")
    pp.same(lambda r: rfile(j(r, "loop1")), errno.ELOOP)
    pp.same(lambda r: (stat.S_ISLNK(os.lstat(j(r, "s")).st_mode), os.lstat(j(r, "s")).st_size), value=(True, 1))
    pp.same(lambda r: os.lstat(j(r, "abs")).st_size, value=14)
    pp.same(lambda r: stat.S_ISREG(os.stat(j(r, "s2")).st_mode), value=True)
    pp.same(lambda r: os.stat(j(r, "abs")), errno.ENOENT)
    # xattrs on a symlink: user.* is refused by Linux
    pp.same(lambda r: os.setxattr(j(r, "s"), "user.a", b"1", follow_symlinks=False), errno.EPERM)


def test_hard_links(pp):
    pp.setup(lambda r: wfile(j(r, "f"), b"one inode"))
    pp.setup(lambda r: os.mkdir(j(r, "d")))
    pp.setup(lambda r: os.symlink("f", j(r, "s")))
    pp.same(lambda r: os.link(j(r, "f"), j(r, "l1")))
    pp.same(lambda r: os.link(j(r, "l1"), j(r, "d/l2")))
    pp.same(lambda r: [os.stat(j(r, p)).st_nlink for p in ("f", "l1", "d/l2")], value=[3, 3, 3])
    pp.same(lambda r: os.stat(j(r, "f")).st_ino == os.stat(j(r, "d/l2")).st_ino, value=True)
    pp.same(lambda r: os.link(j(r, "f"), j(r, "l1")), errno.EEXIST)
    pp.same(lambda r: os.link(j(r, "d"), j(r, "dl")), errno.EPERM)
    pp.same(lambda r: os.link(j(r, "nope"), j(r, "x")), errno.ENOENT)
    pp.same(lambda r: os.link(j(r, "f"), j(r, "nope/x")), errno.ENOENT)
    # link() does not follow a symlink on Linux
    pp.same(lambda r: os.link(j(r, "s"), j(r, "s-link"), follow_symlinks=False))
    pp.same(lambda r: (os.readlink(j(r, "s-link")), os.lstat(j(r, "s")).st_nlink), value=("f", 2))

    def write_via_one(r):
        with open(j(r, "d/l2"), "r+b") as fh:
            fh.write(b"ONE")
        return rfile(j(r, "f"))

    pp.same(write_via_one, value=b"ONE inode")
    pp.same(lambda r: os.unlink(j(r, "f")))
    pp.same(lambda r: [os.stat(j(r, p)).st_nlink for p in ("l1", "d/l2")], value=[2, 2])
    pp.same(lambda r: os.rename(j(r, "l1"), j(r, "d/l2")))  # same inode: no-op
    pp.same(lambda r: sorted(os.listdir(j(r, "d"))) + sorted(os.listdir(r)),
            value=["l2", "d", "l1", "s", "s-link"])
    pp.same(lambda r: os.unlink(j(r, "d/l2")))
    pp.same(lambda r: (os.stat(j(r, "l1")).st_nlink, rfile(j(r, "l1"))), value=(1, b"ONE inode"))
    # a new link to the survivor, through a changed name
    pp.same(lambda r: os.rename(j(r, "l1"), j(r, "d/moved")))
    pp.same(lambda r: os.link(j(r, "d/moved"), j(r, "back")))
    pp.same(lambda r: (rfile(j(r, "back")), os.stat(j(r, "d/moved")).st_nlink), value=(b"ONE inode", 2))


def test_unlinked_open_file(pp):
    def scenario(r):
        p = j(r, "u")
        fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o600)
        fd2 = os.open(p, os.O_RDONLY)
        try:
            os.write(fd, b"before")
            os.unlink(p)
            out = [os.path.exists(p), os.fstat(fd).st_nlink]
            os.write(fd, b" after unlink")
            os.ftruncate(fd, 30)
            os.fchmod(fd, 0o640)
            out += [os.pread(fd2, 100, 0), os.fstat(fd2).st_size,
                    oct(stat.S_IMODE(os.fstat(fd).st_mode))]
            # a new file under the same name is a different file
            wfile(p, b"new")
            out += [rfile(p), os.pread(fd, 6, 0)]
            os.fsync(fd)  # fsync of an unlinked file succeeds
            return out
        finally:
            os.close(fd)
            os.close(fd2)

    pp.same(scenario)
    pp.same(lambda r: rfile(j(r, "u")), value=b"new")


# ---- attributes ----------------------------------------------------------------


def test_chmod_chown(pp):
    pp.setup(lambda r: wfile(j(r, "f"), b"x"))
    pp.setup(lambda r: os.mkdir(j(r, "d")))
    pp.setup(lambda r: os.symlink("f", j(r, "s")))
    for mode in (0o000, 0o4755, 0o2711, 0o1777, 0o644):
        pp.same(lambda r, m=mode: (os.chmod(j(r, "f"), m), oct(stat.S_IMODE(os.stat(j(r, "f")).st_mode)))[1],
                value=oct(mode))
    pp.same(lambda r: (os.chmod(j(r, "d"), 0o1700), stat.filemode(os.stat(j(r, "d")).st_mode))[1],
            value="drwx-----T")
    pp.same(lambda r: os.chmod(j(r, "nope"), 0o644), errno.ENOENT)
    # chmod through a symlink changes the target
    pp.same(lambda r: (os.chmod(j(r, "s"), 0o600), oct(stat.S_IMODE(os.stat(j(r, "f")).st_mode)))[1], value="0o600")
    pp.same(lambda r: (os.chown(j(r, "f"), 1234, 5678), st_view(os.stat(j(r, "f"))))[1])
    pp.same(lambda r: (os.chown(j(r, "f"), -1, 42), os.stat(j(r, "f")).st_gid, os.stat(j(r, "f")).st_uid)[1:],
            value=(42, 1234))
    pp.same(lambda r: (os.lchown(j(r, "s"), 77, 88), os.lstat(j(r, "s")).st_uid, os.stat(j(r, "s")).st_uid)[1:],
            value=(77, 1234))
    pp.same(lambda r: (os.chown(j(r, "d"), 3, 4), st_view(os.stat(j(r, "d"))))[1])
    # chown as root clears set-id bits of an executable file
    pp.same(lambda r: (os.chmod(j(r, "f"), 0o6755), os.chown(j(r, "f"), 9, 9),
                       oct(stat.S_IMODE(os.stat(j(r, "f")).st_mode)))[2])
    # chmod/ctime: ctime moves, mtime does not
    pp.same(lambda r: os.utime(j(r, "f"), ns=(1, 2)))

    def ctime_moves(r):
        c0 = os.stat(j(r, "f")).st_ctime_ns
        time.sleep(0.01)
        os.chmod(j(r, "f"), 0o640)
        s = os.stat(j(r, "f"))
        return s.st_ctime_ns > c0, s.st_mtime_ns

    pp.same(ctime_moves, value=(True, 2))


def test_utimensat(pp):
    pp.setup(lambda r: wfile(j(r, "f"), b"x"))
    pp.setup(lambda r: os.symlink("f", j(r, "s")))

    def times(r, p="f", follow=True):
        s = os.stat(j(r, p), follow_symlinks=follow)
        return s.st_atime_ns, s.st_mtime_ns

    pp.same(lambda r: (utimensat(j(r, "f"), (1000, 123456789), (2000, 987654321)), times(r))[1],
            value=(1000123456789, 2000987654321))
    pp.same(lambda r: (utimensat(j(r, "f"), UTIME_OMIT, (3000, 1)), times(r))[1], value=(1000123456789, 3000000000001))
    pp.same(lambda r: (utimensat(j(r, "f"), (5, 5), UTIME_OMIT), times(r))[1], value=(5000000005, 3000000000001))

    def now(r):
        t0 = time.time_ns()
        utimensat(j(r, "f"), UTIME_NOW, UTIME_OMIT)
        a, m = times(r)
        utimensat(j(r, "f"), UTIME_OMIT, UTIME_NOW)
        a2, m2 = times(r)
        slack = 10_000_000  # coarse clock granularity
        return a >= t0 - slack, m == 3000000000001, a2 == a, m2 >= t0 - slack

    pp.same(now, value=(True, True, True, True))
    # times of the link itself, not the target
    pp.same(lambda r: (utimensat(j(r, "s"), (7, 0), (8, 0), follow=False), times(r, "s", False), times(r)[1] > 8e9)[1:],
            value=((7000000000, 8000000000), True))
    pp.same(lambda r: utimensat(j(r, "nope"), UTIME_NOW, UTIME_NOW), errno.ENOENT)
    pp.same(lambda r: utimensat(j(r, "f"), (0, 1000000000), UTIME_OMIT), errno.EINVAL)

    # mtime and ctime move on write; mtime of the directory on create
    def write_moves(r):
        os.utime(j(r, "f"), ns=(1, 1))
        os.utime(r, ns=(1, 1))
        with open(j(r, "f"), "ab") as fh:
            fh.write(b"more")
        wfile(j(r, "new"))
        return os.stat(j(r, "f")).st_mtime_ns > 1, os.stat(r).st_mtime_ns > 1

    pp.same(write_moves, value=(True, True))


def test_statfs(pp):
    sm = os.statvfs(pp.m)
    sn = os.statvfs(pp.n)
    assert sm.f_bsize > 0 and sm.f_frsize > 0
    assert 0 < sm.f_bfree <= sm.f_blocks and sm.f_bavail <= sm.f_bfree
    assert 0 < sm.f_ffree <= sm.f_files
    assert sm.f_namemax == 255
    # the staging disk is what is reported: same size as the native disk here
    if os.stat(pp.n).st_dev == os.stat(pp.env.cache).st_dev:
        assert sm.f_blocks * sm.f_frsize == sn.f_blocks * sn.f_frsize
    with pytest.raises(OSError) as ei:
        os.statvfs(j(pp.m, "nope"))
    assert ei.value.errno == errno.ENOENT


def test_fallocate(pp):
    def scenario(r):
        fd = os.open(j(r, "fa"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            out = []
            fallocate(fd, 0, 0, 65536)
            out.append(os.fstat(fd).st_size)
            fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 1 << 20)
            s = os.fstat(fd)
            out.append((s.st_size, s.st_blocks * 512 >= 1 << 20))
            os.pwrite(fd, b"z" * 65536, 0)
            fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 8192)
            b = os.pread(fd, 65536, 0)
            out.append((len(b), b[:4096] == b"z" * 4096, b[4096:12288] == b"\0" * 8192, b[12288:] == b"z" * 53248))
            hole = os.lseek(fd, 4096, SEEK_HOLE)
            if pp.wb:  # no holes before EOF under -o writeback_cache
                assert r == pp.n or hole == os.fstat(fd).st_size, hole
                hole = None
            out.append(hole)
            fallocate(fd, FALLOC_FL_ZERO_RANGE, 60000, 10000)
            out.append((os.fstat(fd).st_size, os.pread(fd, 20, 59990)))
            os.posix_fallocate(fd, 100000, 10)
            out.append(os.fstat(fd).st_size)
            return out
        finally:
            os.close(fd)

    pp.same(scenario)

    def punch_without_keep(r):
        fd = os.open(j(r, "fa"), os.O_RDWR)
        try:
            fallocate(fd, FALLOC_FL_PUNCH_HOLE, 0, 10)
        finally:
            os.close(fd)

    def on_rdonly(r):
        fd = os.open(j(r, "fa"), os.O_RDONLY)
        try:
            fallocate(fd, 0, 0, 10)
        finally:
            os.close(fd)

    pp.same(punch_without_keep, errno.EOPNOTSUPP)
    pp.same(on_rdonly, errno.EBADF)
    pp.same(lambda r: with_fd(j(r, "fa"), os.O_RDWR, lambda fd: fallocate(fd, 0, 0, 0)), errno.EINVAL)
    pp.same(lambda r: rfile(j(r, "fa")))


# ---- extended attributes ----------------------------------------------------------


def test_user_xattrs(pp):
    pp.setup(lambda r: wfile(j(r, "f")))
    pp.setup(lambda r: os.mkdir(j(r, "d")))
    for t in ("f", "d"):
        pp.same(lambda r, t=t: os.setxattr(j(r, t), "user.k", b"v1"))
        pp.same(lambda r, t=t: os.getxattr(j(r, t), "user.k"), value=b"v1")
        pp.same(lambda r, t=t: os.setxattr(j(r, t), "user.k", b"v2", os.XATTR_CREATE), errno.EEXIST)
        pp.same(lambda r, t=t: os.setxattr(j(r, t), "user.q", b"v2", os.XATTR_REPLACE), errno.ENODATA)
        pp.same(lambda r, t=t: os.setxattr(j(r, t), "user.k", b"", os.XATTR_REPLACE))
        pp.same(lambda r, t=t: os.getxattr(j(r, t), "user.k"), value=b"")
        pp.same(lambda r, t=t: os.setxattr(j(r, t), "user.big", bytes(range(256)) * 4))
        pp.same(lambda r, t=t: os.getxattr(j(r, t), "user.big"), value=bytes(range(256)) * 4)
        pp.same(lambda r, t=t: sorted(os.listxattr(j(r, t))), value=["user.big", "user.k"])
        pp.same(lambda r, t=t: os.getxattr(j(r, t), "user.none"), errno.ENODATA)
        pp.same(lambda r, t=t: os.removexattr(j(r, t), "user.k"))
        pp.same(lambda r, t=t: os.removexattr(j(r, t), "user.k"), errno.ENODATA)
        pp.same(lambda r, t=t: os.listxattr(j(r, t)), value=["user.big"])
    # sizes: probe with 0, ERANGE with a short buffer
    pp.same(lambda r: getxattr_size(j(r, "f"), "user.big", 0), value=1024)
    pp.same(lambda r: getxattr_size(j(r, "f"), "user.big", 10), errno.ERANGE)
    pp.same(lambda r: listxattr_size(j(r, "f"), 0), value=len(b"user.big\0"))
    pp.same(lambda r: listxattr_size(j(r, "f"), 3), errno.ERANGE)
    pp.same(lambda r: os.setxattr(j(r, "f"), "user." + "k" * 251, b"1"), errno.ERANGE)
    pp.same(lambda r: os.setxattr(j(r, "f"), "user.v", b"x" * 65537), errno.E2BIG)
    pp.same(lambda r: os.getxattr(j(r, "nope"), "user.k"), errno.ENOENT)
    pp.same(lambda r: os.setxattr(j(r, "f"), "bogus.k", b"1"), errno.EOPNOTSUPP)
    # an xattr survives rename and is kept by hard links
    pp.same(lambda r: (os.rename(j(r, "f"), j(r, "g")), os.link(j(r, "g"), j(r, "h")),
                       os.getxattr(j(r, "h"), "user.big") == bytes(range(256)) * 4)[2], value=True)


def test_other_xattr_namespaces(pp):
    """Documented: only user.* is stored. Other namespaces read as absent
    (ENODATA), cannot be set (EOPNOTSUPP) or removed (ENODATA), and are never
    listed. POSIX ACLs are therefore not supported."""
    f = j(pp.m, "f")
    wfile(f)

    def err(fn, *a):
        with pytest.raises(OSError) as ei:
            fn(*a)
        return ei.value.errno

    # a well-formed ACL (user::rw- group::r-- other::r--), so that only the
    # namespace can be the reason for a refusal
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, 0xFFFFFFFF)
                                          for t, p in ((1, 6), (4, 4), (0x20, 4)))
    for name in ("trusted.k", "security.k", "system.posix_acl_access"):
        value = acl if name.startswith("system.") else b"v"
        assert err(os.setxattr, f, name, value) == errno.EOPNOTSUPP, name
        assert err(os.getxattr, f, name) == errno.ENODATA, name
        assert err(os.removexattr, f, name) == errno.ENODATA, name
    assert os.listxattr(f) == []
    # the control attribute of the root is not settable
    assert err(os.setxattr, pp.mp, "user.contextfs.control", b"x") == errno.EOPNOTSUPP


# ---- fsync -------------------------------------------------------------------


def test_fsync_fdatasync_commit(pp):
    env = pp.env

    def gen():
        return env.json("status", "ctx")[1]["generation"]

    g0 = gen()
    p = j(pp.m, "durable")
    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"fsync me")
        os.fsync(fd)
        g1 = gen()
        assert g1 == g0 + 1  # fsync returned once the generation landed
        os.write(fd, b" and fdatasync me")
        os.fdatasync(fd)
        assert gen() == g1 + 1
        os.fsync(fd)  # nothing new: no commit
        assert gen() == g1 + 1
    finally:
        os.close(fd)
    dfd = os.open(pp.m, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.mkdir(j(pp.m, "newdir"))
        os.fsync(dfd)
        assert gen() == g1 + 2
    finally:
        os.close(dfd)
    d = os.path.join(env.tmp, "export-fsync")
    env.run("export", "ctx", d)
    rel = os.path.relpath(p, pp.mp)
    assert rfile(j(d, rel)) == b"fsync me and fdatasync me"
    assert os.path.isdir(j(d, os.path.relpath(pp.m, pp.mp), "newdir"))
    shutil.rmtree(d)
    # native fsync for parity of return values
    pp.same(lambda r: with_fd(r, os.O_RDONLY, os.fsync))


# ---- locks -------------------------------------------------------------------


def _try_lockf(path, kind):
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.lockf(fd, kind | fcntl.LOCK_NB, 10, 0)
        return "locked"
    finally:
        os.close(fd)


def _getlk(path):
    fd = os.open(path, os.O_RDWR)
    try:
        req = struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0)
        res = fcntl.fcntl(fd, fcntl.F_GETLK, req)
        t, w, start, ln, pid = struct.unpack("hhqqi", res)
        return t, start, ln, pid
    finally:
        os.close(fd)


def _try_flock(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return "locked"
    finally:
        os.close(fd)


def test_flock_and_fcntl_locks(pp):
    pp.setup(lambda r: wfile(j(r, "lk"), b"0123456789abcdef"))

    def flock_two_fds(r):
        a = os.open(j(r, "lk"), os.O_RDONLY)
        b = os.open(j(r, "lk"), os.O_RDONLY)
        try:
            fcntl.flock(a, fcntl.LOCK_SH)
            fcntl.flock(b, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared + shared
            fcntl.flock(b, fcntl.LOCK_UN)
            fcntl.flock(a, fcntl.LOCK_EX)
            try:
                fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return "no conflict"
            except OSError as e:
                first = errno.errorcode[e.errno]
            fcntl.flock(a, fcntl.LOCK_UN)
            fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return first
        finally:
            os.close(a)
            os.close(b)

    pp.same(flock_two_fds, value=errno.errorcode[errno.EWOULDBLOCK])

    def across_processes(r):
        p = j(r, "lk")
        fd = os.open(p, os.O_RDWR)
        fl = os.open(p, os.O_RDONLY)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX, 10, 0)  # bytes 0..9
            fcntl.flock(fl, fcntl.LOCK_EX)
            out = [in_child(_try_lockf, p, fcntl.LOCK_EX),
                   in_child(_try_flock, p)]
            t, start, ln, pid = in_child(_getlk, p)[1]
            out.append((t, start, ln, pid == os.getpid()))
            fcntl.lockf(fd, fcntl.LOCK_UN, 10, 0)
            fcntl.flock(fl, fcntl.LOCK_UN)
            out += [in_child(_try_lockf, p, fcntl.LOCK_EX), in_child(_try_flock, p)]
            return out
        finally:
            os.close(fd)
            os.close(fl)

    pp.same(across_processes, value=[("err", "EAGAIN"), ("err", "EAGAIN"), (fcntl.F_WRLCK, 0, 10, True),
                                     ("ok", "locked"), ("ok", "locked")])

    def ofd_locks(r):
        a = os.open(j(r, "lk"), os.O_RDWR)
        b = os.open(j(r, "lk"), os.O_RDWR)
        try:
            F_OFD_SETLK = 37
            req = struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 4, 0)
            fcntl.fcntl(a, F_OFD_SETLK, req)
            fcntl.fcntl(b, F_OFD_SETLK, req)
        finally:
            os.close(a)
            os.close(b)

    pp.same(ofd_locks, errno.EAGAIN)


# ---- mmap ----------------------------------------------------------------------


def test_mmap_shared_and_private(pp):
    def scenario(r):
        p = j(r, "mm")
        wfile(p, b"\0" * 10000)
        fd = os.open(p, os.O_RDWR)
        try:
            m = mmap.mmap(fd, 10000, mmap.MAP_SHARED)
            m[4090:4110] = b"S" * 20
            m.flush()
            m.close()
            pv = mmap.mmap(fd, 10000, mmap.MAP_PRIVATE)
            pv[0:4] = b"PRIV"  # never reaches the file
            pv.close()
            os.pwrite(fd, b"W", 0)
            m = mmap.mmap(fd, 10000, mmap.MAP_SHARED)
            seen = bytes(m[0:2]) + bytes(m[4088:4112])
            m.close()
            return seen, rfile(p)[4090:4110]
        finally:
            os.close(fd)

    pp.same(scenario, value=(b"W\0" + b"\0\0" + b"S" * 20 + b"\0\0", b"S" * 20))

    def map_rdonly_shared_write(r):
        fd = os.open(j(r, "mm"), os.O_RDONLY)
        try:
            mmap.mmap(fd, 100, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)

    pp.same(map_rdonly_shared_write, errno.EACCES)


# ---- the top level ---------------------------------------------------------------


def test_top_level_layout(pp):
    mp = pp.mp
    top = sorted(os.listdir(mp))
    for name in ("workspace", "memory", "artifacts", "logs", "cache", "config"):
        assert name in top and os.path.isdir(j(mp, name)), name
    assert ".contextsdk" in top and "contextsdk.json" in top
    assert set(top) <= {"workspace", "memory", "artifacts", "logs", "cache", "config",
                        ".contextsdk", "contextsdk.json"}, top
    w = j(mp, "workspace", "src")
    wfile(w, b"s")
    os.mkdir(j(mp, "workspace", "srcdir"))

    def err(fn, *a):
        with pytest.raises(OSError) as ei:
            fn(*a)
        return errno.errorcode[ei.value.errno]

    assert err(wfile, j(mp, "evil")) == "EPERM"
    assert err(os.open, j(mp, "evil"), os.O_CREAT | os.O_EXCL | os.O_WRONLY) == "EPERM"
    assert err(os.mkdir, j(mp, "evil")) == "EPERM"
    assert err(os.symlink, "workspace", j(mp, "evil")) == "EPERM"
    assert err(os.link, w, j(mp, "evil")) == "EPERM"
    assert err(os.mkfifo, j(mp, "evil")) == "EPERM"
    assert err(os.rename, w, j(mp, "evil")) == "EPERM"
    assert err(os.rename, j(mp, "workspace", "srcdir"), j(mp, "evil")) == "EPERM"
    assert err(renameat2, w, j(mp, "evil"), RENAME_NOREPLACE) == "EPERM"
    assert not os.path.exists(j(mp, "evil"))
    # existing layout names answer as Linux does
    assert err(os.mkdir, j(mp, "workspace")) == "EEXIST"
    assert err(os.open, j(mp, "contextsdk.json"), os.O_CREAT | os.O_EXCL | os.O_WRONLY) == "EEXIST"
    assert err(os.rmdir, j(mp, "workspace")) == "ENOTEMPTY"
    assert err(os.stat, j(mp, "evil")) == "ENOENT"
    # what is refused is logged as a warning, not an error
    assert os.path.exists(w)


# ---- permissions (non-root) ---------------------------------------------------------


def test_permissions_as_nobody(pp):
    def mk(r):
        wfile(j(r, "secret"), b"root only", 0o600)
        wfile(j(r, "ro"), b"read only", 0o644)
        wfile(j(r, "rw"), b"everyone", 0o666)
        wfile(j(r, "exe"), b"#!/bin/sh\n", 0o700)
        os.mkdir(j(r, "closed"), 0o700)
        wfile(j(r, "closed/inside"), b"x")
        os.mkdir(j(r, "rodir"), 0o755)
        wfile(j(r, "rodir/f"), b"x", 0o666)
        os.mkdir(j(r, "open"), 0o777)
        os.mkdir(j(r, "sticky"), 0o1777)
        wfile(j(r, "sticky/roots"), b"x", 0o666)
        for nm, mode in (("secret", 0o600), ("ro", 0o644), ("rw", 0o666), ("exe", 0o700),
                         ("rodir/f", 0o666), ("open", 0o777), ("sticky", 0o1777), ("sticky/roots", 0o666)):
            os.chmod(j(r, nm), mode)

    pp.other_users()
    pp.setup(mk)
    pp.nobody(lambda r: rfile(j(r, "secret")), errno.EACCES)
    pp.nobody(lambda r: rfile(j(r, "ro")))
    pp.nobody(lambda r: os.open(j(r, "ro"), os.O_WRONLY), errno.EACCES)
    pp.nobody(lambda r: os.truncate(j(r, "ro"), 0), errno.EACCES)
    pp.nobody(lambda r: os.open(j(r, "ro"), os.O_RDONLY | os.O_TRUNC), errno.EACCES)
    pp.nobody(lambda r: os.listdir(j(r, "closed")), errno.EACCES)
    pp.nobody(lambda r: os.stat(j(r, "closed/inside")), errno.EACCES)
    pp.nobody(lambda r: os.access(j(r, "exe"), os.X_OK), )
    pp.nobody(lambda r: os.execv(j(r, "exe"), ["exe"]), errno.EACCES)
    pp.nobody(lambda r: wfile(j(r, "new")), errno.EACCES)
    pp.nobody(lambda r: os.mkdir(j(r, "rodir/sub")), errno.EACCES)
    pp.nobody(lambda r: os.unlink(j(r, "rodir/f")), errno.EACCES)
    pp.nobody(lambda r: os.rename(j(r, "rodir/f"), j(r, "open/f")), errno.EACCES)
    pp.nobody(lambda r: os.chmod(j(r, "ro"), 0o777), errno.EPERM)
    pp.nobody(lambda r: os.chown(j(r, "rw"), NOBODY, NOBODY), errno.EPERM)
    pp.nobody(lambda r: os.utime(j(r, "ro"), (1, 1)), errno.EPERM)
    pp.nobody(lambda r: os.utime(j(r, "ro")), errno.EACCES)  # "now" needs write access
    pp.nobody(lambda r: os.utime(j(r, "rw")))  # ... which rw gives
    pp.nobody(lambda r: os.setxattr(j(r, "ro"), "user.x", b"1"), errno.EACCES)
    pp.nobody(lambda r: os.link(j(r, "secret"), j(r, "open/hl")), errno.EPERM)  # protected_hardlinks
    pp.nobody(lambda r: os.unlink(j(r, "sticky/roots")), errno.EPERM)

    # what nobody creates is owned by nobody, with nobody's umask applied
    def create_own(r):
        os.umask(0o027)
        wfile(j(r, "open/mine"), b"mine", 0o666)
        os.mkdir(j(r, "open/mydir"), 0o777)
        os.symlink("mine", j(r, "open/mylink"))
        os.chmod(j(r, "open/mine"), 0o604)
        return [st_view(os.lstat(j(r, "open", x))) for x in ("mine", "mydir", "mylink")]

    views = pp.nobody(create_own)
    assert views[0][2:4] == (NOBODY, NOBODY) and views[0][0] == "-rw----r--", views
    assert views[1][0] == "drwxr-x---"
    pp.nobody(lambda r: os.unlink(j(r, "open/mine")))
    pp.nobody(lambda r: (wfile(j(r, "sticky/own"), b"o"), os.unlink(j(r, "sticky/own"))))
    pp.nobody(lambda r: rfile(j(r, "rw")), )
    # a write by a non-owner clears the set-user-id bit
    pp.setup(lambda r: os.chmod(j(r, "rw"), 0o4777))
    pp.nobody(lambda r: (wfile(j(r, "rw"), b"changed")))
    pp.same(lambda r: oct(stat.S_IMODE(os.stat(j(r, "rw")).st_mode)), value="0o777")


def test_setid_bits_cleared_like_native(pp):
    """Writes and truncates by a caller without CAP_FSETID clear set-user-id,
    and set-group-id where it is one (group execute) or the caller is not in
    the file's group; root's writes keep them. The mount asks the kernel for
    FUSE_HANDLE_KILLPRIV_V2 (no security.capability lookup per write), which
    makes clearing them the daemon's job."""
    cases = (("append_suid", 0o4777), ("append_sgid_x", 0o2777), ("append_sgid_nox", 0o2767),
             ("root_suid", 0o4777), ("trunc_suid", 0o4777), ("ingroup_sgid_nox", 0o2767),
             ("plain", 0o777), ("otrunc_suid", 0o4777), ("falloc_suid", 0o6777))

    def mk(r):
        for nm, mode in cases:
            wfile(j(r, nm), b"x")
            os.chmod(j(r, nm), mode)
        os.chown(j(r, "ingroup_sgid_nox"), 0, NOBODY)

    pp.other_users()

    def append(nm):
        def fn(r):
            fd = os.open(j(r, nm), os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, b"more")
            finally:
                os.close(fd)
        return fn

    pp.setup(mk)
    for nm in ("append_suid", "append_sgid_x", "append_sgid_nox", "ingroup_sgid_nox", "plain"):
        pp.nobody(append(nm))
    pp.nobody(lambda r: os.truncate(j(r, "trunc_suid"), 1))
    # open(O_TRUNC) reaches the daemon as an atomic-truncate OPEN, fallocate
    # as FALLOCATE: both must clear the bits too
    pp.nobody(lambda r: os.close(os.open(j(r, "otrunc_suid"), os.O_WRONLY | os.O_TRUNC)))

    def falloc(r):
        fd = os.open(j(r, "falloc_suid"), os.O_WRONLY)
        try:
            os.posix_fallocate(fd, 0, 8192)
        finally:
            os.close(fd)
    pp.nobody(falloc)
    pp.same(append("root_suid"))
    modes = pp.same(lambda r: {nm: oct(stat.S_IMODE(os.stat(j(r, nm)).st_mode)) for nm, _ in cases})
    assert modes == {"append_suid": "0o777", "append_sgid_x": "0o777", "append_sgid_nox": "0o767",
                     "root_suid": "0o4777", "trunc_suid": "0o777", "ingroup_sgid_nox": "0o2767",
                     "plain": "0o777", "otrunc_suid": "0o777", "falloc_suid": "0o777"}, modes
    # and the writes themselves landed
    sizes = pp.same(lambda r: {nm: os.stat(j(r, nm)).st_size for nm, _ in cases})
    assert sizes["append_suid"] == 5 and sizes["trunc_suid"] == 1, sizes


# ---- commits overlapping operations ---------------------------------------------


def test_write_through_fd_of_relinked_file_during_commit(pp):
    """Regression: a file whose first name (the one the kernel knows) was
    removed while a hard link keeps it, written through an open fd while a
    commit's snapshot shares it: the copy-on-write must replace the
    remaining name, else later writes went to an orphan copy and were never
    committed (found by the exerciser: fstat showed nlink 0)."""
    import threading
    env, mp = pp.env, pp.mp
    blob = os.urandom(1 << 20)
    for i in range(32):  # enough for the upload to take a while
        wfile(j(pp.m, "big%d" % i), blob)
    a, b = j(pp.m, "A"), j(pp.m, "B")
    wfile(a, b"original")
    fd = os.open(a, os.O_RDWR)
    try:
        os.link(a, b)
        os.unlink(a)
        t = threading.Thread(target=lambda: env.run("sync", mp))
        t.start()
        n = 0
        while t.is_alive():
            os.pwrite(fd, b"%08d" % n, 0)
            n += 1
        t.join()
        last = b"%08d" % (n - 1)
        assert os.fstat(fd).st_nlink == 1
        assert rfile(b) == last
    finally:
        os.close(fd)
    env.run("sync", mp)
    d = os.path.join(env.tmp, "export-relinked")
    env.run("export", "ctx", d)
    try:
        assert rfile(j(d, os.path.relpath(b, mp))) == last
    finally:
        shutil.rmtree(d)
    for i in range(32):
        os.unlink(j(pp.m, "big%d" % i))
