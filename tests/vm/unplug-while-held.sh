#!/usr/bin/env bash
# unplug-while-held.sh — hot-unplug a controller while a vfnvme process holds it through VFIO.
#
#   tests/vm/unplug-while-held.sh [--index N] PROGRAM [ARGS...]
#
# PROGRAM runs in the guest with every NVMe controller bound to vfio-pci, as
#   PROGRAM ARGS... --hold-secs 120 --ready-file /rig/ready BDF...
# (driver/examples/vfio_probe takes exactly these). It must open the controllers, touch the ready
# file, then poll removal_requested() and release the function whose removal is requested.
# Once /rig/ready exists, the host sends device_del for controller N (default 1: nvme1) and waits
# on the same QMP connection for DEVICE_DELETED, which QEMU only emits after the guest kernel
# finished the removal, i.e. after the program released the device (closed its fd and unmapped
# BAR0). Exit code 0 when DEVICE_DELETED arrived and PROGRAM exited 0.
# PROGRAM must not live under /tmp (the guest mounts a fresh tmpfs there).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export VFNVME_VM_CACHE=${VFNVME_VM_CACHE:-$REPO/target/vm-cache}
IDX=1
if [ "${1:-}" = --index ]; then IDX=$2; shift 2; fi
[ $# -ge 1 ] || { sed -n '2,16p' "$0" >&2; exit 2; }
case "$1" in /tmp/*) echo "unplug-while-held: $1 is under /tmp, invisible in the guest" >&2; exit 2 ;; esac
[ -x "$1" ] || { echo "unplug-while-held: $1 is not executable" >&2; exit 2; }
[[ "$IDX" =~ ^[0-9]+$ ]] && [ "$IDX" -lt "${RIG_NCTRL:-2}" ] || { echo "bad --index $IDX" >&2; exit 2; }

"$HERE/setup.sh" --quiet
mkdir -p "$VFNVME_VM_CACHE/runs"
RD=$(mktemp -d "$VFNVME_VM_CACHE/runs/unplug.XXXXXX")
PROG=$(printf '%q ' "$@")

cat > "$RD/guest.sh" <<EOF
set -u
\$RIG_DIR/guest-bind.sh --hugepages 64 >/dev/null || exit 1
BDFS=\$(for d in /sys/bus/pci/devices/*; do [ "\$(cat \$d/class)" = 0x010802 ] && basename \$d; done)
echo "guest: running $PROG--hold-secs 120 --ready-file /rig/ready" \$BDFS
$PROG--hold-secs 120 --ready-file /rig/ready \$BDFS
rc=\$?
echo "guest: program exit code \$rc"
exit \$rc
EOF

RIG_RUNDIR=$RD "$HERE/run-guest.sh" -f "$RD/guest.sh" &
GUEST=$!
fail() { echo "unplug-while-held: FAIL: $*" >&2; wait "$GUEST" || true; exit 1; }
for ((i = 0; i < 3000; i++)); do
    [ -e "$RD/ready" ] && break
    kill -0 "$GUEST" 2>/dev/null || fail "the guest ended before the program got ready"
    sleep 0.1
done
[ -e "$RD/ready" ] || fail "the program never got ready"
T0=$(date +%s.%N)
echo "unplug-while-held: device_del nvme$IDX" >&2
"$HERE/qmp.py" "$RD/qmp.sock" device_del "{\"id\":\"nvme$IDX\"}" --wait DEVICE_DELETED:60 \
    || fail "no DEVICE_DELETED within 60 s (the program did not release the device?)"
echo "unplug-while-held: DEVICE_DELETED after $(echo "$(date +%s.%N) - $T0" | bc) s" >&2
if wait "$GUEST"; then
    echo "unplug-while-held: PASS" >&2
else
    echo "unplug-while-held: FAIL (guest exit code $?)" >&2
    exit 1
fi
