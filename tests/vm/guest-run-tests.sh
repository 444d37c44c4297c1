#!/bin/sh
# guest-run-tests.sh — runs INSIDE the rig guest for run-suite.sh: bind, then run the tests.
#
#   guest-run-tests.sh [--noiommu] [--hugepages N] LIST
#
# LIST holds one test command line per line (run with `sh -c`, in /rig). Before the tests, every
# NVMe controller is bound to vfio-pci (guest-bind.sh). Each test sees:
#   VFNVME_VM_BDFS      the controllers' PCI addresses, space-separated (e.g. "0000:01:00.0 0000:02:00.0")
#   VFNVME_VM_NOIOMMU   1 in the no-IOMMU boot, else 0
#   RIG_DIR, RIG_NCTRL, RIG_IOMMU, RIG_KV, RIG_CACHE (from the rig)
# Results go to /rig/results, one line per test: "PASS|FAIL <exit code> <seconds> <command>".
# Exit code: 0 if every test passed, 1 otherwise.
set -u

NOIOMMU=0
BIND_ARGS=
while [ $# -gt 1 ]; do
    case "$1" in
        --noiommu) NOIOMMU=1; BIND_ARGS="$BIND_ARGS --noiommu"; shift ;;
        --hugepages) BIND_ARGS="$BIND_ARGS --hugepages $2"; shift 2 ;;
        *) break ;;
    esac
done
LIST=${1:?usage: guest-run-tests.sh [--noiommu] [--hugepages N] LIST}
HERE=$(cd "$(dirname "$0")" && pwd)
RESULTS=/rig/results
: > "$RESULTS"

# shellcheck disable=SC2086
if ! "$HERE/guest-bind.sh" $BIND_ARGS; then
    echo "rig-suite: binding the controllers to vfio-pci failed; no test runs"
    exit 1
fi
VFNVME_VM_BDFS=
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/class")" = 0x010802 ] && VFNVME_VM_BDFS="$VFNVME_VM_BDFS $(basename "$d")"
done
VFNVME_VM_BDFS=${VFNVME_VM_BDFS# }
export VFNVME_VM_BDFS VFNVME_VM_NOIOMMU=$NOIOMMU

failed=0
while IFS= read -r cmd; do
    [ -n "$cmd" ] || continue
    echo "rig-suite: ---- RUN  $cmd"
    t0=$(cut -d' ' -f1 /proc/uptime)
    (cd /rig && sh -c "$cmd") </dev/null 2>&1
    rc=$?
    t1=$(cut -d' ' -f1 /proc/uptime)
    secs=$(echo "$t1 - $t0" | bc)
    if [ "$rc" = 0 ]; then verdict=PASS; else verdict=FAIL; failed=$((failed + 1)); fi
    echo "rig-suite: ---- $verdict $cmd (exit $rc, ${secs}s)"
    echo "$verdict $rc $secs $cmd" >> "$RESULTS"
done < "$LIST"
[ "$failed" = 0 ]
