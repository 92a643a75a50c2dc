"""The command-line surface (brief: cli.md): help, version, --json shapes, exit
codes, doctor, and key hygiene (no secret in output or in any argv)."""

import hashlib
import json
import os
import shutil
import re
import stat
import subprocess
import time

import pytest

import refreader
from conftest import (EXIT_LOCKED, EXIT_NOTFOUND, EXIT_USAGE, PASSPHRASE, assert_one_error_line, sha256_file,
                      write_file)

COMMANDS = ["init", "status", "verify", "log", "export", "commit", "checkpoint", "unlock", "restore", "gc",
            "list", "doctor"]
ERROR_CODES = {"ok", "not-found", "exists", "conflict", "locked", "authentication", "corrupt", "unsafe", "io",
               "again", "timeout", "invalid", "nomem", "nospace", "unsupported", "key", "permission",
               "canceled", "error"}


def test_version(cli):
    r = cli.ok("--version")
    assert re.match(r"^contextfs \d+\.\d+\.\d+\S*\n$", r.out), r.out
    r = cli.json("--version")
    assert re.match(r"^\d+\.\d+\.\d+", r.json["version"])


def test_top_level_help_lists_every_command(cli):
    for argv in (("--help",), ("-h",), ("help",)):
        r = cli.ok(*argv)
        assert "usage: contextfs" in r.out, argv
        for c in COMMANDS:
            assert re.search(r"^\s+%s\b" % c, r.out, re.M), "%s missing from %s output" % (c, argv)
    r = cli.run()
    assert r.rc == EXIT_USAGE and "usage: contextfs" in r.err and r.out == ""


@pytest.mark.parametrize("cmd", COMMANDS)
def test_command_help(cli, cmd):
    a = cli.ok(cmd, "--help")
    b = cli.ok("help", cmd)
    c = cli.ok(cmd, "-h")
    assert a.out == b.out == c.out
    assert a.out.startswith("usage: contextfs %s" % cmd), a.out[:200]
    assert a.err == ""
    # --help never needs key material or a store
    r = cli.run(cmd, "--help", unset=("CONTEXTSDK_PASSPHRASE", "CONTEXTSDK_KEY_HEX", "CONTEXTSDK_STORAGE_DIR"))
    assert r.rc == 0 and r.out == a.out


def test_unknown_command_and_option(cli):
    r = cli.run("frobnicate")
    assert r.rc == EXIT_USAGE and "frobnicate" in r.err and r.out == ""
    r = cli.json("frobnicate", expect=EXIT_USAGE)
    assert r.json["error"]["code"] == "invalid"
    r = cli.run("status", "x", "--no-such-option")
    assert r.rc == EXIT_USAGE and "--no-such-option" in r.err
    r = cli.run("--json", "status", "x", "--no-such-option")
    assert r.rc == EXIT_USAGE and json.loads(r.out)["error"]["code"] == "invalid"
    r = cli.run("help", "frobnicate")
    assert r.rc == EXIT_USAGE
    r = cli.run("status")
    assert r.rc == EXIT_USAGE and "missing argument" in r.err
    r = cli.run("status", "a", "b")
    assert r.rc == EXIT_USAGE
    # --json anywhere on the line, even after the bad option, still gets JSON
    r = cli.json("status", "x", "--no-such-option", expect=EXIT_USAGE)


def test_missing_key_material(cli, tmp_path):
    r = cli.run("init", "nokey", unset=("CONTEXTSDK_PASSPHRASE", "CONTEXTSDK_KEY_HEX"))
    assert r.rc == EXIT_USAGE, r.err
    assert "CONTEXTSDK_PASSPHRASE or CONTEXTSDK_KEY_HEX is required" in assert_one_error_line(r)
    r = cli.json("init", "nokey", unset=("CONTEXTSDK_PASSPHRASE", "CONTEXTSDK_KEY_HEX"), expect=EXIT_USAGE)
    assert r.json["error"]["code"] == "key"
    assert os.listdir(cli.store) == []


def _ctx_with_history(c, tmp_path, ctx="cli"):
    work = str(tmp_path / "w")
    c.json("init", ctx, "--scrypt-cost", "1024")
    c.ok("export", ctx, work)
    write_file(work, "workspace/a.txt", "a\n")
    c.json("commit", ctx, "--from", work, "-m", "first")
    return work


def test_json_shapes(cli, tmp_path):
    ctx = "cli"
    r = cli.json("init", ctx, "--scrypt-cost", "1024")
    assert r.json["id"] == ctx and r.json["generation"] == 1
    assert r.json["treeKey"].startswith("contexts/cli/tree/00000001-")
    assert isinstance(r.json["sizeBytes"], int)

    r = cli.json("list")
    assert [x["id"] for x in r.json["contexts"]] == [ctx]
    assert r.json["contexts"][0]["generation"] == 1

    work = str(tmp_path / "w")
    r = cli.json("export", ctx, work)
    assert r.json["id"] == ctx and r.json["generation"] == 1 and os.path.isdir(work)

    write_file(work, "workspace/a.txt", "a\n")
    r = cli.json("commit", ctx, "--from", work, "-m", "m1")
    assert set(r.json) >= {"ok", "id", "generation", "treeKey", "sizeBytes", "changedPaths"}
    assert r.json["generation"] == 2
    assert r.json["changedPaths"] == [{"path": "workspace/a.txt", "type": "added"}]
    assert isinstance(r.json["sizeBytes"], int)

    r = cli.json("checkpoint", ctx, "--from", work, "--reason", "r1")
    assert set(r.json) >= {"ok", "id", "checkpointGeneration", "treeKey"}
    assert r.json["checkpointGeneration"] == 1

    r = cli.json("status", ctx)
    assert set(r.json) >= {"ok", "id", "generation", "checkpointGeneration", "treeKey", "sizeBytes", "createdAt",
                           "updatedAt", "lock", "manifest"}
    assert r.json["generation"] == 2 and r.json["checkpointGeneration"] == 1 and r.json["lock"] is None
    assert r.json["manifest"]["id"] == ctx

    r = cli.json("log", ctx)
    assert set(r.json) >= {"ok", "id", "versions", "checkpoints"}
    v = [x for x in r.json["versions"] if x["generation"] == 2][0]
    for k in ("generation", "parentGeneration", "timestamp", "author", "message", "changedPaths", "retained"):
        assert k in v, (k, v)
    assert v["message"] == "m1" and v["parentGeneration"] == 1 and v["retained"] is True
    assert r.json["checkpoints"][0]["generation"] == 1 and r.json["checkpoints"][0]["reason"] == "r1"

    r = cli.json("verify", ctx)
    assert set(r.json) >= {"ok", "id", "objects"}
    for o in r.json["objects"]:
        assert set(o) >= {"key", "role", "ok", "bytes"} and o["ok"] is True, o
    roles = {o["role"] for o in r.json["objects"]}
    assert len(roles) >= 2, roles  # current tree (checkpoint) + retained generation(s)

    r = cli.json("restore", ctx + "@1", "-m", "undo")
    assert r.json["generation"] == 3

    r = cli.json("gc", ctx, "--keep", "1", "--dry-run")
    assert isinstance(r.json["objects"], list)
    r = cli.json("unlock", ctx, "--force")
    r = cli.json("doctor")
    assert r.json["ok"] is True


def test_json_errors(cli, tmp_path):
    r = cli.json("status", "missing", expect=EXIT_NOTFOUND)
    assert r.json["error"]["code"] == "not-found" and "missing" in r.json["error"]["message"]
    assert r.err == "" or len(r.err.splitlines()) <= 1
    _ctx_with_history(cli, tmp_path)
    r = cli.json("init", "cli", "--scrypt-cost", "1024", expect=EXIT_LOCKED)
    assert r.json["error"]["code"] in ERROR_CODES - {"ok"}
    assert "context already exists: cli" in r.json["error"]["message"]
    r = cli.json("commit", "cli", "--from", str(tmp_path / "w"), "--expect-generation", "7", expect=EXIT_LOCKED)
    r = cli.json("export", "cli@99", str(tmp_path / "x"), expect=EXIT_NOTFOUND)
    assert r.json["error"]["code"] == "not-found"


def test_exit_codes_table(cli, make_cli, tmp_path):
    work = _ctx_with_history(cli, tmp_path)
    cases = [
        (("status", "nope"), 3),
        (("export", "cli@42", str(tmp_path / "e1")), 3),
        (("commit", "cli", "--from", work, "--expect-generation", "1"), 4),
        (("init", "cli"), 4),
        (("commit", "cli", "--from", str(tmp_path / "does-not-exist")), None),
        (("export", "cli", work), None),  # non-empty target
        (("gc", "cli", "--keep", "x"), 2),
        (("export", "cli@notanumber", str(tmp_path / "e2")), 2),
    ]
    for argv, code in cases:
        r = cli.run(*argv)
        if code is None:
            assert r.rc not in (0, 1), (argv, r.rc, r.err)
        else:
            assert r.rc == code, (argv, r.rc, r.err)
        assert r.err.strip(), argv
    bad = make_cli(cli.store, passphrase="wrong")
    assert bad.run("export", "cli", str(tmp_path / "e3")).rc == 5


def test_quiet_and_human_output(cli, tmp_path):
    work = _ctx_with_history(cli, tmp_path)
    write_file(work, "workspace/b.txt", "b\n")
    r = cli.ok("commit", "cli", "--from", work, "-q")
    assert r.err == ""
    r = cli.ok("status", "cli")
    assert "cli" in r.out and r.err == ""
    # global options may follow the command and precede it
    r = cli.run("--json", "status", "cli")
    assert r.rc == 0 and json.loads(r.out)["id"] == "cli"
    r = cli.run("status", "--store", cli.store, "cli", "--json", unset=("CONTEXTSDK_STORAGE_DIR",))
    assert r.rc == 0 and json.loads(r.out)["id"] == "cli"


def test_store_resolution(cli, tmp_path):
    other = str(tmp_path / "other-store")
    r = cli.json("init", "s1", "--store", other, "--scrypt-cost", "1024")
    assert os.path.exists(os.path.join(other, "contexts", "s1", "manifest.json"))
    assert not os.path.exists(os.path.join(cli.store, "contexts"))
    # config file storage.directory (CONTEXTSDK_CONFIG) when no env/flag
    cfg = str(tmp_path / "cfg.json")
    with open(cfg, "w") as f:
        json.dump({"storage": {"directory": other}, "encryption": {"passphraseEnv": "MY_PASS"}}, f)
    r = cli.run("--json", "status", "s1", unset=("CONTEXTSDK_STORAGE_DIR",), env={"CONTEXTSDK_CONFIG": cfg})
    assert r.rc == 0, r.err
    # encryption.passphraseEnv names the variable to read
    r = cli.run("export", "s1", str(tmp_path / "x"), unset=("CONTEXTSDK_STORAGE_DIR", "CONTEXTSDK_PASSPHRASE"),
                env={"CONTEXTSDK_CONFIG": cfg, "MY_PASS": PASSPHRASE})
    assert r.rc == 0, r.err
    # default: ~/.contextsdk/storage
    r = cli.run("--json", "list", unset=("CONTEXTSDK_STORAGE_DIR",))
    assert r.rc == 0, r.err
    assert json.loads(r.out)["contexts"] == []


def test_doctor(cli, tmp_path):
    r = cli.json("doctor")
    txt = json.dumps(r.json)
    assert PASSPHRASE not in txt
    r2 = cli.ok("doctor")
    assert PASSPHRASE not in r2.out + r2.err
    # doctor with no key material still runs, and says so without secrets
    r = cli.run("doctor", "--json", unset=("CONTEXTSDK_PASSPHRASE", "CONTEXTSDK_KEY_HEX"))
    assert r.rc in (0, 2), r.err
    json.loads(r.out)
    # an unusable store is reported
    bad = str(tmp_path / "file-not-dir")
    write_file(str(tmp_path), "file-not-dir", "x")
    r = cli.run("doctor", "--store", bad)
    assert r.rc != 0


def _children(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return out


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_passphrase_never_in_argv_or_output(cli, tmp_path):
    """Polls /proc while contextfs derives a default-cost scrypt key and packs:
    the passphrase must never be in the argv of contextfs or any child, nor in
    its environment after startup (the CLI moves secrets out of environ), nor
    in any output."""
    secret = PASSPHRASE.encode()
    work = str(tmp_path / "w")
    proc = subprocess.Popen([cli.binary, "init", "argv-check"], env=cli.env, cwd=cli.workdir,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen_cmdlines = []
    environ_leaks = 0
    polls = 0
    while proc.poll() is None:
        for pid in [proc.pid] + _children(proc.pid):
            cmd = _read("/proc/%d/cmdline" % pid)
            if cmd:
                seen_cmdlines.append(cmd)
            polls += 1
            if pid == proc.pid and polls > 20 and secret in _read("/proc/%d/environ" % pid):
                environ_leaks += 1
        time.sleep(0.005)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert seen_cmdlines, "process finished before it could be observed"
    assert not any(secret in c for c in seen_cmdlines)
    assert secret not in out + err
    assert environ_leaks == 0, "passphrase still readable in /proc/<pid>/environ after startup"
    cli.ok("export", "argv-check", work)
    write_file(work, "workspace/a.txt", "a")
    for argv in (("commit", "argv-check", "--from", work), ("status", "argv-check", "--json"),
                 ("log", "argv-check", "--json"), ("verify", "argv-check", "--json"), ("doctor", "--json"),
                 ("list", "--json")):
        r = cli.run(*argv)
        assert r.rc == 0, (argv, r.err)
        assert PASSPHRASE not in r.out + r.err, argv


def test_passphrase_file(cli, tmp_path):
    pf = str(tmp_path / "pass.txt")
    with open(pf, "w") as f:
        f.write(PASSPHRASE + "\n")
    os.chmod(pf, 0o600)
    unset = ("CONTEXTSDK_PASSPHRASE", "CONTEXTSDK_KEY_HEX")
    r = cli.run("init", "pf", "--scrypt-cost", "1024", "--passphrase-file", pf, unset=unset)
    assert r.rc == 0, r.err
    # the same passphrase from the environment opens it (trailing newline not part of it)
    cli.ok("export", "pf", str(tmp_path / "x1"))
    for mode in (0o644, 0o640, 0o604):
        os.chmod(pf, mode)
        r = cli.run("export", "pf", str(tmp_path / ("x-%o" % mode)), "--passphrase-file", pf, unset=unset)
        assert r.rc in (2, 7), "passphrase file with mode %o accepted (exit %d)" % (mode, r.rc)
        line = assert_one_error_line(r)
        assert pf in line or "readable" in line or "permission" in line.lower(), line
        assert not os.path.exists(str(tmp_path / ("x-%o" % mode))) or not os.listdir(str(tmp_path / ("x-%o" % mode)))
    os.chmod(pf, 0o600)
    r = cli.run("export", "pf", str(tmp_path / "x2"), "--passphrase-file", pf, unset=unset)
    assert r.rc == 0, r.err
    r = cli.run("export", "pf", str(tmp_path / "x3"), "--passphrase-file", str(tmp_path / "nope"), unset=unset)
    assert r.rc != 0
    assert_one_error_line(r)


def test_prompt_needs_tty(cli):
    """Without key material and without a TTY on stdin, no prompt: exit 2."""
    r = cli.run("init", "tty", input=b"typed-passphrase\n", unset=("CONTEXTSDK_PASSPHRASE", "CONTEXTSDK_KEY_HEX"))
    assert r.rc == EXIT_USAGE, r.err
    assert "typed-passphrase" not in r.out + r.err


def test_export_target_created_private(cli_raw, tmp_path):
    cli_raw.json("init", "priv")
    target = str(tmp_path / "deep" / "new")
    os.makedirs(os.path.dirname(target))
    cli_raw.ok("export", "priv", target)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700
    # an existing empty directory is fine
    empty = str(tmp_path / "empty")
    os.mkdir(empty)
    cli_raw.ok("export", "priv", empty)
    assert os.path.isfile(os.path.join(empty, "contextsdk.json"))


def test_unlock_semantics(cli_raw, tmp_path):
    cli_raw.json("init", "lk")
    r = cli_raw.run("unlock", "lk")  # no lock: a no-op
    assert r.rc == 0, r.err
    lock = {"version": 1, "contextId": "lk", "owner": "h:1:u", "runtimeId": "x",
            "createdAt": "2099-01-01T00:00:00.000Z", "heartbeatAt": "2099-01-01T00:00:00.000Z",
            "expiresAt": "2099-01-01T00:30:00.000Z"}
    lp = os.path.join(cli_raw.store, "contexts", "lk", "lock.json")
    with open(lp, "w") as f:
        json.dump(lock, f)
    r = cli_raw.run("unlock", "lk")
    assert r.rc == EXIT_LOCKED and "h:1:u" in r.err, r.err
    assert os.path.exists(lp)
    r = cli_raw.json("status", "lk")
    assert r.json["lock"] == {"owner": "h:1:u", "runtimeId": "x", "expiresAt": "2099-01-01T00:30:00.000Z",
                              "expired": False} or (r.json["lock"]["owner"] == "h:1:u"
                                                    and r.json["lock"]["expired"] is False)
    cli_raw.ok("unlock", "lk", "--force")
    assert not os.path.exists(lp)


def test_commit_stages_its_bundle_in_the_store(cli_raw, tmp_path):
    """A commit writes its ciphertext bundle in <store>/.contextfs-staging
    (0700) so the store links it into place even when $TMPDIR is another
    filesystem (here a tmpfs); nothing stays there; dead runs of this host
    are swept, another host's staging directories are not touched."""
    import socket
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm tmpfs here")
    c = cli_raw
    c.json("init", "stg")
    src = str(tmp_path / "src")
    c.ok("export", "stg", src)
    write_file(src, "workspace/big.bin", os.urandom(3 << 20))
    staging = os.path.join(c.store, ".contextfs-staging")
    host = socket.gethostname().replace("/", "_").replace("-", "_")
    os.makedirs(staging, mode=0o700, exist_ok=True)
    dead = os.path.join(staging, "contextfs-stage-%s-999999-abcdef" % host)
    other = os.path.join(staging, "contextfs-stage-otherhost-999999-abcdef")
    for d in (dead, other):
        os.mkdir(d, 0o700)
        with open(os.path.join(d, "bundle.enc"), "wb") as f:
            f.write(b"x" * 1000)
    shm = "/dev/shm/cfs-test-%d" % os.getpid()
    os.mkdir(shm, 0o700)
    try:
        r = c.run("commit", "stg", "--from", src, "-m", "staged", env={"TMPDIR": shm})
        assert r.rc == 0, r.err
        assert os.listdir(shm) == []
    finally:
        os.rmdir(shm)
    assert stat.S_IMODE(os.stat(staging).st_mode) == 0o700
    assert sorted(os.listdir(staging)) == [os.path.basename(other)]
    files = refreader.read_tree_files(c.store, "stg", raw_key_hex=c.raw_key_hex)
    with open(os.path.join(src, "workspace/big.bin"), "rb") as f:
        assert files["workspace/big.bin"]["sha256"] == hashlib.sha256(f.read()).hexdigest()


def _committed(c, tmp_path, ctx, content):
    """A context ctx whose generation 2 holds workspace/a.txt = content;
    returns the exported directory it was committed from."""
    c.json("init", ctx)
    src = str(tmp_path / "src")
    c.ok("export", ctx, src)
    write_file(src, "workspace/a.txt", content)
    c.ok("commit", ctx, "--from", src, "-m", "1")
    return src


def _commit_cache(c):
    return os.path.join(c.env["HOME"], ".cache", "contextfs", "commits")


def test_commit_reuses_the_index_it_wrote(cli_raw, tmp_path):
    """A CLI commit leaves the index of the tree it wrote in a private
    cache (~/.cache/contextfs/commits, 0700/0600); the next commit whose
    current tree is still that object confirms the key on the object's
    first bytes and takes changedPaths from there instead of downloading
    the whole tree. A wrong key is still refused with nothing committed;
    a tree someone else committed since, or a damaged cache file, falls
    back to the full authenticated check with the same changedPaths.
    Entries unused for 30 days are removed."""
    c = cli_raw
    src = _committed(c, tmp_path, "ix", b"one\n")
    cache = _commit_cache(c)
    files = [f for f in os.listdir(cache) if f.endswith(".json")]
    assert len(files) == 1, files
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(cache, files[0])).st_mode) == 0o600
    timing = {"CONTEXTFS_TIMING": "1"}

    def commit(cli, msg, expect_cached):
        r = cli.json("commit", "ix", "--from", src, "-m", msg, env=timing)
        assert ("key check (cached index)" in r.err) == expect_cached, r.err
        assert bool(re.search(r"commit: key check [0-9]", r.err)) == (not expect_cached), r.err
        return [(p["path"], p["type"]) for p in r.json["changedPaths"]]

    write_file(src, "workspace/a.txt", b"two\n")
    write_file(src, "workspace/b.txt", b"new\n")
    assert commit(c, "2", True) == [("workspace/a.txt", "modified"), ("workspace/b.txt", "added")]
    gen = c.manifest("ix")["generation"]

    # a wrong key with a valid cache entry: refused, nothing written
    wrong = c.run("commit", "ix", "--from", src, "-m", "x", env={"CONTEXTSDK_KEY_HEX": "11" * 32})
    assert wrong.rc == 5, wrong.err
    assert "does not decrypt" in wrong.err and "nothing was committed" in wrong.err
    assert c.manifest("ix")["generation"] == gen

    # another machine (its own HOME, so its own cache) commits: ours is stale
    other_home = str(tmp_path / "other-home")
    os.makedirs(other_home)
    os.remove(os.path.join(src, "workspace/b.txt"))
    r = c.json("commit", "ix", "--from", src, "-m", "other", env={"HOME": other_home})
    assert [(p["path"], p["type"]) for p in r.json["changedPaths"]] == [("workspace/b.txt", "removed")]
    write_file(src, "workspace/c.txt", b"c\n")
    assert commit(c, "3", False) == [("workspace/c.txt", "added")]
    # ... and now current again
    write_file(src, "workspace/a.txt", b"three\n")
    assert commit(c, "4", True) == [("workspace/a.txt", "modified")]

    # a damaged cache file is ignored; entries unused for 30 days go
    with open(os.path.join(cache, files[0]), "wb") as f:
        f.write(b"{not json")
    old, young = (os.path.join(cache, ("%064x" % n) + ".json") for n in (1, 2))
    for p in (old, young):
        with open(p, "w") as f:
            f.write("{}")
    os.utime(old, (time.time() - 31 * 86400,) * 2)
    os.utime(young, (time.time() - 29 * 86400,) * 2)
    os.remove(os.path.join(src, "workspace/c.txt"))
    assert commit(c, "5", False) == [("workspace/c.txt", "removed")]
    assert sorted(f for f in os.listdir(cache) if f.endswith(".json")) == \
        sorted([files[0], os.path.basename(young)])
    tree = refreader.read_tree_files(c.store, "ix", raw_key_hex=c.raw_key_hex)
    assert tree["workspace/a.txt"]["sha256"] == hashlib.sha256(b"three\n").hexdigest()
    assert "workspace/c.txt" not in tree and "workspace/b.txt" not in tree


def test_commit_stat_cache(cli_raw, tmp_path):
    """A commit --from DIR reads only the files whose device, inode, size,
    mtime or ctime changed since the last commit from this machine (a stat
    cache beside the cached index, 0600); a file rewritten with the same
    size and its old mtime is still read (its ctime moved), files changed
    within 2 s before a commit are read again by the next one, and every
    hash in the index is the file's real sha256. A damaged cache costs only
    re-reading."""
    c = cli_raw
    timing = {"CONTEXTFS_TIMING": "1"}
    c.json("init", "sc")
    src = str(tmp_path / "src")
    c.ok("export", "sc", src)
    for i in range(20):
        write_file(src, "workspace/f%02d.txt" % i, ("file %02d\n" % i).encode())
    write_file(src, "workspace/big.bin", os.urandom(300_000))
    time.sleep(2.2)  # older than the cache's 2 s slack

    def commit(msg):
        r = c.json("commit", "sc", "--from", src, "-m", msg, env=timing)
        m = re.search(r"stat cache: (\d+) kept their hash, (\d+) read", r.err)
        assert m, r.err
        return int(m.group(1)), int(m.group(2)), [(p["path"], p["type"]) for p in r.json["changedPaths"]]

    def index_is_true():
        tree = refreader.read_tree_files(c.store, "sc", raw_key_hex=c.raw_key_hex)
        for rel, e in tree.items():
            if rel.startswith("workspace/"):
                assert e["sha256"] == sha256_file(os.path.join(src, rel)), rel

    kept, read, _ = commit("1")
    assert kept == 0 and read >= 21, (kept, read)
    cache = _commit_cache(c)
    stat_files = [f for f in os.listdir(cache) if f.endswith(".stat")]
    assert len(stat_files) == 1, os.listdir(cache)
    assert stat.S_IMODE(os.stat(os.path.join(cache, stat_files[0])).st_mode) == 0o600

    # nothing changed: nothing read
    kept, read, changed = commit("2")
    assert (read, changed) == (0, []) and kept >= 21, (kept, read, changed)

    # same size, old mtime put back: the ctime still gives it away
    p = os.path.join(src, "workspace/f03.txt")
    st0 = os.stat(p)
    with open(p, "r+b") as f:
        f.write(b"FILE")
    os.utime(p, ns=(st0.st_atime_ns, st0.st_mtime_ns))
    assert os.stat(p).st_size == st0.st_size and os.stat(p).st_mtime_ns == st0.st_mtime_ns
    kept, read, changed = commit("3")
    assert changed == [("workspace/f03.txt", "modified")], changed
    assert read == 1, (kept, read)
    index_is_true()
    # f03 changed within 2 s of commit 3: read again by the next commit
    kept, read, changed = commit("4")
    assert read == 1 and changed == [], (kept, read, changed)

    # a damaged cache: everything read, same result
    with open(os.path.join(cache, stat_files[0]), "wb") as f:
        f.write(b"CFSSTAT1garbage")
    write_file(src, "workspace/f05.txt", b"changed\n")
    kept, read, changed = commit("5")
    assert kept == 0 and read >= 21 and changed == [("workspace/f05.txt", "modified")], (kept, read, changed)
    index_is_true()


def test_export_seeds_the_commit_cache(cli_raw, tmp_path):
    """Exporting the current tree leaves its authenticated index in the
    commit cache, so the commit that follows an export only confirms the
    key; exporting an older generation does not (its index is not the
    current one's), and changedPaths are right either way."""
    c = cli_raw
    src = _committed(c, tmp_path, "ex", b"1\n")
    write_file(src, "workspace/b.txt", b"2\n")
    c.ok("commit", "ex", "--from", src, "-m", "2")
    cache = _commit_cache(c)
    timing = {"CONTEXTFS_TIMING": "1"}

    def fresh_commit(ref, change, expect_cached):
        shutil.rmtree(cache)
        out = str(tmp_path / ("out-" + ref.replace("@", "-")))
        c.ok("export", ref, out)
        assert os.path.isdir(cache) == expect_cached
        write_file(out, change, b"changed\n")
        r = c.json("commit", "ex", "--from", out, "-m", "after " + ref, env=timing)
        assert ("key check (cached index)" in r.err) == expect_cached, r.err
        return [(p["path"], p["type"]) for p in r.json["changedPaths"]]

    assert fresh_commit("ex", "workspace/a.txt", True) == [("workspace/a.txt", "modified")]
    # generation 2 holds the first a.txt and no b.txt; the base of the
    # diff is still the current tree (a.txt "changed", b.txt)
    assert fresh_commit("ex@2", "workspace/c.txt", False) == [
        ("workspace/a.txt", "modified"), ("workspace/c.txt", "added"), ("workspace/b.txt", "removed")]


def test_commit_cache_and_a_damaged_current_tree(cli_raw, tmp_path):
    """The tail of the current bundle modified: without a cache entry the
    commit downloads it, GCM fails, and it refuses (wrong key and damage
    look alike there); with one, the key is confirmed on the bundle's
    beginning (a zstd frame holding a tar header), so the commit lands
    over the damaged generation, as it already did over an authentic
    bundle that does not unpack."""
    c = cli_raw
    src = _committed(c, tmp_path, "dm", b"x" * 200000)
    key = c.manifest("dm")["treeKey"]
    path = os.path.join(c.store, key)
    with open(path, "r+b") as f:
        f.seek(-100, os.SEEK_END)
        b = f.read(1)
        f.seek(-100, os.SEEK_END)
        f.write(bytes([b[0] ^ 1]))
    write_file(src, "workspace/b.txt", b"b\n")
    other_home = str(tmp_path / "no-cache-home")
    os.makedirs(other_home)
    r = c.run("commit", "dm", "--from", src, "-m", "x", env={"HOME": other_home})
    assert r.rc == 5 and "nothing was committed" in r.err, r.err
    assert c.manifest("dm")["treeKey"] == key
    r = c.json("commit", "dm", "--from", src, "-m", "over", env={"CONTEXTFS_TIMING": "1"})
    assert "key check (cached index)" in r.err, r.err
    assert [(p["path"], p["type"]) for p in r.json["changedPaths"]] == [("workspace/b.txt", "added")]
    tree = refreader.read_tree_files(c.store, "dm", raw_key_hex=c.raw_key_hex)
    assert tree["workspace/b.txt"]["sha256"] == hashlib.sha256(b"b\n").hexdigest()
    assert tree["workspace/a.txt"]["sha256"] == hashlib.sha256(b"x" * 200000).hexdigest()


def _bundle_member(c, ctx, path):
    """The bytes of one member of ctx's current bundle, read with the
    independent reader and the zstd CLI."""
    import io
    import tarfile
    zst, _, _ = refreader.decrypt_tree(c.store, ctx, passphrase=c.passphrase, raw_key_hex=c.raw_key_hex)
    tar = subprocess.run(["zstd", "-dc"], input=zst, stdout=subprocess.PIPE, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        return tf.extractfile(path).read()


def test_commit_of_many_changes(cli_raw, tmp_path):
    """A commit changing more paths than a manifest summary keeps (1,000):
    the bundle's version record lists every change, in the reference's
    diff order; the manifest's summary, `commit --json` and the text output
    agree on the first 1,000 and the real count (changedPathsTotal). The
    record is streamed, not built in memory, whatever the count."""
    c = cli_raw
    c.json("init", "many")
    src = str(tmp_path / "src")
    c.ok("export", "many", src)
    n = 2500
    os.makedirs(os.path.join(src, "workspace", "m"))
    for i in range(n):
        name = "f%04d.txt" % i if i % 5 else 'q"%04d\\\x01\u00e9.txt' % i
        with open(os.path.join(src, "workspace", "m", name), "w") as f:
            f.write("x%d\n" % i)
    os.unlink(os.path.join(src, "memory", "session.md"))
    r = c.json("commit", "many", "--from", src)
    gen = r.json["generation"]
    record = json.loads(_bundle_member(c, "many", ".contextsdk/versions/%d.json" % gen))
    index = json.loads(_bundle_member(c, "many", ".contextsdk/index.json"))
    assert record == index
    changed = record["changedPaths"]
    added = sorted(p for p in (e["path"] for e in record["files"]) if p.startswith("workspace/m/"))
    assert len(added) == n
    assert changed == [{"path": p, "type": "added"} for p in added] + \
        [{"path": "memory/session.md", "type": "removed"}]
    assert "changedPathsTotal" not in record
    summary = c.manifest("many")["versions"][-1]
    assert summary["generation"] == gen and summary["files"] == []
    assert summary["changedPaths"] == changed[:1000]
    assert summary["changedPathsTotal"] == n + 1
    assert r.json["changedPaths"] == changed[:1000]
    assert r.json["changedPathsTotal"] == n + 1
    log = c.json("log", "many").json["versions"][-1]
    assert log["changedPaths"] == changed[:1000] and log["changedPathsTotal"] == n + 1
    out = c.ok("log", "many").out
    assert "... and %d more (the generation's .contextsdk/versions/%d.json lists them all)" % (
        n + 1 - 1000, gen) in out, out
    r = c.ok("commit", "many", "--from", src)
    assert ", 0 changed paths)" in r.out
    for i in [i for i in range(n) if i % 5][:1500]:
        with open(os.path.join(src, "workspace", "m", "f%04d.txt" % i), "a") as f:
            f.write("more\n")
    r = c.ok("commit", "many", "--from", src)
    assert ", 1500 changed paths)" in r.out, r.out
    with open(os.path.join(src, "workspace", "m", "f0001.txt"), "a") as f:
        f.write("again\n")
    r = c.json("commit", "many", "--from", src)
    assert r.json["changedPaths"] == [{"path": "workspace/m/f0001.txt", "type": "modified"}]
    assert "changedPathsTotal" not in r.json
