#!/usr/bin/env bash
# Adapted from the team s3server recipe; driven by tests/s3/rgw.
# stop.sh - stop the daemons that start.sh started, by the pids it recorded.
#
#   bash stop.sh [--wipe] [STATE_DIR]     (STATE_DIR defaults to $S3_STATE_DIR)
#
# Only a pid whose command line names STATE_DIR/ceph.conf is signalled, so a
# reused pid or anyone else's process is never touched. Order: radosgw, osd,
# mon; SIGTERM first, SIGKILL after S3_STOP_TIMEOUT seconds (default 30).
# --wipe then deletes STATE_DIR (only if start.sh made it).
set -euo pipefail

WIPE=0
DIR=
for a in "$@"; do
  case "$a" in
    --wipe) WIPE=1;;
    -h|--help) sed -n '2,10p' "$0"; exit 0;;
    *) DIR=$a;;
  esac
done
DIR=${DIR:-${S3_STATE_DIR:-}}
log() { printf '[s3server-stop %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
[ -n "$DIR" ] || { log "no state dir: pass it or set S3_STATE_DIR"; exit 2; }
if [ ! -d "$DIR" ]; then log "$DIR does not exist; nothing to stop"; exit 0; fi
D=$(cd "$DIR" && pwd -P)
[ -e "$D/.s3server" ] || { log "$D was not made by start.sh; refusing"; exit 2; }
CONF=$D/ceph.conf
TMO=${S3_STOP_TIMEOUT:-30}

is_ours() {
  [ -r "/proc/$1/cmdline" ] || return 1
  tr '\0' ' ' < "/proc/$1/cmdline" | grep -qF -- "$CONF"
}

clean=1
for name in rgw.a osd.0 mon.a; do
  f=$D/pids/$name.pid
  [ -f "$f" ] || continue
  p=$(cat "$f")
  if [ -z "$p" ] || ! is_ours "$p"; then
    log "$name (pid ${p:-?}) was not running"
    [ "$name" = osd.0 ] && clean=0   # the OSD died on its own: memstore data not saved
    rm -f "$f"
    continue
  fi
  kill -TERM "$p" 2>/dev/null || true
  t0=$SECONDS
  while is_ours "$p"; do
    if [ $((SECONDS - t0)) -ge "$TMO" ]; then
      log "$name (pid $p) ignored SIGTERM for ${TMO}s; sending SIGKILL"
      kill -KILL "$p" 2>/dev/null || true
      clean=0
      sleep 0.5
      break
    fi
    sleep 0.1
  done
  rm -f "$f"
  log "stopped $name (pid $p) in $((SECONDS - t0))s"
done

if [ "$WIPE" = 1 ]; then
  rm -rf -- "$D"
  log "wiped $D"
elif [ "$clean" = 1 ]; then
  touch "$D/clean-stop"
fi
