#!/usr/bin/env bash
# bench-run-ssh.sh: `contextfs run --runtime ssh -- true` (attach, run, save)
# against the plain `tar | ssh` round trip of the same tree, in the same run.
# Run by hand (not part of any suite); see README.md.
#
#   tests/bench/bench-run-ssh.sh [--bin PATH] [--dir WORKDIR] [--mib N]
#                                [--files N] [--rounds N] [--push] [--keep]
#                                [--compare-bin OLD] [--rate MBIT]
#
# Generates a context of N files (default 5,000) totalling --mib MiB (default
# 100) under workspace/ (bench-bundle.sh's generator, scaled: mostly small
# files, some medium, a few large; every other file compressible text, the others random)
# on a freshly made loop-mounted ext4 in WORKDIR (as root; every tree of
# both sides lives there), starts a private sshd on a free loopback port
# (throwaway host key, client key in authorized_keys, a known_hosts file;
# all in WORKDIR), then, --rounds
# times (default 3) with the order of the steps rotated every round:
#   run    contextfs run bench --runtime ssh ... -- true
#          (fetch the stored bundle, upload and unpack there, run, pack
#          there streamed into the local validation, commit)
#   tar    tar -C src -cf - . | ssh host 'tar -C dst -xf -'
#          then ssh host 'tar -C dst -cf - .' | tar -C back -xf -
#   push   (--push, needs /dev/fuse) contextfs push MOUNT --runtime ssh -- true
#          on a mount of the context (commit, fetch the base, upload and
#          unpack, run, pack streamed into the validation, merge, commit)
#   pull   (with --push) contextfs push MOUNT --pull --keep --sandbox-id ID
#          on a sandbox kept (push --keep) before the first round: pack there,
#          streamed into the validation, merge, commit; one way only, set
#          against the same there-and-back baseline as the issue asks
#   old    (--compare-bin OLD) the run step with another contextfs binary
#          (before/after figures under the same load)
# and prints the medians: seconds, MB/s of tree bytes, the contextfs/baseline
# throughput ratio (target >= 0.8) and peak RSS (/usr/bin/time -v), plus
# contextfs's phase timings (CONTEXTFS_TIMING=1) of the median run.
# --rate MBIT puts the ssh connections through an emulated link of that
# bandwidth (shape.sh: tc on lo, only sshd's port): on bare loopback both
# ends share the 2 cores and the "link" is CPU.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BIN=${CONTEXTFS_BIN:-$REPO/build/tools/contextfs}
WORK=
MIB=100
FILES=5000
ROUNDS=3
PUSH=0
KEEP=0
OLD_BIN=
RATE=

while [ $# -gt 0 ]; do
	case "$1" in
	--bin) BIN=$2; shift 2 ;;
	--dir) WORK=$2; shift 2 ;;
	--mib) MIB=$2; shift 2 ;;
	--files) FILES=$2; shift 2 ;;
	--rounds) ROUNDS=$2; shift 2 ;;
	--push) PUSH=1; shift ;;
	--keep) KEEP=1; shift ;;
	--compare-bin) OLD_BIN=$2; shift 2 ;;
	--rate) RATE=$2; shift 2 ;;
	-h | --help) sed -n '2,37p' "$0"; exit 0 ;;
	*) echo "bench-run-ssh: unknown argument: $1" >&2; exit 2 ;;
	esac
done

die() { echo "bench-run-ssh: $*" >&2; exit 1; }
# not a pyenv shim: the system python
PYTHON=/usr/bin/python3
[ -x "$BIN" ] || die "contextfs binary not found at $BIN (build it or pass --bin / CONTEXTFS_BIN)"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
if [ -n "$OLD_BIN" ]; then
	[ -x "$OLD_BIN" ] || die "no contextfs binary at $OLD_BIN"
	OLD_BIN=$(cd "$(dirname "$OLD_BIN")" && pwd)/$(basename "$OLD_BIN")
fi
[ -x /usr/bin/time ] || die "/usr/bin/time is required (apt-get install -y time)"
[ -x /usr/sbin/sshd ] || die "sshd is required (apt-get install -y openssh-server)"
[ -x "$PYTHON" ] || die "$PYTHON is required"
for t in tar zstd ssh ssh-keygen unshare; do command -v "$t" >/dev/null || die "$t is required"; done
case "$RATE" in *[!0-9]*) die "--rate takes a whole number of Mbit/s" ;; esac

if [ -z "$WORK" ]; then
	WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/cfs-bench-ssh.XXXXXX")
else
	mkdir -p "$WORK"
	[ -z "$(ls -A "$WORK")" ] || die "$WORK is not empty"
fi
chmod 700 "$WORK"
SSHD_PID=
MNT=
D=$WORK
. "$HERE/freshfs.sh"
. "$HERE/shape.sh"
cleanup() {
	shape_down
	if [ -n "$MNT" ]; then
		"$BIN" umount "$MNT" >/dev/null 2>&1 || umount -l "$MNT" 2>/dev/null || true
	fi
	if [ -n "$SSHD_PID" ]; then kill "$SSHD_PID" 2>/dev/null || true; wait "$SSHD_PID" 2>/dev/null || true; fi
	fresh_fs_down "$WORK/fs.img" "$WORK/fs"
	if [ "$KEEP" = 0 ]; then rm -rf -- "$WORK"; else echo "kept $WORK"; fi
}
trap cleanup EXIT

# Every tree (source, store, both sides' remote and returned copies,
# contextfs's temp dirs) lives on a freshly made ext4 (freshfs.sh; 5,000
# files extracted in 0.4 s there, 4 s on the root ext4 after deletions),
# mounted before sshd starts so that its mount namespace sees it.
if fresh_fs_up "$WORK/fs.img" "$WORK/fs" $((MIB * 24 + 2048)); then
	D=$WORK/fs
	chmod 700 "$D"
else
	echo "   (trees stay in $WORK; recent deletions there can slow both sides)"
fi
SRC=$D/src
STORE=$D/store
KD=$WORK/sshd
export CONTEXTSDK_STORAGE_DIR=$STORE
CONTEXTSDK_KEY_HEX=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export CONTEXTSDK_KEY_HEX
unset CONTEXTSDK_PASSPHRASE CONTEXTSDK_CONFIG
# contextfs's local temp dirs (the export it packs, the validated download
# it commits) on the same filesystem as the baseline's trees
mkdir -m 700 "$D/tmp"
export TMPDIR=$D/tmp

# ---- the private sshd (tests/integration/test_run_ssh.py's fixture, without
# the network namespace: it listens on 127.0.0.1 only). It runs in its own
# mount namespace seeing a private /etc/passwd that gives root a scratch
# home, so the machine's root dotfiles (a .bashrc running pyenv, ...) are
# neither read nor timed.
mkdir -m 700 "$KD" "$KD/home"
awk -F: -v OFS=: -v h="$KD/home" '$1 == "root" { $6 = h } { print }' /etc/passwd >"$KD/passwd"
PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ssh-keygen -q -t ed25519 -N '' -f "$KD/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$KD/id"
cp "$KD/id.pub" "$KD/authorized_keys"
echo "[127.0.0.1]:$PORT $(cat "$KD/host_key.pub")" >"$KD/known_hosts"
cat >"$KD/sshd_config" <<EOF
Port $PORT
ListenAddress 127.0.0.1
HostKey $KD/host_key
PidFile none
AuthorizedKeysFile $KD/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
LogLevel ERROR
EOF
mkdir -p /run/sshd
unshare -m sh -c 'mount --make-rprivate / && mount --bind "$1/passwd" /etc/passwd &&
	exec /usr/sbin/sshd -D -e -f "$1/sshd_config"' sh "$KD" 2>"$KD/sshd.log" &
SSHD_PID=$!
for _ in $(seq 200); do
	(exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
	kill -0 "$SSHD_PID" 2>/dev/null || die "sshd did not start: $(cat "$KD/sshd.log")"
	sleep 0.05
done
# The same client options contextfs uses (adapters/ssh.c).
SSH=(ssh -T -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes
	-o "UserKnownHostsFile=$KD/known_hosts" -o LogLevel=ERROR
	-p "$PORT" -i "$KD/id" -o IdentitiesOnly=yes root@127.0.0.1)
"${SSH[@]}" true || die "cannot log in to the private sshd"
LINK="loopback"
if [ -n "$RATE" ]; then
	shape_up "$PORT" "$RATE" || die "cannot shape the link to sshd"
	LINK="$RATE Mbit/s each way (tc on lo)"
fi
SSH_ARGS=(--runtime ssh --ssh-host 127.0.0.1 --ssh-user root --ssh-port "$PORT"
	--ssh-key "$KD/id" --ssh-known-hosts "$KD/known_hosts")

# ---- the context
echo "== generating $FILES files, $MIB MiB"
"$BIN" init bench -q >/dev/null
"$BIN" export bench "$SRC" -q >/dev/null
"$PYTHON" "$HERE/gentree.py" "$SRC/workspace/bench" "$MIB" "$FILES" --profile small --dirs 100
"$BIN" commit bench --from "$SRC" -m bench -q
TREE_BYTES=$(find "$SRC" -type f -printf '%s\n' | awk '{s += $1} END {print s}')
NFILES=$(find "$SRC" -type f | wc -l)
echo "   tree: $NFILES files, $TREE_BYTES bytes of file data; sshd on 127.0.0.1:$PORT"
sync

# run LABEL ROUND CMD... : wall seconds and peak RSS (KiB) appended to
# $WORK/results (stderr kept in $WORK/err-LABEL-ROUND)
run() {
	local label=$1 round=$2 log=$WORK/time-$1-$2.log
	shift 2
	/usr/bin/time -v -o "$log" "$@" >/dev/null 2>"$WORK/err-$label-$round" ||
		die "$label failed: $(tail -5 "$WORK/err-$label-$round")"
	awk -F': ' -v l="$label" -v r="$round" '
		/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0
			for (i = 1; i <= n; i++) s = s * 60 + p[i] }
		/Maximum resident set size/ { rss = $2 }
		END { print l, r, s, rss }' "$log" >>"$WORK/results"
}

step_run() {
	CONTEXTFS_TIMING=1 run run "$1" "$BIN" run bench "${SSH_ARGS[@]}" --ssh-dir "$D/remote-run" -- true
}
step_tar() {
	# ssh's own peak RSS counts for the baseline too: time the whole pipeline
	run tar "$1" bash -c '
		set -eo pipefail
		dst=$1 back=$2 src=$3; shift 3
		rm -rf -- "$dst" "$back"; mkdir -p -- "$dst" "$back"
		tar -C "$src" -cf - . | "$@" "tar -C $dst -xf -"
		"$@" "tar -C $dst -cf - ." | tar -C "$back" -xf -' _ \
		"$D/remote-tar" "$D/back-tar" "$SRC" "${SSH[@]}"
}
step_old() {
	CONTEXTFS_TIMING=1 run old "$1" "$OLD_BIN" run bench "${SSH_ARGS[@]}" --ssh-dir "$D/remote-old" -- true
}
step_push() {
	CONTEXTFS_TIMING=1 run push "$1" "$BIN" push "$MNT" "${SSH_ARGS[@]}" --ssh-dir "$D/remote-push" -- true
}
step_pull() {
	CONTEXTFS_TIMING=1 run pull "$1" "$BIN" push "$MNT" --pull --keep --sandbox-id "$PULL_ID" \
		"${SSH_ARGS[@]}" --ssh-dir "$D/remote-pull"
}

STEPS="run tar"
[ -z "$OLD_BIN" ] || STEPS="$STEPS old"
if [ "$PUSH" = 1 ]; then
	[ -e /dev/fuse ] || die "--push needs /dev/fuse"
	MNT=$WORK/mnt
	mkdir "$MNT"
	# a second context with the same tree: the mount holds its lock
	"$BIN" init benchm -q >/dev/null
	"$BIN" commit benchm --from "$SRC" -m bench -q
	"$BIN" mount benchm "$MNT" -o fsync=local >/dev/null || die "cannot mount the context"
	# a kept sandbox holding the tree, for the pull step
	PULL_ID=$("$BIN" --json push "$MNT" --keep "${SSH_ARGS[@]}" --ssh-dir "$D/remote-pull" -- true |
		"$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["sandbox"])') ||
		die "cannot keep a sandbox for the pull step"
	STEPS="$STEPS push pull"
fi
: >"$WORK/results"
# warm the page cache for both sides
tar -C "$SRC" -cf - . | cat >/dev/null # a pipe: tar skips reading data for /dev/null
for r in $(seq "$ROUNDS"); do
	echo "== round $r"
	set -- $STEPS
	for _ in $(seq $(((r - 1) % $#))); do set -- "$@" "$1"; shift; done
	for s in "$@"; do "step_$s" "$r"; done
done
if [ -n "${PULL_ID:-}" ]; then
	# the last pull without --keep disposes of the kept sandbox
	"$BIN" push "$MNT" --pull --sandbox-id "$PULL_ID" "${SSH_ARGS[@]}" --ssh-dir "$D/remote-pull" \
		>/dev/null 2>&1 || echo "   (the kept sandbox $PULL_ID was not removed)"
fi
diff -r "$SRC" "$D/back-tar" >/dev/null || die "the baseline's round trip differs from the source tree"
diff -r "$SRC/workspace" "$D/remote-run/mnt/bench/workspace" >/dev/null ||
	die "the tree contextfs extracted over ssh differs from the source tree"

echo
echo "tree: $TREE_BYTES bytes in $NFILES files; link: $LINK; $ROUNDS rounds, medians (min-max)"
"$PYTHON" - "$TREE_BYTES" "$WORK" <<'PY'
import glob, os, re, statistics, sys
b, work = int(sys.argv[1]), sys.argv[2]
res = {}
for ln in open(os.path.join(work, "results")):
    label, rnd, sec, rss = ln.split()
    res.setdefault(label, []).append((float(sec), int(rss), rnd))
mbs = lambda s: b / 1e6 / s if s > 0 else float("inf")
names = {"run": "contextfs run -- true", "tar": "tar | ssh, there and back",
         "push": "contextfs push -- true", "old": "compare-bin run -- true",
         "pull": "contextfs push --pull"}
base = statistics.median(s for s, _, _ in res["tar"])
print("%-28s %8s %13s %9s %12s %8s" % ("step", "seconds", "(min-max)", "MB/s", "peak RSS MiB", "cfs/tar"))
for label in ("run", "tar", "old", "push", "pull"):
    if label not in res:
        continue
    v = res[label]
    med = statistics.median(s for s, _, _ in v)
    rss = statistics.median(r for _, r, _ in v)
    print("%-28s %8.2f %13s %9.1f %12.1f %8s" % (
        names[label], med, "%.2f-%.2f" % (min(s for s, _, _ in v), max(s for s, _, _ in v)),
        mbs(med), rss / 1024, "" if label == "tar" else "%.2f" % (base / med)))
# phase timings of the median contextfs run
for label in ("run", "old", "push", "pull"):
    if label not in res:
        continue
    v = sorted(res[label])
    rnd = v[len(v) // 2][2]
    phases = []
    for ln in open(os.path.join(work, "err-%s-%s" % (label, rnd))):
        m = re.search(r"timing: (.*)", ln)
        if m:
            phases.append(m.group(1))
    if phases:
        print("\n%s phases (round %s):" % (names[label], rnd))
        for p in phases:
            print("  " + p)
PY
