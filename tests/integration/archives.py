"""Builders for hand-made (mostly hostile) bundles and stores.

Everything here is written without contextfs: python tarfile for the tar, the
zstd CLI (plus a hand-made RLE frame for the bomb) for compression, AES-256-GCM
with a raw key for encryption, and a hand-written manifest (REFERENCE.md §6).
"""

import json
import os
import secrets
import struct
import subprocess
import tarfile

import refreader

GiB = 1024 ** 3
DEFAULT_EXCLUDE = ["**/node_modules/**", "**/.pnpm-store/**", "**/.npm/**", "**/.yarn/cache/**",
                   "**/.next/**", "**/dist/**", "**/build/**", "**/.venv/**", "**/__pycache__/**"]
LAYOUT = ["workspace", "memory", "artifacts", "logs", "cache", "config"]
ROOTS = ["workspace", "memory", "artifacts", "logs", "config"]


def _ti(name, kind="file", data=b"", mode=None, linkname="", size=None):
    ti = tarfile.TarInfo(name)
    ti.mtime = 1_700_000_000
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    if kind == "file":
        ti.type = tarfile.REGTYPE
        ti.size = len(data) if size is None else size
        ti.mode = 0o644 if mode is None else mode
    elif kind == "dir":
        ti.type = tarfile.DIRTYPE
        ti.mode = 0o755 if mode is None else mode
    elif kind == "symlink":
        ti.type = tarfile.SYMTYPE
        ti.linkname = linkname
        ti.mode = 0o777
    elif kind == "hardlink":
        ti.type = tarfile.LNKTYPE
        ti.linkname = linkname
        ti.mode = 0o644 if mode is None else mode
    elif kind == "fifo":
        ti.type = tarfile.FIFOTYPE
        ti.mode = 0o644
    elif kind == "chardev":
        ti.type = tarfile.CHRTYPE
        ti.devmajor, ti.devminor = 1, 3
        ti.mode = 0o666
    elif kind == "blockdev":
        ti.type = tarfile.BLKTYPE
        ti.devmajor, ti.devminor = 7, 0
        ti.mode = 0o660
    else:
        raise ValueError(kind)
    return ti


def seed_members(ctx_id):
    """A small, valid context tree (contextsdk.json + roots + a file)."""
    cj = json.dumps({"contextId": ctx_id, "createdBy": "contextSDK", "layout": LAYOUT, "format": "tree"},
                    indent=2).encode() + b"\n"
    members = [("contextsdk.json", "file", cj, None, "")]
    for r in ROOTS:
        members.append((r, "dir", b"", 0o755, ""))
    members.append(("workspace/README.md", "file", b"hand-made bundle\n", 0o644, ""))
    return members


def tar_body(members, fmt=tarfile.PAX_FORMAT):
    """Concatenated member blocks WITHOUT the end-of-archive marker.
    members: iterable of (name, kind, data, mode, linkname). tarfile's own writer
    would normalise names; this writes them verbatim."""
    out = bytearray()
    for name, kind, data, mode, linkname in members:
        ti = _ti(name, kind, data, mode, linkname)
        out += ti.tobuf(format=fmt, encoding="utf-8", errors="surrogateescape")
        if kind == "file" and data:
            out += data
            out += b"\0" * (-len(data) % 512)
    return bytes(out)


def build_tar(members, fmt=tarfile.PAX_FORMAT):
    body = tar_body(members, fmt)
    tar = body + b"\0" * 1024
    return tar + b"\0" * (-len(tar) % 10240)


def zstd_compress(data, level=3):
    p = subprocess.run(["zstd", "-q", "-c", "-%d" % level], input=data, capture_output=True, check=True)
    return p.stdout


def tar_header(name, size, fmt=tarfile.PAX_FORMAT):
    """Header block(s) only, for a regular file member declaring `size` bytes."""
    ti = _ti(name, "file", size=size)
    return ti.tobuf(format=fmt, encoding="utf-8", errors="surrogateescape")


def zstd_rle_frame(nbytes, byte=0):
    """A zstd frame of `nbytes` copies of `byte`, built from RLE blocks (4 bytes per
    128 KiB block): a decompression bomb that costs nothing to make."""
    assert nbytes > 0
    out = bytearray(struct.pack("<I", 0xFD2FB528))
    out.append(0x00)  # frame header descriptor: no FCS, no single segment, no checksum, no dict
    out.append(7 << 3)  # window descriptor: 2^(10+7) = 128 KiB
    block = 128 * 1024
    full, rest = divmod(nbytes, block)
    sizes = [block] * full + ([rest] if rest else [])
    for i, s in enumerate(sizes):
        last = 1 if i == len(sizes) - 1 else 0
        hdr = last | (1 << 1) | (s << 3)
        out += struct.pack("<I", hdr)[:3]
        out.append(byte)
    return bytes(out)


def install_bundle(store, ctx_id, zst, raw_key_hex, generation=1, meta_override=None,
                   extra_manifest=None):
    """Encrypts `zst` with the raw key and installs it as the context's current
    tree with a hand-made manifest. Returns (manifest, object path)."""
    ct, meta = refreader.encrypt(zst, raw_key=bytes.fromhex(raw_key_hex))
    if meta_override:
        meta.update(meta_override)
    attempt = secrets.token_hex(4)
    key = "contexts/%s/tree/%08d-%s.tree.tar.zst.enc" % (ctx_id, generation, attempt)
    path = os.path.join(store, key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(ct)
    now = "2026-01-01T00:00:00.000Z"
    manifest = {
        "version": 1,
        "id": ctx_id,
        "format": "tree",
        "filesystem": "tree",
        "sizeBytes": len(zst),
        "generation": generation,
        "checkpointGeneration": 0,
        "imageKey": "contexts/%s/image/%08d-%s.img.enc" % (ctx_id, generation, attempt),
        "treeKey": key,
        "encryption": dict(meta),
        "treeEncryption": dict(meta),
        "layout": LAYOUT,
        "versions": [],
        "persistencePolicy": {"roots": ROOTS, "exclude": DEFAULT_EXCLUDE},
        "createdAt": now,
        "updatedAt": now,
    }
    if extra_manifest:
        manifest.update(extra_manifest)
    mpath = os.path.join(store, "contexts", ctx_id, "manifest.json")
    with open(mpath, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    return manifest, path


def hostile_bundles(ctx_id, outside_dir):
    """{case: tar.zst bytes}; every case breaks a reader rule of REFERENCE.md §5.5
    (or a cap). `outside_dir` is an absolute directory next to the export target
    (target = <parent>/target, outside = <parent>/outside holding victim.txt)."""
    seed = seed_members(ctx_id)
    victim = os.path.join(outside_dir, "victim.txt")
    F = lambda name, data=b"pwned\n": (name, "file", data, 0o644, "")  # noqa: E731
    S = lambda name, target: (name, "symlink", b"", None, target)  # noqa: E731
    H = lambda name, target: (name, "hardlink", b"", None, target)  # noqa: E731
    lists = {
        "traversal": seed + [F("workspace/../../escape-traversal.txt")],
        "traversal-leading": seed + [F("../escape-leading.txt")],
        "absolute": seed + [F(os.path.join(outside_dir, "absolute.txt"))],
        "dotdot-dir": seed + [("workspace/..", "dir", b"", 0o777, "")],
        "dotdot-trailing-file": seed + [F("workspace/sub/..")],
        "symlink-escape-relative": seed + [S("workspace/up", "../../outside")],
        "symlink-escape-absolute": seed + [S("workspace/abs", outside_dir)],
        "hardlink-escape-relative": seed + [H("workspace/hl", "../outside/victim.txt")],
        "hardlink-escape-absolute": seed + [H("workspace/hl", victim)],
        "symlink-write-through": seed + [S("workspace/out", outside_dir), F("workspace/out/written-through.txt")],
        "symlink-write-through-relative": seed + [S("workspace/out", "../../outside"),
                                                  F("workspace/out/written-through-rel.txt")],
        "fifo": seed + [("workspace/fifo", "fifo", b"", None, "")],
        "chardev": seed + [("workspace/null", "chardev", b"", None, "")],
        "blockdev": seed + [("workspace/loop0", "blockdev", b"", None, "")],
    }
    out = {k: zstd_compress(build_tar(v)) for k, v in lists.items()}
    # a header declaring a 100 GiB member, stream ends right after it
    out["huge-header"] = zstd_compress(tar_body(seed) + tar_header("workspace/huge.bin", 100 * GiB))
    # a real bomb: the same header followed by 100 GiB of zeros (3.2 MB of zstd)
    out["zstd-bomb"] = zstd_compress(tar_body(seed) + tar_header("workspace/bomb.bin", 100 * GiB)) + \
        zstd_rle_frame(100 * GiB)
    return out


def broken_bundles(ctx_id):
    """{case: tar.zst bytes} that pass the reference's name/link checks but cannot
    be extracted (or are not a bundle at all): export must refuse them, and
    verify, which promises the same validation, must too."""
    seed = seed_members(ctx_id)
    F = lambda name, data=b"x\n": (name, "file", data, 0o644, "")  # noqa: E731
    lists = {
        "hardlink-to-missing": seed + [("workspace/h", "hardlink", b"", None, "workspace/nope")],
        "hardlink-to-dir": seed + [("workspace/h", "hardlink", b"", None, "workspace")],
        "file-then-child": seed + [F("workspace/f"), F("workspace/f/child")],
        "empty-name": seed + [F("")],
    }
    out = {k: zstd_compress(build_tar(v)) for k, v in lists.items()}
    out["not-a-tar"] = zstd_compress(os.urandom(5000))
    out["not-zstd"] = os.urandom(5000)
    out["truncated-tar"] = zstd_compress(build_tar(seed + [F("workspace/big", b"y" * 100_000)])[:60_000])
    return out


def many_entries_bundle(ctx_id, n):
    """seed + n copies of one empty-file header (the entry cap is 1,000,000)."""
    hdr = tar_body([("workspace/x", "file", b"", 0o644, "")])
    p = subprocess.run(["zstd", "-q", "-c", "-1", "-T0"], input=tar_body(seed_members(ctx_id)) + hdr * n + b"\0" * 1024,
                       capture_output=True, check=True)
    return p.stdout
