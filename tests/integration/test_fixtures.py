"""contextfs against stores the reference (@contextsdk/core 0.4) wrote.

Each test works on a private copy of a fixture store (never on /work/shared)."""

import json
import os
import shutil
import stat

import pytest

import refreader
from conftest import (EXIT_OK, FIXTURE_PASSPHRASE, copy_fixture_store, entries_by_path, load_expected,
                      require_fixtures, sha256_file, snapshot_dir, store_state)

CTX = {"fresh": "interop-fresh", "passphrase": "interop-pass"}


@pytest.fixture
def fixture_cli(make_cli, tmp_path):
    def _make(name):
        store = copy_fixture_store(name, str(tmp_path / ("store-" + name)))
        return make_cli(store, passphrase=FIXTURE_PASSPHRASE)
    return _make


def install_checkpoint_manifest(store):
    src = os.path.join(require_fixtures(), "passphrase", "manifest-at-checkpoint.json")
    dst = os.path.join(store, "contexts", "interop-pass", "manifest.json")
    shutil.copyfile(src, dst)
    # the etag sidecar belonged to the final manifest; drop it (the etag then is
    # the body's sha256, as FsStorage does for objects written by other tools)
    try:
        os.unlink(dst + ".etagid")
    except FileNotFoundError:
        pass


def assert_export_matches(target, expected_entries):
    """The exported directory holds exactly the expected entries with the same
    type, permission bits, size, sha256 and link target."""
    got = snapshot_dir(target)
    want_paths = {e["path"] for e in expected_entries}
    assert set(got) == want_paths, "extra: %s; missing: %s" % (
        sorted(set(got) - want_paths), sorted(want_paths - set(got)))
    inodes = {}
    for e in expected_entries:
        p = os.path.join(target, e["path"])
        st = os.lstat(p)
        kind, mode, size, extra = got[e["path"]]
        if e["type"] == "hardlink":
            assert kind == "file", e
            first = os.lstat(os.path.join(target, e["linkname"]))
            assert (st.st_dev, st.st_ino) == (first.st_dev, first.st_ino), "%s is not a hard link of %s" % (
                e["path"], e["linkname"])
            continue
        assert kind == e["type"], (e["path"], kind, e["type"])
        if kind == "symlink":
            assert extra == e["linkname"], e["path"]
            continue
        assert oct(mode) == e["mode"], "%s: mode %s, expected %s" % (e["path"], oct(mode), e["mode"])
        if kind == "file":
            assert size == e["size"], e["path"]
            assert extra == e["sha256"], e["path"]
            inodes[(st.st_dev, st.st_ino)] = e["path"]


def _trees():
    return [("fresh", "latest"), ("passphrase", "latest"), ("passphrase", "checkpoint")]


@pytest.mark.parametrize("fx,tree", _trees())
def test_export_reproduces_reference_tree(fixture_cli, tmp_path, fx, tree):
    cli = fixture_cli(fx)
    exp = load_expected(fx)["trees"][tree]
    if tree == "checkpoint":
        install_checkpoint_manifest(cli.store)
    before = store_state(cli.store)
    target = str(tmp_path / "export")
    r = cli.run("export", CTX[fx], target)
    assert r.rc == EXIT_OK, r.err
    assert_export_matches(target, exp["entriesInTarOrder"])
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700, "export target not created 0700"
    assert store_state(cli.store) == before, "export modified the store"


@pytest.mark.parametrize("fx", ["fresh", "passphrase"])
def test_verify_status_log_on_reference_store(fixture_cli, fx):
    cli = fixture_cli(fx)
    ctx = CTX[fx]
    before = store_state(cli.store)
    manifest = refreader.load_manifest(cli.store, ctx)

    r = cli.json("verify", ctx)
    objs = r.json["objects"]
    assert r.json["id"] == ctx
    assert any(o["key"] == manifest["treeKey"] and o["ok"] for o in objs), objs
    assert all(o["ok"] for o in objs), objs
    for o in objs:
        assert isinstance(o["role"], str) and isinstance(o["bytes"], int), o
        assert o["bytes"] == os.path.getsize(os.path.join(cli.store, o["key"])), o
    assert cli.run("verify", ctx).rc == 0

    r = cli.json("status", ctx)
    st = r.json
    assert st["id"] == ctx
    assert st["generation"] == manifest["generation"]
    assert st["checkpointGeneration"] == manifest.get("checkpointGeneration", 0)
    assert st["treeKey"] == manifest["treeKey"]
    assert st["sizeBytes"] == manifest["sizeBytes"]
    assert st["createdAt"] == manifest["createdAt"]
    assert st["updatedAt"] == manifest["updatedAt"]
    assert st["lock"] is None
    assert st["manifest"] == manifest
    r = cli.ok("status", ctx)
    assert ctx in r.out and str(manifest["generation"]) in r.out

    r = cli.json("log", ctx)
    versions = r.json["versions"]
    assert isinstance(versions, list) and isinstance(r.json["checkpoints"], list)
    gens = [v["generation"] for v in versions]
    for v in manifest.get("versions", []):
        assert v["generation"] in gens, (v["generation"], gens)
        got = versions[gens.index(v["generation"])]
        assert got.get("message") == v["message"] and got.get("author") == v["author"], got
    if fx == "passphrase":
        assert {2, 3, 4} <= set(gens) <= {1, 2, 3, 4}, gens
        assert [c["generation"] for c in r.json["checkpoints"]] == [1]
        # gen 4 data is retained (it is the current tree); gens 2 and 3 are gone
        by = {v["generation"]: v for v in versions}
        for g in (2, 3):
            if "retained" in by[g]:
                assert by[g]["retained"] is False, by[g]
        r = cli.ok("log", ctx)
        assert "gen4: modify + remove + add" in r.out, r.out
    assert store_state(cli.store) == before, "read-only commands modified the store"


def test_export_of_gone_generation_is_not_found(fixture_cli, tmp_path):
    cli = fixture_cli("passphrase")
    target = str(tmp_path / "t")
    r = cli.fails(3, "export", "interop-pass@2", target)
    assert "2" in r.err
    assert not os.path.exists(target) or os.listdir(target) == []


def test_export_reference_checkpoint_without_metadata_fails_cleanly(fixture_cli, tmp_path):
    """The reference's final manifest no longer carries checkpoint 1's nonce/tag/salt:
    contextfs must say so (not crash, not write garbage)."""
    cli = fixture_cli("passphrase")
    target = str(tmp_path / "t")
    r = cli.run("export", "interop-pass@checkpoint:1", target)
    assert r.rc in (3, 6), (r.rc, r.err)
    assert len([ln for ln in r.err.splitlines() if ln.strip()]) == 1, r.err
    assert not os.path.exists(target) or os.listdir(target) == []


@pytest.mark.parametrize("fx", ["fresh", "passphrase"])
def test_commit_on_top_of_reference_store(fixture_cli, tmp_path, fx):
    cli = fixture_cli(fx)
    ctx = CTX[fx]
    old = refreader.load_manifest(cli.store, ctx)
    old_raw = json.loads(open(os.path.join(cli.store, "contexts", ctx, "manifest.json"), encoding="utf-8").read())
    work = str(tmp_path / "work-tree")
    cli.ok("export", ctx, work)
    hello = os.path.join(work, "workspace", "hello.txt")
    with open(hello, "wb") as f:
        f.write(b"changed by contextfs on top of a reference store\n")
    os.chmod(hello, 0o640)
    with open(os.path.join(work, "workspace", "README.md"), "ab") as f:
        f.write(b"appended\n")
    os.makedirs(os.path.join(work, "workspace", "node_modules", "x"))
    with open(os.path.join(work, "workspace", "node_modules", "x", "i.js"), "w") as f:
        f.write("excluded")
    r = cli.json("commit", ctx, "--from", work, "-m", "contextfs on top", "--author", "integration")
    assert r.json["generation"] == old["generation"] + 1
    assert r.json["id"] == ctx
    changed = {c["path"]: c["type"] for c in r.json["changedPaths"]}
    assert changed.get("workspace/README.md") == "modified", changed
    assert changed.get("workspace/hello.txt") in ("added", "modified"), changed

    new = refreader.load_manifest(cli.store, ctx)
    # every member the reference wrote is still there, with its type
    for k, v in old_raw.items():
        assert k in new, "manifest lost member %s" % k
        assert type(new[k]) is type(v), k
    for k in ("id", "format", "filesystem", "layout", "imageKey", "createdAt", "persistencePolicy"):
        assert new[k] == old[k], k
    assert new["generation"] == old["generation"] + 1
    assert new["checkpointGeneration"] == old.get("checkpointGeneration", 0)
    assert new["treeKey"] == r.json["treeKey"]
    assert new["treeKey"].startswith("contexts/%s/tree/%08d-" % (ctx, new["generation"]))
    assert new["treeEncryption"]["scrypt"] == old["treeEncryption"]["scrypt"]  # reused parameters
    assert new["encryption"] == new["treeEncryption"]
    if old.get("latestCheckpoint"):
        lc_old = {k: v for k, v in old["latestCheckpoint"].items()}
        lc_new = new["latestCheckpoint"]
        for k, v in lc_old.items():
            assert lc_new.get(k) == v, "latestCheckpoint.%s changed" % k
    old_versions = old.get("versions", [])
    assert len(new["versions"]) == len(old_versions) + 1
    for a, b in zip(old_versions, new["versions"]):
        for k, v in a.items():
            assert b.get(k) == v, "versions[].%s of generation %s changed" % (k, a["generation"])
    last = new["versions"][-1]
    assert last["generation"] == new["generation"]
    assert last["parentGeneration"] == old["generation"]
    assert last["message"] == "contextfs on top" and last["author"] == "integration"
    assert last["files"] == []
    assert new["latestVersion"]["generation"] == new["generation"]

    # an independent reader sees the new content
    files = entries_by_path(refreader.read_tree(cli.store, ctx, passphrase=FIXTURE_PASSPHRASE))
    assert files["workspace/hello.txt"]["sha256"] == sha256_file(hello)
    assert files["workspace/hello.txt"]["mode"] == "0o640"
    assert files["workspace/README.md"]["sha256"] == sha256_file(os.path.join(work, "workspace", "README.md"))
    assert not any("node_modules" in p for p in files)
    assert "cache" not in files
    assert files[".contextsdk/versions/%d.json" % new["generation"]]["type"] == "file"
    # the checkpoint object is never garbage-collected by a save
    if fx == "passphrase":
        assert os.path.exists(os.path.join(cli.store, "contexts/interop-pass/checkpoints/00000001.tree.tar.zst.enc"))
    assert cli.run("verify", ctx).rc == 0
