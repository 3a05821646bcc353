#!/usr/bin/env bash
# A single-node Ceph test cluster on loopback: one monitor and one OSD on the memstore object store (in memory,
# nothing on disk but logs), `auth none`, pools of size 1. For the RADOS tier's tests and benchmarks; never for
# data that matters.
#   tools/ceph-cluster.sh start DIR [--pool NAME]...   starts it in DIR (created), prints the ceph.conf path
#   tools/ceph-cluster.sh stop DIR                      stops it and removes DIR's run state
#   tools/ceph-cluster.sh pause-osd DIR | resume-osd DIR  stops the OSD (SIGSTOP: it answers nothing, keeps its
#                                                         in-memory objects) and lets it go on (fault tests)
# Clients reach it with CEPH_CONF=DIR/ceph.conf (or --ceph-conf). Needs ceph-mon, ceph-osd and ceph-common
# (tools/setup.sh installs them).
set -euo pipefail
cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop|pause-osd|resume-osd DIR [--pool NAME]..." >&2; exit 2; }
shift 2
conf=$dir/ceph.conf

free_port() {
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 20000))
    ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && { echo "$p"; return; }
  done
  echo "no free port" >&2
  return 1
}

wait_for() {  # wait_for SECONDS COMMAND...: until COMMAND succeeds
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

start_osd() {
  ceph-osd -c "$conf" -i 0 2>>"$dir/log/osd.0.stderr"
  wait_for 60 bash -c "ceph -c '$conf' osd dump 2>/dev/null | grep -q '^osd.0 up'" ||
    { echo "the OSD did not come up (log: $dir/log/osd.0.log)" >&2; exit 1; }
}

stop_daemon() {  # stop_daemon NAME: SIGTERM, then SIGKILL after 10 s
  local pidfile=$dir/run/$1.pid pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  kill -CONT "$pid" 2>/dev/null || true  # a paused daemon hears nothing else
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

case $cmd in
  start)
    pools=()
    while [ $# -gt 0 ]; do
      case $1 in
        --pool) pools+=("$2"); shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
      esac
    done
    mkdir -p "$dir"/{mon,osd,run,log}
    port=$(free_port)
    fsid=$(cat /proc/sys/kernel/random/uuid)
    cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = 127.0.0.1:$port
public addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
ms bind ipv6 = false
run dir = $dir/run
log file = $dir/log/\$name.log
pid file = $dir/run/\$name.pid
admin socket = $dir/run/\$name.asok
keyring = $dir/keyring
osd objectstore = memstore
memstore device bytes = ${CEPH_MEMSTORE_BYTES:-8589934592}
osd data = $dir/osd
osd max object size = 134217728
osd op num threads per shard = 1
osd op num shards = 2
mon data = $dir/mon
mgr initial modules =
EOF
    ceph-authtool --create-keyring "$dir/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    monmaptool --create --add a "127.0.0.1:$port" --fsid "$fsid" "$dir/monmap" >/dev/null
    ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/keyring"
    ceph-mon -c "$conf" -i a 2>>"$dir/log/mon.a.stderr"
    wait_for 30 ceph -c "$conf" mon stat || { echo "the monitor did not start (log: $dir/log/mon.a.log)" >&2; exit 1; }
    uuid=$(cat /proc/sys/kernel/random/uuid)
    ceph -c "$conf" osd new "$uuid" >/dev/null
    ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$uuid" >/dev/null 2>&1
    start_osd
    for p in "${pools[@]}"; do
      ceph -c "$conf" osd pool create "$p" 8 8 >/dev/null 2>&1
      ceph -c "$conf" osd pool set "$p" size 1 --yes-i-really-mean-it >/dev/null 2>&1
      ceph -c "$conf" osd pool application enable "$p" rados >/dev/null 2>&1
    done
    # A pool is usable once a write to it returns (its placement groups are active).
    for p in "${pools[@]}"; do
      wait_for 60 timeout 5 rados -c "$conf" -p "$p" put ceph-cluster-probe /dev/null ||
        { echo "pool $p is not usable (log: $dir/log/osd.0.log)" >&2; exit 1; }
      rados -c "$conf" -p "$p" rm ceph-cluster-probe
    done
    echo "$conf"
    ;;
  stop)
    stop_daemon osd.0
    stop_daemon mon.a
    rm -rf "$dir/mon" "$dir/osd" "$dir/run"
    ;;
  pause-osd) kill -STOP "$(cat "$dir/run/osd.0.pid")" ;;
  resume-osd) kill -CONT "$(cat "$dir/run/osd.0.pid")" ;;
  *) echo "usage: $0 start|stop|pause-osd|resume-osd DIR [--pool NAME]..." >&2; exit 2 ;;
esac
