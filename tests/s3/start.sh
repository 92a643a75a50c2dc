#!/usr/bin/env bash
# Adapted from the team s3server recipe; driven by tests/s3/rgw.
# start.sh - start a single-node Ceph RADOS Gateway (real S3 API) on loopback.
#
#   env=$(bash start.sh) || exit 1; eval "$env"   # exports S3_ENDPOINT, S3_BUCKET, ...
#   (a bare eval "$(bash start.sh)" would hide a failed start: eval "" returns 0)
#   ... run tests ...
#   bash stop.sh [--wipe]        # stops only the daemons this script started
#
# Cluster: 1 ceph-mon + 1 ceph-osd (memstore by default: objects live in RAM)
# + 1 radosgw (beast frontend), all bound to 127.0.0.1, all state and logs
# under $S3_STATE_DIR. No ceph-mgr, no systemd, nothing written outside the
# state dir (apart from the apt-get install when the packages are missing).
# Progress goes to stderr; stdout carries only the `export` lines.
#
# Idempotent: with the same S3_STATE_DIR, a second run only (re)starts the
# daemons that are not running and prints the same exports. After a clean
# stop.sh the data is kept (memstore is saved to disk on a clean stop).
#
# Settings (environment), with defaults:
#   S3_STATE_DIR   a fresh dir from mktemp -d -t s3server.XXXXXX (under $TMPDIR)
#   S3_PORT        7480     S3 endpoint port (http://127.0.0.1:PORT)
#   S3_MON_PORT    3300     monitor msgr2 port; msgr1 uses S3_MON_PORT+1. Keep all
#                           ports below 32768 (the ephemeral range): ceph-mon
#                           cannot bind a port that a closed client socket still
#                           holds in TIME_WAIT
#   S3_OSD_PORT_MIN/MAX 6800/7300   ports the OSD may bind (127.0.0.1 only)
#   S3_BUCKET      test-bucket (created if missing; empty => no bucket)
#   S3_ACCESS_KEY  S3TESTACCESSKEY00001
#   S3_SECRET_KEY  s3testsecretkey000000000000000000000001
#   S3_REGION      us-east-1 (only echoed; radosgw accepts any region in SigV4)
#   S3_OSD_STORE   memstore | bluestore (bluestore: sparse file in the state dir)
#   S3_STORE_BYTES 4294967296  memstore capacity / bluestore file size
#   S3_NO_INSTALL  set to 1 to never call apt-get
set -euo pipefail
set +m

log() { printf '[s3server %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
T_START=$(date +%s.%N)
elapsed() { awk -v a="$T_START" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

S3_PORT=${S3_PORT:-7480}
S3_MON_PORT=${S3_MON_PORT:-3300}
S3_MON_PORT1=$((S3_MON_PORT + 1))
S3_OSD_PORT_MIN=${S3_OSD_PORT_MIN:-6800}
S3_OSD_PORT_MAX=${S3_OSD_PORT_MAX:-7300}
S3_BUCKET=${S3_BUCKET-test-bucket}
S3_ACCESS_KEY=${S3_ACCESS_KEY:-S3TESTACCESSKEY00001}
S3_SECRET_KEY=${S3_SECRET_KEY:-s3testsecretkey000000000000000000000001}
S3_REGION=${S3_REGION:-us-east-1}
S3_OSD_STORE=${S3_OSD_STORE:-memstore}
S3_STORE_BYTES=${S3_STORE_BYTES:-4294967296}
S3_UID=s3test
HOST=127.0.0.1
D=
MADE_DIR=0
case "$S3_OSD_STORE" in memstore|bluestore) ;; *) die "S3_OSD_STORE must be memstore or bluestore";; esac

# ---------------------------------------------------------------- packages
need_pkgs() {
  local b
  for b in ceph-mon ceph-osd radosgw radosgw-admin ceph ceph-authtool monmaptool curl; do
    command -v "$b" >/dev/null 2>&1 || return 0
  done
  return 1
}
if need_pkgs; then
  [ "${S3_NO_INSTALL:-0}" = 1 ] && die "ceph packages missing and S3_NO_INSTALL=1"
  [ "$(id -u)" = 0 ] || die "ceph packages missing; run as root so apt-get can install them"
  log "installing ceph-mon ceph-osd radosgw curl with apt-get (about 60 MB download, 240 MB on disk)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends ceph-mon ceph-osd radosgw ceph-common curl >&2
  log "packages installed after $(elapsed)s"
fi

# ---------------------------------------------------------------- state dir
if [ -z "${S3_STATE_DIR:-}" ]; then
  S3_STATE_DIR=$(mktemp -d -t s3server.XXXXXX)
  MADE_DIR=1
elif [ ! -d "$S3_STATE_DIR" ]; then
  mkdir -p "$S3_STATE_DIR"
  MADE_DIR=1
fi
D=$(cd "$S3_STATE_DIR" && pwd -P)
S3_STATE_DIR=$D
MARK=$D/.s3server
CONF=$D/ceph.conf
ENDPOINT=http://$HOST:$S3_PORT

if [ ! -e "$MARK" ] && [ -n "$(ls -A "$D")" ]; then
  die "$D is not empty and was not made by this script; pick another S3_STATE_DIR"
fi

cephc() { timeout 40 ceph -c "$CONF" --connect-timeout 10 "$@"; }

# pid helpers: a pid counts as ours only if its command line names our ceph.conf
pid_of() { local f=$D/pids/$1.pid p; [ -f "$f" ] || return 1; p=$(cat "$f"); [ -n "$p" ] || return 1; echo "$p"; }
is_ours() {
  local p=$1
  [ -r "/proc/$p/cmdline" ] || return 1
  tr '\0' ' ' < "/proc/$p/cmdline" | grep -qF -- "$CONF"
}
running() { local p; p=$(pid_of "$1") || return 1; is_ours "$p"; }

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

STARTED=()
on_fail() {
  local rc=$?
  [ "$rc" = 0 ] && return 0
  [ -n "$D" ] || exit "$rc"
  log "start failed (rc=$rc) after $(elapsed)s; logs are in $D/log"
  local f
  if [ "${#STARTED[@]}" -gt 0 ]; then
    for f in "$D"/log/*.out "$D"/log/*.log; do
      [ -s "$f" ] || continue
      log "---- last lines of $f"; grep -v '^$' "$f" | tail -n 6 >&2 || true
    done
  fi
  # nothing made yet (e.g. a port in use): leave no empty dir behind
  [ "$MADE_DIR" = 1 ] && rmdir "$D" 2>/dev/null || true
  local n p
  for n in "${STARTED[@]}"; do
    p=$(pid_of "$n") || continue
    if is_ours "$p"; then log "stopping $n (pid $p) that this run started"; kill -TERM "$p" 2>/dev/null || true; fi
  done
  exit "$rc"
}
trap on_fail EXIT

# launch NAME BIN ARGS...: run in its own session, foreground mode (-f), pid file is ours
launch() {
  local name=$1; shift
  local bin=$1; shift
  setsid "$bin" -c "$CONF" -f "$@" </dev/null >>"$D/log/$name.out" 2>&1 &
  local p=$!
  echo "$p" > "$D/pids/$name.pid"
  STARTED+=("$name")
  sleep 0.2
  is_ours "$p" || die "$name exited at once; see $D/log/$name.out"
  log "started $name (pid $p)"
}

wait_for() { # wait_for SECONDS DESCRIPTION NAME-OF-DAEMON-TO-WATCH COMMAND...
  local secs=$1 what=$2 name=$3; shift 3
  local t0=$SECONDS
  while ! "$@" >/dev/null 2>&1; do
    if [ -n "$name" ] && ! running "$name"; then die "$name died while waiting for $what"; fi
    [ $((SECONDS - t0)) -ge "$secs" ] && die "timed out after ${secs}s waiting for $what"
    sleep 0.5
  done
  log "$what after $(elapsed)s"
}

# ---------------------------------------------------------------- first-time init
init_cluster() {
  local p
  local lo hi
  read -r lo hi < /proc/sys/net/ipv4/ip_local_port_range || { lo=32768; hi=60999; }
  for p in "$S3_PORT" "$S3_MON_PORT" "$S3_MON_PORT1"; do
    port_busy "$p" && die "port $p on $HOST is already in use (set S3_PORT / S3_MON_PORT)"
    if [ "$p" -ge "$lo" ] && [ "$p" -le "$hi" ]; then
      log "warning: port $p is in the ephemeral range $lo-$hi; binding it may fail now and then"
    fi
  done
  log "creating a new cluster in $D (osd store: $S3_OSD_STORE)"
  mkdir -p "$D"/{mon/a,osd/0,rgw,run,log,pids,tmp}
  local fsid; fsid=$(cat /proc/sys/kernel/random/uuid)
  local osd_store_conf
  if [ "$S3_OSD_STORE" = memstore ]; then
    osd_store_conf="osd objectstore = memstore
memstore device bytes = $S3_STORE_BYTES
# save the in-RAM store to disk on SIGTERM so a clean stop keeps the data
osd fast shutdown = false"
  else
    osd_store_conf="osd objectstore = bluestore
bluestore block create = true
bluestore block size = $S3_STORE_BYTES
bluestore fsck on mkfs = false
bluestore fsck on mount = false
osd memory target = 1073741824
bluestore cache autotune = true"
  fi
  cat > "$CONF" <<EOF
# generated by start.sh - single-node test cluster, loopback only
[global]
fsid = $fsid
mon host = [v2:$HOST:$S3_MON_PORT,v1:$HOST:$S3_MON_PORT1]
mon initial members = a
public addr = $HOST
cluster addr = $HOST
ms bind ipv6 = false
ms bind port min = $S3_OSD_PORT_MIN
ms bind port max = $S3_OSD_PORT_MAX
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = $D/keyring
run dir = $D/run
admin socket = $D/run/\$name.asok
pid file =
log file = $D/log/\$name.log
log to stderr = false
err to stderr = true
crash dir = $D/tmp/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon max pg per osd = 1000
mon allow pool size one = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
mon data avail warn = 2
mon data avail crit = 1

[mon]
mon data = $D/mon/\$id
mon allow pool delete = true
# commit map changes fast (default 1 s each): radosgw's first start makes
# ~15 pool/map changes one after another
paxos propose interval = 0.1
paxos min wait = 0.01

[osd]
osd data = $D/osd/\$id
keyring = $D/osd/\$id/keyring
$osd_store_conf

[client.rgw.a]
keyring = $D/rgw/keyring
rgw data = $D/rgw
# tcp_nodelay: without it beast's small writes wait for the client's delayed
# ACK on a reused connection, ~40 ms for every response with a body
rgw frontends = beast endpoint=$HOST:$S3_PORT tcp_nodelay=1
# virtual-hosted style: <bucket>.localhost (curl resolves *.localhost itself)
rgw dns name = localhost
rgw thread pool size = 128
rgw enable usage log = false
rgw enable ops log = false
EOF
  ceph-authtool --create-keyring "$D/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >&2
  ceph-authtool --create-keyring "$D/keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >&2
  ceph-authtool "$D/mon.keyring" --import-keyring "$D/keyring" >&2
  monmaptool --create --fsid "$fsid" --addv a "[v2:$HOST:$S3_MON_PORT,v1:$HOST:$S3_MON_PORT1]" "$D/monmap" >&2
  ceph-mon -c "$CONF" --mkfs -i a --monmap "$D/monmap" --keyring "$D/mon.keyring" >&2
  touch "$MARK"
  echo mkfs-mon > "$D/init-stage"
}

init_osd() {
  local uuid secret id
  uuid=$(cat /proc/sys/kernel/random/uuid)
  secret=$(ceph-authtool --gen-print-key)
  printf '{"cephx_secret": "%s"}\n' "$secret" > "$D/tmp/osd-new.json"
  id=$(cephc osd new "$uuid" -i "$D/tmp/osd-new.json")
  rm -f "$D/tmp/osd-new.json"
  [ "$id" = 0 ] || die "expected osd id 0, got '$id'"
  ceph-authtool --create-keyring "$D/osd/0/keyring" --name osd.0 --add-key "$secret" >&2
  ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$uuid" >>"$D/log/osd.0.mkfs.out" 2>&1 \
    || die "ceph-osd --mkfs failed; see $D/log/osd.0.mkfs.out"
  echo mkfs-osd > "$D/init-stage"
}

init_rgw_key() {
  cephc auth get-or-create client.rgw.a mon 'allow rw' osd 'allow rwx' > "$D/rgw/keyring"
  echo rgw-key > "$D/init-stage"
}

# ---------------------------------------------------------------- main
stage=$(cat "$D/init-stage" 2>/dev/null || true)
if [ -z "$stage" ]; then
  init_cluster
  stage=mkfs-mon
elif [ "$stage" = "done" ] && ! running osd.0 && [ ! -e "$D/clean-stop" ] \
     && grep -q '^osd objectstore = memstore' "$CONF"; then
  die "the memstore OSD in $D was not stopped cleanly, so its data is gone; run stop.sh --wipe (or use a new S3_STATE_DIR)"
fi
rm -f "$D/clean-stop"

if ! running mon.a; then
  port_busy "$S3_MON_PORT" && die "port $S3_MON_PORT is in use but mon.a of $D is not running"
  launch mon.a ceph-mon -i a
fi
wait_for 60 "monitor answers" mon.a cephc mon stat

[ "$stage" = mkfs-mon ] && { init_osd; stage=mkfs-osd; }
if ! running osd.0; then
  launch osd.0 ceph-osd -i 0
fi
osd_up() { cephc osd stat -f json | grep -q '"num_up_osds":1'; }
wait_for 120 "osd.0 up" osd.0 osd_up

[ "$stage" = mkfs-osd ] && { init_rgw_key; stage=rgw-key; }
if ! running rgw.a; then
  port_busy "$S3_PORT" && die "port $S3_PORT is in use but radosgw of $D is not running"
  launch rgw.a radosgw -n client.rgw.a
fi
rgw_up() { [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$ENDPOINT/")" = 200 ]; }
wait_for 180 "radosgw answers on $ENDPOINT" rgw.a rgw_up

# S3 user with fixed keys (idempotent)
if ! radosgw-admin -c "$CONF" -n client.admin user info --uid="$S3_UID" >"$D/tmp/user.json" 2>/dev/null; then
  radosgw-admin -c "$CONF" -n client.admin user create --uid="$S3_UID" --display-name="S3 test user" \
    --access-key="$S3_ACCESS_KEY" --secret-key="$S3_SECRET_KEY" >"$D/tmp/user.json"
  log "created S3 user $S3_UID"
elif ! grep -qF "\"access_key\": \"$S3_ACCESS_KEY\"" "$D/tmp/user.json"; then
  radosgw-admin -c "$CONF" -n client.admin key create --uid="$S3_UID" --key-type=s3 \
    --access-key="$S3_ACCESS_KEY" --secret-key="$S3_SECRET_KEY" >"$D/tmp/user.json"
  log "added access key $S3_ACCESS_KEY to user $S3_UID"
fi
echo "done" > "$D/init-stage"

# First signed S3 request: create the bucket (200 new, 409 already ours = fine)
s3curl() {
  curl -s --max-time 30 --aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" \
    -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$@"
}
if [ -n "$S3_BUCKET" ]; then
  t0=$SECONDS
  while :; do
    code=$(s3curl -o "$D/tmp/mkbucket.xml" -w '%{http_code}' -X PUT "$ENDPOINT/$S3_BUCKET" || true)
    case "$code" in
      200|409) break;;
    esac
    [ $((SECONDS - t0)) -ge 60 ] && die "PUT bucket $S3_BUCKET failed with HTTP $code: $(cat "$D/tmp/mkbucket.xml" 2>/dev/null)"
    sleep 0.5
  done
  code=$(s3curl -o /dev/null -w '%{http_code}' "$ENDPOINT/$S3_BUCKET?list-type=2&max-keys=1")
  [ "$code" = 200 ] || die "ListObjectsV2 on $S3_BUCKET answered HTTP $code"
  log "bucket $S3_BUCKET ready (first signed S3 requests OK) after $(elapsed)s"
fi

cat > "$D/env.sh" <<EOF
export S3_STATE_DIR='$D'
export S3_ENDPOINT='$ENDPOINT'
export S3_BUCKET='$S3_BUCKET'
export S3_ACCESS_KEY='$S3_ACCESS_KEY'
export S3_SECRET_KEY='$S3_SECRET_KEY'
export S3_REGION='$S3_REGION'
export AWS_ACCESS_KEY_ID='$S3_ACCESS_KEY'
export AWS_SECRET_ACCESS_KEY='$S3_SECRET_KEY'
export AWS_REGION='$S3_REGION'
EOF
trap - EXIT
log "ready after $(elapsed)s: endpoint $ENDPOINT, bucket $S3_BUCKET, state $D"
cat "$D/env.sh"
