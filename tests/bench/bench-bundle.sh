#!/usr/bin/env bash
# bench-bundle.sh: contextfs commit/export against plain `tar | zstd` on the same
# tree, in the same run. Run by hand (not part of any suite); see README.md.
#
#   tests/bench/bench-bundle.sh [--bin PATH] [--dir WORKDIR] [--mib N] [--files N] [--keep]
#
# Generates a tree of N files (default 20,000) totalling --mib MiB (default
# 1024) under WORKDIR/src/workspace: mostly small files, some medium and a few
# large ones, about half of the bytes compressible text and half random. Then,
# with a warm page cache for both sides:
#   commit   contextfs commit bench --from src      vs  tar -c | zstd -T0 -3 > f
#            and again with one file changed (the second generation);
#            and once into a store on /dev/shm when it has room (the
#            commit without the durable write of its bundle to disk)
#   export   contextfs export bench out             vs  zstd -d < f | tar -x
# and prints seconds, MB/s (of tree bytes), the contextfs/baseline throughput
# ratio (target >= 0.8; commit also against the baseline plus an fsync of its
# output, since contextfs fsyncs its bundle) and peak RSS
# (/usr/bin/time -v). contextfs also encrypts (AES-256-GCM, raw key here, so no
# scrypt in the timing) and records version metadata; the baseline does neither.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BIN=${CONTEXTFS_BIN:-$REPO/build/tools/contextfs}
WORK=
MIB=1024
FILES=20000
KEEP=0

while [ $# -gt 0 ]; do
	case "$1" in
	--bin) BIN=$2; shift 2 ;;
	--dir) WORK=$2; shift 2 ;;
	--mib) MIB=$2; shift 2 ;;
	--files) FILES=$2; shift 2 ;;
	--keep) KEEP=1; shift ;;
	-h | --help) sed -n '2,18p' "$0"; exit 0 ;;
	*) echo "bench-bundle: unknown argument: $1" >&2; exit 2 ;;
	esac
done

die() { echo "bench-bundle: $*" >&2; exit 1; }
[ -x "$BIN" ] || die "contextfs binary not found at $BIN (build it or pass --bin / CONTEXTFS_BIN)"
[ -x /usr/bin/time ] || die "/usr/bin/time is required (apt-get install -y time)"
for t in tar zstd python3; do command -v "$t" >/dev/null || die "$t is required"; done

if [ -z "$WORK" ]; then
	WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/cfs-bench.XXXXXX")
else
	mkdir -p "$WORK"
	[ -z "$(ls -A "$WORK")" ] || die "$WORK is not empty"
fi
EXP=$WORK
. "$HERE/freshfs.sh"
SHM_STORE=
cleanup() {
	fresh_fs_down "$WORK/export.img" "$WORK/exp"
	[ -z "$SHM_STORE" ] || rm -rf -- "$SHM_STORE"
	if [ "$KEEP" = 0 ]; then rm -rf -- "$WORK"; else echo "kept $WORK"; fi
}
trap cleanup EXIT

SRC=$WORK/src
STORE=$WORK/store
export CONTEXTSDK_STORAGE_DIR=$STORE
CONTEXTSDK_KEY_HEX=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export CONTEXTSDK_KEY_HEX
unset CONTEXTSDK_PASSPHRASE CONTEXTSDK_CONFIG
# commit caches (~/.cache/contextfs/commits) stay in the work directory
export XDG_CACHE_HOME=$WORK/xdg-cache

echo "== generating $FILES files, $MIB MiB in $SRC"
"$BIN" init bench -q >/dev/null
"$BIN" export bench "$SRC" -q >/dev/null
python3 "$HERE/gentree.py" "$SRC/workspace/bench" "$MIB" "$FILES"
TREE_BYTES=$(find "$SRC/workspace/bench" -type f -printf '%s\n' | awk '{s += $1} END {print s}')
echo "   tree: $(find "$SRC/workspace/bench" -type f | wc -l) files, $TREE_BYTES bytes of file data"
sync
# warm the page cache for both sides
# (through a pipe: GNU tar writing to /dev/null itself skips reading the data)
tar -C "$SRC" -cf - workspace | cat >/dev/null

# run LABEL CMD... : wall seconds and peak RSS (KiB) into $LAST_SEC / $LAST_RSS
run() {
	local label=$1 log=$WORK/time-$1.log
	shift
	/usr/bin/time -v -o "$log" "$@" >/dev/null
	LAST_SEC=$(awk -F': ' '/Elapsed \(wall clock\)/ {
		n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$log")
	LAST_RSS=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
	eval "SEC_$label=$LAST_SEC; RSS_$label=$LAST_RSS"
}

echo "== commit"
run cfs_commit "$BIN" commit bench --from "$SRC" -m bench -q
run tar_commit bash -c 'tar -C "$1" -cf - workspace | zstd -T0 -3 -q -o "$2"' _ "$SRC" "$WORK/baseline.tar.zst"
# contextfs fsyncs its bundle before the manifest names it; the same
# durability for the baseline (coreutils sync FILE = fsync)
rm -f "$WORK/baseline.tar.zst"
run tar_commit_sync bash -c 'tar -C "$1" -cf - workspace | zstd -T0 -3 -q -o "$2" && sync "$2"' _ "$SRC" "$WORK/baseline.tar.zst"
# the same commit into a store in memory (tmpfs, when it has room): what
# the commit costs without the durable write of its bundle to this disk
SEC_cfs_commit_shm=0 RSS_cfs_commit_shm=0
SHM_FREE=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 {print $4}')
if [ -z "$SHM_FREE" ] || [ "$SHM_FREE" -le $((MIB * 1024 * 3 / 2)) ]; then
	echo "   (no room for the store in /dev/shm: no tmpfs row)"
elif ! SHM_STORE=$(mktemp -d /dev/shm/cfs-bench-store.XXXXXX); then
	SHM_STORE=
	echo "   (cannot create a store in /dev/shm: no tmpfs row)"
else
	CONTEXTSDK_STORAGE_DIR=$SHM_STORE "$BIN" init bench -q >/dev/null
	run cfs_commit_shm env CONTEXTSDK_STORAGE_DIR="$SHM_STORE" \
		XDG_CACHE_HOME="$WORK/xdg-cache-shm" \
		"$BIN" commit bench --from "$SRC" -m bench -q
	rm -rf -- "$SHM_STORE"
	SHM_STORE=
fi
# the usual next step: one file changed, committed again (the commit cache
# spares it the download and authentication of the first generation)
echo "again" >>"$SRC/workspace/again.txt" # outside bench/: the exports are diffed there
run cfs_commit2 "$BIN" commit bench --from "$SRC" -m again -q
echo "== export"
# Both sides extract into a freshly made ext4 (freshfs.sh): on the
# journal-less root ext4 a 1 GiB export took 3.5 s or 7.5 s depending on
# what had been deleted just before.
if fresh_fs_up "$WORK/export.img" "$WORK/exp" $((MIB * 4 + 1024)); then
	EXP=$WORK/exp
else
	echo "   (exporting into $WORK; recent deletions there can slow both sides)"
fi
run cfs_export "$BIN" export bench "$EXP/out-cfs" -q
mkdir "$EXP/out-tar"
run tar_export bash -c 'zstd -dc -q "$1" | tar -C "$2" -xf -' _ "$WORK/baseline.tar.zst" "$EXP/out-tar"

# sanity: both exports hold the same bytes
diff -r "$EXP/out-tar/workspace/bench" "$EXP/out-cfs/workspace/bench" >/dev/null ||
	die "contextfs export differs from the source tree"

CFS_OBJ=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(m["sizeBytes"])' \
	"$STORE/contexts/bench/manifest.json")
BASE_OBJ=$(stat -c %s "$WORK/baseline.tar.zst")

echo
echo "tree: $TREE_BYTES bytes in $FILES files; bundle: contextfs $CFS_OBJ bytes, tar|zstd $BASE_OBJ bytes"
python3 - "$TREE_BYTES" "$SEC_cfs_commit" "$SEC_tar_commit" "$SEC_cfs_export" "$SEC_tar_export" \
	"$RSS_cfs_commit" "$RSS_tar_commit" "$RSS_cfs_export" "$RSS_tar_export" \
	"$SEC_tar_commit_sync" "$RSS_tar_commit_sync" "$SEC_cfs_commit2" "$RSS_cfs_commit2" \
	"$SEC_cfs_commit_shm" "$RSS_cfs_commit_shm" <<'PY'
import sys
b = int(sys.argv[1])
cc, tc, ce, te = map(float, sys.argv[2:6])
rcc, rtc, rce, rte = map(int, sys.argv[6:10])
tcs, rtcs = float(sys.argv[10]), int(sys.argv[11])
cc2, rcc2 = float(sys.argv[12]), int(sys.argv[13])
ccm, rccm = float(sys.argv[14]), int(sys.argv[15])
mbs = lambda s: b / 1e6 / s if s > 0 else float("inf")
# ratio = contextfs throughput / baseline throughput (target >= 0.8)
print("%-8s %-22s %8s %9s %12s %8s" % ("op", "tool", "seconds", "MB/s", "peak RSS MiB", "cfs/x"))
rows = (("commit", cc, rcc, (("tar+zstd -T0 -3", tc, rtc), ("tar+zstd -T0 -3 +fsync", tcs, rtcs))),
        ("export", ce, rce, (("zstd -d | tar -x", te, rte),)))
for op, c, rc, bases in rows:
    print("%-8s %-22s %8.2f %9.1f %12.1f %8s" % (op, "contextfs", c, mbs(c), rc / 1024, ""))
    for name, t, rt in bases:
        print("%-8s %-22s %8.2f %9.1f %12.1f %8.2f" % (op, name, t, mbs(t), rt / 1024, t / c if c else 0))
    if op == "commit":
        print("%-8s %-22s %8.2f %9.1f %12.1f %8.2f" % (op, "contextfs, 1 changed", cc2, mbs(cc2),
                                                      rcc2 / 1024, tc / cc2 if cc2 else 0))
        if ccm > 0:
            print("%-8s %-22s %8.2f %9.1f %12.1f %8.2f" % (op, "contextfs, store tmpfs", ccm,
                                                          mbs(ccm), rccm / 1024, tc / ccm))
PY
