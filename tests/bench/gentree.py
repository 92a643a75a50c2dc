#!/usr/bin/python3
"""gentree.py ROOT MIB FILES [--profile bundle|small] [--dirs N]

The benchmarks' generated tree (bench-bundle.sh, bench-s3.sh,
bench-run-ssh.sh), seeded so every run gets the same file sizes:
  bundle (default): 95% small files (512 B - 16 KiB), 4.5% medium
    (64 KiB - 1 MiB), a few large ones sharing the rest;
  small: for trees with few bytes per file (100 MB / 5,000 files): one file
    in 500 large, medium ones up to 4.5% of the files and about 40% of what
    the small ones leave, the rest small.
Every other file is compressible text, the others random bytes, spread over
N directories (default 400) of 7 subdirectories each."""
import argparse
import os
import random
import sys


def sizes_for(rng, total, nfiles, profile):
    if profile == "bundle":
        n_small = int(nfiles * 0.95)
        n_med = int(nfiles * 0.045)
        n_large = max(1, nfiles - n_small - n_med)
    else:
        n_large = max(1, nfiles // 500)
        n_med = min(int(nfiles * 0.045), int((total - nfiles * 8448) * 0.4 / (556 << 10)))
        n_med = max(0, n_med)
        n_small = nfiles - n_large - n_med
    sizes = [rng.randint(512, 16384) for _ in range(n_small)] + \
            [rng.randint(64 << 10, 1 << 20) for _ in range(n_med)]
    left = total - sum(sizes)
    if left < n_large:
        sys.exit("gentree: tree too small for the file count")
    sizes += [left // n_large] * n_large
    sizes[-1] += left - (left // n_large) * n_large
    return sizes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("mib", type=int)
    ap.add_argument("files", type=int)
    ap.add_argument("--profile", choices=("bundle", "small"), default="bundle")
    ap.add_argument("--dirs", type=int, default=400)
    a = ap.parse_args()
    rng = random.Random(20260101)
    sizes = sizes_for(rng, a.mib * 1024 * 1024, a.files, a.profile)
    words = b"the quick brown fox jumps over a lazy dog context agent memory workspace \n".split(b" ")
    text = b" ".join(rng.choice(words) for _ in range(1 << 18))  # ~1.3 MB to slice from
    for i, size in enumerate(sizes):
        d = os.path.join(a.root, "d%03d" % (i % a.dirs), "e%02d" % (i % 7))
        os.makedirs(d, exist_ok=True)
        if i % 2 == 0:  # compressible
            off = rng.randrange(0, len(text) - 1)
            data = ((text[off:] + text) * (size // len(text) + 1))[:size]
        else:
            data = os.urandom(size)
        with open(os.path.join(d, "f%05d.%s" % (i, "txt" if i % 2 == 0 else "bin")), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
