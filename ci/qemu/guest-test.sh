#!/bin/sh
# The Linux-kernel-host acceptance test, run inside the QEMU guest (busybox sh).
#
#   guest-test.sh ADDR PORT SUBNQN HOSTNQN BAD_HOSTNQN [DIGESTS]
#
# ADDR/PORT: the NVMe/TCP portal (discovery and I/O); SUBNQN: the subsystem under test, which
# must have namespace 1 and must allow HOSTNQN and refuse BAD_HOSTNQN. DIGESTS: off, on or both
# (default): "both" runs the whole sequence twice, plainly and then with header and data digests
# (-g -G) and a smaller data set. Then a connect as BAD_HOSTNQN must fail.
#
# Optional parts, from the environment (set by /init from tessera.* kernel arguments):
#   GUEST_DISCARD=1     (default) blkdiscard of a range and of the whole device, fstrim on ext4;
#                       discarded blocks must read back as the namespace's DLFEAT promises
#   GUEST_MDTS=N        id-ctrl must report MDTS N (0: unlimited) and max_hw_sectors_kb must
#                       match; nvme write/read passthrough of 512 KiB and 1 MiB (default: skipped)
#   GUEST_ANY_NQN=NQN   a subsystem allowing any host: connect with a host NQN that is not
#                       NQN-formed, write and read back 64 KiB, disconnect (default: skipped)
#   GUEST_ASSUME_ZEROES=1  expect discarded blocks to read as zeroes even when DLFEAT does not
#                       promise it (reference mode: nvmet's null_blk does)
#   GUEST_IDENTIFY=1    (default) print Identify Controller (I/O and discovery controller) and
#                       Identify Namespace 1 as nvme-cli JSON, each line prefixed
#                       "IDJSON <io_ctrl|namespace|discovery_ctrl>: " (first pass only)
#   GUEST_PATHS="P1 P2 ..."  multipath (a cluster): the discovery log through ADDR:PORT must list
#                       the subsystem on every one of these portal ports; `nvme connect-all`
#                       through ADDR:PORT must connect one live controller per port, all merged
#                       into one namespace (native multipath); disconnect must remove them all
#   GUEST_DRAIN_PORT=P  multipath: the fio step becomes fio-drain: fio verify runs in a loop
#                       while the guest asks the harness (console lines ANA-DRAIN-REQUEST and
#                       ANA-UNDRAIN-REQUEST) to drain the server of portal P and to bring it back;
#                       that path's ANA state (sysfs ana_state) must turn inaccessible, then
#                       optimized again, the other paths staying optimized, and every fio run
#                       must pass its verify
#   GUEST_KILL_PORT=P   multipath over a replicated volume: the fio step becomes fio-kill: fio
#                       verify runs in a loop over every path (iopolicy round-robin) while the
#                       guest asks the harness (console lines KILL-REQUEST and RESTART-REQUEST)
#                       to kill -9 the server of portal P and later to restart it; `nvme
#                       list-subsys` must show that path leave the live state and come back
#                       live (then ANA optimized), every fio run must pass its verify, and the
#                       kernel log must show no I/O error. With GUEST_KILL_ID (that server's id)
#                       and GUEST_MANAGER_PORT, the guest then asks (COPY-MOVE-REQUEST) for its
#                       copies to move off it and waits until the manager's map
#                       (10.0.2.2:PORT, GET /v1/map) holds none on it, fio still verifying.
#                       Then it asks (MANAGER-STOP-REQUEST) for the manager to be stopped
#                       (SIGSTOP) and waits for a whole fio run to pass its verify with it
#                       stopped (the servers' read leases run out: every read is confirmed
#                       with the other copy), then asks (MANAGER-CONT-REQUEST) for it to go on.
#                       Only flush and disconnect follow.
#   GUEST_RECONNECT_DELAY=S  multipath: `nvme connect-all --reconnect-delay=S` (default: the
#                       kernel's 10 s)
#
# Every step runs under its own timeout (busybox timeout: 143 on expiry, not 124). On the first
# failure: print why and the kernel log tail, disconnect best-effort, write the step's name to
# /tmp/tessera-failed-step and exit 1. Exit 0 when everything passed. /init prints the verdict.
#
# The script calls itself as `guest-test.sh --step NAME` to run one step in a child that
# `timeout` can kill; steps share state through files in $STATE and exported variables.

# shellcheck disable=SC2329 # the step_* functions are called through "step_$name"
set -u
SELF="$0"
STATE=/tmp/tessera-state
MNT=/mnt/tessera
NSID=1
export STATE MNT NSID

log() { echo "$*"; }
die() { echo "ERROR: $*"; exit 1; }
put() { echo "$2" > "$STATE/$1"; }
get() { cat "$STATE/$1" 2>/dev/null; }

# hostid: the UUID of a uuid-style host NQN, else a fixed one derived from nothing in particular.
hostid_of() {
  case "$1" in
    *:uuid:*) echo "${1##*:uuid:}" ;;
    *) echo "$2" ;;
  esac
}

# Controllers (nvmeN) of subsystem $1 (default $NQN) over TCP, one per line.
ctrls_of_nqn() {
  for c in /sys/class/nvme/nvme*; do
    [ -e "$c/subsysnqn" ] || continue
    [ "$(cat "$c/subsysnqn")" = "${1:-$NQN}" ] || continue
    [ "$(cat "$c/transport" 2>/dev/null)" = tcp ] || continue
    basename "$c"
  done
}
all_ctrls() {
  n=0
  for c in /sys/class/nvme/nvme*; do [ -e "$c" ] && n=$((n + 1)); done
  echo "$n"
}

# The number of words in $1.
count_words() { set -- $1; echo $#; }
# The controller of $NQN whose address has port $1 ("" if none).
ctrl_of_port() {
  for c in $(ctrls_of_nqn); do
    case ",$(cat "/sys/class/nvme/$c/address")," in *",trsvcid=$1,"*) echo "$c"; return 0 ;; esac
  done
}
# The ANA state of namespace $NSID through controller $1 (its path disk's sysfs ana_state).
ana_state_of() {
  for d in /sys/class/nvme/"$1"/nvme*c*n*; do
    [ -e "$d/ana_state" ] || continue
    [ "$(cat "$d/nsid" 2>/dev/null || echo "$NSID")" = "$NSID" ] || continue
    cat "$d/ana_state"; return 0
  done
  echo none
}
# One line: every path's port, controller, controller state and ANA state.
paths_line() {
  for p in $GUEST_PATHS; do
    c="$(ctrl_of_port "$p")"
    if [ -n "$c" ]; then
      printf '%s ' "$p:$c:$(cat "/sys/class/nvme/$c/state"):$(ana_state_of "$c")"
    else
      printf '%s ' "$p:none"
    fi
  done
  echo
}

# What DLFEAT bits 2:0 promise deallocated blocks read as.
dealloc_reads() {
  case $(( $1 & 7 )) in
    1) echo zeroes ;;
    2) echo "all ones (0xff)" ;;
    *) echo "nothing promised" ;;
  esac
}
# Drop the host's caches of the block device so that reads go to the target.
nocache() { blockdev --flushbufs "$1"; echo 3 > /proc/sys/vm/drop_caches; }
# sha256 of COUNT blocks of BS bytes at block SKIP of DEV.
dev_sum() { dd if="$1" bs="$2" skip="$3" count="$4" 2>/dev/null | sha256sum | cut -d' ' -f1; }
zero_sum() { dd if=/dev/zero bs="$1" count="$2" 2>/dev/null | sha256sum | cut -d' ' -f1; }
# check_deallocated DEV BS SKIP COUNT WHAT: the blocks read as DLFEAT promises (zeroes); when
# DLFEAT promises nothing, say so (the discard's success was all there was to check).
# GUEST_ASSUME_ZEROES=1 (reference mode): expect zeroes although DLFEAT does not promise them
# (nvmet reports DLFEAT 0, but its memory-backed null_blk frees discarded sectors, which then
# read as zeroes): this exercises the zero checks against the reference too.
check_deallocated() {
  dlfeat="$(get dlfeat)"
  why="DLFEAT $dlfeat (bits 2:0 = 001b) promises zeroes"
  [ $(( dlfeat & 7 )) -ne 1 ] && [ "${GUEST_ASSUME_ZEROES:-0}" = 1 ] &&
    why="DLFEAT $dlfeat promises nothing, but the reference's null_blk reads discarded sectors as zeroes"
  if [ $(( dlfeat & 7 )) -eq 1 ] || [ "${GUEST_ASSUME_ZEROES:-0}" = 1 ]; then
    [ "$(dev_sum "$1" "$2" "$3" "$4")" = "$(zero_sum "$2" "$4")" ] || {
      dd if="$1" bs="$2" skip="$3" count="$4" 2>/dev/null | hexdump -C | head -n 12
      die "$5: not zeroes after the discard, although $why"
    }
    echo "$5: reads as zeroes ($why)"
  else
    echo "$5: DLFEAT $dlfeat promises nothing for deallocated blocks: only the discard's success is checked"
  fi
}

# ---------------------------------------------------------------------------------------------
# Steps. Each runs in its own process; a non-zero exit (or die) fails the step.

step_discover() {
  out="$(nvme discover --transport=tcp --traddr="$ADDR" --trsvcid="$PORT" \
    --hostnqn="$HOSTNQN" --hostid="$HOSTID" 2>&1)"
  rc=$?
  echo "$out"
  [ $rc -eq 0 ] || die "nvme discover exited $rc"
  # One record per "Discovery Log Entry"; the subsystem must be offered over tcp.
  echo "$out" | awk -v nqn="$NQN" '
    /Discovery Log Entry/ { if (sub_ok && tcp) found = 1; sub_ok = 0; tcp = 0 }
    $1 == "trtype:" && $2 == "tcp" { tcp = 1 }
    $1 == "subnqn:" && $2 == nqn { sub_ok = 1 }
    END { if (sub_ok && tcp) found = 1; exit !found }' ||
    die "subsystem $NQN (trtype tcp) is not in the discovery log"
  [ -n "${GUEST_PATHS:-}" ] || return 0
  # Multipath: the subsystem on every server's portal (the ports of its entries).
  listed="$(echo "$out" | awk -v nqn="$NQN" '
    function flush() { if (s == nqn) print p; s = ""; p = "" }
    /Discovery Log Entry/ { flush() }
    $1 == "trsvcid:" { p = $2 }
    $1 == "subnqn:" { s = $2 }
    END { flush() }' | sort -n | tr '\n' ' ')"
  echo "paths of $NQN in the discovery log of $ADDR:$PORT: ports $listed"
  for p in $GUEST_PATHS; do
    case " $listed " in *" $p "*) ;; *) die "port $p (a server's portal) is not listed for $NQN" ;; esac
  done
  [ "$(count_words "$listed")" -eq "$(count_words "$GUEST_PATHS")" ] ||
    die "the discovery log lists $NQN on ports '$listed', expected exactly '$GUEST_PATHS'"
}

step_connect() {
  [ -z "$(ctrls_of_nqn)" ] || die "a controller of $NQN exists before connect: $(ctrls_of_nqn)"
  [ -n "${GUEST_PATHS:-}" ] && { connect_all; return; }
  # shellcheck disable=SC2086 # $DIGEST_FLAGS is a list of flags
  # -vv: libnvme prints the option string it writes to /dev/nvme-fabrics ("connect ctrl, '...'").
  out="$(nvme connect --transport=tcp --traddr="$ADDR" --trsvcid="$PORT" --nqn="$NQN" \
    --hostnqn="$HOSTNQN" --hostid="$HOSTID" $DIGEST_FLAGS --verbose --verbose 2>&1)"
  rc=$?
  echo "$out"
  [ $rc -eq 0 ] || die "nvme connect exited $rc"
  opts="$(echo "$out" | sed -n "s/^connect ctrl, '\(.*\)'\$/\1/p" | head -n1)"
  case "$DIGEST_FLAGS" in
    *--hdr-digest*)
      case ",$opts," in *,hdr_digest,*) ;; *) die "hdr_digest not requested: '$opts'" ;; esac
      case ",$opts," in *,data_digest,*) ;; *) die "data_digest not requested: '$opts'" ;; esac ;;
    *)
      case ",$opts," in *_digest*) die "a digest was requested in the plain pass: '$opts'" ;; esac ;;
  esac
}

# Multipath: `nvme connect-all` through the one portal ADDR:PORT connects every path the
# discovery log lists; one live controller per server's portal must appear.
connect_all() {
  # shellcheck disable=SC2086 # $DIGEST_FLAGS is a list of flags
  out="$(nvme connect-all --transport=tcp --traddr="$ADDR" --trsvcid="$PORT" \
    --hostnqn="$HOSTNQN" --hostid="$HOSTID" $DIGEST_FLAGS \
    ${GUEST_RECONNECT_DELAY:+--reconnect-delay=$GUEST_RECONNECT_DELAY} 2>&1)"
  rc=$?
  echo "$out"
  [ $rc -eq 0 ] || die "nvme connect-all exited $rc"
  want="$(count_words "$GUEST_PATHS")"
  i=0
  while [ $i -lt 300 ]; do
    live=0
    for p in $GUEST_PATHS; do
      c="$(ctrl_of_port "$p")"
      [ -n "$c" ] && [ "$(cat "/sys/class/nvme/$c/state")" = live ] && live=$((live + 1))
    done
    [ "$live" -eq "$want" ] && break
    sleep 0.1
    i=$((i + 1))
  done
  echo "paths (port:controller:state:ana_state): $(paths_line)"
  [ "$live" -eq "$want" ] || die "$live of $want paths live after nvme connect-all"
  n="$(count_words "$(ctrls_of_nqn)")"
  [ "$n" -eq "$want" ] || die "$n controllers of $NQN, expected $want (one per server)"
  nvme list-subsys 2>&1
}

step_wait_ns() {
  i=0
  while [ $i -lt 300 ]; do
    ctrl="$(ctrls_of_nqn | head -n1)"
    if [ -n "$ctrl" ] && [ "$(cat "/sys/class/nvme/$ctrl/state")" = live ]; then
      for b in /sys/block/nvme*n*; do
        [ -e "$b" ] || continue
        name="$(basename "$b")"
        case "$name" in nvme*c*n*) continue ;; esac       # a multipath path's hidden disk
        [ "$(cat "$b/device/subsysnqn" 2>/dev/null)" = "$NQN" ] || continue
        [ "$(cat "$b/nsid" 2>/dev/null)" = "$NSID" ] || continue
        [ -b "/dev/$name" ] || continue
        put ctrl "$ctrl"
        put ns "$name"
        put lbs "$(cat "$b/queue/logical_block_size")"
        log "controller $ctrl ($(cat "/sys/class/nvme/$ctrl/address")), namespace /dev/$name," \
          "$(cat "$b/size") sectors, logical block $(cat "$b/queue/logical_block_size")"
        addr="$(cat "/sys/class/nvme/$ctrl/address")"
        [ -n "${GUEST_PATHS:-}" ] && return 0    # multipath: any path's controller
        case ",$addr," in *",traddr=$ADDR,"*) ;; *) die "controller address '$addr' is not $ADDR" ;; esac
        case ",$addr," in *",trsvcid=$PORT,"*) ;; *) die "controller address '$addr' is not port $PORT" ;; esac
        return 0
      done
    fi
    sleep 0.1
    i=$((i + 1))
  done
  ls -l /sys/class/nvme/ /sys/block/ 2>&1
  die "no live controller with namespace $NSID of $NQN appeared"
}

step_list() {
  ns="$(get ns)"
  out="$(nvme list 2>&1)"
  rc=$?
  echo "$out"
  [ $rc -eq 0 ] || die "nvme list exited $rc"
  echo "$out" | grep -q "^/dev/$ns " || die "/dev/$ns is not in nvme list"
  nvme list-subsys 2>&1 || true
}

step_id_ctrl() {
  ctrl="$(get ctrl)"
  out="$(nvme id-ctrl "/dev/$ctrl" 2>&1)"
  rc=$?
  [ $rc -eq 0 ] || { echo "$out"; die "nvme id-ctrl exited $rc"; }
  echo "$out" | awk '$1 ~ /^(vid|sn|mn|fr|mdts|cntlid|ver|cmic|oacs|oncs|vwc|sgls|kas|ioccsz|iorcsz|icdoff|maxcmd|nn|subnqn)$/'
  subnqn="$(echo "$out" | awk '$1 == "subnqn" { print $3 }')"
  [ "$subnqn" = "$NQN" ] || die "id-ctrl subnqn is '$subnqn', want '$NQN'"
}

step_id_ns() {
  ns="$(get ns)"
  out="$(nvme id-ns "/dev/$ns" 2>&1)"
  rc=$?
  echo "$out" | grep -E '^(nsze|ncap|nuse|nsfeat|nlbaf|flbas|nmic|nguid|eui64|lbaf .*in use)'
  [ $rc -eq 0 ] || { echo "$out"; die "nvme id-ns exited $rc"; }
  nsze="$(echo "$out" | awk '$1 == "nsze" { print $3 }')"
  # DLFEAT (NVM Command Set spec, Identify Namespace byte 33): bits 2:0 = 001b: deallocated logical
  # blocks read as zeroes; 000b: not reported; 010b: as all ones. The discard steps check it.
  dlfeat="$(echo "$out" | awk '$1 == "dlfeat" { print $3 }')"
  [ -n "$dlfeat" ] || die "no dlfeat in id-ns"
  put dlfeat "$dlfeat"
  echo "dlfeat $dlfeat: deallocated blocks read as $(dealloc_reads "$dlfeat")"
  lbads="$(echo "$out" | sed -n 's/.*lbads:\([0-9]*\).*(in use).*/\1/p' | head -n1)"
  [ -n "$nsze" ] && [ -n "$lbads" ] || die "no nsze or in-use LBA format in id-ns"
  bytes=$(( nsze << lbads ))
  sys=$(( $(cat "/sys/block/$ns/size") * 512 ))
  [ "$bytes" -gt 0 ] || die "namespace size is 0"
  [ "$bytes" -eq "$sys" ] || die "id-ns size $bytes bytes (nsze $nsze, lbads $lbads) != block device $sys bytes"
  [ $(( 1 << lbads )) -eq "$(cat "/sys/block/$ns/queue/logical_block_size")" ] ||
    die "LBA data size 2^$lbads != logical_block_size $(cat "/sys/block/$ns/queue/logical_block_size")"
}

step_smart_log() {
  ctrl="$(get ctrl)"
  out="$(nvme smart-log "/dev/$ctrl" 2>&1)"
  rc=$?
  echo "$out"
  [ $rc -eq 0 ] || die "nvme smart-log exited $rc"
  echo "$out" | grep -q '^critical_warning' || die "no critical_warning in smart-log output"
}

step_fio() {
  ns="$(get ns)"
  # FIO_SPAN=device (tessera.fiospan=device): FIO_SIZE of I/O spread over the whole namespace
  # (every extent of a striped cluster volume) instead of over its first FIO_SIZE bytes.
  region="--size=$FIO_SIZE" where=""
  if [ "${FIO_SPAN:-}" = device ]; then
    region="--size=$(( $(cat "/sys/block/$ns/size") * 512 )) --io_size=$FIO_SIZE"
    where=" over the whole device"
  fi
  # shellcheck disable=SC2086 # $region is a list of options
  out="$(fio --name=tessera-verify --filename="/dev/$ns" --ioengine=libaio --direct=1 \
    --rw=randwrite --bsrange=4k-128k --iodepth=16 $region \
    --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 \
    --randrepeat=0 --group_reporting 2>&1)"
  rc=$?
  echo "$out"
  [ $rc -eq 0 ] || die "fio exited $rc"
  # "  write: IOPS=1274, BW=56.2MiB/s (59.0MB/s)(32.0MiB/569msec)" and the verify phase's "read:"
  w="$(echo "$out" | sed -n 's/^ *write: \(IOPS=[^,]*\), \(BW=[^ ]*\) .*(\([^)]*\)).*/\1 \2 (\3)/p')"
  r="$(echo "$out" | sed -n 's/^ *read: \(IOPS=[^,]*\), \(BW=[^ ]*\) .*(\([^)]*\)).*/\1 \2 (\3)/p')"
  [ -n "$w" ] && [ -n "$r" ] || die "fio did not report both the write and the verify (read) phase"
  echo "FIO-FIGURES $PASS: randwrite 4k-128k qd16 libaio direct${where}: write $w; verify read $r"
}

# Multipath: fio verify (the fio step's job) in a loop while the server of GUEST_DRAIN_PORT is
# drained and brought back by the harness; the path's ANA state follows, every fio run passes.
step_fio_drain() {
  ns="$(get ns)"
  dctrl="$(ctrl_of_port "$GUEST_DRAIN_PORT")"
  [ -n "$dctrl" ] || die "no controller for port $GUEST_DRAIN_PORT"
  echo "paths before (port:controller:state:ana_state): $(paths_line)"
  for p in $GUEST_PATHS; do
    a="$(ana_state_of "$(ctrl_of_port "$p")")"
    [ "$a" = optimized ] || die "path of port $p is '$a' before the drain, expected optimized"
  done
  rm -f "$STATE/drain-done" "$STATE/fio-failed"
  ( n=0
    while :; do
      n=$((n + 1))
      ( step_fio ) > "$STATE/fio-$n.log" 2>&1 ||
        { echo "$n" > "$STATE/fio-failed"; exit 1; }
      echo "$n" > "$STATE/fio-runs"
      [ -e "$STATE/drain-done" ] && exit 0
    done ) &
  bg=$!
  # wait_ana STATE: until the drained path shows STATE (90 s at most); fio must keep passing.
  # (The time includes the harness noticing the request: it looks once a second.)
  wait_ana() {
    t0="$(date +%s)" u0="$(cut -d' ' -f1 /proc/uptime)"
    while [ "$(ana_state_of "$dctrl")" != "$1" ]; do
      [ -e "$STATE/fio-failed" ] && { cat "$STATE/fio-$(cat "$STATE/fio-failed").log"; die "fio run $(cat "$STATE/fio-failed") failed"; }
      [ $(( $(date +%s) - t0 )) -lt 90 ] || { echo "paths: $(paths_line)"; die "path of port $GUEST_DRAIN_PORT did not turn $1 within 90 s"; }
      sleep 0.1
    done
    took="$(awk -v a="$u0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1f", b - a }')"
    runs="$(cat "$STATE/fio-runs" 2>/dev/null || echo 0)"
    running=no; kill -0 "$bg" 2>/dev/null && running=yes
    echo "ANA-STATE port $GUEST_DRAIN_PORT: $1 $took s after the request (fio runs done: $runs, fio running: $running)"
    echo "paths (port:controller:state:ana_state): $(paths_line)"
    nvme list-subsys "/dev/$ns" 2>&1
  }
  sleep 2
  echo "ANA-DRAIN-REQUEST port $GUEST_DRAIN_PORT"
  wait_ana inaccessible
  for p in $GUEST_PATHS; do
    [ "$p" = "$GUEST_DRAIN_PORT" ] && continue
    a="$(ana_state_of "$(ctrl_of_port "$p")")"
    [ "$a" = optimized ] || die "path of port $p is '$a' during the drain of $GUEST_DRAIN_PORT, expected optimized"
  done
  sleep 2
  echo "ANA-UNDRAIN-REQUEST port $GUEST_DRAIN_PORT"
  wait_ana optimized
  touch "$STATE/drain-done"
  wait "$bg"
  rc=$?
  runs="$(cat "$STATE/fio-runs" 2>/dev/null || echo 0)"
  for i in $(seq 1 "$runs"); do grep -a '^FIO-FIGURES' "$STATE/fio-$i.log"; done
  [ $rc -eq 0 ] && [ ! -e "$STATE/fio-failed" ] ||
    { n="$(cat "$STATE/fio-failed" 2>/dev/null || echo "$runs")"; cat "$STATE/fio-$n.log" 2>/dev/null; die "fio run $n failed"; }
  echo "fio verify: $runs run(s) passed across the drain and the return of port $GUEST_DRAIN_PORT"
}

# The controller state `nvme list-subsys` shows for the path of portal port $1 ("absent" when
# it lists no controller there); the listing goes to $STATE/list-subsys.
subsys_state_of_port() {
  nvme list-subsys > "$STATE/list-subsys" 2>&1
  line="$(grep -E "trsvcid=$1([, ]|\$)" "$STATE/list-subsys" | head -n1)"
  [ -n "$line" ] || { echo absent; return; }
  st=unknown
  for w in $line; do
    case "$w" in new|live|resetting|connecting|deleting|dead) st="$w" ;; esac
  done
  echo "$st"
}
uptime_s() { cut -d' ' -f1 /proc/uptime; }
# Writes completed over every path of $NQN (the 6.1 kernel counts I/O on the paths' disks, not
# on the multipath device).
writes_done() {
  n=0
  for st in /sys/block/nvme*c*n*/stat; do
    [ "$(cat "${st%/stat}/device/subsysnqn" 2>/dev/null)" = "$NQN" ] || continue
    # shellcheck disable=SC2046 # the stat fields as words
    set -- $(cat "$st")
    n=$(( n + $5 ))
  done
  echo "$n"
}
since() { awk -v a="$1" -v b="$(uptime_s)" 'BEGIN { printf "%.1f", b - a }'; }

# Multipath over a replicated volume: fio verify (the fio step's job) runs in a loop over every
# path (iopolicy round-robin) while the harness kills the server of GUEST_KILL_PORT (console
# line KILL-REQUEST; it answers with SIGKILL) and later restarts it on its pool (RESTART-REQUEST).
# `nvme list-subsys` must show that path leave the live state and come back live, its ANA state
# must be optimized again, a fio run must complete across the kill and another one after the
# return, every run must pass its verify, and the kernel log must show no I/O error (path
# failover and reconnect messages are expected and printed).
step_fio_kill() {
  ns="$(get ns)"
  kctrl="$(ctrl_of_port "$GUEST_KILL_PORT")"
  [ -n "$kctrl" ] || die "no controller for port $GUEST_KILL_PORT"
  sub=""
  for s in /sys/class/nvme-subsystem/nvme-subsys*; do
    [ "$(cat "$s/subsysnqn" 2>/dev/null)" = "$NQN" ] && sub="$s"
  done
  [ -n "$sub" ] || die "no nvme-subsystem of $NQN in sysfs"
  # Round-robin: every live optimized path carries I/O, the one that dies included.
  echo round-robin > "$sub/iopolicy" || die "cannot set $sub/iopolicy"
  echo "$(basename "$sub"): iopolicy $(cat "$sub/iopolicy")"
  echo "paths before (port:controller:state:ana_state): $(paths_line)"
  for p in $GUEST_PATHS; do
    c="$(ctrl_of_port "$p")"
    [ "$(cat "/sys/class/nvme/$c/state")" = live ] || die "path of port $p is not live before the kill"
    a="$(ana_state_of "$c")"
    [ "$a" = optimized ] || die "path of port $p is '$a' before the kill, expected optimized"
  done
  dmesg_from="$(dmesg | wc -l)"
  w0="$(writes_done)"
  rm -f "$STATE/kill-done" "$STATE/fio-failed" "$STATE/fio-runs"
  ( n=0
    while :; do
      n=$((n + 1))
      ( step_fio ) > "$STATE/fio-$n.log" 2>&1 ||
        { echo "$n" > "$STATE/fio-failed"; exit 1; }
      echo "$n" > "$STATE/fio-runs"
      [ -e "$STATE/kill-done" ] && exit 0
    done ) &
  bg=$!
  runs() { cat "$STATE/fio-runs" 2>/dev/null || echo 0; }
  fio_ok() {
    [ -e "$STATE/fio-failed" ] || return 0
    n="$(cat "$STATE/fio-failed")"
    touch "$STATE/kill-done"
    cat "$STATE/fio-$n.log"
    echo "kernel log since the step began:"; dmesg | tail -n +"$((dmesg_from + 1))" | tail -n 60
    die "fio run $n failed"
  }
  # until_ SECONDS WHAT CONDITION...: wait (0.2 s steps) until the command succeeds; fio must
  # keep passing.
  until_() {
    lim="$1" what="$2"; shift 2
    t0="$(date +%s)"
    until "$@"; do
      fio_ok
      [ $(( $(date +%s) - t0 )) -lt "$lim" ] || {
        touch "$STATE/kill-done"
        echo "paths (port:controller:state:ana_state): $(paths_line)"
        cat "$STATE/list-subsys" 2>/dev/null
        die "$what within $lim s"
      }
      sleep 0.2
    done
  }
  state_is() { [ "$(subsys_state_of_port "$GUEST_KILL_PORT")" = "$1" ]; }
  state_is_not() { [ "$(subsys_state_of_port "$GUEST_KILL_PORT")" != "$1" ]; }
  runs_over() { [ "$(runs)" -gt "$1" ]; }
  ana_is() { [ "$(ana_state_of "$kctrl")" = "$1" ]; }
  writes_flow() { [ "$(writes_done)" -ge $(( w0 + 64 )) ]; }
  # The kill comes once fio's first write phase is well under way (64 writes of 4-128 KiB out
  # of 32 MiB): it lands among writes in flight.
  until_ 60 "fio's writes did not start" writes_flow
  tk="$(uptime_s)"
  echo "KILL-REQUEST port $GUEST_KILL_PORT (fio runs done: $(runs), writes completed: $(( $(writes_done) - w0 )))"
  until_ 60 "nvme list-subsys did not show the path of port $GUEST_KILL_PORT leave the live state" \
    state_is_not live
  st="$(subsys_state_of_port "$GUEST_KILL_PORT")"
  echo "PATH-STATE port $GUEST_KILL_PORT: $st (not live) $(since "$tk") s after the kill request" \
    "(fio runs done: $(runs), writes completed: $(( $(writes_done) - w0 )))"
  cat "$STATE/list-subsys"
  echo "paths (port:controller:state:ana_state): $(paths_line)"
  # The run under way at the kill must finish and verify, and a whole run must then pass with
  # the server dead.
  r0="$(runs)"
  until_ 180 "no fio run completed after the kill of port $GUEST_KILL_PORT (I/O did not resume)" \
    runs_over "$r0"
  echo "FIO-AFTER-KILL run $(runs) passed its verify $(since "$tk") s after the kill request" \
    "(path of port $GUEST_KILL_PORT: $(subsys_state_of_port "$GUEST_KILL_PORT"))"
  r0="$(runs)"
  until_ 180 "no whole fio run completed with the server of port $GUEST_KILL_PORT dead" \
    runs_over "$r0"
  echo "FIO-AFTER-KILL run $(runs) (started with the path down) passed its verify" \
    "$(since "$tk") s after the kill request (path of port $GUEST_KILL_PORT: $(subsys_state_of_port "$GUEST_KILL_PORT"))"
  state_is_not live ||
    echo "WARNING: the path of port $GUEST_KILL_PORT is live again before the restart request"
  trs="$(uptime_s)"
  echo "RESTART-REQUEST port $GUEST_KILL_PORT"
  until_ 150 "nvme list-subsys did not show the path of port $GUEST_KILL_PORT live again" \
    state_is live
  echo "PATH-STATE port $GUEST_KILL_PORT: live $(since "$trs") s after the restart request"
  cat "$STATE/list-subsys"
  until_ 90 "the path of port $GUEST_KILL_PORT did not turn ANA optimized after its return" \
    ana_is optimized
  echo "ANA-STATE port $GUEST_KILL_PORT: optimized $(since "$trs") s after the restart request"
  echo "paths (port:controller:state:ana_state): $(paths_line)"
  nvme list-subsys "/dev/$ns" 2>&1
  # Then every copy on that server moves off it (the harness starts the moves: add, rebuild,
  # drop), fio still running: the committed map must come to hold no copy on it, no pending
  # move and no copy out of sync. The host keeps its path to that server, which forwards.
  if [ -n "$GUEST_KILL_ID" ] && [ -n "$GUEST_MANAGER_PORT" ]; then
    copies_moved() {
      m="$(wget -q -O - "http://10.0.2.2:$GUEST_MANAGER_PORT/v1/map?role=client" 2>/dev/null)" ||
        return 1
      case "$m" in
        '') return 1 ;;
        *"\"server\":\"$GUEST_KILL_ID\""*|*'"replaces"'*|*'"rebuilding"'*|*'"stale"'*) return 1 ;;
      esac
    }
    copies_moved && die "the map holds no copy on $GUEST_KILL_ID before the moves (wrong id?)"
    tm="$(uptime_s)"
    r0="$(runs)"
    echo "COPY-MOVE-REQUEST server $GUEST_KILL_ID (fio runs done: $r0)"
    until_ 180 "the copies on $GUEST_KILL_ID did not move off it" copies_moved
    echo "COPIES-MOVED off $GUEST_KILL_ID $(since "$tm") s after the request (fio runs done: $(runs))"
    echo "paths (port:controller:state:ana_state): $(paths_line)"
    # A manager outage: stopped (the harness answers within a quarter of a second) for a whole
    # fio run, past every server's read lease (1.5 s); reads go on, each confirmed with the
    # other copy (docs/replication.md, "Read leases"), and must verify.
    tms="$(uptime_s)"
    echo "MANAGER-STOP-REQUEST (fio runs done: $(runs))"
    sleep 3
    fio_ok
    r0="$(runs)"
    until_ 180 "no fio run completed with the manager stopped" runs_over "$r0"
    r0="$(runs)"
    until_ 180 "no whole fio run completed with the manager stopped" runs_over "$r0"
    echo "FIO-MANAGER-STOPPED run $(runs) (started and finished with the manager stopped)" \
      "passed its verify $(since "$tms") s after the stop request"
    echo "MANAGER-CONT-REQUEST"
  fi
  r1="$(runs)"
  until_ 180 "no fio run completed after the path of port $GUEST_KILL_PORT came back" runs_over "$r1"
  touch "$STATE/kill-done"
  wait "$bg"
  rc=$?
  runs="$(runs)"
  for i in $(seq 1 "$runs"); do
    grep -a '^FIO-FIGURES' "$STATE/fio-$i.log"
    # The write phase's total latency line: its max is the longest a write waited (in the run
    # under way at the kill: the failover time the host saw).
    echo "FIO-LATENCY run $i: write $(awk '/^ *write:/ { w = 1 } w && /^ *lat \(/ { sub(/^ */, ""); print; exit }' "$STATE/fio-$i.log")"
  done
  [ $rc -eq 0 ] && [ ! -e "$STATE/fio-failed" ] ||
    { n="$(cat "$STATE/fio-failed" 2>/dev/null || echo "$runs")"; cat "$STATE/fio-$n.log" 2>/dev/null; die "fio run $n failed"; }
  # The kernel log: path failover and reconnects are expected; an I/O error is not.
  dmesg | tail -n +"$((dmesg_from + 1))" > "$STATE/dmesg"
  echo "kernel log during the step: $(wc -l < "$STATE/dmesg") lines; nvme lines (first 40):"
  grep -a -E 'nvme' "$STATE/dmesg" | head -n 40
  # (An I/O error the block layer saw, an NVMe error status logged for a namespace command,
  # or I/O failed for want of any path; "no usable path - requeuing I/O" is failover.)
  bad="$(grep -a -E 'I/O error|Buffer I/O|@ LBA|blk_update_request|failing I/O|critical (medium|target)' "$STATE/dmesg")"
  [ -z "$bad" ] || { echo "$bad" | head -n 20; die "I/O errors in the kernel log (beyond path failover)"; }
  echo "fio verify: $runs run(s) passed across the kill of port $GUEST_KILL_PORT's server and its return; no I/O error in the kernel log"
}

step_mkfs() {
  ns="$(get ns)"
  mkfs.ext4 -F -q -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "/dev/$ns" ||
    die "mkfs.ext4 failed"
}

step_fs_write() {
  ns="$(get ns)"
  mkdir -p "$MNT"
  mount -t ext4 "/dev/$ns" "$MNT" || die "mount failed"
  cd "$MNT" || die "cd $MNT"
  mkdir -p a/b/c d || die "mkdir"
  echo "tessera $PASS $(date)" > hello.txt
  dd if=/dev/urandom of=empty bs=1 count=0 2>/dev/null
  dd if=/dev/urandom of=one-byte bs=1 count=1 2>/dev/null
  dd if=/dev/urandom of=a/4k bs=4096 count=1 2>/dev/null
  dd if=/dev/urandom of=a/b/odd bs=1000 count=1237 2>/dev/null      # not a block multiple
  dd if=/dev/urandom of=a/b/c/big bs=1M count="$FILES_MB" 2>/dev/null
  i=0
  while [ $i -lt 50 ]; do
    dd if=/dev/urandom of="d/small-$i" bs=$((512 + i * 97)) count=1 2>/dev/null
    i=$((i + 1))
  done
  find . -type f ! -path './lost+found/*' | sort | xargs sha256sum > "$STATE/sums" ||
    die "sha256sum failed"
  [ "$(wc -l < "$STATE/sums")" -eq 56 ] || die "expected 56 files, listed $(wc -l < "$STATE/sums")"
  cd / && sync && umount "$MNT" || die "umount failed"
}

step_fs_verify() {
  ns="$(get ns)"
  echo 3 > /proc/sys/vm/drop_caches
  mount -t ext4 "/dev/$ns" "$MNT" || die "remount failed"
  cd "$MNT" || die "cd $MNT"
  sha256sum -c "$STATE/sums" > "$STATE/sums.check" 2>&1 ||
    { grep -v ': OK$' "$STATE/sums.check"; die "checksums differ after remount"; }
  echo "$(wc -l < "$STATE/sums") files verified after remount"
  cd / && umount "$MNT" || die "umount failed"
}

step_fsck() {
  ns="$(get ns)"
  e2fsck -fn "/dev/$ns"
  rc=$?
  [ $rc -eq 0 ] || die "e2fsck -fn exited $rc"
}

step_flush() {
  ns="$(get ns)"
  nvme flush "/dev/$ns" --namespace-id="$NSID" || die "nvme flush exited $?"
}

# Write Zeroes over an odd range (not 4K-aligned, not a power of two), with one random block on
# either side that must survive.
step_write_zeroes() {
  ns="$(get ns)"
  dev="/dev/$ns"
  lbs="$(cat "/sys/block/$ns/queue/logical_block_size")"
  slba=$(( 8 * 1024 * 1024 / lbs + 1 ))
  nlb=$(( 65536 / lbs + 3 ))
  # random data over [slba-1, slba+nlb+1)
  dd if=/dev/urandom of="$dev" bs="$lbs" seek=$((slba - 1)) count=$((nlb + 2)) conv=fsync 2>/dev/null ||
    die "dd of random data failed"
  blockdev --flushbufs "$dev"; echo 3 > /proc/sys/vm/drop_caches
  before_lo="$(dd if="$dev" bs="$lbs" skip=$((slba - 1)) count=1 2>/dev/null | sha256sum)"
  before_hi="$(dd if="$dev" bs="$lbs" skip=$((slba + nlb)) count=1 2>/dev/null | sha256sum)"
  zeros="$(dd if=/dev/zero bs="$lbs" count="$nlb" 2>/dev/null | sha256sum)"
  [ "$(dd if="$dev" bs="$lbs" skip="$slba" count="$nlb" 2>/dev/null | sha256sum)" != "$zeros" ] ||
    die "range is zero before write-zeroes (random write did not land)"
  echo "write-zeroes: slba $slba, $nlb blocks of $lbs bytes"
  nvme write-zeroes "$dev" --namespace-id="$NSID" --start-block="$slba" --block-count=$((nlb - 1)) ||
    die "nvme write-zeroes exited $?"
  blockdev --flushbufs "$dev"; echo 3 > /proc/sys/vm/drop_caches
  got="$(dd if="$dev" bs="$lbs" skip="$slba" count="$nlb" 2>/dev/null | sha256sum)"
  [ "$got" = "$zeros" ] || {
    dd if="$dev" bs="$lbs" skip="$slba" count="$nlb" 2>/dev/null | hexdump -C | head -n 20
    die "range is not zero after write-zeroes"
  }
  [ "$(dd if="$dev" bs="$lbs" skip=$((slba - 1)) count=1 2>/dev/null | sha256sum)" = "$before_lo" ] ||
    die "block $((slba - 1)) before the range changed"
  [ "$(dd if="$dev" bs="$lbs" skip=$((slba + nlb)) count=1 2>/dev/null | sha256sum)" = "$before_hi" ] ||
    die "block $((slba + nlb)) after the range changed"
}

# blkdiscard (BLKDISCARD: Dataset Management, Deallocate) of a range that is 4 KiB-aligned but
# neither a power of two nor 128 KiB-aligned, with a random 4 KiB guard on either side that
# must survive; the range must read back as DLFEAT promises.
step_discard_range() {
  ns="$(get ns)" dev="/dev/$(get ns)"
  off=$(( 24 * 1024 * 1024 + 12 * 1024 ))     # bytes
  len=$(( 780 * 1024 ))
  g=4096
  dd if=/dev/urandom of="$dev" bs=$g seek=$(( (off - g) / g )) count=$(( (len + 2 * g) / g )) \
    conv=fsync 2>/dev/null || die "dd of random data failed"
  nocache "$dev"
  lo="$(dev_sum "$dev" $g $(( (off - g) / g )) 1)" hi="$(dev_sum "$dev" $g $(( (off + len) / g )) 1)"
  [ "$(dev_sum "$dev" $g $(( off / g )) $(( len / g )))" != "$(zero_sum $g $(( len / g )))" ] ||
    die "range is zero before the discard (the random write did not land)"
  echo "blkdiscard -o $off -l $len $dev"
  out="$(blkdiscard -o "$off" -l "$len" "$dev" 2>&1)"
  rc=$?
  [ $rc -eq 0 ] || die "blkdiscard -o $off -l $len exited $rc: $out (the kernel log below has the NVMe status)"
  nocache "$dev"
  check_deallocated "$dev" $g $(( off / g )) $(( len / g )) "discarded range [$off, +$len)"
  [ "$(dev_sum "$dev" $g $(( (off - g) / g )) 1)" = "$lo" ] || die "the 4 KiB before the discarded range changed"
  [ "$(dev_sum "$dev" $g $(( (off + len) / g )) 1)" = "$hi" ] || die "the 4 KiB after the discarded range changed"
}

# blkdiscard of the whole namespace: 1 MiB of random data at its start, middle and end must
# then read back as DLFEAT promises.
step_discard_all() {
  ns="$(get ns)" dev="/dev/$(get ns)"
  mib=$(( $(cat "/sys/block/$ns/size") / 2048 ))
  for at in 0 $(( mib / 2 )) $(( mib - 1 )); do
    dd if=/dev/urandom of="$dev" bs=1M seek="$at" count=1 conv=fsync 2>/dev/null ||
      die "dd of random data at MiB $at failed"
  done
  nocache "$dev"
  z="$(zero_sum 1048576 1)"
  for at in 0 $(( mib / 2 )) $(( mib - 1 )); do
    [ "$(dev_sum "$dev" 1M "$at" 1)" != "$z" ] || die "MiB $at is zero before the discard"
  done
  echo "blkdiscard $dev ($mib MiB)"
  out="$(blkdiscard "$dev" 2>&1)"
  rc=$?
  [ $rc -eq 0 ] || die "blkdiscard of the whole device exited $rc: $out (the kernel log below has the NVMe status)"
  nocache "$dev"
  for at in 0 $(( mib / 2 )) $(( mib - 1 )); do
    check_deallocated "$dev" 1M "$at" 1 "MiB $at of $mib after the whole-device discard"
  done
}

# fstrim (FITRIM) on a mounted ext4: a file of 2 MiB of random data is written and its blocks located
# with debugfs (they must hold the file's bytes: the check of the mapping itself); the file is
# deleted, fstrim -v must succeed and report trimmed bytes > 0, and the file's former blocks
# must then read back as DLFEAT promises. mkfs ran with -E nodiscard and the mount does not
# use -o discard, so only fstrim can have deallocated them.
step_fstrim() {
  ns="$(get ns)" dev="/dev/$(get ns)"
  dd if=/dev/urandom of="$STATE/trim.pat" bs=1M count=2 2>/dev/null || die "dd"
  mount -t ext4 "$dev" "$MNT" || die "mount failed"
  cp "$STATE/trim.pat" "$MNT/trim-me" || die "cp failed"
  sync
  umount "$MNT" || die "umount failed"
  bs="$(debugfs -R stats "$dev" 2>/dev/null | awk '$1 == "Block" && $2 == "size:" { print $3 }')"
  [ -n "$bs" ] || die "debugfs stats: no block size"
  # Physical block numbers, compressed to "START COUNT" runs.
  debugfs -R "blocks /trim-me" "$dev" 2>/dev/null | awk '{ for (i = 1; i <= NF; i++) {
      b = $i; if (n && b == s + n) n++; else { if (n) print s, n; s = b; n = 1 } } }
      END { if (n) print s, n }' > "$STATE/trim.runs"
  [ -s "$STATE/trim.runs" ] || die "debugfs found no blocks of /trim-me"
  echo "trim-me: $(wc -l < "$STATE/trim.runs") extent(s) of $bs-byte blocks: $(tr '\n' ' ' < "$STATE/trim.runs")"
  nocache "$dev"
  while read -r start n; do dd if="$dev" bs="$bs" skip="$start" count="$n" 2>/dev/null; done \
    < "$STATE/trim.runs" | cmp -s - "$STATE/trim.pat" ||
    die "the blocks debugfs lists for /trim-me do not hold its data"
  mount -t ext4 "$dev" "$MNT" || die "remount failed"
  rm "$MNT/trim-me" && sync || die "rm failed"
  out="$(fstrim -v "$MNT" 2>&1)"
  rc=$?
  echo "fstrim -v $MNT: $out"
  umount "$MNT" || die "umount failed"
  [ $rc -eq 0 ] || die "fstrim exited $rc: $out (the kernel log below has the NVMe status)"
  # util-linux: "MNT: 200 MiB (209715200 bytes) trimmed"; busybox: "MNT: 209715200 bytes trimmed"
  bytes="$(echo "$out" | sed -n 's/.*[ (]\([0-9][0-9]*\) bytes.*/\1/p' | head -n1)"
  [ -n "$bytes" ] || die "fstrim -v printed no trimmed byte count"
  [ "$bytes" -gt 0 ] || die "fstrim trimmed 0 bytes"
  nocache "$dev"
  while read -r start n; do
    check_deallocated "$dev" "$bs" "$start" "$n" "deleted file's blocks $start..$(( start + n - 1 )) after fstrim"
  done < "$STATE/trim.runs"
}

# MDTS (Identify Controller byte 77: a power of two in units of the minimum memory page size,
# 4 KiB here; 0 = no limit) as GUEST_MDTS expects, and the host's request size limit from it.
step_mdts() {
  ctrl="$(get ctrl)" ns="$(get ns)"
  out="$(nvme id-ctrl "/dev/$ctrl" 2>&1)" || { echo "$out"; die "nvme id-ctrl exited $?"; }
  mdts="$(echo "$out" | awk '$1 == "mdts" { print $3 }')"
  kb="$(cat "/sys/block/$ns/queue/max_hw_sectors_kb")"
  echo "mdts $mdts, /sys/block/$ns/queue/max_hw_sectors_kb $kb"
  [ "$mdts" = "$GUEST_MDTS" ] || die "id-ctrl mdts is $mdts, want $GUEST_MDTS"
  if [ "$mdts" -gt 0 ]; then
    [ "$kb" -eq $(( 4 << mdts )) ] || die "max_hw_sectors_kb $kb does not reflect mdts $mdts ($(( 4 << mdts )) KiB)"
  else
    [ "$kb" -ge 1024 ] || die "max_hw_sectors_kb $kb < 1024 with no MDTS limit"
  fi
}

# nvme write / nvme read passthrough (one command each, no splitting by the block layer) of
# 512 KiB and 1 MiB of random data, compared.
step_passthru_big() {
  ns="$(get ns)" lbs="$(get lbs)"
  slba=$(( 40 * 1024 * 1024 / lbs ))
  for size in 524288 1048576; do
    nlb=$(( size / lbs ))
    dd if=/dev/urandom of="$STATE/big.out" bs="$size" count=1 2>/dev/null || die "dd"
    echo "nvme write/read: slba $slba, $nlb blocks ($size bytes)"
    out="$(nvme write "/dev/$ns" --start-block="$slba" --block-count=$((nlb - 1)) \
      --data-size="$size" --data="$STATE/big.out" 2>&1)"
    rc=$?
    echo "$out"
    [ $rc -eq 0 ] || die "nvme write of $size bytes exited $rc: $out" \
      "(max_hw_sectors_kb $(cat "/sys/block/$ns/queue/max_hw_sectors_kb"): the kernel refuses a larger passthrough with EINVAL)"
    rm -f "$STATE/big.in"
    out="$(nvme read "/dev/$ns" --start-block="$slba" --block-count=$((nlb - 1)) \
      --data-size="$size" --data="$STATE/big.in" 2>&1)"
    rc=$?
    echo "$out"
    [ $rc -eq 0 ] || die "nvme read of $size bytes exited $rc: $out"
    cmp "$STATE/big.out" "$STATE/big.in" || die "nvme read of $size bytes returned other data than nvme write wrote"
    slba=$(( slba + nlb ))
  done
}

# Identify Controller of the I/O and of the discovery controller and Identify Namespace 1 as
# nvme-cli JSON on the console, every line prefixed "IDJSON <name>: " (the harness collects and
# compares them). The discovery controller is a persistent one (nvme discover -p), removed again.
step_identify() {
  ctrl="$(get ctrl)" ns="$(get ns)"
  dnqn=nqn.2014-08.org.nvmexpress.discovery
  nvme id-ctrl "/dev/$ctrl" -o json > "$STATE/id-io_ctrl.json" || die "nvme id-ctrl -o json exited $?"
  nvme id-ns "/dev/$ns" -o json > "$STATE/id-namespace.json" || die "nvme id-ns -o json exited $?"
  before="$(ctrls_of_nqn "$dnqn")"
  nvme discover --transport=tcp --traddr="$ADDR" --trsvcid="$PORT" --hostnqn="$HOSTNQN" \
    --hostid="$HOSTID" --persistent > /dev/null || die "nvme discover --persistent exited $?"
  dctrl=""
  for c in $(ctrls_of_nqn "$dnqn"); do
    case " $before " in *" $c "*) continue ;; esac
    a="$(cat "/sys/class/nvme/$c/address")"
    case ",$a," in *",traddr=$ADDR,"*) ;; *) continue ;; esac
    case ",$a," in *",trsvcid=$PORT,"*) dctrl="$c" ;; esac
  done
  [ -n "$dctrl" ] || die "no persistent discovery controller appeared after nvme discover --persistent"
  nvme id-ctrl "/dev/$dctrl" -o json > "$STATE/id-discovery_ctrl.json"
  rc=$?
  nvme disconnect --device="$dctrl" || echo "WARNING: nvme disconnect -d $dctrl exited $?"
  [ $rc -eq 0 ] || die "nvme id-ctrl -o json of the discovery controller $dctrl exited $rc"
  for n in io_ctrl namespace discovery_ctrl; do
    echo "IDJSON-BEGIN $n"
    sed "s/^/IDJSON $n: /" "$STATE/id-$n.json"
    echo "IDJSON-END $n"
  done
}

# Connect to GUEST_ANY_NQN (a subsystem allowing any host) with a host NQN that is not
# NQN-formed (NVMe Base 2.0 4.5: "nqn." ...): it must be accepted; then 64 KiB written and read
# back through the block device, and a disconnect.
step_any_host() {
  name=tessera-guest-plain-name
  out="$(nvme connect --transport=tcp --traddr="$ADDR" --trsvcid="$PORT" --nqn="$GUEST_ANY_NQN" \
    --hostnqn="$name" --hostid=5e55e4a0-0000-4000-8000-000000000003 2>&1)"
  rc=$?
  echo "$out"
  [ $rc -eq 0 ] || die "nvme connect to $GUEST_ANY_NQN (allows any host) as host NQN '$name' exited $rc: $out"
  dev=""
  i=0
  while [ -z "$dev" ] && [ $i -lt 300 ]; do
    for b in /sys/block/nvme*n*; do
      [ -e "$b" ] || continue
      case "$(basename "$b")" in nvme*c*n*) continue ;; esac
      [ "$(cat "$b/device/subsysnqn" 2>/dev/null)" = "$GUEST_ANY_NQN" ] || continue
      [ -b "/dev/$(basename "$b")" ] && dev="/dev/$(basename "$b")"
    done
    [ -n "$dev" ] || sleep 0.1
    i=$((i + 1))
  done
  [ -n "$dev" ] || die "connected to $GUEST_ANY_NQN, but no namespace appeared"
  hn="$(cat "/sys/class/nvme/$(ctrls_of_nqn "$GUEST_ANY_NQN" | head -n1)/hostnqn" 2>/dev/null)"
  [ "$hn" = "$name" ] || die "the controller's hostnqn is '$hn', not '$name'"
  dd if=/dev/urandom of="$STATE/any.out" bs=65536 count=1 2>/dev/null
  dd if="$STATE/any.out" of="$dev" bs=65536 seek=3 conv=fsync 2>/dev/null || die "write to $dev failed"
  nocache "$dev"
  dd if="$dev" bs=65536 skip=3 count=1 2>/dev/null | cmp -s - "$STATE/any.out" ||
    die "64 KiB read back from $dev differ from what was written"
  echo "$dev: 64 KiB written and read back as host '$name'"
  out="$(nvme disconnect --nqn="$GUEST_ANY_NQN" 2>&1)" || die "nvme disconnect --nqn=$GUEST_ANY_NQN exited $?: $out"
  i=0
  while [ -n "$(ctrls_of_nqn "$GUEST_ANY_NQN")" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  [ -z "$(ctrls_of_nqn "$GUEST_ANY_NQN")" ] || die "controller(s) of $GUEST_ANY_NQN still present"
}

step_disconnect() {
  out="$(nvme disconnect --nqn="$NQN" 2>&1)"
  rc=$?
  echo "$out"
  [ $rc -eq 0 ] || die "nvme disconnect exited $rc"
  want=1
  [ -n "${GUEST_PATHS:-}" ] && want="$(count_words "$GUEST_PATHS")"
  echo "$out" | grep -q "disconnected $want controller" ||
    die "expected exactly $want controller(s) disconnected"
  i=0
  while [ -n "$(ctrls_of_nqn)" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  [ -z "$(ctrls_of_nqn)" ] || die "controller(s) still present: $(ctrls_of_nqn)"
  [ ! -b "/dev/$(get ns)" ] || die "/dev/$(get ns) still present"
}

step_bad_host() {
  before="$(all_ctrls)"
  nvme connect --transport=tcp --traddr="$ADDR" --trsvcid="$PORT" --nqn="$NQN" \
    --hostnqn="$BADHOSTNQN" --hostid="$BADHOSTID"
  rc=$?
  echo "nvme connect as $BADHOSTNQN exited $rc"
  if [ $rc -eq 0 ]; then
    nvme disconnect --nqn="$NQN" || true
    die "connect with a host NQN that is not allowed succeeded"
  fi
  sleep 1
  after="$(all_ctrls)"
  [ -z "$(ctrls_of_nqn)" ] || die "a controller of $NQN exists after the refused connect"
  [ "$after" -eq "$before" ] || die "controller count went from $before to $after"
}

# ---------------------------------------------------------------------------------------------
if [ "${1:-}" = --step ]; then
  fn="step_$(echo "$2" | tr - _)"
  "$fn"
  exit $?
fi

[ $# -ge 5 ] || { echo "usage: $0 ADDR PORT SUBNQN HOSTNQN BAD_HOSTNQN [off|on|both]"; exit 2; }
ADDR="$1" PORT="$2" NQN="$3" HOSTNQN="$4" BADHOSTNQN="$5" DIGESTS="${6:-both}"
HOSTID="$(hostid_of "$HOSTNQN" 5e55e4a0-0000-4000-8000-000000000001)"
BADHOSTID="$(hostid_of "$BADHOSTNQN" 5e55e4a0-0000-4000-8000-000000000002)"
export ADDR PORT NQN HOSTNQN BADHOSTNQN HOSTID BADHOSTID
rm -rf "$STATE" /tmp/tessera-failed-step /tmp/tessera-current-step
mkdir -p "$STATE" "$MNT"

PASS=""
T0="$(date +%s)"
cleanup() {
  cd /
  umount "$MNT" 2>/dev/null
  [ -n "$(ctrls_of_nqn)" ] && timeout -k 5 20 nvme disconnect --nqn="$NQN"
  [ -n "${GUEST_ANY_NQN:-}" ] && [ -n "$(ctrls_of_nqn "$GUEST_ANY_NQN")" ] &&
    timeout -k 5 20 nvme disconnect --nqn="$GUEST_ANY_NQN"
}
run() { # run STEP TIMEOUT_SECONDS
  label="$1"; [ -n "$PASS" ] && label="$PASS/$1"
  s="$(date +%s)"
  echo "=== STEP $label (timeout $2 s, t+$((s - T0)) s)"
  echo "$label" > /tmp/tessera-current-step
  timeout -k 5 "$2" sh "$SELF" --step "$1"
  rc=$?
  e=$(( $(date +%s) - s ))
  if [ $rc -ne 0 ]; then
    case $rc in
      143|124|137) why="timed out after $2 s" ;;
      *) why="exit $rc" ;;
    esac
    echo "=== FAIL $label: $why (${e} s)"
    echo "--- kernel log (tail)"
    dmesg | tail -n 40
    echo "$label" > /tmp/tessera-failed-step
    cleanup
    exit 1
  fi
  echo "=== OK $label (${e} s)"
}

pass() { # pass NAME DIGEST_FLAGS FIO_SIZE FILES_MB
  PASS="$1" DIGEST_FLAGS="$2" FIO_SIZE="$3" FILES_MB="$4"
  export PASS DIGEST_FLAGS FIO_SIZE FILES_MB
  echo "=== ROUND $PASS: connect flags '${DIGEST_FLAGS}', fio ${FIO_SIZE}, ${FILES_MB} MiB file"
  run discover 60
  run connect 60
  run wait-ns 40
  run list 30
  run id-ctrl 30
  run id-ns 30
  run smart-log 30
  [ "$PASS" = "$FIRST_PASS" ] && [ "${GUEST_IDENTIFY:-1}" = 1 ] && run identify 60
  [ -n "${GUEST_MDTS:-}" ] && run mdts 30
  if [ -n "${GUEST_KILL_PORT:-}" ]; then
    # Failover of a replicated volume: the data step is the point; the file-system and
    # command steps are the other modes' (this keeps the run short on a slow guest).
    run fio-kill 420
    run flush 30
    run disconnect 60
    return
  fi
  if [ -n "${GUEST_DRAIN_PORT:-}" ]; then run fio-drain 360; else run fio 180; fi
  if [ "${GUEST_DISCARD:-1}" = 1 ]; then
    run discard-range 60
    run discard-all 60
  fi
  run mkfs 120
  run fs-write 120
  run fs-verify 120
  run fsck 120
  [ "${GUEST_DISCARD:-1}" = 1 ] && run fstrim 90
  run flush 30
  run write-zeroes 60
  [ -n "${GUEST_MDTS:-}" ] && run passthru-big 90
  run disconnect 60
}

# GUEST_FIO_SIZE (tessera.fiosize=): the fio data size of every pass instead of 32m / 16m.
FIRST_PASS=plain
[ "$DIGESTS" = on ] && FIRST_PASS=digest
case "$DIGESTS" in
  off) pass plain "" "${GUEST_FIO_SIZE:-32m}" 4 ;;
  on) pass digest "--hdr-digest --data-digest" "${GUEST_FIO_SIZE:-16m}" 2 ;;
  both) pass plain "" "${GUEST_FIO_SIZE:-32m}" 4
        pass digest "--hdr-digest --data-digest" "${GUEST_FIO_SIZE:-16m}" 2 ;;
  *) echo "bad DIGESTS '$DIGESTS'"; exit 2 ;;
esac
PASS=""
[ -n "${GUEST_ANY_NQN:-}" ] && run any-host 60
run bad-host 60
echo "=== all guest steps passed in $(( $(date +%s) - T0 )) s"
exit 0
