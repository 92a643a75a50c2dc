"""Stores contextfs writes, read back by the independent reader (refreader.py):
every committed file, mode, link and empty directory must be in the bundle in the
reference's format, with a §6 manifest."""

import copy
import json
import os
import stat

import pytest

import refreader
from conftest import (TEST_SCRYPT_COST, assert_manifest_shape, assert_tree_equals_view,
                      entries_by_path, packed_view, sha256_file, snapshot_dir, write_file)

SEED_FILES = {"contextsdk.json", "workspace/README.md", "memory/session.md"}


def populate(root):
    """A tree with everything the format must carry (and things it must not)."""
    os.makedirs(root, exist_ok=True)
    write_file(root, "workspace/hello.txt", "hello, world\n", 0o600)
    write_file(root, "workspace/bin/run.sh", "#!/bin/sh\necho run\n", 0o755)
    write_file(root, "workspace/data/random.bin", os.urandom(1024 * 1024 + 17), 0o644)
    write_file(root, "workspace/data/zeros.bin", b"\0" * (2 * 1024 * 1024), 0o640)
    write_file(root, "workspace/données/résumé-日本語.txt", "unicode name ✓\n", 0o600)
    write_file(root, "workspace/a b/with space & 'quote'.txt", "spaces\n", 0o644)
    write_file(root, "workspace/empty.txt", b"", 0o644)
    write_file(root, "workspace/a/b/c/deep.txt", "deep\n", 0o600)
    write_file(root, "workspace/to-be-removed.txt", "bye\n", 0o644)
    os.makedirs(os.path.join(root, "workspace/empty-dir"))
    os.chmod(os.path.join(root, "workspace/empty-dir"), 0o750)
    os.makedirs(os.path.join(root, "workspace/private"))
    write_file(root, "workspace/private/secret.txt", "s\n", 0o400)
    os.chmod(os.path.join(root, "workspace/private"), 0o700)
    os.symlink("hello.txt", os.path.join(root, "workspace/link-to-hello"))
    os.symlink("a/b", os.path.join(root, "workspace/link-to-dir"))
    os.symlink("does-not-exist.txt", os.path.join(root, "workspace/dangling"))
    write_file(root, "workspace/hard1.txt", "same inode\n", 0o644)
    os.link(os.path.join(root, "workspace/hard1.txt"), os.path.join(root, "workspace/hard2.txt"))
    # excluded by the default policy
    write_file(root, "workspace/app/node_modules/left-pad/index.js", "module.exports=1\n")
    write_file(root, "workspace/app/src/main.js", "console.log(1)\n")
    write_file(root, "workspace/app/dist/bundle.js", "built\n")
    write_file(root, "workspace/py/__pycache__/m.cpython-311.pyc", b"\0\1")
    write_file(root, "workspace/.venv/bin/python", "venv\n", 0o755)
    # other roots
    write_file(root, "memory/notes.md", "# notes\n")
    write_file(root, "artifacts/report/summary.md", "summary\n", 0o600)
    write_file(root, "logs/session.log", "line 1\n")
    write_file(root, "config/settings.json", '{"a": 1}\n', 0o600)
    # not persisted: cache and unknown top-level dirs
    write_file(root, "cache/runtime-cache.txt", "cache\n")
    write_file(root, "scratch/tmp.txt", "not a root\n")


def init_and_checkout(cli, ctx, dest, *init_args):
    r = cli.json("init", ctx, *init_args)
    assert r.json["ok"] is True
    cli.ok("export", ctx, dest)
    return r


def assert_export_equals_view(cli, spec, dest, view):
    cli.ok("export", spec, dest)
    got = {k: v for k, v in snapshot_dir(dest).items() if not (k == ".contextsdk" or k.startswith(".contextsdk/"))}
    assert set(got) == set(view), "only in export: %s; only in committed tree: %s" % (
        sorted(set(got) - set(view)), sorted(set(view) - set(got)))
    for k, v in view.items():
        assert got[k] == v, (k, got[k], v)
    return got


@pytest.mark.parametrize("keymode", ["passphrase", "raw"])
def test_commit_roundtrip_through_independent_reader(cli, cli_raw, tmp_path, keymode):
    c = cli if keymode == "passphrase" else cli_raw
    ctx = "interop-" + keymode
    work = str(tmp_path / "w")
    init_args = ("--scrypt-cost", TEST_SCRYPT_COST) if keymode == "passphrase" else ()
    init_and_checkout(c, ctx, work, *init_args)
    kdf, cost = ("scrypt", int(TEST_SCRYPT_COST)) if keymode == "passphrase" else ("raw", None)
    m1 = assert_manifest_shape(c.store, ctx, kdf, cost)
    assert m1["generation"] == 1 and m1["checkpointGeneration"] == 0
    # the reference writes `versions: []` at create; contextfs may record generation 1
    # (a compatible extension: it keeps generation 1 restorable)
    assert m1["versions"] == [] or [(v["generation"], v["parentGeneration"]) for v in m1["versions"]] == [(1, None)]
    seed = entries_by_path(c.read_tree(ctx))
    assert SEED_FILES <= set(seed), sorted(seed)
    assert seed["memory/session.md"]["sha256"] == sha256_file(os.path.join(work, "memory/session.md"))
    with open(os.path.join(work, "contextsdk.json"), encoding="utf-8") as f:
        cj = json.load(f)
    assert cj == {"contextId": ctx, "createdBy": "contextSDK", "layout": m1["layout"], "format": "tree"}
    with open(os.path.join(work, "memory/session.md"), encoding="utf-8") as f:
        assert f.read() == "context=%s\nstatus=initialized\n" % ctx

    populate(work)
    view2 = packed_view(work)
    assert "workspace/app/src/main.js" in view2 and "workspace/app/node_modules" not in view2
    r = c.json("commit", ctx, "--from", work, "-m", "gen2 ✓", "--author", "tester")
    assert r.json["generation"] == 2
    m2 = assert_manifest_shape(c.store, ctx, kdf, cost)
    assert r.json["treeKey"] == m2["treeKey"] and r.json["sizeBytes"] == m2["sizeBytes"]
    changed = {x["path"]: x["type"] for x in r.json["changedPaths"]}
    assert changed.get("workspace/hello.txt") == "added"
    assert changed.get("workspace/data/random.bin") == "added"
    assert not any("node_modules" in p or p.startswith("cache/") for p in changed), changed
    assert m2["versions"][-1]["changedPaths"] == r.json["changedPaths"]
    assert m2["versions"][-1]["message"] == "gen2 ✓" and m2["versions"][-1]["author"] == "tester"

    entries = c.read_tree(ctx)
    assert_tree_equals_view(entries, view2)
    by = entries_by_path(entries)
    assert by["workspace/hard2.txt"]["type"] == "hardlink", "hard links must be stored as tar hard links"
    assert by["workspace/hard2.txt"]["linkname"] == "workspace/hard1.txt"
    assert [e["path"] for e in entries][:1] == [".contextsdk"], "reference member order starts with .contextsdk"
    order = [e["path"] for e in entries]
    assert order.index("contextsdk.json") < order.index("workspace") < order.index("memory") < \
        order.index("artifacts") < order.index("logs") < order.index("config")
    # the in-bundle version record (REFERENCE.md §13.1)
    idx = by[".contextsdk/index.json"]
    assert idx["type"] == "file"
    assert by[".contextsdk/versions/2.json"]["sha256"] == idx["sha256"]

    # the export gives back the same tree, hard links included
    out = str(tmp_path / "out2")
    assert_export_equals_view(c, ctx, out, view2)
    a, b = os.lstat(os.path.join(out, "workspace/hard1.txt")), os.lstat(os.path.join(out, "workspace/hard2.txt"))
    assert (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    # second commit: modify, remove, add
    write_file(work, "workspace/hello.txt", "hello again\n", 0o600)
    os.unlink(os.path.join(work, "workspace/to-be-removed.txt"))
    write_file(work, "artifacts/new.txt", "new\n")
    r = c.json("commit", ctx, "--from", work, "-m", "gen3")
    assert r.json["generation"] == 3
    m3 = assert_manifest_shape(c.store, ctx, kdf, cost)
    assert [v["generation"] for v in m3["versions"] if v["generation"] > 1] == [2, 3]
    assert [v["parentGeneration"] for v in m3["versions"] if v["generation"] > 1] == [1, 2]
    assert m3["createdAt"] == m1["createdAt"]
    assert_tree_equals_view(c.read_tree(ctx), packed_view(work))
    # older generations stay exportable (retention keeps the last 5)
    assert_export_equals_view(c, "%s@2" % ctx, str(tmp_path / "out-at-2"), view2)
    assert c.run("verify", ctx).rc == 0


def test_scrypt_parameters_recorded_and_reused(cli, tmp_path):
    ctx = "scrypt-env"
    work = str(tmp_path / "w")
    cli.json("init", ctx, env={"CONTEXTFS_SCRYPT_COST": "2048"})
    assert_manifest_shape(cli.store, ctx, "scrypt", 2048)
    cli.ok("export", ctx, work)
    write_file(work, "workspace/x.txt", "x\n")
    # a later commit reuses the recorded parameters, whatever the environment says
    cli.json("commit", ctx, "--from", work, env={"CONTEXTFS_SCRYPT_COST": "4096"})
    assert_manifest_shape(cli.store, ctx, "scrypt", 2048)
    assert entries_by_path(cli.read_tree(ctx))["workspace/x.txt"]["sha256"] == sha256_file(
        os.path.join(work, "workspace/x.txt"))


def test_default_scrypt_cost_is_reference_default(cli, tmp_path):
    cli.json("init", "scrypt-default")
    m = assert_manifest_shape(cli.store, "scrypt-default", "scrypt", 131072)
    assert m["generation"] == 1


def test_invalid_scrypt_cost_refused(cli):
    for bad in ("1000", "1", "0", "-4", "abc"):
        r = cli.fails(2, "init", "bad-cost", "--scrypt-cost", bad)
        assert "cost" in r.err.lower(), r.err
    assert not os.path.exists(os.path.join(cli.store, "contexts", "bad-cost", "manifest.json"))


def test_raw_key_wins_over_passphrase(make_cli, store, tmp_path):
    from conftest import new_raw_key
    key = new_raw_key()
    c = make_cli(store, passphrase="also-set", raw_key_hex=key)
    c.json("init", "both")
    assert_manifest_shape(store, "both", "raw")
    assert refreader.read_tree(store, "both", raw_key_hex=key)
    # a passphrase-only client cannot read it: missing key material, exit 2
    p = make_cli(store, passphrase="also-set")
    r = p.fails(2, "export", "both", str(tmp_path / "x"))
    assert "raw" in r.err.lower() or "CONTEXTSDK_KEY_HEX" in r.err


def _checkpoint_manifest(manifest, n):
    """A manifest whose current tree is checkpoint n, from the metadata contextfs
    keeps (latestCheckpoint.encryption or the `checkpoints` extension)."""
    recs = list(manifest.get("checkpoints") or [])
    if manifest.get("latestCheckpoint"):
        recs.append(manifest["latestCheckpoint"])
    for rec in recs:
        if rec.get("generation") == n and isinstance(rec.get("encryption"), dict):
            m = copy.deepcopy(manifest)
            m["treeKey"] = rec["treeKey"]
            m["treeEncryption"] = m["encryption"] = rec["encryption"]
            return m
    raise AssertionError("no decryption metadata for checkpoint %d in the manifest" % n)


@pytest.mark.parametrize("keymode", ["passphrase", "raw"])
def test_checkpoint_stays_decryptable_after_next_save(cli, cli_raw, tmp_path, keymode):
    c = cli if keymode == "passphrase" else cli_raw
    ctx = "cp-" + keymode
    work = str(tmp_path / "w")
    init_args = ("--scrypt-cost", TEST_SCRYPT_COST) if keymode == "passphrase" else ()
    init_and_checkout(c, ctx, work, *init_args)
    write_file(work, "workspace/state.txt", "at checkpoint\n")
    view_cp = packed_view(work)
    r = c.json("checkpoint", ctx, "--from", work, "--reason", "integration")
    assert r.json["checkpointGeneration"] == 1
    assert r.json["treeKey"] == "contexts/%s/checkpoints/00000001.tree.tar.zst.enc" % ctx
    m = c.manifest(ctx)
    assert m["treeKey"] == r.json["treeKey"] and m["generation"] == 1 and m["checkpointGeneration"] == 1
    assert m["latestCheckpoint"]["reason"] == "integration"
    kdf, cost = ("scrypt", int(TEST_SCRYPT_COST)) if keymode == "passphrase" else ("raw", None)
    assert_manifest_shape(c.store, ctx, kdf, cost)
    # the reference reads a checkpoint like any current tree
    assert_tree_equals_view(c.read_tree(ctx), view_cp)

    write_file(work, "workspace/state.txt", "after checkpoint\n")
    view_g2 = packed_view(work)
    r = c.json("commit", ctx, "--from", work, "-m", "after cp")
    assert r.json["generation"] == 2
    m = assert_manifest_shape(c.store, ctx, kdf, cost)
    assert m["checkpointGeneration"] == 1 and m["treeKey"].startswith("contexts/%s/tree/00000002-" % ctx)
    assert os.path.exists(os.path.join(c.store, "contexts/%s/checkpoints/00000001.tree.tar.zst.enc" % ctx))
    assert_tree_equals_view(c.read_tree(ctx), view_g2)
    # contextfs can still export the checkpoint ...
    assert_export_equals_view(c, "%s@checkpoint:1" % ctx, str(tmp_path / "cp-out"), view_cp)
    # ... and so can an independent reader, from the metadata the manifest keeps
    assert_tree_equals_view(c.read_tree(ctx, manifest=_checkpoint_manifest(m, 1)), view_cp)
    # and the checkpoint is part of what verify checks
    r = c.json("verify", ctx)
    keys = {o["key"]: o for o in r.json["objects"]}
    cp_key = "contexts/%s/checkpoints/00000001.tree.tar.zst.enc" % ctx
    assert cp_key in keys and keys[cp_key]["ok"], r.json["objects"]


def test_restore_commits_old_state_as_new_generation(cli_raw, tmp_path):
    c = cli_raw
    ctx = "restore-me"
    work = str(tmp_path / "w")
    init_and_checkout(c, ctx, work)
    write_file(work, "workspace/v.txt", "v2\n")
    c.json("commit", ctx, "--from", work)
    view2 = packed_view(work)
    write_file(work, "workspace/v.txt", "v3\n")
    c.json("commit", ctx, "--from", work)
    c.json("restore", "%s@2" % ctx, "-m", "back to 2")
    m = c.manifest(ctx)
    assert m["generation"] == 4
    assert m["versions"][-1]["message"] == "back to 2"
    assert_tree_equals_view(c.read_tree(ctx), view2)


def test_gc_keeps_last_n_generations(cli_raw, tmp_path):
    c = cli_raw
    ctx = "gc-me"
    work = str(tmp_path / "w")
    init_and_checkout(c, ctx, work)
    for i in range(2, 9):
        write_file(work, "workspace/n.txt", "%d\n" % i)
        c.json("commit", ctx, "--from", work)
    tree_dir = os.path.join(c.store, "contexts", ctx, "tree")
    objs = sorted(f for f in os.listdir(tree_dir) if f.endswith(".enc"))
    assert len(objs) == 5, objs  # default retention: the last 5 generations
    c.json("gc", ctx, "--keep", "2", "--dry-run")
    assert sorted(f for f in os.listdir(tree_dir) if f.endswith(".enc")) == objs
    c.json("gc", ctx, "--keep", "2")
    left = sorted(f for f in os.listdir(tree_dir) if f.endswith(".enc"))
    assert [f[:8] for f in left] == ["00000007", "00000008"], left
    assert c.fails(3, "export", "%s@5" % ctx, str(tmp_path / "gone")).rc == 3
    assert c.run("verify", ctx).rc == 0
    c.ok("export", "%s@7" % ctx, str(tmp_path / "at7"))
    with open(os.path.join(str(tmp_path / "at7"), "workspace/n.txt")) as f:
        assert f.read() == "7\n"


def test_unsafe_symlinks_in_source_are_not_stored(cli_raw, tmp_path):
    """The packer drops links whose target is absolute or has a `..` segment
    (REFERENCE.md §5.1), or refuses the commit; either way they never reach the bundle."""
    c = cli_raw
    ctx = "unsafe-src"
    work = str(tmp_path / "w")
    init_and_checkout(c, ctx, work)
    os.symlink("/etc/passwd", os.path.join(work, "workspace/abs-link"))
    os.symlink("../../outside", os.path.join(work, "workspace/up-link"))
    write_file(work, "workspace/ok.txt", "ok\n")
    r = c.run("commit", ctx, "--from", work)
    assert r.rc in (0, 6), r.err
    names = set(entries_by_path(c.read_tree(ctx)))
    assert "workspace/abs-link" not in names and "workspace/up-link" not in names
    if r.rc == 0:
        assert "workspace/ok.txt" in names


def test_commit_does_not_touch_source_dir(cli_raw, tmp_path):
    c = cli_raw
    ctx = "ro-src"
    work = str(tmp_path / "w")
    init_and_checkout(c, ctx, work)
    populate(work)
    before = snapshot_dir(work)
    c.json("commit", ctx, "--from", work)
    assert snapshot_dir(work) == before, "commit modified the directory it committed from"


@pytest.mark.parametrize("fresh_checkout", [False, True])
def test_changed_paths_of_consecutive_commits(cli_raw, tmp_path, fresh_checkout):
    """changedPaths of a commit = diff against the PREVIOUS GENERATION (§13.1),
    whether the directory is a fresh export of it or the one committed last time."""
    c = cli_raw
    ctx = "diffs"
    work = str(tmp_path / "w")
    init_and_checkout(c, ctx, work)
    write_file(work, "workspace/hello.txt", "v1\n")
    write_file(work, "workspace/to-be-removed.txt", "bye\n")
    write_file(work, "memory/keep.md", "same\n")
    r = c.json("commit", ctx, "--from", work)
    assert r.json["changedPaths"] == [
        {"path": "memory/keep.md", "type": "added"},
        {"path": "workspace/hello.txt", "type": "added"},
        {"path": "workspace/to-be-removed.txt", "type": "added"},
    ]
    if fresh_checkout:
        work = str(tmp_path / "w2")
        c.ok("export", ctx, work)
    write_file(work, "workspace/hello.txt", "v2\n")
    os.unlink(os.path.join(work, "workspace/to-be-removed.txt"))
    write_file(work, "artifacts/new.txt", "new\n")
    r = c.json("commit", ctx, "--from", work)
    want = [
        {"path": "artifacts/new.txt", "type": "added"},
        {"path": "workspace/hello.txt", "type": "modified"},
        {"path": "workspace/to-be-removed.txt", "type": "removed"},
    ]
    assert r.json["changedPaths"] == want
    assert c.manifest(ctx)["versions"][-1]["changedPaths"] == want
    # nothing changed: an empty diff
    r = c.json("commit", ctx, "--from", work)
    assert r.json["changedPaths"] == []


def test_store_files_follow_fsstorage_conventions(cli_raw, tmp_path):
    """REFERENCE.md §3.3: key K is the file <store>/K; `<file>.etagid` holds a
    UUID v4 (no newline, mode 0600); objects are private (0600); no temp files
    or per-key lock dirs remain after a command."""
    import re
    c = cli_raw
    ctx = "fsconv"
    work = str(tmp_path / "w")
    init_and_checkout(c, ctx, work)
    write_file(work, "workspace/a.txt", "a\n")
    c.json("commit", ctx, "--from", work)
    c.json("checkpoint", ctx, "--from", work)
    uuid4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
    m = c.manifest(ctx)
    objects = [os.path.join("contexts", ctx, "manifest.json"), m["treeKey"]]
    objects += [v["treeKey"] for v in m["versions"] if v.get("treeKey")]
    for key in objects:
        p = os.path.join(c.store, key)
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, key
        with open(p + ".etagid") as f:
            tok = f.read()
        assert uuid4.match(tok), (key, tok)
        assert stat.S_IMODE(os.stat(p + ".etagid").st_mode) == 0o600, key
    for dirpath, dirnames, filenames in os.walk(c.store):
        for n in dirnames + filenames:
            assert ".tmp-" not in n and not n.endswith(".lock"), os.path.join(dirpath, n)
    # an object without a sidecar (written by another tool) is still readable and
    # committable: its ETag is the body's sha256
    os.unlink(os.path.join(c.store, "contexts", ctx, "manifest.json.etagid"))
    write_file(work, "workspace/b.txt", "b\n")
    c.json("commit", ctx, "--from", work)
    assert c.manifest(ctx)["generation"] == 3
