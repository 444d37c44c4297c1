#!/usr/bin/env bash
# hotplug-check.sh — prove the rig's hot-unplug / re-add path end to end (one boot).
#
#   tests/vm/hotplug-check.sh [CTRL_INDEX]        (default 1: nvme1 on root port rp1)
#
# The guest binds the controllers to vfio-pci, then watches sysfs while the host, through QMP:
#   1. device_del {"id":"nvme1"}, waiting for DEVICE_DELETED on the same connection;
#   2. device_add {"driver":"nvme","id":"nvme1","serial":"RIGSERIAL0","subsys":"subsys0","bus":"rp1"}
#      (same id, serial, subsystem and root port as at boot: the controller comes back at the
#      same PCI address, in the same subsystem, with the shared namespace attached).
# The guest checks the function disappears, reappears, and binds to vfio-pci again.
# Exit code 0 when all of that happened.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export VFNVME_VM_CACHE=${VFNVME_VM_CACHE:-$REPO/target/vm-cache}
IDX=${1:-1}
[[ "$IDX" =~ ^[0-9]+$ ]] || { echo "usage: $0 [CTRL_INDEX]" >&2; exit 2; }
[ "$IDX" -lt "${RIG_NCTRL:-2}" ] || { echo "hotplug-check: controller $IDX does not exist (RIG_NCTRL=${RIG_NCTRL:-2})" >&2; exit 2; }
# Controller i sits alone behind root port rp<i>, which the guest enumerates as bus i+1.
BDF=$(printf '0000:%02x:00.0' $((IDX + 1)))
DEL_ARGS="{\"id\":\"nvme$IDX\"}"
ADD_ARGS="{\"driver\":\"nvme\",\"id\":\"nvme$IDX\",\"serial\":\"RIGSERIAL0\",\"subsys\":\"subsys0\",\"bus\":\"rp$IDX\"}"

"$HERE/setup.sh" --quiet
mkdir -p "$VFNVME_VM_CACHE/runs"
RD=$(mktemp -d "$VFNVME_VM_CACHE/runs/hotplug.XXXXXX")
QMP=("$HERE/qmp.py" "$RD/qmp.sock")

# Guest side: the host steps in through files in /rig (ready -> gone -> back).
cat > "$RD/guest.sh" <<EOF
set -u
B=$BDF
wait_for() {  # wait_for SECONDS TEST...: poll until TEST succeeds
    t=\$1; shift
    while [ \$t -gt 0 ]; do "\$@" && return 0; sleep 0.2; t=\$((t - 1)); done
    return 1
}
gone() { [ ! -e /sys/bus/pci/devices/\$B ]; }
present() { [ -e /sys/bus/pci/devices/\$B ]; }
\$RIG_DIR/guest-bind.sh || exit 1
touch /rig/ready
echo "guest: waiting for \$B to be removed"
wait_for 300 gone || { echo "guest: FAIL: \$B never went away"; exit 1; }
echo "guest: \$B removed from sysfs"
touch /rig/gone
wait_for 300 present || { echo "guest: FAIL: \$B never came back"; exit 1; }
sleep 1
echo "guest: \$B is back: class \$(cat /sys/bus/pci/devices/\$B/class), driver \$(basename \$(readlink /sys/bus/pci/devices/\$B/driver 2>/dev/null) 2>/dev/null || echo none)"
\$RIG_DIR/guest-bind.sh \$B || exit 1
echo "guest: hot-unplug and re-add OK"
EOF

RIG_RUNDIR=$RD "$HERE/run-guest.sh" -f "$RD/guest.sh" &
GUEST=$!

wait_file() {  # wait_file PATH SECONDS
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        [ -e "$1" ] && return 0
        kill -0 "$GUEST" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
fail() { echo "hotplug-check: FAIL: $*" >&2; wait "$GUEST" || true; exit 1; }

wait_file "$RD/ready" 300 || fail "the guest never got ready"
echo "hotplug-check: device_del $DEL_ARGS" >&2
"${QMP[@]}" device_del "$DEL_ARGS" --wait DEVICE_DELETED:60 || fail "device_del did not complete"
wait_file "$RD/gone" 60 || fail "the guest did not see $BDF go away"
echo "hotplug-check: device_add $ADD_ARGS" >&2
"${QMP[@]}" device_add "$ADD_ARGS" || fail "device_add failed"
"${QMP[@]}" hmp 'info pci' | awk '/Bus/ { bus = $0 } /id "nvme/ { print "  QEMU:" bus " " $2 }' >&2 || true
if wait "$GUEST"; then
    echo "hotplug-check: PASS" >&2
else
    echo "hotplug-check: FAIL (guest exit code $?)" >&2
    exit 1
fi
