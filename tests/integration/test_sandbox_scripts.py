"""The scripts a session runs in the sandbox (core/session.c), run here with
bash against hand-made bundles, without a runtime: the unpacker (clear the
managed roots, check, extract) and the packer.

Both have two paths: GNU tar (the fast one: tar lists the archive, every
member is checked, and only an archive whose members are all plain is
extracted by tar) and the checked per-member python extractor of the
reference (REFERENCE.md §5.5, §10.2), forced with CONTEXTSDK_TAR_FAST=0.
Each test runs both and requires the same outcome: the same tree, or the
same error with nothing written outside the mount. Which path ran is told
by directory mtimes: tar restores them, the per-member extractor leaves
them at the time of extraction (as the reference does).
"""

import hashlib
import json
import os
import stat
import subprocess
import tarfile
import time

import pytest

import archives
from conftest import CONTEXTFS_BIN

SCRIPT_BIN = os.path.join(os.path.dirname(os.path.dirname(CONTEXTFS_BIN)), "tests", "unit", "sandbox_script")
POLICY = {"roots": archives.ROOTS, "exclude": archives.DEFAULT_EXCLUDE}
OLD = 1_700_000_000  # archives.py's member mtime


def script(which, bundle, mount, keep=False):
    if not os.access(SCRIPT_BIN, os.X_OK):
        pytest.fail("%s not found: build the project (ninja -C build)" % SCRIPT_BIN, pytrace=False)
    args = [SCRIPT_BIN, which, bundle, mount, json.dumps(POLICY, separators=(",", ":"))]
    if keep:
        args.append("--keep-excluded")
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def run_script(text, fast, timeout=60, stdin=None):
    env = dict(os.environ, CONTEXTSDK_TAR_FAST="1" if fast else "0", PATH="/usr/bin:/bin")
    return subprocess.run(["bash", "-c", text], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=stdin if stdin is not None else subprocess.DEVNULL)


# how the bundle reaches the unpacker: uploaded as a file first, or on its
# stdin (run_io), written to the bundle path while it is checked
VIA = ["file", "stdin"]


@pytest.fixture(params=VIA)
def via(request):
    return request.param


def unpack(tmp, name, zst, fast, keep=False, prepare=None, via="file"):
    """Unpacks zst into <tmp>/<name>/target (outside: <tmp>/<name>/outside)."""
    base = os.path.join(str(tmp), name)
    mount = os.path.join(base, "target")
    outside = os.path.join(base, "outside")
    os.makedirs(mount)
    os.makedirs(outside)
    with open(os.path.join(outside, "victim.txt"), "w") as f:
        f.write("victim\n")
    if prepare:
        prepare(mount, outside)
    bundle = os.path.join(base, "bundle.tar.zst")
    if via == "file":
        with open(bundle, "wb") as f:
            f.write(zst)
        r = run_script(script("unpack", bundle, mount, keep), fast)
    else:
        src = os.path.join(str(tmp), name + ".upload")
        with open(src, "wb") as f:
            f.write(zst)
        with open(src, "rb") as f:
            r = run_script(script("unpack-stdin", os.path.join(base, "tmp", "b.tar.zst"), mount, keep), fast,
                           stdin=f)
        os.unlink(src)
        # the received plaintext is gone, whatever happened
        assert os.listdir(os.path.join(base, "tmp")) == []
        os.rmdir(os.path.join(base, "tmp"))
    return r, mount, outside


def tree(root):
    """{relpath: (kind, mode, size, sha256 | link target, mtime)} below root."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, 0, os.readlink(p), None)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), 0, "", None)
            else:
                with open(p, "rb") as f:
                    h = hashlib.sha256(f.read()).hexdigest()
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_size, h, st.st_mtime_ns)
    return out


def outside_state(outside):
    return {n: open(os.path.join(outside, n), "rb").read() for n in sorted(os.listdir(outside))}


def bundle(members):
    return archives.zstd_compress(archives.build_tar(members))


def benign_members():
    odd = "workspace/odd name \"q\"\nline \u00e9"
    big = os.urandom(300_000)
    return archives.seed_members("s") + [
        ("workspace/sub", "dir", b"", 0o700, ""),
        ("workspace/sub/deep", "dir", b"", 0o755, ""),
        ("workspace/sub/deep/x.txt", "file", b"deep\n", 0o640, ""),
        ("workspace/tool.sh", "file", b"#!/bin/sh\necho tool\n", 0o755, ""),
        ("workspace/secret.bin", "file", big, 0o600, ""),
        ("workspace/empty", "file", b"", 0o644, ""),
        ("workspace/alias", "symlink", b"", None, "sub/deep/x.txt"),
        ("workspace/dirlink", "symlink", b"", None, "sub"),
        ("workspace/hard", "hardlink", b"", 0o755, "workspace/tool.sh"),
        (odd, "file", b"odd\n", 0o644, ""),
        ("memory/notes.md", "file", b"notes\n", 0o644, ""),
        ("workspace/emptydir", "dir", b"", 0o755, ""),
        ("workspace/shared", "dir", b"", 0o777, ""),
    ]


def test_unpack_fast_path_matches_checked_extractor(tmp_path, via):
    zst = bundle(benign_members())
    rf, mf, _ = unpack(tmp_path, "fast", zst, fast=True, via=via)
    rs, ms, _ = unpack(tmp_path, "slow", zst, fast=False, via=via)
    assert rf.returncode == 0, rf.stderr
    assert rs.returncode == 0, rs.stderr
    tf, ts = tree(mf), tree(ms)
    # the same files, modes, contents, links and file mtimes
    assert {k: v for k, v in tf.items() if v[0] != "dir"} == {k: v for k, v in ts.items() if v[0] != "dir"}
    assert set(tf) == set(ts)
    assert tf["workspace/tool.sh"][1] == 0o755 and tf["workspace/sub/deep/x.txt"][1] == 0o640
    assert os.lstat(os.path.join(mf, "workspace/hard")).st_ino == os.lstat(os.path.join(mf, "workspace/tool.sh")).st_ino
    assert os.readlink(os.path.join(mf, "workspace/alias")) == "sub/deep/x.txt"
    # GNU tar ran (it restores directory mtimes); the checked extractor did not
    assert os.stat(os.path.join(mf, "workspace/sub/deep")).st_mtime == OLD
    assert os.stat(os.path.join(ms, "workspace/sub/deep")).st_mtime > OLD + 86400
    # directories keep their recorded modes (the layout's 0777 ones too)
    assert tf["workspace/shared"][1] == 0o777 and tf["workspace/sub"][1] == 0o700
    # the plaintext bundle is gone, the layout dirs exist
    assert not os.path.exists(os.path.join(str(tmp_path), "fast", "bundle.tar.zst"))
    assert not os.path.exists(os.path.join(str(tmp_path), "fast", "tmp"))
    for n in archives.LAYOUT:
        assert os.path.isdir(os.path.join(mf, n))


@pytest.mark.parametrize("case,extra", [
    # the data filter would change these modes: the checked extractor does it
    ("setuid", [("workspace/suid", "file", b"x", 0o4755, "")]),
    ("group-write", [("workspace/gw", "file", b"x", 0o664, "")]),
    ("no-owner-write", [("workspace/ro", "file", b"x", 0o444, "")]),
    ("sticky-dir", [("workspace/tmp", "dir", b"", 0o1777, "")]),
    # a member reached through a symlink of the same archive (inside: allowed)
    ("through-symlink", [("workspace/d", "dir", b"", 0o755, ""), ("workspace/ln", "symlink", b"", None, "d"),
                         ("workspace/ln/x", "file", b"via link\n", 0o644, "")]),
    # a hard link whose header carries another mode than its target's
    ("hardlink-mode", [("workspace/t", "file", b"t\n", 0o755, ""), ("workspace/h", "hardlink", b"", 0o644, "workspace/t")]),
    # the same name twice
    ("duplicate", [("workspace/dup", "file", b"one\n", 0o644, ""), ("workspace/dup", "file", b"two\n", 0o644, "")]),
    # names tar would normalise
    ("dot-name", [("./workspace/dot.txt", "file", b"dot\n", 0o644, "")]),
])
def test_unpack_falls_back_to_checked_extractor(tmp_path, case, extra, via):
    zst = bundle(archives.seed_members("s") + extra)
    rf, mf, of = unpack(tmp_path, "fast", zst, fast=True, via=via)
    rs, ms, os_ = unpack(tmp_path, "slow", zst, fast=False, via=via)
    assert (rf.returncode, rf.stderr) == (rs.returncode, rs.stderr)
    assert {k: v[:4] for k, v in tree(mf).items()} == {k: v[:4] for k, v in tree(ms).items()}
    # the checked extractor ran: directory mtimes are not the archive's
    assert os.stat(os.path.join(mf, "workspace")).st_mtime > OLD + 86400
    assert outside_state(of) == {"victim.txt": b"victim\n"}


HOSTILE = sorted(archives.hostile_bundles("s", "/x"))
BROKEN = sorted(archives.broken_bundles("s"))


@pytest.mark.parametrize("case", HOSTILE + BROKEN)
def test_unpack_hostile_archives(tmp_path, case, via):
    """Hostile bundles are refused by both paths with the same message; the
    merely broken ones (which contextfs's own reader refuses before any
    upload) end the same way in both."""
    results = {}
    # made once: some broken cases are random bytes, and both paths must
    # see the same ones (tarfile's message depends on them)
    broken = archives.broken_bundles("s")
    for fast in (True, False):
        name = "fast" if fast else "slow"
        outside = os.path.join(str(tmp_path), name, "outside")
        zst = {**archives.hostile_bundles("s", outside), **broken}[case]
        t0 = time.monotonic()
        r, mount, outside = unpack(tmp_path, name, zst, fast=fast, via=via)
        assert time.monotonic() - t0 < 30, "a bomb was decompressed"
        results[name] = (r.returncode, r.stderr.replace(os.path.join(str(tmp_path), name), "BASE"))
        if case in HOSTILE:
            assert r.returncode != 0, "%s accepted by the %s path" % (case, name)
        # nothing written outside the mount, nothing left outside its parent
        assert outside_state(outside) == {"victim.txt": b"victim\n"}
        assert set(os.listdir(os.path.dirname(mount))) == {"outside", "target"}
        for d, dirs, files in os.walk(mount):
            for n in dirs + files:
                p = os.path.join(d, n)
                if os.path.islink(p):
                    real = os.path.realpath(p)
                    assert not real.startswith(outside), "%s links outside" % p
    assert results["fast"] == results["slow"]
    if case in HOSTILE:
        assert results["fast"][1].strip()


def test_unpack_kept_symlink_is_not_followed(tmp_path):
    """--keep-excluded keeps workspace/node_modules; if it is a symlink out of
    the mount, a member below it must not be written through it."""
    zst = bundle(archives.seed_members("s") + [("workspace/node_modules/pkg", "file", b"evil\n", 0o644, "")])

    def prepare(mount, outside):
        os.makedirs(os.path.join(mount, "workspace"))
        os.symlink(outside, os.path.join(mount, "workspace", "node_modules"))

    for fast in (True, False):
        name = "fast" if fast else "slow"
        r, mount, outside = unpack(tmp_path, name, zst, fast=fast, keep=True, prepare=prepare)
        assert r.returncode != 0
        assert "resolves outside the mount: workspace/node_modules/pkg" in r.stderr
        assert outside_state(outside) == {"victim.txt": b"victim\n"}


def members_of(zst_path):
    out = []
    z = subprocess.run(["zstd", "-dc", zst_path], check=True, capture_output=True).stdout
    import io
    with tarfile.open(fileobj=io.BytesIO(z)) as tf:
        for m in tf:
            data = tf.extractfile(m).read() if m.isreg() else b""
            out.append((m.name, m.type, m.mode, m.size, m.mtime, m.linkname, m.uid, m.gid, m.uname, m.gname,
                        hashlib.sha256(data).hexdigest()))
    return out


def zstd_frames(data):
    """(start, end) of each zstd frame of data (RFC 8878 framing)."""
    frames, pos = [], 0
    while pos < len(data):
        magic = int.from_bytes(data[pos:pos + 4], "little")
        if magic & 0xFFFFFFF0 == 0x184D2A50:  # skippable
            end = pos + 8 + int.from_bytes(data[pos + 4:pos + 8], "little")
        else:
            assert magic == 0xFD2FB528, "not a zstd frame at %d" % pos
            fhd = data[pos + 4]
            single = (fhd >> 5) & 1
            hsize = 1 + (0 if single else 1) + [0, 1, 2, 4][fhd & 3] + \
                [1 if single else 0, 2, 4, 8][fhd >> 6]
            end = pos + 4 + hsize
            while True:
                bh = int.from_bytes(data[end:end + 3], "little")
                end += 3 + (1 if (bh >> 1) & 3 == 1 else bh >> 3)
                if bh & 1:
                    break
            end += 4 if (fhd >> 2) & 1 else 0
        frames.append((pos, end))
        pos = end
    return frames


def test_pack_split_puts_the_head_in_a_frame_of_its_own(tmp_path):
    """A save's packer (pack-split): the same members as the plain packer,
    .contextsdk and contextsdk.json alone in the first zstd frame, which
    ends on a member boundary without end-of-archive blocks."""
    mount = str(tmp_path / "mnt")
    for rel, data in {".contextsdk/index.json": b"{}\n", ".contextsdk/versions/2.json": b"{}\n",
                      "contextsdk.json": b"{\"contextId\": \"x\"}\n", "workspace/a.txt": b"a\n" * 5000,
                      "workspace/sub/b.bin": os.urandom(300000), "memory/m.md": b"m\n",
                      "workspace/node_modules/x.js": b"x\n"}.items():
        p = os.path.join(mount, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
    os.symlink("a.txt", os.path.join(mount, "workspace/alias"))
    for fast in (True, False):
        plain, split = str(tmp_path / "plain.tar.zst"), str(tmp_path / "split.tar.zst")
        for which, out in (("pack", plain), ("pack-split", split)):
            r = run_script(script(which, out, mount), fast)
            assert r.returncode == 0, r.stderr
        assert members_of(split) == members_of(plain)
        with open(split, "rb") as f:
            data = f.read()
        frames = zstd_frames(data)
        assert len(frames) == 2 and frames[-1][1] == len(data)
        head = subprocess.run(["zstd", "-dc"], input=data[:frames[0][1]], check=True,
                              capture_output=True).stdout
        assert len(head) % 512 == 0 and head[-512:] != bytes(512)  # no end-of-archive
        import io
        with tarfile.open(fileobj=io.BytesIO(head + bytes(1024))) as tf:
            assert [m.name for m in tf] == [".contextsdk", ".contextsdk/index.json", ".contextsdk/versions",
                                            ".contextsdk/versions/2.json", "contextsdk.json"]
        tail = subprocess.run(["zstd", "-dc"], input=data[frames[0][1]:], check=True,
                              capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(tail)) as tf:
            names = [m.name for m in tf]
        assert names[0] == "workspace" and "memory/m.md" in names and "workspace/alias" in names
        assert not any(n.startswith((".contextsdk", "contextsdk.json")) or "node_modules" in n for n in names)


def test_pack_fast_path_matches_tarfile(tmp_path):
    mount = str(tmp_path / "mnt")
    ws = os.path.join(mount, "workspace")
    os.makedirs(os.path.join(ws, "sub", "deep"))
    os.makedirs(os.path.join(ws, "pkg", "node_modules", "dep"))
    os.makedirs(os.path.join(mount, "memory"))
    os.makedirs(os.path.join(mount, "cache"))
    files = {"workspace/a.txt": (b"a\n", 0o644), "workspace/sub/deep/x": (b"x" * 70000, 0o640),
             "workspace/tool.sh": (b"#!/bin/sh\n", 0o755), "workspace/-dash": (b"d\n", 0o600),
             "workspace/odd \"name\"\nline \u00e9": (b"o\n", 0o644), "memory/m.md": (b"m\n", 0o644),
             "workspace/pkg/node_modules/dep/i.js": (b"js\n", 0o644), "cache/c": (b"c\n", 0o644)}
    for rel, (data, mode) in files.items():
        p = os.path.join(mount, rel)
        with open(p, "wb") as f:
            f.write(data)
        os.chmod(p, mode)
        os.utime(p, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    os.link(os.path.join(ws, "a.txt"), os.path.join(ws, "hard"))
    os.symlink("sub/deep/x", os.path.join(ws, "alias"))
    os.symlink("/etc/passwd", os.path.join(ws, "escape"))
    os.symlink("../../outside", os.path.join(ws, "up"))
    os.mkfifo(os.path.join(ws, "fifo"))
    got = {}
    for fast in (True, False):
        out = str(tmp_path / ("fast.tar.zst" if fast else "slow.tar.zst"))
        r = run_script(script("pack", out, mount), fast)
        assert r.returncode == 0, r.stderr
        got[fast] = members_of(out)
    assert got[True] == got[False]
    names = [m[0] for m in got[True]]
    assert "workspace/alias" in names and "workspace/hard" in names
    for gone in ("workspace/escape", "workspace/up", "workspace/fifo", "cache/c",
                 "workspace/pkg/node_modules/dep/i.js"):
        assert gone not in names
    hard = [m for m in got[True] if m[0] == "workspace/hard"][0]
    assert hard[1] == tarfile.LNKTYPE and hard[5] == "workspace/a.txt"
    x = [m for m in got[True] if m[0] == "workspace/sub/deep/x"][0]
    assert x[2] == 0o640 and x[4] == pytest.approx(1_700_000_000.123456789, abs=1e-6)
    assert all(m[6] == 0 and m[7] == 0 for m in got[True])
