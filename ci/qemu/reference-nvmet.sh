#!/bin/sh
# Reference mode: serve SUBNQN from the guest kernel's own nvmet-tcp target (configfs), so that
# guest-test.sh can be checked against a known-good target.
#
#   reference-nvmet.sh ADDR PORT SUBNQN HOSTNQN [ANY_NQN]
#
# Namespace 1: a 256 MiB memory-backed null_blk device with 512-byte blocks (memory_backed=1:
# a plain null_blk discards writes and would fail fio's verify; discard=1: a discarded range
# is freed and reads back as zeroes, as the guest test's discard steps check). Only HOSTNQN is
# allowed (attr_allow_any_host=0), so any other host is refused. ANY_NQN (optional): a second
# subsystem that allows any host (attr_allow_any_host=1), namespace 1 = a 16 MiB null_blk with
# 512-byte blocks, like ci/qemu/target.yaml's. The kernel needs hardened_usercopy=off when its
# own nvmet-tcp and nvme-tcp talk over loopback (else a usercopy BUG can hang it).
set -eu
ADDR="$1" PORT="$2" NQN="$3" HOSTNQN="$4" ANYNQN="${5:-}"
SIZE_MB=256
BLOCK=512

cfg=/sys/kernel/config
[ -d "$cfg/nullb" ] || { echo "reference: no $cfg/nullb (null_blk loaded with configfs?)"; exit 1; }
[ -d "$cfg/nvmet" ] || { echo "reference: no $cfg/nvmet (nvmet loaded?)"; exit 1; }

nullb() { # nullb NAME SIZE_MB: a memory-backed null_blk with discard; prints its /dev path
  nb="$cfg/nullb/$1"
  mkdir "$nb"
  echo "$2" > "$nb/size"
  echo "$BLOCK" > "$nb/blocksize"
  echo 1 > "$nb/memory_backed"
  echo 1 > "$nb/discard"
  echo 1 > "$nb/power"
  # The disk is named after the configfs item on newer kernels, nullb<index> on older ones.
  d=""
  i=0
  while [ $i -lt 50 ]; do
    for d in "/dev/$1" "/dev/nullb$(cat "$nb/index")"; do
      [ -b "$d" ] && { echo "$d"; return 0; }
    done
    sleep 0.1
    i=$((i + 1))
  done
  echo "reference: the null_blk disk $1 did not appear: $(ls /sys/block)" >&2
  return 1
}
dev="$(nullb tessera "$SIZE_MB")"

t="$cfg/nvmet"
mkdir "$t/hosts/$HOSTNQN"
mkdir "$t/subsystems/$NQN"
echo 0 > "$t/subsystems/$NQN/attr_allow_any_host"
ln -s "$t/hosts/$HOSTNQN" "$t/subsystems/$NQN/allowed_hosts/$HOSTNQN"
mkdir "$t/subsystems/$NQN/namespaces/1"
printf '%s' "$dev" > "$t/subsystems/$NQN/namespaces/1/device_path"
echo 1 > "$t/subsystems/$NQN/namespaces/1/enable"
mkdir "$t/ports/1"
echo tcp > "$t/ports/1/addr_trtype"
echo ipv4 > "$t/ports/1/addr_adrfam"
echo "$ADDR" > "$t/ports/1/addr_traddr"
echo "$PORT" > "$t/ports/1/addr_trsvcid"
ln -s "$t/subsystems/$NQN" "$t/ports/1/subsystems/$NQN"
echo "reference: nvmet-tcp serving $NQN (ns 1 = $dev, ${SIZE_MB} MiB, ${BLOCK} B blocks) on $ADDR:$PORT, host $HOSTNQN only"
if [ -n "$ANYNQN" ]; then
  anydev="$(nullb tessera-any 16)"
  mkdir "$t/subsystems/$ANYNQN"
  echo 1 > "$t/subsystems/$ANYNQN/attr_allow_any_host"
  mkdir "$t/subsystems/$ANYNQN/namespaces/1"
  printf '%s' "$anydev" > "$t/subsystems/$ANYNQN/namespaces/1/device_path"
  echo 1 > "$t/subsystems/$ANYNQN/namespaces/1/enable"
  ln -s "$t/subsystems/$ANYNQN" "$t/ports/1/subsystems/$ANYNQN"
  echo "reference: nvmet-tcp serving $ANYNQN (ns 1 = $anydev, 16 MiB, ${BLOCK} B blocks), any host"
fi
