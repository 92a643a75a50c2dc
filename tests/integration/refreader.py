#!/usr/bin/python3
"""Independent reader of a contextfs / @contextsdk/core 0.4 store.

Shares no code with contextfs: it follows REFERENCE.md only.

  manifest (§6)  contexts/<id>/manifest.json; treeKey and treeEncryption with
                 the reference's fallbacks (treeKey missing -> legacy
                 contexts/<id>/current.tree.tar.zst.enc; treeEncryption missing
                 -> encryption when format is tree; format missing -> ext4).
  crypto (§4)    AES-256-GCM, raw ciphertext (no header), nonce/tag/salt in the
                 metadata (standard base64); scrypt with the recorded N/r/p
                 (legacy 16384/8/1 when `scrypt` is absent) or a raw hex key;
                 nonce must be 12 bytes and tag 16 bytes (downgrade protection).
  bundle (§5)    zstd (the `zstd` CLI) -> tar, walked with python tarfile in
                 stream mode applying the reader rules of §5.5: unsafe names,
                 unsafe link targets, only file/dir/symlink/hardlink, at most
                 1,000,000 entries and 64 GiB of member bytes, and the runtime
                 extractor's "resolves outside the mount" rule (a member reached
                 through a symlink declared earlier in the archive).

Library use:
    entries = read_tree(store, ctx_id, passphrase=... | raw_key_hex=...)
    -> [{"path", "type", "mode", "size", "mtime", "sha256"?, "linkname"?}, ...]
in tar order. CLI:
    python3 refreader.py STORE ID --passphrase-env VAR   (or --key-hex-env VAR)
prints {"ok": true, "entries": [...]} or {"ok": false, "error": ...} (exit != 0).
"""

import argparse
import base64
import binascii
import hashlib
import json
import os
import posixpath
import shutil
import subprocess
import sys
import tarfile
import tempfile

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAX_ENTRIES = 1_000_000
MAX_TOTAL_BYTES = 64 * 1024 ** 3  # 68,719,476,736
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_SCRYPT_COST = 1 << 22
LEGACY_SCRYPT = {"cost": 16384, "blockSize": 8, "parallelization": 1}
ID_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


class RefReaderError(Exception):
    """Base class; `exit_code` follows the contextfs CLI convention."""

    exit_code = 1


class NotFound(RefReaderError):
    exit_code = 3


class AuthError(RefReaderError):
    exit_code = 5


class CorruptInput(RefReaderError):
    """Unparseable/invalid manifest or metadata, unreadable archive."""

    exit_code = 6


class UnsafeArchive(CorruptInput):
    """An archive member the reader rules of REFERENCE.md §5.5 reject."""


class KeyMissing(RefReaderError):
    exit_code = 2


# --------------------------------------------------------------------------
# manifest


def valid_context_id(ctx_id):
    """REFERENCE.md §2.1: ^(?!\\.{1,2}$)[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"""
    if not isinstance(ctx_id, str) or not 1 <= len(ctx_id) <= 200:
        return False
    if ctx_id in (".", ".."):
        return False
    if not (ctx_id[0].isascii() and ctx_id[0].isalnum()):
        return False
    return all(c in ID_CHARS for c in ctx_id)


def context_dir(store, ctx_id):
    if not valid_context_id(ctx_id):
        raise CorruptInput("invalid context id: %s" % json.dumps(ctx_id))
    return os.path.join(store, "contexts", ctx_id)


def load_manifest(store, ctx_id):
    path = os.path.join(context_dir(store, ctx_id), "manifest.json")
    return load_manifest_file(path)


def load_manifest_file(path):
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise NotFound("manifest not found: %s" % path) from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise CorruptInput("manifest larger than %d bytes" % MAX_MANIFEST_BYTES)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CorruptInput("manifest is not valid JSON: %s" % e) from None
    if not isinstance(doc, dict):
        raise CorruptInput("manifest is not a JSON object")
    return doc


def tree_key_and_metadata(manifest):
    """(treeKey, EncryptionMetadata) with the fallbacks of REFERENCE.md §6."""
    ctx_id = manifest.get("id")
    fmt = manifest.get("format", "ext4")
    key = manifest.get("treeKey")
    if key is None:
        if not isinstance(ctx_id, str):
            raise CorruptInput("manifest has neither treeKey nor id")
        key = "contexts/%s/current.tree.tar.zst.enc" % ctx_id
    if not isinstance(key, str) or not key:
        raise CorruptInput("manifest treeKey is not a string")
    meta = manifest.get("treeEncryption")
    if meta is None and fmt == "tree":
        meta = manifest.get("encryption")
    if meta is None:
        raise CorruptInput("manifest has no tree encryption metadata (format %r)" % fmt)
    if not isinstance(meta, dict):
        raise CorruptInput("tree encryption metadata is not an object")
    return key, meta


def object_path(store, key):
    """FsStorage key -> path; refuses keys escaping the store (§3.3)."""
    root = os.path.realpath(store)
    if not isinstance(key, str) or "\0" in key:
        raise CorruptInput("invalid storage key")
    path = os.path.normpath(os.path.join(root, key))
    if path != root and not path.startswith(root + os.sep):
        raise CorruptInput("storage key escapes the storage directory: %s" % key)
    return path


# --------------------------------------------------------------------------
# crypto


def _b64(meta, field):
    value = meta.get(field)
    if not isinstance(value, str):
        raise CorruptInput("encryption metadata %s is missing or not a string" % field)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise CorruptInput("encryption metadata %s is not valid base64" % field) from None


def check_metadata(meta):
    """Validation order of REFERENCE.md §4; returns (nonce, tag)."""
    if meta.get("version") != 1:
        raise CorruptInput("unsupported encryption metadata version: %r" % meta.get("version"))
    if meta.get("algorithm") != "aes-256-gcm":
        raise CorruptInput("unsupported encryption algorithm: %r" % meta.get("algorithm"))
    nonce = _b64(meta, "nonce")
    if len(nonce) != 12:
        raise CorruptInput("encryption metadata nonce must be 12 bytes, got %d" % len(nonce))
    tag = _b64(meta, "authTag")
    if len(tag) != 16:
        raise CorruptInput("encryption metadata authTag must be 16 bytes, got %d" % len(tag))
    return nonce, tag


def derive_key(meta, passphrase=None, raw_key_hex=None):
    kdf = meta.get("keyDerivation", "scrypt")
    if kdf == "raw":
        if raw_key_hex is None:
            raise KeyMissing("this context was encrypted with a raw key; rawKeyHex is required to decrypt it")
        try:
            key = bytes.fromhex(raw_key_hex.strip())
        except ValueError:
            key = b""
        if len(key) != 32:
            raise KeyMissing("raw encryption key must be exactly 32 bytes encoded as hex")
        return key
    if kdf != "scrypt":
        raise CorruptInput("unsupported key derivation: %r" % kdf)
    if passphrase is None:
        raise KeyMissing("encryption passphrase is required")
    if "salt" not in meta:
        raise CorruptInput("scrypt encryption metadata is missing salt")
    salt = _b64(meta, "salt")
    params = meta.get("scrypt", LEGACY_SCRYPT)
    if not isinstance(params, dict):
        raise CorruptInput("scrypt parameters are not an object")
    n = params.get("cost")
    r = params.get("blockSize")
    p = params.get("parallelization")
    for name, v in (("cost", n), ("blockSize", r), ("parallelization", p)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise CorruptInput("scrypt %s must be a positive integer" % name)
    if n < 2 or n & (n - 1) or n > MAX_SCRYPT_COST or r > 64 or p > 16:
        raise CorruptInput("scrypt parameters out of range: N=%d r=%d p=%d" % (n, r, p))
    maxmem = 256 * n * r * p + 64 * 1024 * 1024
    return hashlib.scrypt(passphrase.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=32)


def decrypt(ciphertext, meta, passphrase=None, raw_key_hex=None):
    nonce, tag = check_metadata(meta)
    key = derive_key(meta, passphrase, raw_key_hex)
    try:
        return AESGCM(key).decrypt(nonce, ciphertext + tag, None)
    except InvalidTag:
        raise AuthError("authentication failed: wrong key or tampered ciphertext/tag") from None


def encrypt(plaintext, raw_key=None, passphrase=None, scrypt_cost=1024, nonce=None):
    """Test helper (the writer side): returns (ciphertext, EncryptionMetadata)."""
    nonce = nonce if nonce is not None else os.urandom(12)
    meta = {"version": 1, "algorithm": "aes-256-gcm"}
    if raw_key is not None:
        key = raw_key
        meta["keyDerivation"] = "raw"
    else:
        salt = os.urandom(16)
        key = hashlib.scrypt(passphrase.encode("utf-8"), salt=salt, n=scrypt_cost, r=8, p=1,
                             maxmem=256 * scrypt_cost * 8 + 64 * 1024 * 1024, dklen=32)
        meta["keyDerivation"] = "scrypt"
        meta["salt"] = base64.b64encode(salt).decode()
    sealed = AESGCM(key).encrypt(nonce, plaintext, None)
    meta["nonce"] = base64.b64encode(nonce).decode()
    meta["authTag"] = base64.b64encode(sealed[-16:]).decode()
    if raw_key is None:
        meta["scrypt"] = {"cost": scrypt_cost, "blockSize": 8, "parallelization": 1}
    return sealed[:-16], meta


# --------------------------------------------------------------------------
# archive


def unsafe(value):
    """REFERENCE.md §5.5 shared predicate."""
    v = value.replace("\\", "/")
    return v.startswith("/") or "\0" in v or any(seg == ".." for seg in v.split("/"))


def _entry_type(m):
    if m.isdir():
        return "dir"
    if m.issym():
        return "symlink"
    if m.islnk():
        return "hardlink"
    if m.isreg():
        return "file"
    return None


class _MountSim:
    """Lexical model of the extraction directory: only the symlinks matter for
    the runtime extractor's `escapes_mount` rule (realpath of mount/dirname(name)
    must stay inside the mount)."""

    def __init__(self):
        self.symlinks = {}

    def add_symlink(self, path, target):
        self.symlinks[posixpath.normpath(path)] = target

    def add_other(self, path):
        self.symlinks.pop(posixpath.normpath(path), None)

    def resolve_dir_escapes(self, dirname):
        """True if realpath(mount/dirname) is outside the mount."""
        todo = [s for s in dirname.split("/") if s not in ("", ".")]
        done = []
        hops = 0
        while todo:
            seg = todo.pop(0)
            if seg == "..":
                if not done:
                    return True
                done.pop()
                continue
            cand = "/".join(done + [seg])
            if cand in self.symlinks:
                hops += 1
                if hops > 40:
                    return True  # loop: realpath would fail, treat as unsafe
                target = self.symlinks[cand]
                if target.startswith("/"):
                    return True
                todo = [s for s in target.split("/") if s not in ("", ".")] + todo
                continue
            done.append(seg)
        return False


def walk_tar_stream(stream, max_entries=MAX_ENTRIES, max_total=MAX_TOTAL_BYTES):
    """Walk an uncompressed tar stream; returns entries or raises UnsafeArchive."""
    entries = []
    total = 0
    sim = _MountSim()
    try:
        tf = tarfile.open(fileobj=stream, mode="r|")
    except tarfile.TarError as e:
        raise CorruptInput("unreadable archive: %s" % e) from None
    try:
        while True:
            try:
                m = tf.next()
            except tarfile.TarError as e:
                raise CorruptInput("unreadable archive: %s" % e) from None
            if m is None:
                break
            if len(entries) + 1 > max_entries:
                raise UnsafeArchive("archive has more than %d entries" % max_entries)
            total += max(m.size, 0)
            if total > max_total:
                raise UnsafeArchive("archive exceeds %d bytes of member data" % max_total)
            name = m.name
            if unsafe(name):
                raise UnsafeArchive("unsafe archive entry: %s" % name)
            kind = _entry_type(m)
            if kind in ("symlink", "hardlink") and unsafe(m.linkname):
                raise UnsafeArchive("unsafe archive link target: %s -> %s" % (name, m.linkname))
            if kind is None:
                raise UnsafeArchive("unsupported archive entry type: %s" % name)
            if sim.resolve_dir_escapes(posixpath.dirname(name)):
                raise UnsafeArchive("archive entry resolves outside the mount: %s" % name)
            e = {
                "path": name,
                "type": kind,
                "mode": oct(m.mode & 0o7777),
                "size": m.size if kind == "file" else 0,
                "mtime": m.mtime,
            }
            if kind == "file":
                h = hashlib.sha256()
                f = tf.extractfile(m)
                left = m.size
                while left > 0:
                    chunk = f.read(min(left, 1 << 20))
                    if not chunk:
                        raise CorruptInput("archive truncated inside %s" % name)
                    h.update(chunk)
                    left -= len(chunk)
                e["sha256"] = h.hexdigest()
            if kind in ("symlink", "hardlink"):
                e["linkname"] = m.linkname
            if kind == "symlink":
                sim.add_symlink(name, m.linkname)
            else:
                sim.add_other(name)
            entries.append(e)
    except (EOFError, OSError) as e:
        raise CorruptInput("unreadable archive: %s" % e) from None
    return entries


def walk_zst_file(path, **caps):
    """zstd -dc PATH | tarfile r| with the caps; kills zstd on rejection."""
    proc = subprocess.Popen(["zstd", "-dc", "-q", "--", path], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ok = False
    try:
        entries = walk_tar_stream(proc.stdout, **caps)
        # drain the rest as the reference does (bounded by the same byte cap)
        drained = 0
        while True:
            chunk = proc.stdout.read(1 << 20)
            if not chunk:
                break
            drained += len(chunk)
            if drained > MAX_TOTAL_BYTES:
                raise UnsafeArchive("archive trailer exceeds %d bytes" % MAX_TOTAL_BYTES)
        ok = True
    finally:
        if not ok:
            proc.kill()
        proc.stdout.close()
        err = proc.stderr.read()
        proc.stderr.close()
        rc = proc.wait()
    if rc != 0:
        raise CorruptInput("zstd decompression failed: %s" % err.decode(errors="replace").strip())
    return entries


def walk_zst_bytes(data, **caps):
    tmpdir = tempfile.mkdtemp(prefix="refreader-")
    try:
        path = os.path.join(tmpdir, "bundle.tar.zst")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return walk_zst_file(path, **caps)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


# --------------------------------------------------------------------------
# top level


def read_object(store, key, max_bytes=8 * 1024 ** 3):
    path = object_path(store, key)
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise CorruptInput("object %s larger than %d bytes" % (key, max_bytes))
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise NotFound("object not found: %s" % key) from None


def decrypt_tree(store, ctx_id, passphrase=None, raw_key_hex=None, manifest=None):
    """Returns (plaintext tar.zst bytes, manifest, treeKey)."""
    if manifest is None:
        manifest = load_manifest(store, ctx_id)
    if manifest.get("id", ctx_id) != ctx_id:
        raise CorruptInput("manifest id %r does not match %r" % (manifest.get("id"), ctx_id))
    key, meta = tree_key_and_metadata(manifest)
    prefix = "contexts/%s/" % ctx_id
    if not key.startswith(prefix):
        raise CorruptInput("treeKey %s is outside %s" % (key, prefix))
    ciphertext = read_object(store, key)
    return decrypt(ciphertext, meta, passphrase, raw_key_hex), manifest, key


def read_tree(store, ctx_id, passphrase=None, raw_key_hex=None, manifest=None):
    """Entries of the context's current tree (or of `manifest`'s tree) in tar order."""
    zst, _, _ = decrypt_tree(store, ctx_id, passphrase, raw_key_hex, manifest)
    return walk_zst_bytes(zst)


def read_tree_files(store, ctx_id, passphrase=None, raw_key_hex=None, manifest=None):
    """{path: entry} (later duplicates win, as on extraction)."""
    return {e["path"]: e for e in read_tree(store, ctx_id, passphrase, raw_key_hex, manifest)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store")
    ap.add_argument("context_id")
    ap.add_argument("--passphrase-env", metavar="VAR")
    ap.add_argument("--key-hex-env", metavar="VAR")
    ap.add_argument("--manifest", metavar="FILE", help="read this manifest instead of the store's")
    args = ap.parse_args(argv)
    passphrase = raw = None
    if args.passphrase_env:
        passphrase = os.environ.get(args.passphrase_env)
        if passphrase is None:
            ap.error("environment variable %s is not set" % args.passphrase_env)
    if args.key_hex_env:
        raw = os.environ.get(args.key_hex_env)
        if raw is None:
            ap.error("environment variable %s is not set" % args.key_hex_env)
    try:
        manifest = load_manifest_file(args.manifest) if args.manifest else None
        entries = read_tree(args.store, args.context_id, passphrase, raw, manifest)
    except RefReaderError as e:
        json.dump({"ok": False, "error": {"kind": type(e).__name__, "message": str(e)}}, sys.stdout)
        sys.stdout.write("\n")
        print("refreader: %s" % e, file=sys.stderr)
        return e.exit_code
    json.dump({"ok": True, "entries": entries}, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
