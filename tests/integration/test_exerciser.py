"""The random exerciser (exerciser.py) on real mounts: at least 100,000
operations in all, each compared with a native model directory, commits at
random points overlapping the operations, then unmount, a fresh mount and
the tree's sha256 against the model.

A 1M-operation soak by hand:
    CONTEXTFS_BIN=... /usr/bin/python3 tests/integration/exerciser.py --ops 1000000 --seed 7
"""
import os
import shutil
import tempfile

import pytest

import exerciser
from test_mount import env  # noqa: F401 (the mount harness fixture)

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
    reason="needs /dev/fuse and fusermount3",
)

OPS_PER_SEED = int(os.environ.get("CONTEXTFS_EXERCISER_OPS", "50000"))


@pytest.mark.parametrize("seed", [11, 12])
def test_random_operations_match_model(env, seed):  # noqa: F811
    summary = exerciser.run_on_mount(env, OPS_PER_SEED, seed, batch=500, sync_prob=0.0005,
                                     model_dir=exerciser.default_model_dir())
    print("\nexerciser seed %d: %d ops in %.1fs (%d ops/s), %d entries, %d background syncs, "
          "%s commits, %s copy-on-writes, errnos %s" % (
              seed, summary["ops"], summary["ops_seconds"], summary["ops_per_s"],
              summary["final_entries"], summary["syncs"], summary["commits"],
              summary["cow_copies"], summary["errnos"]))
    assert summary["ops"] >= OPS_PER_SEED
    # the run really did something: a tree, failures of every common kind,
    # and commits that overlapped the operations
    assert summary["final_entries"] > 20
    for e in ("ENOENT", "EEXIST", "ENOTDIR", "EISDIR", "ENOTEMPTY"):
        assert summary["errnos"].get(e, 0) > 0, (e, summary["errnos"])
    assert summary["commits"] >= 2


def test_checker_detects_a_difference():
    """The comparison can fail: a model and a 'mount' that differ by one
    byte, or by a link count, are reported."""
    base = tempfile.mkdtemp(prefix="cfs-exerciser-self-")
    try:
        a, b = os.path.join(base, "a"), os.path.join(base, "b")
        os.mkdir(a)
        os.mkdir(b)
        ex = exerciser.Exerciser(a, b, seed=3)
        ex.run(300, batch=100)
        with open(os.path.join(b, "sabotage"), "wb") as f:
            f.write(b"x")
        with pytest.raises(exerciser.Mismatch, match="sabotage"):
            ex.check_trees()
        os.unlink(os.path.join(b, "sabotage"))
        ex.check_trees()
        with open(os.path.join(a, "f0"), "wb") as f:
            f.write(b"model")
        with open(os.path.join(b, "f0"), "wb") as f:
            f.write(b"mount")
        with pytest.raises(exerciser.Mismatch):
            ex.apply("read f0", lambda root: open(os.path.join(root, "f0"), "rb").read())
    finally:
        shutil.rmtree(base)
