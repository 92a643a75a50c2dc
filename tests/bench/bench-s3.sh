#!/usr/bin/env bash
# bench-s3.sh: contextfs commit/export of a tree on S3 (Ceph RGW) against plain
# `curl --aws-sigv4` PUT and GET of the same bytes, in the same run. Run by hand
# (not part of any suite); see README.md.
#
#   tests/bench/bench-s3.sh [--bin PATH] [--dir WORKDIR] [--mib N] [--files N]
#                           [--rate MBIT] [--keep]
#
# Generates a tree of --mib MiB (default 1024) in --files files (default
# 20,000 per GiB) like bench-bundle.sh, then, against one RGW:
#   commit   contextfs commit bench --from src   (pack + encrypt + upload)
#   GET      curl GET of the bundle contextfs wrote (its exact bytes)
#   PUT      curl PUT of those bytes to another key
#   export   contextfs export bench out          (download + decrypt + unpack)
#   GET      curl GET of the bundle again (both GETs are reported)
#   local    contextfs commit and export with a local store directory: the
#            same work without the network, so the difference to the S3
#            rows is what the transfer costs contextfs
# and prints seconds, MB/s of bundle bytes, contextfs throughput / curl
# throughput (target >= 0.8) and peak RSS (/usr/bin/time -v) of every step.
# --rate MBIT puts every request to the server (contextfs's and curl's)
# through an emulated link of that bandwidth (shape.sh: tc on lo, only the
# S3 port, as root): on bare loopback RGW shares the 2 cores with the
# client and the "link" is CPU.
#
# The server: S3_ENDPOINT, S3_BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY (and
# S3_REGION) of a running one, or else a fresh RGW started with tests/s3/rgw
# in WORKDIR/rgw and stopped at the end (S3_OSD_STORE=bluestore unless set:
# memstore would hold every object in RAM; ports S3_PORT 7680, S3_MON_PORT
# 3330, S3_OSD_PORT_MIN/MAX 7700/7750 unless set). Objects go under a random
# prefix of the bucket, deleted at the end.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BIN=${CONTEXTFS_BIN:-$REPO/build/tools/contextfs}
WORK=
MIB=1024
FILES=
KEEP=0
RATE=

while [ $# -gt 0 ]; do
	case "$1" in
	--bin) BIN=$2; shift 2 ;;
	--dir) WORK=$2; shift 2 ;;
	--mib) MIB=$2; shift 2 ;;
	--files) FILES=$2; shift 2 ;;
	--keep) KEEP=1; shift ;;
	--rate) RATE=$2; shift 2 ;;
	-h | --help) sed -n '2,28p' "$0"; exit 0 ;;
	*) echo "bench-s3: unknown argument: $1" >&2; exit 2 ;;
	esac
done

die() { echo "bench-s3: $*" >&2; exit 1; }
case "$MIB" in '' | *[!0-9]*) die "--mib takes a number of MiB" ;; esac
case "$RATE" in *[!0-9]*) die "--rate takes a whole number of Mbit/s" ;; esac
if [ "$MIB" -lt 16 ] || [ "$MIB" -gt 65536 ]; then die "--mib must be 16..65536"; fi
[ -n "$FILES" ] || FILES=$((MIB * 20000 / 1024))
case "$FILES" in '' | *[!0-9]*) die "--files takes a number" ;; esac
[ "$FILES" -ge 10 ] || FILES=10
[ -x "$BIN" ] || die "contextfs binary not found at $BIN (build it or pass --bin / CONTEXTFS_BIN)"
[ -x /usr/bin/time ] || die "/usr/bin/time is required (apt-get install -y time)"
for t in curl tar python3; do command -v "$t" >/dev/null || die "$t is required"; done

if [ -z "$WORK" ]; then
	WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/cfs-bench-s3.XXXXXX")
else
	mkdir -p "$WORK"
	[ -z "$(ls -A "$WORK")" ] || die "$WORK is not empty"
fi

RGW_DIR=
PREFIX=bench-s3-$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')
. "$HERE/shape.sh"
. "$HERE/freshfs.sh"
EXP=$WORK
cleanup() {
	local rc=$?
	set +e
	shape_down
	fresh_fs_down "$WORK/export.img" "$WORK/exp"
	if [ -z "$RGW_DIR" ] && [ -n "${S3CURL+x}" ]; then
		# someone else's server: the contextfs objects and curl's copy
		list_keys | while read -r k; do
			[ -n "$k" ] && "${S3CURL[@]}" -o /dev/null -X DELETE "$ENDPOINT_B/$k"
		done
	fi
	[ -n "$RGW_DIR" ] && "$REPO/tests/s3/rgw" stop "$RGW_DIR" 2>/dev/null
	if [ "$KEEP" = 0 ]; then rm -rf -- "$WORK"; else echo "kept $WORK"; fi
	exit "$rc"
}
trap cleanup EXIT

if [ -z "${S3_ENDPOINT:-}" ]; then
	RGW_DIR=$WORK/rgw
	echo "== starting RGW (${S3_OSD_STORE:-bluestore}) in $RGW_DIR"
	env=$(S3_OSD_STORE=${S3_OSD_STORE:-bluestore} \
		S3_STORE_BYTES=${S3_STORE_BYTES:-$(((MIB * 4 + 4096) * 1048576))} \
		S3_PORT=${S3_PORT:-7680} S3_MON_PORT=${S3_MON_PORT:-3330} \
		S3_OSD_PORT_MIN=${S3_OSD_PORT_MIN:-7700} \
		S3_OSD_PORT_MAX=${S3_OSD_PORT_MAX:-7750} \
		"$REPO/tests/s3/rgw" start "$RGW_DIR") || die "RGW did not start"
	eval "$env"
fi
: "${S3_BUCKET:?}" "${S3_ACCESS_KEY:?}" "${S3_SECRET_KEY:?}"
REGION=${S3_REGION:-us-east-1}
ENDPOINT_B=${S3_ENDPOINT%/}/$S3_BUCKET
LINK=loopback
if [ -n "$RATE" ]; then
	S3_HOST_PORT=$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1])
print(p.hostname, p.port or (443 if p.scheme == "https" else 80))' "$S3_ENDPOINT")
	case "$S3_HOST_PORT" in
	127.* | "localhost "*) ;;
	*) die "--rate shapes loopback only; $S3_ENDPOINT is not on this machine" ;;
	esac
	shape_up "${S3_HOST_PORT#* }" "$RATE" || die "cannot shape the link to the server"
	LINK="$RATE Mbit/s each way (tc on lo)"
fi

# the contextfs side: a raw key (no scrypt in the timing), the bucket via --store
export CONTEXTSDK_S3_ENDPOINT=$S3_ENDPOINT CONTEXTSDK_S3_REGION=$REGION
export CONTEXTSDK_S3_FORCE_PATH_STYLE=1
export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
CONTEXTSDK_KEY_HEX=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export CONTEXTSDK_KEY_HEX
unset CONTEXTSDK_PASSPHRASE CONTEXTSDK_CONFIG CONTEXTSDK_STORAGE_DIR
# commit caches (~/.cache/contextfs/commits) stay in the work directory
export XDG_CACHE_HOME=$WORK/xdg-cache
cfs() { "$BIN" --store "s3://$S3_BUCKET/$PREFIX" "$@"; }

# the curl side: SigV4 by curl itself, unsigned payload (as contextfs sends)
S3CURL=(curl -sS --fail --aws-sigv4 "aws:amz:$REGION:s3"
	--user "$S3_ACCESS_KEY:$S3_SECRET_KEY"
	-H 'x-amz-content-sha256: UNSIGNED-PAYLOAD')
list_keys() { # (%2F: curl 7.88's SigV4 mis-signs a raw '/' in the query)
	"${S3CURL[@]}" "$ENDPOINT_B?list-type=2&prefix=$PREFIX%2F" |
		python3 -c 'import re,sys; print("\n".join(re.findall(r"<Key>([^<]*)</Key>", sys.stdin.read())))'
}

SRC=$WORK/src
echo "== generating $FILES files, $MIB MiB in $SRC"
cfs init bench -q >/dev/null
cfs export bench "$SRC" -q >/dev/null
python3 "$HERE/gentree.py" "$SRC/workspace/bench" "$MIB" "$FILES"
TREE_BYTES=$(find "$SRC/workspace/bench" -type f -printf '%s\n' | awk '{s += $1} END {print s}')
echo "   tree: $FILES files, $TREE_BYTES bytes of file data"
sync
tar -C "$SRC" -cf - workspace | cat >/dev/null # warm the page cache (a pipe: tar skips reading data for /dev/null)

# run LABEL CMD... : wall seconds and peak RSS (KiB) into SEC_LABEL / RSS_LABEL
run() {
	local label=$1 log=$WORK/time-$1.log
	shift
	/usr/bin/time -v -o "$log" "$@" >/dev/null || die "$label failed (see $log)"
	eval "SEC_$label=$(awk -F': ' '/Elapsed \(wall clock\)/ {
		n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$log")"
	eval "RSS_$label=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")"
}

echo "== commit (contextfs)"
run cfs_commit "$BIN" --store "s3://$S3_BUCKET/$PREFIX" commit bench --from "$SRC" -m bench -q
read -r TREE_KEY BUNDLE_BYTES < <("${S3CURL[@]}" "$ENDPOINT_B/$PREFIX/contexts/bench/manifest.json" |
	python3 -c 'import json,sys; m=json.load(sys.stdin); print(m["treeKey"], m["sizeBytes"])')
echo "   bundle: $PREFIX/$TREE_KEY, $BUNDLE_BYTES bytes"
BUNDLE=$WORK/bundle.bin
echo "== GET (curl), PUT (curl)"
run curl_get1 "${S3CURL[@]}" -o "$BUNDLE" "$ENDPOINT_B/$PREFIX/$TREE_KEY"
[ "$(stat -c %s "$BUNDLE")" = "$BUNDLE_BYTES" ] || die "curl GET got $(stat -c %s "$BUNDLE") bytes"
run curl_put "${S3CURL[@]}" -o /dev/null -T "$BUNDLE" "$ENDPOINT_B/$PREFIX/curl-put.bin"
# Both exports go to a freshly made ext4 (freshfs.sh), side by side: on the
# journal-less root ext4 creating 20,000 files soon after mass deletions
# crawls through recently_deleted() (a local-store export took 11.7 s there
# and 3.5 s on a fresh filesystem).
if fresh_fs_up "$WORK/export.img" "$WORK/exp" $((MIB * 3 + 1024)); then
	EXP=$WORK/exp
else
	echo "   (exporting into $WORK; recent deletions there can slow the exports)"
fi
echo "== export (contextfs), GET (curl)"
run cfs_export "$BIN" --store "s3://$S3_BUCKET/$PREFIX" export bench "$EXP/out" -q
run curl_get2 "${S3CURL[@]}" -o "$BUNDLE.2" "$ENDPOINT_B/$PREFIX/$TREE_KEY"
cmp -s "$BUNDLE" "$BUNDLE.2" || die "the two curl GETs differ"
rm -f "$BUNDLE.2" "$BUNDLE"
diff -r "$SRC/workspace/bench" "$EXP/out/workspace/bench" >/dev/null ||
	die "contextfs export differs from the source tree"
echo "== commit, export (contextfs, local store)"
"$BIN" --store "$WORK/local" init bench -q >/dev/null
run local_commit "$BIN" --store "$WORK/local" commit bench --from "$SRC" -m bench -q
run local_export "$BIN" --store "$WORK/local" export bench "$EXP/out-local" -q
rm -rf "$EXP/out" "$EXP/out-local" "$WORK/local"

echo
echo "tree: $TREE_BYTES bytes in $FILES files; encrypted bundle: $BUNDLE_BYTES bytes (MB/s below are of bundle bytes); link: $LINK"
# shellcheck disable=SC2154 # SEC_* and RSS_* are set by run's eval
python3 - "$BUNDLE_BYTES" "$SEC_cfs_commit" "$SEC_curl_put" "$SEC_cfs_export" "$SEC_curl_get1" \
	"$SEC_curl_get2" "$RSS_cfs_commit" "$RSS_curl_put" "$RSS_cfs_export" "$RSS_curl_get1" \
	"$RSS_curl_get2" "$SEC_local_commit" "$SEC_local_export" "$RSS_local_commit" \
	"$RSS_local_export" <<'PY'
import sys
b = int(sys.argv[1])
cc, cp, ce, g1, g2 = map(float, sys.argv[2:7])
rcc, rcp, rce, rg1, rg2 = (int(x) / 1024 for x in sys.argv[7:12])
lc, le = map(float, sys.argv[12:14])
rlc, rle = (int(x) / 1024 for x in sys.argv[14:16])
mbs = lambda s: b / 1e6 / s if s > 0 else float("inf")
g = min(g1, g2)
print("%-8s %-22s %8s %9s %12s %18s" % ("op", "tool", "seconds", "MB/s", "peak RSS MiB", "contextfs/curl"))
print("%-8s %-22s %8.2f %9.1f %12.1f %18.2f" % ("commit", "contextfs commit", cc, mbs(cc), rcc, cp / cc))
print("%-8s %-22s %8.2f %9.1f %12.1f %18s" % ("commit", "curl PUT", cp, mbs(cp), rcp, ""))
print("%-8s %-22s %8.2f %9.1f %12.1f %18.2f" % ("export", "contextfs export", ce, mbs(ce), rce, g / ce))
print("%-8s %-22s %8.2f %9.1f %12.1f %18s" % ("export", "curl GET (before)", g1, mbs(g1), rg1, ""))
print("%-8s %-22s %8.2f %9.1f %12.1f %18s" % ("export", "curl GET (after)", g2, mbs(g2), rg2, ""))
print("%-8s %-22s %8.2f %9.1f %12.1f %18s" % ("commit", "contextfs, local store", lc, mbs(lc), rlc, ""))
print("%-8s %-22s %8.2f %9.1f %12.1f %18s" % ("export", "contextfs, local store", le, mbs(le), rle, ""))
print("ratio = curl seconds / contextfs seconds (export: the faster curl GET); target >= 0.80")
print("S3 transfer share of contextfs: commit %.2f s (S3 - local), curl PUT %.2f s; export %.2f s, curl GET %.2f s"
      % (cc - lc, cp, ce - le, g))
PY
