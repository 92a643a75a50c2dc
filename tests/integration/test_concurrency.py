"""8 writers race on one context, round after round.

Each round all 8 processes are released together (a barrier) and commit with
`--expect-generation G`: exactly one may win, the 7 others must exit 4 (lock
held, lost compare-and-swap or generation mismatch), and the context must stay
readable after every round. CONTEXTFS_RACE_ROUNDS overrides the round count
(default 200, the acceptance number)."""

import hashlib
import os
import re
import subprocess
import threading
import time

import refreader
from conftest import EXIT_LOCKED, entries_by_path, write_file

WRITERS = 8
ROUNDS = int(os.environ.get("CONTEXTFS_RACE_ROUNDS", "200"))
VERIFY_EVERY = 25
CTX = "race"


def _launch_round(cli, dirs, gen, rnd):
    barrier = threading.Barrier(WRITERS)
    results = [None] * WRITERS

    def worker(i):
        argv = [cli.binary, "commit", CTX, "--from", dirs[i], "--expect-generation", str(gen),
                "-m", "round %d writer %d" % (rnd, i), "--author", "writer-%d" % i]
        barrier.wait()
        p = subprocess.run(argv, env=cli.env, cwd=cli.workdir, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=120)
        results[i] = (p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_racing_writers(cli_raw, tmp_path):
    c = cli_raw
    c.json("init", CTX)
    dirs = []
    for i in range(WRITERS):
        d = str(tmp_path / ("w%d" % i))
        c.ok("export", CTX, d)
        write_file(d, "workspace/shared.bin", os.urandom(64 * 1024))  # some bulk per commit
        dirs.append(d)

    gen = 1
    winners = []
    t_start = time.monotonic()
    loser_msgs = set()
    for rnd in range(ROUNDS):
        for i, d in enumerate(dirs):
            write_file(d, "workspace/writer.txt", "round %d writer %d\n" % (rnd, i))
        results = _launch_round(c, dirs, gen, rnd)
        ok = [i for i, r in enumerate(results) if r[0] == 0]
        bad = [(i, r) for i, r in enumerate(results) if r[0] not in (0, EXIT_LOCKED)]
        assert not bad, "round %d: unexpected exit codes: %s" % (rnd, [(i, r[0], r[2].strip()) for i, r in bad])
        assert len(ok) == 1, "round %d: %d winners (%s); stderr: %s" % (
            rnd, len(ok), ok, [r[2].strip() for r in results])
        for i, r in enumerate(results):
            if i in ok:
                continue
            lines = [ln for ln in r[2].splitlines() if ln.strip()]
            assert len(lines) == 1, "round %d writer %d: %r" % (rnd, i, r[2])
            loser_msgs.add(" ".join(re.sub(r"[0-9]+", "N", lines[0]).split()[:6]))
        w = ok[0]
        winners.append(w)
        gen += 1
        m = refreader.load_manifest(c.store, CTX)
        assert m["generation"] == gen, (rnd, m["generation"], gen)
        assert m["versions"][-1]["message"] == "round %d writer %d" % (rnd, w)
        assert not os.path.exists(os.path.join(c.store, "contexts", CTX, "lock.json")), \
            "round %d: lock left behind" % rnd
        # the context exports after every round, with the winner's content
        out = str(tmp_path / "out")
        r = c.run("export", CTX, out)
        assert r.rc == 0, "round %d: export failed: %s" % (rnd, r.err)
        with open(os.path.join(out, "workspace", "writer.txt")) as f:
            assert f.read() == "round %d writer %d\n" % (rnd, w)
        subprocess.run(["rm", "-rf", "--", out], check=True)
        if (rnd + 1) % VERIFY_EVERY == 0:
            r = c.run("verify", CTX)
            assert r.rc == 0, "round %d: verify failed: %s" % (rnd, r.err)

    elapsed = time.monotonic() - t_start
    print("\n%d rounds x %d writers in %.1fs (%.0f ms/round); winners per writer: %s; loser messages: %s" % (
        ROUNDS, WRITERS, elapsed, 1000 * elapsed / ROUNDS,
        [winners.count(i) for i in range(WRITERS)], sorted(loser_msgs)))
    # the independent reader agrees with the last winner
    files = entries_by_path(refreader.read_tree(c.store, CTX, raw_key_hex=c.raw_key_hex))
    last = winners[-1]
    want = hashlib.sha256(("round %d writer %d\n" % (ROUNDS - 1, last)).encode()).hexdigest()
    assert files["workspace/writer.txt"]["sha256"] == want
    m = refreader.load_manifest(c.store, CTX)
    assert m["generation"] == ROUNDS + 1
    # the last 50 summaries (contextfs may also have recorded generation 1)
    assert [v["generation"] for v in m["versions"]][-min(50, ROUNDS):] == list(
        range(ROUNDS + 2 - min(50, ROUNDS), ROUNDS + 2))
    assert len(m["versions"]) <= 50
    # losers left nothing behind: only retained generations' objects remain
    tree = os.path.join(c.store, "contexts", CTX, "tree")
    objs = [f for f in os.listdir(tree) if f.endswith(".enc")]
    assert len(objs) <= 5, sorted(objs)
    leftovers = [f for f in os.listdir(tree) if ".tmp-" in f or f.endswith(".lock")]
    assert not leftovers, leftovers
    assert c.run("verify", CTX).rc == 0
