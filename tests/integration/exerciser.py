#!/usr/bin/python3
"""Random file-system exerciser: a contextfs mount against a native directory.

A seeded random sequence of operations (open/create, write at offsets,
read, truncate, ftruncate, rename with RENAME_NOREPLACE / RENAME_EXCHANGE,
unlink, mkdir, rmdir, hard link, symlink, chmod, user xattrs, shared
writable mmap, and operations on long-lived file descriptors that outlive
renames and unlinks) is applied step by step to a directory of the mount and
to a native directory (the model: Linux's own semantics on the staging
filesystem type). Every operation must give the same result or the same
errno on both. After each batch the two trees are compared entry by entry
(type, mode, size, link count, bytes, symlink targets, listings).

Commits (`contextfs sync`) run at random points in a background thread, so
operations overlap with snapshots and copy-on-write. At the end every fd is
closed, the mount is unmounted (committing), mounted again fresh from the
store, and the whole tree's sha256 must equal the model's.

CLI (a soak by hand):
    CONTEXTFS_BIN=build-x/tools/contextfs /usr/bin/python3 tests/integration/exerciser.py \
        --ops 1000000 --seed 7
"""
import argparse
import errno
import hashlib
import json
import mmap
import os
import random
import shutil
import stat
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import ctypes  # noqa: E402
import ctypes.util  # noqa: E402

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2

DIRS = ["d0", "d1", "d2"]
FILES = ["f0", "f1", "f2", "f3", "f4", "f5"]
MAX_FDS = 6
MAX_OFF = 96 * 1024
MAX_LEN = 12 * 1024


def renameat2(a, b, flags):
    if _libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class Mismatch(AssertionError):
    pass


def outcome(fn, root):
    try:
        return ("ok", fn(root))
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno, e.errno))


def entry_view(path, with_nlink=True):
    """(type, mode, size, nlink, content digest or link target) of one entry."""
    st = os.lstat(path)
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return ("l", None, None, None, os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return ("d", mode, None, st.st_nlink if with_nlink else None, None)
    if stat.S_ISREG(st.st_mode):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while True:
                c = f.read(1 << 20)
                if not c:
                    break
                h.update(c)
        return ("f", mode, st.st_size, st.st_nlink if with_nlink else None, h.hexdigest())
    return ("?", mode, None, None, None)


def tree_view(root, with_nlink=True):
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(d, name)
            out[os.path.relpath(p, root)] = entry_view(p, with_nlink)
    return out


def unsafe_link(target):
    return target.startswith("/") or any(seg == ".." for seg in target.split("/"))


def tree_digest(view):
    h = hashlib.sha256()
    for rel in sorted(view):
        h.update(json.dumps([rel, view[rel]]).encode())
    return h.hexdigest()


def diff_views(a, b, limit=10):
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            out.append("%s: model %r, mount %r" % (k, a.get(k), b.get(k)))
            if len(out) >= limit:
                break
    return out


class Exerciser:
    """Applies the same random operations to native (the model) and mount."""

    def __init__(self, native, mount, seed, sync=None, sync_prob=0.0, log_len=40):
        self.roots = (native, mount)
        self.native, self.mount = native, mount
        self.rng = random.Random(seed)
        self.sync_rng = random.Random(seed ^ 0x5EED)
        self.seed = seed
        self.sync = sync
        self.sync_prob = sync_prob
        self.fds = []  # [{native: fd, mount: fd}, flags, label]
        self.ops = 0
        self.counts = {}
        self.errors = {}
        self.log = []
        self.log_len = log_len
        self.sync_thread = None
        self.syncs = 0
        self.sync_failures = []

    # ---- random choices ----------------------------------------------

    def rpath(self, leaf_dirs=True):
        r = self.rng
        depth = r.choice((0, 0, 1, 1, 1, 2))
        parts = [r.choice(DIRS) for _ in range(depth)]
        pool = FILES + DIRS if leaf_dirs else FILES
        parts.append(r.choice(pool))
        return "/".join(parts)

    def data(self, n):
        return self.rng.randbytes(n)

    # ---- one step ----------------------------------------------------------

    def apply(self, label, fn):
        """Runs fn on the model then on the mount; the outcomes must match."""
        self.ops += 1
        self.log.append(label)
        if len(self.log) > self.log_len:
            del self.log[0]
        n = outcome(fn, self.native)
        m = outcome(fn, self.mount)
        kind = label.split(" ", 1)[0]
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if n[0] == "err":
            self.errors[n[1]] = self.errors.get(n[1], 0) + 1
        if m != n:
            raise Mismatch("seed %d op %d %s: model %r, mount %r\nlast ops:\n  %s" % (
                self.seed, self.ops, label, n, m, "\n  ".join(self.log)))
        return n

    def step(self):
        r = self.rng
        # commits draw from their own generator: the operation sequence of
        # a seed is the same with or without them
        if self.sync and self.sync_prob and self.sync_rng.random() < self.sync_prob:
            self.kick_sync()
        x = r.random()
        if x < 0.16:
            return self.op_write()
        if x < 0.26:
            return self.op_read()
        if x < 0.31:
            return self.op_truncate()
        if x < 0.39:
            return self.op_rename()
        if x < 0.44:
            return self.op_unlink()
        if x < 0.50:
            return self.op_mkdir()
        if x < 0.54:
            return self.op_rmdir()
        if x < 0.58:
            return self.op_link()
        if x < 0.60:
            return self.op_symlink()
        if x < 0.62:
            return self.op_chmod()
        if x < 0.64:
            return self.op_xattr()
        if x < 0.69:
            return self.op_mmap()
        if x < 0.73:
            return self.op_stat()
        if x < 0.76:
            return self.op_listdir()
        if x < 0.81:
            return self.op_fd_open()
        return self.op_fd()

    # ---- operations on paths -------------------------------------------------

    def op_write(self):
        r = self.rng
        p = self.rpath()
        flags = os.O_WRONLY | os.O_CREAT | r.choice((0, 0, 0, os.O_TRUNC, os.O_APPEND, os.O_EXCL))
        off = r.choice((0, r.randrange(MAX_OFF), r.randrange(4096)))
        data = self.data(r.choice((1, r.randrange(1, 512), r.randrange(1, MAX_LEN))))

        def f(root):
            fd = os.open(os.path.join(root, p), flags, 0o644)
            try:
                n = os.pwrite(fd, data, off)
                return n, os.fstat(fd).st_size
            finally:
                os.close(fd)

        return self.apply("write %s flags=%o off=%d len=%d" % (p, flags, off, len(data)), f)

    def op_read(self):
        r = self.rng
        p = self.rpath()
        off = r.choice((0, r.randrange(MAX_OFF)))
        ln = r.choice((1, 4096, r.randrange(1, 2 * MAX_LEN)))

        def f(root):
            fd = os.open(os.path.join(root, p), os.O_RDONLY)
            try:
                return hashlib.sha256(os.pread(fd, ln, off)).hexdigest()
            finally:
                os.close(fd)

        return self.apply("read %s off=%d len=%d" % (p, off, ln), f)

    def op_truncate(self):
        r = self.rng
        p = self.rpath()
        size = r.choice((0, r.randrange(MAX_OFF), r.randrange(4096)))
        return self.apply("truncate %s %d" % (p, size),
                          lambda root: os.truncate(os.path.join(root, p), size))

    def op_rename(self):
        r = self.rng
        a, b = self.rpath(), self.rpath()
        flags = r.choice((0, 0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE))
        if flags:
            return self.apply("renameat2 %s %s %d" % (a, b, flags),
                              lambda root: renameat2(os.path.join(root, a), os.path.join(root, b), flags))
        return self.apply("rename %s %s" % (a, b),
                          lambda root: os.rename(os.path.join(root, a), os.path.join(root, b)))

    def op_unlink(self):
        p = self.rpath()
        return self.apply("unlink %s" % p, lambda root: os.unlink(os.path.join(root, p)))

    def op_mkdir(self):
        p = self.rpath()
        mode = self.rng.choice((0o755, 0o700, 0o775))
        return self.apply("mkdir %s %o" % (p, mode), lambda root: os.mkdir(os.path.join(root, p), mode))

    def op_rmdir(self):
        p = self.rpath()
        return self.apply("rmdir %s" % p, lambda root: os.rmdir(os.path.join(root, p)))

    def op_link(self):
        a, b = self.rpath(), self.rpath()
        return self.apply("link %s %s" % (a, b),
                          lambda root: os.link(os.path.join(root, a), os.path.join(root, b),
                                               follow_symlinks=False))

    def op_symlink(self):
        target = self.rng.choice(("f0", "../f1", "d0/f2", "nowhere", "d1"))
        p = self.rpath()
        return self.apply("symlink %s %s" % (target, p),
                          lambda root: os.symlink(target, os.path.join(root, p)))

    def op_chmod(self):
        p = self.rpath()
        mode = self.rng.choice((0o644, 0o600, 0o755, 0o640, 0o700))
        def f(root):
            q = os.path.join(root, p)
            return None if os.path.islink(q) else os.chmod(q, mode)

        return self.apply("chmod %s %o" % (p, mode), f)

    def op_xattr(self):
        r = self.rng
        p = self.rpath()
        name = "user." + r.choice(("a", "b"))
        what = r.choice(("set", "get", "list", "remove"))
        val = self.data(r.randrange(0, 64))

        def f(root):
            q = os.path.join(root, p)
            if os.path.islink(q):
                return None
            if what == "set":
                return os.setxattr(q, name, val)
            if what == "get":
                return os.getxattr(q, name)
            if what == "list":
                return sorted(os.listxattr(q))
            return os.removexattr(q, name)

        return self.apply("xattr-%s %s %s" % (what, p, name), f)

    def op_mmap(self):
        r = self.rng
        p = self.rpath(leaf_dirs=False)
        a, b = r.random(), r.random()
        data = self.data(r.randrange(1, 8192))
        flush = r.random() < 0.2
        write = r.random() < 0.7

        def f(root):
            fd = os.open(os.path.join(root, p), os.O_RDWR)
            try:
                size = os.fstat(fd).st_size
                if size == 0:
                    return 0
                m = mmap.mmap(fd, size, mmap.MAP_SHARED)
                try:
                    if write:
                        off = int(a * size)
                        k = min(len(data), size - off)
                        m[off:off + k] = data[:k]
                        if flush:
                            m.flush()
                    return size, hashlib.sha256(m[:]).hexdigest()
                finally:
                    m.close()
            finally:
                os.close(fd)

        return self.apply("mmap %s write=%s flush=%s a=%.3f" % (p, write, flush, a), f)

    def op_stat(self):
        p = self.rpath()
        return self.apply("stat %s" % p, lambda root: entry_view(os.path.join(root, p)))

    def op_listdir(self):
        p = self.rng.choice(("",) + tuple(DIRS) + ("d0/d1", "d1/d2", "d2/d0"))
        return self.apply("listdir %s" % p, lambda root: sorted(os.listdir(os.path.join(root, p))))

    # ---- long-lived fds ------------------------------------------------------

    def op_fd_open(self):
        r = self.rng
        if len(self.fds) >= MAX_FDS:
            return self.op_fd_close(r.randrange(len(self.fds)))
        p = self.rpath(leaf_dirs=False)
        flags = r.choice((os.O_RDWR, os.O_RDWR | os.O_APPEND, os.O_RDONLY, os.O_WRONLY | os.O_CREAT,
                          os.O_RDWR | os.O_CREAT | os.O_TRUNC, os.O_RDWR | os.O_CREAT))
        got = {}

        def f(root):
            got[root] = os.open(os.path.join(root, p), flags, 0o644)
            return None

        res = self.apply("fdopen %s flags=%o" % (p, flags), f)
        if res[0] == "ok":
            self.fds.append((got, flags, p))
        else:
            for fd in got.values():
                os.close(fd)
        return res

    def op_fd_close(self, i):
        fds, flags, p = self.fds.pop(i)
        return self.apply("fdclose %s" % p, lambda root: os.close(fds[root]))

    def op_fd(self):
        r = self.rng
        if not self.fds:
            return self.op_fd_open()
        i = r.randrange(len(self.fds))
        fds, flags, p = self.fds[i]
        x = r.random()
        tag = "#%d(%s)" % (i, p)
        if x < 0.35:
            off = r.choice((0, r.randrange(MAX_OFF)))
            data = self.data(r.randrange(1, MAX_LEN))
            if r.random() < 0.5:
                return self.apply("fdwrite %s len=%d" % (tag, len(data)),
                                  lambda root: (os.write(fds[root], data),
                                                os.lseek(fds[root], 0, os.SEEK_CUR)))
            return self.apply("fdpwrite %s off=%d len=%d" % (tag, off, len(data)),
                              lambda root: os.pwrite(fds[root], data, off))
        if x < 0.6:
            off = r.choice((0, r.randrange(MAX_OFF)))
            ln = r.randrange(1, 2 * MAX_LEN)
            return self.apply("fdpread %s off=%d len=%d" % (tag, off, ln),
                              lambda root: hashlib.sha256(os.pread(fds[root], ln, off)).hexdigest())
        if x < 0.72:
            size = r.choice((0, r.randrange(MAX_OFF)))
            return self.apply("fdtrunc %s %d" % (tag, size), lambda root: os.ftruncate(fds[root], size))
        if x < 0.9:
            def f(root):
                st = os.fstat(fds[root])
                size = None if stat.S_ISDIR(st.st_mode) else st.st_size  # fs-specific
                return stat.filemode(st.st_mode), size, st.st_nlink

            return self.apply("fdstat %s" % tag, f)
        return self.op_fd_close(i)

    # ---- commits -----------------------------------------------------------

    def kick_sync(self):
        if self.sync_thread and self.sync_thread.is_alive():
            return
        self.syncs += 1

        def run():
            try:
                self.sync()
            except Exception as e:  # noqa: the check after the run reports it
                self.sync_failures.append(repr(e))

        self.sync_thread = threading.Thread(target=run, daemon=True)
        self.sync_thread.start()

    def wait_sync(self):
        if self.sync_thread:
            self.sync_thread.join()
            self.sync_thread = None

    # ---- checks ------------------------------------------------------------

    def check_trees(self):
        a, b = tree_view(self.native), tree_view(self.mount)
        if a != b:
            raise Mismatch("seed %d after op %d: trees differ:\n  %s\nlast ops:\n  %s" % (
                self.seed, self.ops, "\n  ".join(diff_views(a, b)), "\n  ".join(self.log)))
        return len(a)

    def close_all(self):
        while self.fds:
            self.op_fd_close(len(self.fds) - 1)

    def run(self, nops, batch=500, progress=None):
        entries = 0
        while self.ops < nops:
            end = min(nops, self.ops + batch)
            while self.ops < end:
                self.step()
            entries = self.check_trees()
            if progress:
                progress(self, entries)
        self.close_all()
        self.wait_sync()
        self.check_trees()
        return entries


# ---- a whole run on a real mount -------------------------------------------


def default_model_dir():
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def run_on_mount(env, nops, seed, batch=500, sync_prob=0.0003, progress=None, model_dir=None):
    """Mounts ctx, exercises it against a native model directory, commits at
    random points, unmounts, remounts and compares the tree digests. Returns
    a summary dict; raises Mismatch on any difference."""
    t0 = time.monotonic()
    mp = env.mount("ctx")
    # the model on tmpfs when there is one: Linux semantics, without
    # paying the native disk's journal a second time
    base = model_dir or env.tmp
    # one level down on both sides, so that a symlink "../x" at the top of
    # the exercised tree resolves to the same (absent) thing on both
    model_parent = tempfile.mkdtemp(prefix="cfs-model-", dir=base)
    native = os.path.join(model_parent, "ex")
    os.mkdir(native)
    m = os.path.join(mp, "workspace", "run", "ex")
    os.makedirs(m)
    os.chmod(native, 0o755)
    os.chmod(m, 0o755)
    old = os.umask(0o022)

    def sync():
        p = env.run("sync", mp, check=False)
        if p.returncode != 0:
            raise RuntimeError("contextfs sync: %d %s" % (p.returncode, p.stderr.strip()))

    ex = Exerciser(native, m, seed, sync=sync, sync_prob=sync_prob)
    try:
        entries = ex.run(nops, batch=batch, progress=progress)
    finally:
        os.umask(old)
        ex.wait_sync()
    t_ops = time.monotonic() - t0
    status = env.status(mp)
    if ex.sync_failures:
        raise Mismatch("commits failed during the run: %s" % ex.sync_failures[:3])
    env.umount(mp)
    mp2 = env.mount("ctx", name="remount")
    # after a round trip through the store: same bytes, modes, links; the
    # packer drops symlinks whose target is absolute or has a `..` segment
    # (REFERENCE.md section 5.3), so the model does too
    model = {k: v for k, v in tree_view(native).items() if not (v[0] == "l" and unsafe_link(v[4]))}
    got = tree_view(os.path.join(mp2, "workspace", "run", "ex"))
    if tree_digest(model) != tree_digest(got):
        raise Mismatch("seed %d: tree after remount differs from the model:\n  %s" % (
            seed, "\n  ".join(diff_views(model, got))))
    env.umount(mp2)
    shutil.rmtree(model_parent, ignore_errors=True)
    errs = env.log_errors()
    if errs:
        raise Mismatch("daemon logged errors: %s" % errs[:5])
    return {
        "seed": seed, "ops": ex.ops, "seconds": round(time.monotonic() - t0, 1),
        "ops_seconds": round(t_ops, 1), "ops_per_s": round(ex.ops / t_ops),
        "final_entries": entries, "digest": tree_digest(model), "syncs": ex.syncs,
        "commits": status.get("commits"), "cow_copies": status.get("copyOnWrites"),
        "op_counts": dict(sorted(ex.counts.items())),
        "errnos": dict(sorted(ex.errors.items(), key=lambda kv: -kv[1])),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=100000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=500, help="operations between full tree comparisons")
    ap.add_argument("--sync-prob", type=float, default=0.0003,
                    help="chance per operation of starting a background `contextfs sync`")
    ap.add_argument("--model-dir", default=default_model_dir(),
                    help="where the native model directory lives (default /dev/shm)")
    ap.add_argument("--bin", help="contextfs binary (default $CONTEXTFS_BIN)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args(argv)
    if a.bin:
        os.environ["CONTEXTFS_BIN"] = a.bin
    import test_mount  # noqa: E402 (reads CONTEXTFS_BIN at import)
    tmp = tempfile.mkdtemp(prefix="cfs-exerciser-")
    env = test_mount.Env(tmp)
    last = [time.monotonic()]

    def progress(ex, entries):
        now = time.monotonic()
        if now - last[0] >= 10:
            last[0] = now
            print("  %d ops, %d entries, %d syncs" % (ex.ops, entries, ex.syncs), file=sys.stderr, flush=True)

    rc = 0
    try:
        env.run("init", "ctx")
        summary = run_on_mount(env, a.ops, a.seed, batch=a.batch, sync_prob=a.sync_prob, progress=progress,
                               model_dir=a.model_dir)
        print(json.dumps(summary, indent=2))
    except Mismatch as e:
        print("MISMATCH: %s" % e, file=sys.stderr)
        rc = 1
    finally:
        env.cleanup()
        if a.keep or rc:
            print("work directory kept: %s" % tmp, file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
