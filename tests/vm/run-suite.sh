#!/usr/bin/env bash
# run-suite.sh — run guest-side tests in the QEMU rig: the entry point for CI and developers.
#
#   tests/vm/run-suite.sh [options] [--] [TEST...]
#
#   TEST               a command line to run in the guest, e.g. "$PWD/target/debug/deps/vfio_it-1234"
#                      or "/work/main/target/release/vfnvme-probe --all". Paths are host paths: the
#                      guest sees the host's root at the same paths, EXCEPT under /tmp.
#   --noiommu TEST     run TEST in a second boot without an IOMMU, with the no-IOMMU vfio.ko
#                      loaded (groups are /dev/vfio/noiommu-N); repeatable
#   --smoke            add the rig smoke check (both controllers on vfio-pci, both groups present)
#                      to the IOMMU boot
#   --smoke-noiommu    add the smoke check to the no-IOMMU boot (/dev/vfio/noiommu-N present)
#   --hugepages N      reserve N 2 MiB hugepages in the guest before the tests [64]
#   -h, --help
#
# It boots ONE guest for all the IOMMU tests (and one more if there are no-IOMMU tests), binds
# every NVMe controller to vfio-pci, runs the tests in order, reports each PASS/FAIL, and ends
# with a line "N passed, N failed". Exit code: 0 only if every test passed and every boot worked.
# Knobs of run-guest.sh (RIG_TIMEOUT, RIG_BACKING, RIG_NCTRL, RIG_MEM, ...) apply to each boot.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export VFNVME_VM_CACHE=${VFNVME_VM_CACHE:-$REPO/target/vm-cache}

usage() { sed -n '2,20p' "$0" >&2; exit 2; }
die() { echo "run-suite: ERROR: $*" >&2; exit 2; }

IOMMU_TESTS=()
NOIOMMU_TESTS=()
HUGEPAGES=64
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) IOMMU_TESTS+=("$HERE/guest-smoke.sh"); shift ;;
        --smoke-noiommu) NOIOMMU_TESTS+=("$HERE/guest-smoke.sh --noiommu"); shift ;;
        --noiommu) [ $# -ge 2 ] || die "--noiommu needs a test command"; NOIOMMU_TESTS+=("$2"); shift 2 ;;
        --hugepages) [ $# -ge 2 ] || die "--hugepages needs a count"; HUGEPAGES=$2; shift 2 ;;
        -h|--help) usage ;;
        --) shift; IOMMU_TESTS+=("$@"); break ;;
        -*) die "unknown option $1 (try --help)" ;;
        *) IOMMU_TESTS+=("$1"); shift ;;
    esac
done
[ $((${#IOMMU_TESTS[@]} + ${#NOIOMMU_TESTS[@]})) -gt 0 ] || { echo "run-suite: no tests given" >&2; usage; }
[[ "$HUGEPAGES" =~ ^[0-9]+$ ]] || die "--hugepages wants a number, got '$HUGEPAGES'"

# Catch the classic mistake early: binaries under /tmp are invisible in the guest.
for t in "${IOMMU_TESTS[@]}" "${NOIOMMU_TESTS[@]}"; do
    [ -n "$t" ] || die "empty test command"
    [[ "$t" == *$'\n'* ]] && die "a test command may not contain a newline: '$t'"
    exe=${t%% *}
    case "$exe" in
        /tmp/*) die "$exe is under /tmp, which the guest does not see (it mounts a fresh tmpfs there); build elsewhere" ;;
        /*) [ -e "$exe" ] || die "$exe does not exist" ;;
    esac
done

"$HERE/setup.sh" --quiet || die "setup.sh failed"

PASSED=0
FAILED=0
SUMMARY=()

# boot LABEL GUEST-ARGS... -- TESTS...: one guest, all of its tests; updates the counts.
boot() {
    local label=$1; shift
    local gargs=()
    while [ "$1" != -- ]; do gargs+=("$1"); shift; done
    shift
    local tests=("$@")
    local rd rc
    rd=$(mktemp -d "$VFNVME_VM_CACHE/runs/suite.XXXXXX")
    printf '%s\n' "${tests[@]}" > "$rd/tests.list"
    echo "run-suite: === $label boot: ${#tests[@]} test(s), run dir $rd" >&2
    local attempt
    for attempt in 1 2; do
        set +e
        RIG_RUNDIR=$rd "${BOOT_ENV[@]}" "$HERE/run-guest.sh" \
            "$HERE/guest-run-tests.sh ${gargs[*]} --hugepages $HUGEPAGES /rig/tests.list"
        rc=$?
        set -e
        # 125: the guest never reached its command (a boot failure, not a test failure). TCG on a
        # loaded host occasionally panics early; boot once more, loudly, before calling it failed.
        if [ "$rc" = 125 ] && [ ! -s "$rd/results" ] && [ "$attempt" = 1 ]; then
            echo "run-suite: WARNING: the $label guest did not boot (see $rd/console.log); booting again" >&2
            mv "$rd/console.log" "$rd/console.boot1.log" 2>/dev/null || true
            continue
        fi
        break
    done
    # Every listed test must have a result; one without (boot failure, timeout, bind failure,
    # a crash of the guest) counts as failed.
    local t line verdict i=0
    for t in "${tests[@]}"; do
        i=$((i + 1))
        line=$(sed -n "${i}p" "$rd/results" 2>/dev/null || true)
        if [ -n "$line" ]; then
            verdict=${line%% *}
            local rest=${line#* }
            local code=${rest%% *}; rest=${rest#* }
            local secs=${rest%% *}
            SUMMARY+=("$verdict  [$label] $t (exit $code, ${secs}s)")
        else
            verdict=FAIL
            SUMMARY+=("FAIL  [$label] $t (not run: guest exit code $rc, see $rd/console.log)")
        fi
        if [ "$verdict" = PASS ]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); fi
    done
}

# run-guest.sh reads its knobs from the environment; the per-boot ones are set through `env`.
mkdir -p "$VFNVME_VM_CACHE/runs"
if [ ${#IOMMU_TESTS[@]} -gt 0 ]; then
    BOOT_ENV=(env RIG_IOMMU=1)
    boot iommu -- "${IOMMU_TESTS[@]}"
fi
if [ ${#NOIOMMU_TESTS[@]} -gt 0 ]; then
    BOOT_ENV=(env RIG_IOMMU=0 "RIG_APPEND=${RIG_APPEND:-} vfio.enable_unsafe_noiommu_mode=1")
    boot noiommu --noiommu -- "${NOIOMMU_TESTS[@]}"
fi

echo "run-suite: ======== results" >&2
for s in "${SUMMARY[@]}"; do echo "run-suite: $s"; done
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
