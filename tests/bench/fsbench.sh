#!/usr/bin/env bash
# Copied from the team's shared harness (../shared/bench/fsbench.sh, the
# harness that produced the anchor figures for this machine kind) so that the
# repository does not need ../shared at run time. Kept identical in what it
# measures, so figures stay comparable with the anchors; changes are marked
# "contextfs:". smallfiles.c (its helper) is copied alongside.
#
# fsbench.sh - run a fixed set of filesystem workloads in one directory.
#
# usage: fsbench.sh DIR LABEL
#
#   DIR    an empty (or scratch) directory on the filesystem under test,
#          e.g. a FUSE mount point or a directory below it. Everything the
#          script creates lives in DIR/fsb.<pid> and is removed at the end.
#   LABEL  free-form system name echoed into every result line.
#
# Output (stdout): one line per metric, tab separated:
#   RESULT <label> <workload> <value> <unit>
# value is a number, or FAIL / TIMEOUT / SKIP. Units: s (lower is better),
# MiB/s, IOPS, tx/s (higher is better). Progress and errors go to stderr.
#
# Environment (all optional):
#   FSB_TAR        tarball used by the untar/tar/git workloads (no default:
#                  those workloads report SKIP when unset)
#   FSB_SMALLFILES path to the smallfiles helper binary (built from
#                  smallfiles.c next to this script when unset)
#   FSB_SEQ_MB     size of the sequential file in MiB            (1024)
#   FSB_NFILES     small files                                   (20000)
#   FSB_NDIRS      directories for the small files               (200)
#   FSB_FSIZE      bytes per small file                          (4096)
#   FSB_SQL_ROWS   sqlite rows, one transaction each             (2000)
#   FSB_FIO_RT     fio runtime per job in seconds                (20)
#   FSB_FIO_MB     fio file size in MiB                          (256)
#   FSB_FIO_JOBS   numjobs values to run                         ("1 2")
#   FSB_TIMEOUT    per-step timeout in seconds                   (240)
#   FSB_DROP       1 = drop caches before cold reads (needs root) (1)
#   FSB_ONLY       space-separated subset of: seq small tree sqlite fio
#   FSB_SETTLE     seconds to wait after a mass delete before the next
#                  create-heavy step (31). A journal-less ext4 (as the root
#                  fs of the reference VM) refuses to reuse inodes freed
#                  within the last dirty_expire interval (30 s), and inode
#                  allocation right after deleting 20k files degrades to an
#                  O(n^2) bitmap scan (ext4 recently_deleted()). 0 disables.
#
# Needs: bash, coreutils, dd, tar, git, sqlite3, fio, python3 (fio JSON).
set -u

DIR=${1:?usage: fsbench.sh DIR LABEL}
LABEL=${2:?usage: fsbench.sh DIR LABEL}
HERE=$(cd "$(dirname "$0")" && pwd)

SEQ_MB=${FSB_SEQ_MB:-1024}
NFILES=${FSB_NFILES:-20000}
NDIRS=${FSB_NDIRS:-200}
FSIZE=${FSB_FSIZE:-4096}
SQL_ROWS=${FSB_SQL_ROWS:-2000}
FIO_RT=${FSB_FIO_RT:-20}
FIO_MB=${FSB_FIO_MB:-256}
FIO_JOBS=${FSB_FIO_JOBS:-1 2}
TMO=${FSB_TIMEOUT:-240}
DROP=${FSB_DROP:-1}
ONLY=${FSB_ONLY:-seq small tree sqlite fio}
TARBALL=${FSB_TAR:-}
SETTLE=${FSB_SETTLE:-31}

log() { printf '[fsbench %s %s] %s\n' "$LABEL" "$(date +%T)" "$*" >&2; }
emit() { printf 'RESULT\t%s\t%s\t%s\t%s\n' "$LABEL" "$1" "$2" "$3"; }
now() { date +%s.%N; }
want() { case " $ONLY " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
settle() { [ "$SETTLE" -gt 0 ] 2>/dev/null && { log "settle ${SETTLE}s after mass delete"; sleep "$SETTLE"; }; }

drop_caches() {
	sync
	if [ "$DROP" = 1 ]; then
		echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || log "cannot drop caches (not root?)"
	fi
}

# timed NAME UNIT-KIND CMD...: run CMD under a timeout, emit elapsed seconds
# (kind "s") or MiB/s for $SEQ_MB (kind "mibps").
timed() {
	local name=$1 kind=$2
	shift 2
	local t0 t1 rc
	t0=$(now)
	timeout -k 10 "$TMO" "$@" >/dev/null 2>"$E/err.$name"
	rc=$?
	t1=$(now)
	if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
		emit "$name" TIMEOUT "$([ "$kind" = s ] && echo s || echo MiB/s)"
		log "$name timed out"
		return 1
	elif [ $rc -ne 0 ]; then
		emit "$name" FAIL "$([ "$kind" = s ] && echo s || echo MiB/s)"
		log "$name failed rc=$rc: $(tail -n 3 "$E/err.$name" | tr '\n' ' ')"
		return 1
	fi
	if [ "$kind" = s ]; then
		emit "$name" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')" s
	else
		emit "$name" "$(awk -v a="$t0" -v b="$t1" -v m="$SEQ_MB" 'BEGIN{printf "%.1f", m/(b-a)}')" MiB/s
	fi
	return 0
}

[ -d "$DIR" ] || { echo "fsbench: $DIR is not a directory" >&2; exit 2; }
W="$DIR/fsb.$$"
mkdir "$W" || { echo "fsbench: cannot mkdir $W" >&2; exit 2; }
E=$(mktemp -d /tmp/fsbench-err.XXXXXX)	# stderr of steps, off the FS under test
trap 'rm -rf "$E"' EXIT
log "start in $W (fs type $(stat -f -c %T "$DIR"))"

# ---------------------------------------------------------------- 1. seq I/O
if want seq; then
	log "seq: write ${SEQ_MB} MiB (dd bs=1M conv=fsync, then sync)"
	sync
	timed seq_write mibps sh -c "dd if=/dev/zero of='$W/seq.bin' bs=1M count=$SEQ_MB conv=fsync && sync"
	drop_caches
	timed seq_read_cold mibps dd if="$W/seq.bin" of=/dev/null bs=1M
	timed seq_read_warm mibps dd if="$W/seq.bin" of=/dev/null bs=1M
	rm -f "$W/seq.bin"
	sync
fi

# ------------------------------------------------------------ 2. small files
if want small; then
	SF=${FSB_SMALLFILES:-}
	if [ -z "$SF" ]; then
		SF=$(mktemp /tmp/fsb-smallfiles.XXXXXX)
		cc -O2 -Wall -o "$SF" "$HERE/smallfiles.c" || { log "cannot build smallfiles"; SF=; }
		SF_TMP=$SF
	fi
	if [ -n "$SF" ]; then
		mkdir "$W/small"
		log "small: $NFILES x $FSIZE B in $NDIRS dirs"
		emit small_nfiles "$NFILES" files
		timed small_create s "$SF" create "$W/small" "$NDIRS" "$NFILES" "$FSIZE"
		sync
		timed small_find s sh -c "find '$W/small' | wc -l"
		timed small_stat s "$SF" stat "$W/small" "$NDIRS" "$NFILES" "$FSIZE"
		timed small_read s "$SF" read "$W/small" "$NDIRS" "$NFILES" "$FSIZE"
		timed small_delete s "$SF" delete "$W/small" "$NDIRS" "$NFILES" "$FSIZE"
		rm -rf "$W/small"
		sync
	fi
	[ -n "${SF_TMP:-}" ] && rm -f "$SF_TMP"
fi

# ------------------------------------------------ 3+4. source tree, tar, git
if want tree; then
	if [ -z "$TARBALL" ] || [ ! -r "$TARBALL" ]; then
		for w in untar tar_out git_add git_commit git_status git_log tree_rm; do emit $w SKIP s; done
	else
		mkdir "$W/tree"
		want small && settle
		log "tree: untar $(basename "$TARBALL")"
		timed untar s tar -xf "$TARBALL" -C "$W/tree" --no-same-owner
		sync
		timed tar_out s sh -c "tar -cf - -C '$W/tree' . | cat >/dev/null"
		# git: isolated from user/system config, no auto-gc
		export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
		export GIT_AUTHOR_NAME=fsbench GIT_AUTHOR_EMAIL=fsbench@localhost
		export GIT_COMMITTER_NAME=fsbench GIT_COMMITTER_EMAIL=fsbench@localhost
		G="git -C $W/tree -c gc.auto=0 -c core.fsmonitor=false -c init.defaultBranch=main"
		log "git: init+add, commit, status, log"
		timed git_add s sh -c "$G init -q && $G add -A"
		timed git_commit s $G commit -q -m import
		sync
		timed git_status s $G status --porcelain
		timed git_log s sh -c "$G log --name-only | cat >/dev/null"
		timed tree_rm s rm -rf "$W/tree"
		sync
	fi
fi

# ------------------------------------------------------------- 5. sqlite
if want sqlite; then
	want tree && settle
	for jm in delete wal; do
		db="$W/bench-$jm.db"
		log "sqlite: $SQL_ROWS autocommit inserts, synchronous=FULL, journal_mode=$jm"
		{
			echo "PRAGMA journal_mode=$jm;"
			echo "PRAGMA synchronous=FULL;"
			echo "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);"
		} | sqlite3 "$db" >/dev/null 2>"$E/err.sqlprep" || log "sqlite prep failed: $(cat "$E/err.sqlprep")"
		sqlf=$(mktemp /tmp/fsb-sql.XXXXXX)
		{
			echo "PRAGMA synchronous=FULL;"
			i=0
			while [ $i -lt "$SQL_ROWS" ]; do
				echo "INSERT INTO t(v) VALUES(randomblob(200));"
				i=$((i + 1))
			done
		} >"$sqlf"
		t0=$(now)
		if timeout -k 10 "$TMO" sh -c "sqlite3 -bail '$db' <'$sqlf'" >/dev/null 2>"$E/err.sql"; then
			t1=$(now)
			n=$(sqlite3 "$db" 'SELECT count(*) FROM t;' 2>/dev/null)
			if [ "$n" = "$SQL_ROWS" ]; then
				emit "sqlite_${jm}" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')" s
				emit "sqlite_${jm}_tps" "$(awk -v a="$t0" -v b="$t1" -v n="$SQL_ROWS" 'BEGIN{printf "%.0f", n/(b-a)}')" tx/s
			else
				emit "sqlite_${jm}" FAIL s
				log "sqlite row count $n != $SQL_ROWS"
			fi
		else
			emit "sqlite_${jm}" FAIL s
			log "sqlite failed: $(tail -n 3 "$E/err.sql" | tr '\n' ' ')"
		fi
		rm -f "$sqlf" "$db" "$db-journal" "$db-wal" "$db-shm"
	done
	sync
fi

# --------------------------------------------------------------- 6. fio
if want fio; then
	# lay the file out once, untimed, and let it reach disk, so that the
	# timed jobs see the same warm, clean file on every system
	dd if=/dev/urandom of="$W/fio.dat" bs=1M count="$FIO_MB" status=none conv=fsync
	sync
	for nj in $FIO_JOBS; do
		log "fio: randrw 50/50 4k psync iodepth=1 numjobs=$nj ${FIO_RT}s on ${FIO_MB} MiB"
		out="$E/fio-$nj.json"
		if timeout -k 10 $((FIO_RT * 3 + TMO)) fio --name=randrw --filename="$W/fio.dat" \
			--size="${FIO_MB}m" --rw=randrw --rwmixread=50 --bs=4k \
			--ioengine=psync --iodepth=1 --numjobs="$nj" --group_reporting \
			--time_based --runtime="$FIO_RT" --fallocate=none --invalidate=0 \
			--output-format=json --output="$out" >/dev/null 2>"$E/err.fio"; then
			python3 - "$out" <<'PY' | while read -r k v; do emit "fio_randrw_j${nj}_$k" "$v" IOPS; done
import json, sys
txt = open(sys.argv[1]).read()
txt = txt[txt.index('{'):]          # fio may prepend warnings
j = json.loads(txt)["jobs"][0]
r, w = j["read"]["iops"], j["write"]["iops"]
print("read", round(r)); print("write", round(w)); print("total", round(r + w))
PY
		else
			emit "fio_randrw_j${nj}_total" FAIL IOPS
			log "fio failed: $(tail -n 3 "$E/err.fio" | tr '\n' ' ')"
		fi
	done
	rm -f "$W/fio.dat"
fi

rm -rf "$W"
sync
log "done"
