"""The independent reader itself, checked against the reference's fixtures and
against the hostile archives the other tests feed to contextfs (so a contextfs
rejection is known to be a rejection of a really bad archive)."""

import base64
import hashlib
import json
import os
import subprocess
import sys

import pytest

import archives
import refreader
from conftest import FIXTURE_PASSPHRASE, HERE, load_expected, require_fixtures

KEYS = ("path", "type", "mode", "size", "sha256", "linkname")


def _trees():
    out = []
    for fx in ("fresh", "passphrase"):
        for name in load_expected(fx)["trees"]:
            out.append((fx, name))
    return out


@pytest.mark.parametrize("fx,tree", _trees())
def test_fixture_trees_match_expected(fx, tree):
    exp = load_expected(fx)
    t = exp["trees"][tree]
    base = os.path.join(require_fixtures(), fx)
    manifest = refreader.load_manifest_file(os.path.join(base, t["manifestFile"]))
    assert manifest["generation"] == t["manifestGeneration"]
    assert manifest.get("checkpointGeneration", 0) == t["manifestCheckpointGeneration"]
    zst, _, key = refreader.decrypt_tree(os.path.join(base, "store"), exp["contextId"],
                                         passphrase=exp["keyMaterial"]["passphrase"], manifest=manifest)
    assert os.path.join(base, "store", key) == os.path.join(base, t["object"])
    assert hashlib.sha256(zst).hexdigest() == t["plaintextZstSha256"]
    entries = refreader.walk_zst_bytes(zst)
    got = [{k: e[k] for k in KEYS if k in e} for e in entries]
    want = [{k: e[k] for k in KEYS if k in e} for e in t["entriesInTarOrder"]]
    assert got == want
    # mtimes too (PAX floats / GNU integers)
    assert [e["mtime"] for e in entries] == [e["mtime"] for e in t["entriesInTarOrder"]]


def test_fixture_wrong_passphrase_is_auth_error():
    exp = load_expected("fresh")
    with pytest.raises(refreader.AuthError):
        refreader.read_tree(os.path.join(require_fixtures(), "fresh", "store"), exp["contextId"],
                            passphrase="not-the-passphrase")


def test_metadata_downgrade_rejected():
    manifest = refreader.load_manifest_file(
        os.path.join(require_fixtures(), "fresh", "store", "contexts", "interop-fresh", "manifest.json"))
    meta = dict(manifest["treeEncryption"])
    meta["authTag"] = base64.b64encode(base64.b64decode(meta["authTag"])[:8]).decode()
    with pytest.raises(refreader.CorruptInput, match="authTag must be 16 bytes, got 8"):
        refreader.check_metadata(meta)
    meta = dict(manifest["treeEncryption"])
    meta["nonce"] = base64.b64encode(b"\1" * 16).decode()
    with pytest.raises(refreader.CorruptInput, match="nonce must be 12 bytes, got 16"):
        refreader.check_metadata(meta)


def test_cli_mode_prints_json():
    exp = load_expected("fresh")
    env = dict(os.environ, RR_PASS=FIXTURE_PASSPHRASE)
    p = subprocess.run([sys.executable, os.path.join(HERE, "refreader.py"),
                        os.path.join(require_fixtures(), "fresh", "store"), exp["contextId"],
                        "--passphrase-env", "RR_PASS"], env=env, capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["ok"] is True
    assert [e["path"] for e in doc["entries"]] == [e["path"] for e in exp["trees"]["latest"]["entriesInTarOrder"]]
    assert FIXTURE_PASSPHRASE.encode() not in p.stdout + p.stderr
    env["RR_PASS"] = "wrong"
    p = subprocess.run([sys.executable, os.path.join(HERE, "refreader.py"),
                        os.path.join(require_fixtures(), "fresh", "store"), exp["contextId"],
                        "--passphrase-env", "RR_PASS"], env=env, capture_output=True, timeout=120)
    assert p.returncode == 5
    assert json.loads(p.stdout)["ok"] is False


def test_hostile_archives_are_rejected_by_reference_rules(tmp_path):
    bundles = archives.hostile_bundles("evil", str(tmp_path / "outside"))
    for name, zst in bundles.items():
        with pytest.raises(refreader.UnsafeArchive):
            refreader.walk_zst_bytes(zst)
            pytest.fail("refreader accepted hostile case %s" % name)


def test_handmade_bundle_roundtrip(tmp_path):
    store = str(tmp_path / "store")
    key = os.urandom(32).hex()
    members = archives.seed_members("hand") + [
        ("workspace/sub", "dir", b"", 0o700, ""),
        ("workspace/sub/x.bin", "file", b"\0\1\2" * 100, 0o600, ""),
        ("workspace/alias", "symlink", b"", None, "sub/x.bin"),
        ("workspace/hard", "hardlink", b"", None, "workspace/sub/x.bin"),
        ("workspace/via-alias/../nope", "file", b"", None, ""),
    ]
    # the last member is unsafe: the walk must stop there
    zst = archives.zstd_compress(archives.build_tar(members[:-1]))
    archives.install_bundle(store, "hand", zst, key)
    got = refreader.read_tree_files(store, "hand", raw_key_hex=key)
    assert got["workspace/alias"]["linkname"] == "sub/x.bin"
    assert got["workspace/hard"]["type"] == "hardlink"
    assert got["workspace/sub/x.bin"]["mode"] == "0o600"
    with pytest.raises(refreader.AuthError):
        refreader.read_tree(store, "hand", raw_key_hex=os.urandom(32).hex())
    with pytest.raises(refreader.UnsafeArchive):
        refreader.walk_zst_bytes(archives.zstd_compress(archives.build_tar(members)))
