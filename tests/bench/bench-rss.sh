#!/usr/bin/env bash
# bench-rss.sh: peak RSS of contextfs commit and export by number of files.
# Run by hand (not part of any suite); see README.md.
#
#   tests/bench/bench-rss.sh [--bin PATH] [--dir WORKDIR] [--files "N ..."]
#                            [--store URL] [--keep]
#
# For each file count N (default "20000 200000 500000"): a tree of N small
# files (32-288 bytes, 250 per directory) in a fresh store, then
#   first     contextfs commit (every file added)
#   one       one file changed, committed again (commit cache: the previous
#             index comes from the cache, hashes from the stat cache)
#   churn     1% of the files removed and 1% added, committed without the
#             commit cache (the previous index is copied out of the current
#             bundle while its key is checked)
#   export    contextfs export of the last generation
# and prints seconds, peak RSS (/usr/bin/time -v) and the number of
# changedPaths each commit reported (checked against what was changed).
# The tree lives on a freshly made ext4 when run as root (freshfs.sh).
# --store URL (e.g. s3://bucket/prefix, with CONTEXTSDK_S3_ENDPOINT,
# AWS_ACCESS_KEY_ID & co. set, as tests/s3/rgw start prints them) puts the
# contexts there (named rss-N) instead of a local store per count.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BIN=${CONTEXTFS_BIN:-$REPO/build/tools/contextfs}
WORK=
COUNTS="20000 200000 500000"
KEEP=0
STORE_URL=

while [ $# -gt 0 ]; do
	case "$1" in
	--bin) BIN=$2; shift 2 ;;
	--dir) WORK=$2; shift 2 ;;
	--files) COUNTS=$2; shift 2 ;;
	--store) STORE_URL=$2; shift 2 ;;
	--keep) KEEP=1; shift ;;
	-h | --help) sed -n '2,23p' "$0"; exit 0 ;;
	*) echo "bench-rss: unknown argument: $1" >&2; exit 2 ;;
	esac
done

die() { echo "bench-rss: $*" >&2; exit 1; }
[ -x "$BIN" ] || die "contextfs binary not found at $BIN (build it or pass --bin / CONTEXTFS_BIN)"
[ -x /usr/bin/time ] || die "/usr/bin/time is required (apt-get install -y time)"
command -v python3 >/dev/null || die "python3 is required"

if [ -z "$WORK" ]; then
	WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/cfs-bench-rss.XXXXXX")
else
	mkdir -p "$WORK"
	[ -z "$(ls -A "$WORK")" ] || die "$WORK is not empty"
fi
. "$HERE/freshfs.sh"
cleanup() {
	fresh_fs_down "$WORK/fs.img" "$WORK/fs"
	if [ "$KEEP" = 0 ]; then rm -rf -- "$WORK"; else echo "kept $WORK"; fi
}
trap cleanup EXIT

MAX=0
for n in $COUNTS; do [ "$n" -gt "$MAX" ] && MAX=$n; done
# ~4 KiB per file and its share of directories, twice (tree and export),
# plus the stores; sparse, and sized for mkfs's one inode per 16 KiB
if fresh_fs_up "$WORK/fs.img" "$WORK/fs" $((MAX * 40 / 1024 + 2048)); then
	FS=$WORK/fs
else
	echo "   (trees in $WORK: recent deletions there can slow file creation)"
	FS=$WORK
fi

CONTEXTSDK_KEY_HEX=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export CONTEXTSDK_KEY_HEX
unset CONTEXTSDK_PASSPHRASE CONTEXTSDK_CONFIG

# run LABEL CMD...: wall seconds and peak RSS (KiB) into $LAST_SEC / $LAST_RSS;
# stdout kept in $WORK/out-LABEL
run() {
	local label=$1 log=$WORK/time-$1.log
	shift
	/usr/bin/time -v -o "$log" "$@" >"$WORK/out-$label"
	LAST_SEC=$(awk -F': ' '/Elapsed \(wall clock\)/ {
		n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$log")
	LAST_RSS=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
}

# changed LABEL: the number of changedPaths the commit's --json reported
changed() {
	python3 -c 'import json,sys
r = json.load(open(sys.argv[1]))
print(r.get("changedPathsTotal", len(r["changedPaths"])))' "$WORK/out-$1"
}

ROWS=$WORK/rows.tsv
: >"$ROWS"
for N in $COUNTS; do
	SRC=$FS/src-$N
	export XDG_CACHE_HOME=$WORK/xdg-$N
	if [ -n "$STORE_URL" ]; then
		CTX=rss-$N-$$ # contexts stay in that store: contextfs deletes none
		CFS=("$BIN" --store "$STORE_URL")
	else
		CTX=rss
		export CONTEXTSDK_STORAGE_DIR=$FS/store-$N
		CFS=("$BIN")
	fi
	echo "== $N files"
	"${CFS[@]}" init "$CTX" -q >/dev/null
	"${CFS[@]}" export "$CTX" "$SRC" -q >/dev/null
	python3 - "$SRC/workspace/t" "$N" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(n)
for i in range(n):
    d = os.path.join(root, "d%05d" % (i // 250))
    if i % 250 == 0:
        os.makedirs(d)
    with open(os.path.join(d, "f%07d.txt" % i), "w") as f:
        f.write("file %d %s\n" % (i, "x" * rng.randint(24, 280)))
PY
	sync
	run first "${CFS[@]}" --json commit "$CTX" --from "$SRC" -m first
	printf '%s\tfirst\t%s\t%s\t%s\t%s\n' "$N" "$LAST_SEC" "$LAST_RSS" "$(changed first)" "$N" >>"$ROWS"
	echo "one more line" >>"$SRC/workspace/t/d00000/f0000000.txt"
	run one "${CFS[@]}" --json commit "$CTX" --from "$SRC" -m one
	printf '%s\tone\t%s\t%s\t%s\t%s\n' "$N" "$LAST_SEC" "$LAST_RSS" "$(changed one)" 1 >>"$ROWS"
	# 1% removed (every 100th file), 1% added
	python3 - "$SRC/workspace/t" "$N" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(1, n, 100):
    os.unlink(os.path.join(root, "d%05d" % (i // 250), "f%07d.txt" % i))
os.makedirs(os.path.join(root, "new"))
for i in range(len(range(1, n, 100))):
    with open(os.path.join(root, "new", "n%07d.txt" % i), "w") as f:
        f.write("new %d\n" % i)
PY
	CHURN=$(( 2 * $(python3 -c 'import sys; print(len(range(1, int(sys.argv[1]), 100)))' "$N") ))
	rm -rf -- "$XDG_CACHE_HOME"
	run churn "${CFS[@]}" --json commit "$CTX" --from "$SRC" -m churn
	printf '%s\tchurn\t%s\t%s\t%s\t%s\n' "$N" "$LAST_SEC" "$LAST_RSS" "$(changed churn)" "$CHURN" >>"$ROWS"
	run export "${CFS[@]}" export "$CTX" "$FS/out-$N" -q
	printf '%s\texport\t%s\t%s\t-\t-\n' "$N" "$LAST_SEC" "$LAST_RSS" >>"$ROWS"
	cmp -s "$SRC/workspace/t/d00000/f0000000.txt" "$FS/out-$N/workspace/t/d00000/f0000000.txt" ||
		die "the export differs from the tree"
	[ "$(find "$FS/out-$N/workspace/t" -type f | wc -l)" = "$(find "$SRC/workspace/t" -type f | wc -l)" ] ||
		die "the export has another number of files than the tree"
	rm -rf -- "$SRC" "$FS/out-$N"
	[ -n "$STORE_URL" ] || rm -rf -- "$CONTEXTSDK_STORAGE_DIR"
done

echo
python3 - "$ROWS" <<'PY'
import sys
print("%9s %-7s %8s %13s %13s %9s" % ("files", "step", "seconds", "peak RSS MiB", "changedPaths", "expected"))
bad = False
for line in open(sys.argv[1]):
    n, step, sec, rss, ch, want = line.rstrip("\n").split("\t")
    print("%9s %-7s %8.2f %13.1f %13s %9s" % (n, step, float(sec), int(rss) / 1024, ch, want))
    bad |= ch != want
if bad:
    sys.exit("bench-rss: a commit reported another number of changedPaths than was changed")
PY
