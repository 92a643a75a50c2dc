"""contextfs run / probe on the local runtime (bubblewrap sandboxes and the
plain-directory fallback): a context carried into a sandbox, a command run
there, the result validated and committed.

What is asserted comes from the stored objects: the tree is exported after
each run and every file's sha256 and mode is compared with what the sandbox
itself reported, so a lossy transfer in either direction fails.
"""

import json
import os
import shutil
import subprocess
import threading
import time

import pytest

from conftest import (EXIT_LOCKED, EXIT_IO, EXIT_UNSAFE, TEST_SCRYPT_COST, sha256_file, snapshot_dir,
                      write_file)

ROOTS = ["workspace", "memory", "artifacts", "logs", "config"]
MODES = ["bwrap", "plain"]

# Prints "<type> <mode> <sha256-or-target> <path>" for everything under the
# managed roots, sorted: the sandbox's own view of the tree.
LISTING = r"""
python3 - <<'PY'
import hashlib, os, stat
out = []
for top in ["contextsdk.json", "workspace", "memory", "artifacts", "logs", "config"]:
    for dirpath, dirs, files in os.walk(top) if os.path.isdir(top) else [("", [], [top])]:
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out.append("symlink - %s %s" % (os.readlink(p), p))
            elif stat.S_ISREG(st.st_mode):
                h = hashlib.sha256(open(p, "rb").read()).hexdigest()
                out.append("file %o %s %s" % (stat.S_IMODE(st.st_mode), h, p))
for line in sorted(out):
    print(line)
PY
"""


def parse_listing(text):
    snap = {}
    for line in text.splitlines():
        kind, mode, val, path = line.split(" ", 3)
        snap[path] = (kind, None if mode == "-" else int(mode, 8), val)
    return snap


def local_listing(root):
    snap = {}
    for rel, (kind, mode, _size, val) in snapshot_dir(root).items():
        top = rel.split("/")[0]
        if top not in ROOTS and rel != "contextsdk.json":
            continue
        if kind == "file":
            snap[rel] = ("file", mode, val)
        elif kind == "symlink":
            snap[rel] = ("symlink", None, val)
    return snap


def export(cli, ctx, dest):
    cli.ok("export", ctx, dest)
    return dest


def generation(cli, ctx):
    return cli.manifest(ctx)["generation"]


@pytest.fixture
def ctx(cli, workdir):
    """A context whose generation 2 holds files of several modes, binary data,
    nested dirs and a symlink."""
    name = "run-ctx"
    cli.ok("init", name, "--scrypt-cost", TEST_SCRYPT_COST)
    src = export(cli, name, os.path.join(workdir, "src"))
    write_file(src, "workspace/keep.txt", "keep me\n", 0o644)
    write_file(src, "workspace/secret.bin", os.urandom(200000), 0o600)
    write_file(src, "workspace/tool.sh", "#!/bin/sh\necho tool\n", 0o755)
    write_file(src, "workspace/gone.txt", "delete me\n", 0o644)
    write_file(src, "workspace/sub/deep/x.txt", "deep\n", 0o640)
    write_file(src, "memory/notes.md", "notes\n", 0o644)
    os.symlink("keep.txt", os.path.join(src, "workspace/link"))
    cli.ok("commit", name, "--from", src)
    return name, src


@pytest.mark.parametrize("mode", MODES)
def test_run_round_trip(cli, ctx, workdir, mode):
    name, src = ctx
    before = local_listing(src)
    script = LISTING + r"""
echo '--- after'
printf 'changed\n' >> workspace/keep.txt
rm workspace/gone.txt workspace/link
chmod 700 workspace/tool.sh
head -c 70000 /dev/urandom > workspace/new.bin
chmod 600 workspace/new.bin
ln -s sub/deep/x.txt workspace/link2
mkdir -p workspace/node_modules/pkg artifacts/out
echo 'module.exports = 1' > workspace/node_modules/pkg/index.js
echo report > artifacts/out/report.txt
""" + LISTING
    r = cli.run("run", name, "--runtime", "local", "--sandbox", mode, "--", "bash", "-c", script,
                env={"CONTEXTFS_TIMING": "1"})
    assert r.rc == 0, r.err
    # the roots were stored as the sandbox compressed them (no repack)
    assert "(roots as received)" in r.err, r.err
    attached, after = r.out.split("--- after\n")
    # attach: the sandbox holds exactly the committed tree, modes included
    assert parse_listing(attached) == before
    after = parse_listing(after)
    assert "workspace/node_modules/pkg/index.js" in after  # it existed in the sandbox
    assert generation(cli, name) == 3

    out = export(cli, name, os.path.join(workdir, "out-" + mode))
    got = local_listing(out)
    want = {p: v for p, v in after.items() if "/node_modules" not in p}
    assert got == want
    assert not os.path.exists(os.path.join(out, "workspace/node_modules"))
    assert not os.path.lexists(os.path.join(out, "workspace/gone.txt"))
    assert not os.path.lexists(os.path.join(out, "workspace/link"))
    assert os.readlink(os.path.join(out, "workspace/link2")) == "sub/deep/x.txt"
    with open(os.path.join(out, "workspace/keep.txt")) as f:
        assert f.read() == "keep me\nchanged\n"
    assert os.stat(os.path.join(out, "workspace/tool.sh")).st_mode & 0o777 == 0o700
    assert sha256_file(os.path.join(out, "workspace/secret.bin")) == \
        sha256_file(os.path.join(src, "workspace/secret.bin"))
    log = cli.manifest(name)["latestVersion"]
    assert log["message"] == "contextfs run"
    # the index's hashes (taken while the fetch extracted) match the data
    with open(os.path.join(out, ".contextsdk/index.json")) as f:
        files = json.load(f)["files"]
    assert {e["path"] for e in files} == \
        {p for p, v in got.items() if v[0] == "file" and p != "contextsdk.json"} | {"workspace/link2"}
    for e in files:
        assert e["sha256"] == sha256_file(os.path.join(out, e["path"])), e["path"]
    cli.ok("verify", name)
    # the reference's reader (zstd CLI + tarfile) sees the same tree in the
    # two-frame bundle: head members first, then the roots as the sandbox wrote them
    entries = cli.read_tree(name)
    paths = [e["path"] for e in entries]
    assert paths[0] == ".contextsdk" and paths.index("contextsdk.json") < paths.index("workspace")
    ref = {e["path"]: ("file", int(e["mode"], 8) & 0o777, e["sha256"]) for e in entries if e["type"] == "file"}
    ref.update({e["path"]: ("symlink", None, e["linkname"]) for e in entries if e["type"] == "symlink"})
    assert {p: v for p, v in ref.items() if not p.startswith(".contextsdk")} == got


def test_roots_listed_not_extracted_give_the_walks_index(cli, workdir):
    """Without symlinks the save never writes the roots here: their index is
    built from the stream's listing. It must equal the index a commit of
    the same tree builds by walking it: same files (hard links too), same
    order (a directory's names in byte order, depth first: a/b before a-c),
    same sizes, modes, mtimes and hashes."""
    name = "listed"
    cli.ok("init", name, "--scrypt-cost", TEST_SCRYPT_COST)
    script = r"""
set -e
mkdir -p workspace/a workspace/a-c.d memory/deep/er artifacts
printf 'b\n' > workspace/a/b
printf 'ac\n' > workspace/a-c
printf 'x\n' > workspace/a-c.d/x
printf 'A\n' > workspace/A
head -c 300000 /dev/urandom > memory/deep/er/blob
chmod 600 memory/deep/er/blob
ln memory/deep/er/blob memory/hard
printf '' > artifacts/empty
chmod 755 artifacts/empty
touch -d '2020-01-02 03:04:05' workspace/A
"""
    r = cli.run("run", name, "--runtime", "local", "--sandbox", "plain", "--", "sh", "-c", script,
                env={"CONTEXTFS_TIMING": "1"})
    assert r.rc == 0, r.err
    assert "(roots as received)" in r.err and "extract the roots after all" not in r.err, r.err
    out = export(cli, name, os.path.join(workdir, "out"))
    with open(os.path.join(out, ".contextsdk/index.json")) as f:
        listed = json.load(f)["files"]
    # the same tree committed from a directory: the index from a walk
    cli.ok("commit", name, "--from", out, "-m", "walked")
    again = export(cli, name, os.path.join(workdir, "again"))
    with open(os.path.join(again, ".contextsdk/index.json")) as f:
        walked = json.load(f)["files"]
    assert [e["path"] for e in listed] == [e["path"] for e in walked]
    assert listed == walked
    paths = [e["path"] for e in listed]
    assert paths.index("workspace/a/b") < paths.index("workspace/a-c") < paths.index("workspace/a-c.d/x")
    assert "memory/hard" in paths
    for e in listed:
        assert e["sha256"] == sha256_file(os.path.join(out, e["path"])), e["path"]
    cli.ok("verify", name)


def test_a_commit_while_the_runtime_opens_is_not_lost(cli, ctx, workdir):
    """run fetches the tree while the runtime opens, before it holds the lock;
    a generation another writer commits in that window must be what the
    sandbox gets (the prefetched tree is dropped), or the save would undo it."""
    name, src = ctx
    pause = os.path.join(workdir, "pause")
    result = {}

    def go():
        result["r"] = cli.run("run", name, "--runtime", "local", "--sandbox", "plain", "--", "sh", "-c",
                              "cat workspace/late.txt > workspace/seen.txt",
                              env={"CONTEXTFS_TEST_RUN_PAUSE_FILE": pause})
    th = threading.Thread(target=go)
    th.start()
    deadline = time.monotonic() + 60
    while not os.path.exists(pause) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.path.exists(pause), "run never reached the window"
    write_file(src, "workspace/late.txt", "committed meanwhile\n", 0o644)
    cli.ok("commit", name, "--from", src, "-m", "meanwhile")
    os.unlink(pause)
    th.join(120)
    r = result["r"]
    assert r.rc == 0, r.err
    out = export(cli, name, os.path.join(workdir, "out"))
    with open(os.path.join(out, "workspace/seen.txt")) as f:
        assert f.read() == "committed meanwhile\n"
    with open(os.path.join(out, "workspace/late.txt")) as f:
        assert f.read() == "committed meanwhile\n"
    assert generation(cli, name) == 4


def test_run_packs_the_roots_again_when_they_cannot_be_stored_as_received(cli, ctx, workdir):
    """A set-id bit in the sandbox's tree: extraction drops it, so the
    sandbox's compressed roots are not what the tree holds; the commit packs
    the extracted tree instead, and the stored tree is the extracted one."""
    name, src = ctx
    r = cli.run("run", name, "--runtime", "local", "--sandbox", "plain", "--", "sh", "-c",
                "echo new > workspace/new.txt && chmod 4755 workspace/tool.sh",
                env={"CONTEXTFS_TIMING": "1"})
    assert r.rc == 0, r.err
    assert "(roots as received)" not in r.err
    assert "commit: pack, encrypt and write" in r.err
    out = export(cli, name, os.path.join(workdir, "out"))
    assert os.stat(os.path.join(out, "workspace/tool.sh")).st_mode & 0o7777 == 0o755
    with open(os.path.join(out, "workspace/new.txt")) as f:
        assert f.read() == "new\n"
    assert sha256_file(os.path.join(out, "workspace/secret.bin")) == \
        sha256_file(os.path.join(src, "workspace/secret.bin"))
    cli.ok("verify", name)


@pytest.mark.parametrize("mode", MODES)
def test_nonzero_exit_is_a_result(cli, ctx, mode):
    name, _ = ctx
    r = cli.run("run", name, "--runtime", "local", "--sandbox", mode, "--",
                "sh", "-c", "echo to-out; echo to-err >&2; echo saved > workspace/f.txt; exit 42")
    assert r.rc == 42
    assert r.out == "to-out\n"
    assert r.err == "to-err\n"
    # the work is saved all the same
    assert generation(cli, name) == 3

    r = cli.run("run", name, "--runtime", "local", "--sandbox", mode, "--json", "--",
                "sh", "-c", "printf 'a b'; printf 'E' >&2; exit 3")
    # --json after -- belongs to contextfs only before the separator
    assert r.rc == 3, r.err
    doc = json.loads(r.out)
    assert doc["ok"] is False
    assert doc["result"] == {"exitCode": 3, "stdout": "a b", "stderr": "E"}


def _alive_with(marker):
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                if marker.encode() in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found


@pytest.mark.parametrize("mode", MODES)
def test_timeout_kills_the_command(cli, ctx, mode):
    name, _ = ctx
    marker = "987.%d" % (os.getpid() % 100000)
    t0 = time.monotonic()
    r = cli.run("run", name, "--runtime", "local", "--sandbox", mode, "--timeout", "1s", "--",
                "bash", "-c", "echo before > workspace/t.txt; sleep %s & sleep %s" % (marker, marker))
    elapsed = time.monotonic() - t0
    assert r.rc == EXIT_IO, r.err
    assert "timed out" in r.err
    assert elapsed < 15, elapsed
    assert _alive_with("sleep\0" + marker) == []
    # what the command did before the timeout was saved by the failure save
    assert cli.manifest(name)["latestVersion"]["message"] == "contextfs run failure save"


def _wait_for_lock(store, name, timeout=20):
    path = os.path.join(store, "contexts", name, "lock.json")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return path
        time.sleep(0.05)
    raise AssertionError("lock never appeared")


def test_lock_refused_while_another_writer_holds_it(cli, ctx, store):
    name, _ = ctx
    a = subprocess.Popen([cli.binary, "run", name, "--runtime", "local", "--", "sleep", "3"],
                         env=cli.env, cwd=cli.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_lock(store, name)
        r = cli.run("run", name, "--runtime", "local", "--", "sh", "-c", "echo x > workspace/b.txt")
        assert r.rc == EXIT_LOCKED, r.err
        assert "locked by" in r.err
    finally:
        out, err = a.communicate(timeout=60)
    assert a.returncode == 0, err
    assert generation(cli, name) == 3
    assert not os.path.exists(os.path.join(store, "contexts", name, "lock.json"))


def test_lost_lock_refuses_to_save(cli, ctx, store):
    name, _ = ctx
    a = subprocess.Popen([cli.binary, "run", name, "--runtime", "local", "--lock-ttl", "3s", "--",
                          "sh", "-c", "echo lost > workspace/lost.txt; sleep 3"],
                         env=cli.env, cwd=cli.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_lock(store, name)
        cli.ok("unlock", name, "--force")
        # another writer takes the context over
        cli.ok("unlock", name, "--force")
    finally:
        out, err = a.communicate(timeout=60)
    assert a.returncode == EXIT_LOCKED, err
    assert b"lost" in err
    assert generation(cli, name) == 2


def test_probe(cli):
    for mode in MODES:
        r = cli.json("probe", "--runtime", "local", "--sandbox", mode)
        p = r.json["probe"]
        assert p["ok"] is True and p["missingTools"] == []
        assert p["provider"] == "local" and p["runtimeId"].startswith("local:")
        assert p["details"]["isolated"] is (mode == "bwrap")
    r = cli.run("probe", "--runtime", "nope")
    assert r.rc == 2 and "unsupported runtime" in r.err


@pytest.mark.parametrize("sig,code,name", [(15, 143, "SIGTERM"), (2, 130, "SIGINT")])
def test_signal_stops_saves_and_exits(cli, ctx, store, tmp_path, sig, code, name):
    ctx_name, _ = ctx
    marker = "988.%d" % (os.getpid() % 100000)
    a = subprocess.Popen([cli.binary, "run", ctx_name, "--runtime", "local", "--",
                          "bash", "-c", "echo kept > workspace/sig.txt; sleep %s" % marker],
                         env=cli.env, cwd=cli.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_lock(store, ctx_name)
        deadline = time.monotonic() + 20
        while not _alive_with("sleep\0" + marker):
            assert time.monotonic() < deadline, "the command never started"
            time.sleep(0.05)
        t0 = time.monotonic()
        a.send_signal(sig)
        out, err = a.communicate(timeout=60)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    assert a.returncode == code, err
    assert time.monotonic() - t0 < 10
    assert ("interrupted by %s" % name).encode() in err
    assert _alive_with("sleep\0" + marker) == []
    m = cli.manifest(ctx_name)
    assert m["generation"] == 3
    assert m["latestVersion"]["message"] == "contextfs run %s save" % name
    assert not os.path.exists(os.path.join(store, "contexts", ctx_name, "lock.json"))
    out = export(cli, ctx_name, str(tmp_path / "out"))
    with open(os.path.join(out, "workspace/sig.txt")) as f:
        assert f.read() == "kept\n"


def test_periodic_checkpoints_survive_a_crash(cli, ctx, store, tmp_path):
    """The reference's crash-recovery scenario (§12.5) without re-provisioning:
    contextfs dies (SIGKILL) mid-command; the last periodic checkpoint is the
    context's tree, work after it is lost, and a forced takeover carries on."""
    name, _ = ctx
    sandboxes = tmp_path / "sandboxes"
    sandboxes.mkdir()
    env = dict(cli.env, TMPDIR=str(sandboxes))
    a = subprocess.Popen([cli.binary, "run", name, "--runtime", "local", "--checkpoint-interval", "2s", "--",
                          "sh", "-c", "echo ck > workspace/ck.txt; sleep 2.5; echo lost > workspace/lost.txt; "
                          "sleep 30"],
                         env=env, cwd=cli.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            m = cli.manifest(name)
            lost = [os.path.join(d, "mnt/contextsdk", name, "workspace/lost.txt")
                    for d in (str(p) for p in sandboxes.iterdir()) if "contextfs-sandbox-" in d]
            if m.get("checkpointGeneration", 0) >= 1 and any(os.path.exists(p) for p in lost):
                break
            assert a.poll() is None and time.monotonic() < deadline, a.communicate()
            time.sleep(0.05)
        a.kill()
        a.wait()
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    m = cli.manifest(name)
    assert m["checkpointGeneration"] == 1 and m["latestCheckpoint"]["reason"] == "periodic"
    assert m["generation"] == 2
    assert os.path.exists(os.path.join(store, "contexts", name, "lock.json"))  # left by the dead writer
    r = cli.run("run", name, "--runtime", "local", "--", "true")
    assert r.rc == EXIT_LOCKED
    # the dead run's sandbox (plaintext) is still there ...
    assert [p.name for p in sandboxes.iterdir() if p.name.startswith("contextfs-sandbox-%d-" % a.pid)]
    r = cli.run("run", name, "--runtime", "local", "--force-unlock", "--",
                "sh", "-c", "cat workspace/ck.txt; test -e workspace/lost.txt || echo lost-is-gone",
                env={"TMPDIR": str(sandboxes)})
    assert (r.rc, r.out) == (0, "ck\nlost-is-gone\n"), r.err
    assert cli.manifest(name)["generation"] == 3
    # ... until the next run on this machine sweeps it
    assert list(sandboxes.iterdir()) == []


def _start_and_kill_sandbox(cli, name, tmp_path, extra, script):
    """Starts `contextfs --json run NAME --runtime local EXTRA -- sh -c SCRIPT`,
    waits for its first periodic checkpoint, then writes uncheckpointed work
    into the sandbox and removes the sandbox's root (the sandbox dies while
    contextfs lives). Returns (returncode, json doc, stderr)."""
    sandboxes = tmp_path / "sandboxes"
    sandboxes.mkdir()
    env = dict(cli.env, TMPDIR=str(sandboxes))
    ck0 = cli.manifest(name).get("checkpointGeneration", 0)
    a = subprocess.Popen([cli.binary, "--json", "run", name, "--runtime", "local", "--checkpoint-interval", "1s"]
                         + extra + ["--", "sh", "-c", script],
                         env=env, cwd=cli.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            roots = [p for p in sandboxes.iterdir() if p.name.startswith("contextfs-sandbox-")]
            if cli.manifest(name).get("checkpointGeneration", 0) > ck0 and roots:
                break
            assert a.poll() is None and time.monotonic() < deadline, a.communicate()
            time.sleep(0.05)
        with open(os.path.join(str(roots[0]), "mnt/contextsdk", name, "workspace/lost.txt"), "w") as f:
            f.write("never checkpointed\n")
        shutil.rmtree(str(roots[0]))
        out, err = a.communicate(timeout=120)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    return a.returncode, json.loads(out), err


RERUN = ('if [ -e workspace/ck.txt ]; then echo "rerun sees $(cat workspace/ck.txt)"; '
         'test -e workspace/lost.txt || echo "lost.txt is gone"; exit 0; fi; '
         'echo ck > workspace/ck.txt; sleep 60')


def test_recover_reprovisions_and_reruns_after_the_sandbox_dies(cli, ctx, tmp_path):
    """--recover --recover-rerun (the reference's autoRecovery, §9.4/§12.5):
    the sandbox dies mid-command; a new one is provisioned under the same
    lock owner from the last checkpoint, the command runs again there, and
    the work after the checkpoint is reported lost."""
    name, _ = ctx
    gen0 = generation(cli, name)
    rc, doc, err = _start_and_kill_sandbox(cli, name, tmp_path, ["--recover", "--recover-rerun"], RERUN)
    assert rc == 0, err
    assert doc["result"]["stdout"] == "rerun sees ck\nlost.txt is gone\n", doc
    assert [e["type"] for e in doc["events"]] == ["recovery-start", "recovery-success"], doc["events"]
    ok = doc["events"][1]
    assert ok["attempt"] == 1 and ok["recoveredToGeneration"] == gen0, ok
    assert ok["recoveredToCheckpointGeneration"] >= 1, ok
    assert "work done after that in the dead sandbox is lost" in err, err
    m = cli.manifest(name)
    assert m["generation"] == gen0 + 1 and m["latestVersion"]["message"] == "contextfs run"
    out = export(cli, name, str(tmp_path / "out"))
    with open(os.path.join(out, "workspace/ck.txt")) as f:
        assert f.read() == "ck\n"
    assert not os.path.exists(os.path.join(out, "workspace/lost.txt"))
    assert os.path.exists(os.path.join(out, "workspace/keep.txt"))
    assert not os.path.exists(os.path.join(cli.store, "contexts", name, "lock.json"))


def test_sandbox_death_without_recovery_is_an_error(cli, ctx, tmp_path):
    """Without --recover a dead sandbox is an error (exit 7) and nothing
    re-provisions; with --recover but no --recover-rerun the recovered tree
    (the last checkpoint) is saved as the failure save and the error stays."""
    name, _ = ctx
    gen0 = generation(cli, name)
    rc, doc, err = _start_and_kill_sandbox(cli, name, tmp_path, [], "echo ck > workspace/ck.txt; sleep 60")
    assert rc == EXIT_IO and "died while the command ran" in json.dumps(doc), (doc, err)
    assert doc.get("events", []) == []
    (tmp_path / "b").mkdir()
    rc, doc, err = _start_and_kill_sandbox(cli, name, tmp_path / "b", ["--recover"],
                                           "echo ck2 > workspace/ck2.txt; sleep 60")
    assert rc == EXIT_IO, err
    assert [e["type"] for e in doc["events"]] == ["recovery-start", "recovery-success"], doc
    m = cli.manifest(name)
    assert m["latestVersion"]["message"] == "contextfs run failure save", m["latestVersion"]
    out = export(cli, name, str(tmp_path / "out"))
    assert os.path.exists(os.path.join(out, "workspace/ck2.txt"))
    assert not os.path.exists(os.path.join(out, "workspace/lost.txt"))
    assert m["generation"] > gen0


def test_failed_heartbeats_degrade_and_take_an_emergency_checkpoint(cli, ctx, store, tmp_path):
    """Lock renewals that keep failing (lock.json made immutable, so the
    store refuses the rewrite) are heartbeat failures: events
    heartbeat-failure, then degraded at the threshold and, with --recover,
    one emergency checkpoint while the lock is still valid (§9.3)."""
    name, _ = ctx
    lock = os.path.join(store, "contexts", name, "lock.json")
    a = subprocess.Popen([cli.binary, "--json", "run", name, "--runtime", "local", "--lock-ttl", "6s",
                          "--recover", "--failure-threshold", "1", "--",
                          "sh", "-c", "echo hb > workspace/hb.txt; sleep 4"],
                         env=cli.env, cwd=cli.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    frozen = False
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(lock):
            assert a.poll() is None and time.monotonic() < deadline, a.communicate()
            time.sleep(0.02)
        if subprocess.run(["chattr", "+i", lock], capture_output=True).returncode != 0:
            a.kill()
            pytest.skip("chattr +i is not supported on the store's filesystem")
        frozen = True
        out, err = a.communicate(timeout=60)
    finally:
        if frozen:
            subprocess.run(["chattr", "-i", lock])
        if a.poll() is None:
            a.kill()
            a.wait()
    doc = json.loads(out)
    types = [e["type"] for e in doc["events"]]
    assert types[:3] == ["heartbeat-failure", "degraded", "emergency-checkpoint"], (types, err)
    assert doc["events"][0]["consecutiveFailures"] == 1 and "error" in doc["events"][0]
    assert "degraded" in err
    m = cli.manifest(name)
    assert m["latestCheckpoint"]["reason"] == "emergency", m["latestCheckpoint"]
    # the final save still lands (the lock is still ours by content)
    assert a.returncode == 0, err
    assert m["latestVersion"]["message"] == "contextfs run"


def test_checkpoints_then_save(cli, ctx):
    name, _ = ctx
    r = cli.run("run", name, "--runtime", "local", "--checkpoint-interval", "500ms", "--",
                "sh", "-c", "echo 1 > workspace/n.txt; sleep 1.3; echo 2 > workspace/n.txt")
    assert r.rc == 0, r.err
    m = cli.manifest(name)
    assert m["checkpointGeneration"] >= 1 and m["generation"] == 3
    assert m["latestVersion"]["message"] == "contextfs run"


@pytest.mark.parametrize("mode", MODES)
def test_hostile_sandbox_cannot_reach_the_host(cli, ctx, workdir, mode):
    """A sandbox that plants absolute or escaping links, or swaps a root for a
    link to the host's /, gets none of them committed and reads nothing of the
    host through them."""
    name, _ = ctx
    r = cli.run("run", name, "--runtime", "local", "--sandbox", mode, "--", "sh", "-c",
                "ln -s /etc/passwd workspace/abs; ln -s ../../../etc/passwd workspace/up; "
                "rm -rf memory; ln -s / memory; echo ok > workspace/ok.txt")
    assert r.rc == 0, r.err
    out = export(cli, name, os.path.join(workdir, "hostile-" + mode))
    assert not os.path.lexists(os.path.join(out, "workspace/abs"))
    assert not os.path.lexists(os.path.join(out, "workspace/up"))
    assert not os.path.lexists(os.path.join(out, "memory")) or os.path.isdir(os.path.join(out, "memory"))
    assert not os.path.exists(os.path.join(out, "memory/etc"))
    with open(os.path.join(out, "workspace/ok.txt")) as f:
        assert f.read() == "ok\n"


@pytest.mark.parametrize("mode", MODES)
def test_unsafe_name_from_the_sandbox_is_refused(cli, ctx, mode):
    """A name the archive rules refuse (a backslash segment that reads as
    `..`), followed by more data: the save streams the sandbox's packer into
    the local validation, which stops at that member and says so (not a
    transfer or packer error); nothing is committed."""
    name, _ = ctx
    r = cli.run("run", name, "--runtime", "local", "--sandbox", mode, "--", "sh", "-c",
                "head -c 2000000 /dev/urandom > workspace/a.bin; "
                "printf x > 'workspace/..\\evil'; "
                "head -c 4000000 /dev/urandom > workspace/z.bin")
    assert r.rc == EXIT_UNSAFE, r.err
    assert "rejected: unsafe archive entry: workspace/..\\evil" in r.err, r.err
    assert generation(cli, name) == 2
