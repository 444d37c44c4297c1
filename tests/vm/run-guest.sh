#!/usr/bin/env bash
# run-guest.sh — boot the vfnvme test guest, run one command in it, exit with its exit code.
#
#   tests/vm/run-guest.sh 'shell command line'       # run a command (as `sh -c`) in the guest
#   tests/vm/run-guest.sh -f script.sh [args...]     # run a script file (copied into the run dir)
#   RIG_SHELL=1 tests/vm/run-guest.sh                # interactive shell on the serial console
#
# The guest is Debian's kernel with a busybox initramfs (see setup.sh, which this script runs
# first: a fast no-op once cached). It chroots into an overlay over the host's root, so host
# binaries run there at their host paths (except under /tmp). The command runs as root, in
# /rig, with RIG_DIR (this folder), RIG_KV, RIG_CACHE, RIG_NCTRL and RIG_IOMMU in its environment.
# Its output streams to this script's stdout.
#
# Topology (QEMU 7.2, q35, TCG): an NVMe subsystem "subsys0" with RIG_NCTRL controllers nvme0,
# nvme1, ... (same serial), each behind its own PCIe root port rp0, rp1, ... (guest addresses
# 0000:01:00.0, 0000:02:00.0, ...), sharing namespace nsid=1 (eui64 + uuid set, for multipath);
# an emulated Intel IOMMU (aw-bits=48, caching-mode=on); a spare root port "rpspare" for hot-add;
# a QMP socket at $RIG_RUNDIR/qmp.sock.
#
# Knobs (environment, defaults in brackets):
#   RIG_IOMMU=1|0      emulated intel-iommu; 0 for no-IOMMU tests                                  [1]
#   RIG_NCTRL=N        NVMe controllers in the subsystem                                          [2]
#   RIG_BACKING=...    namespace storage: file (sparse raw image in the run dir), file:PATH,
#                      shm (/dev/shm/vfnvme-rig-ns.img), null (reads zeroes, stores nothing;
#                      for benchmarks only)                                                     [file]
#   RIG_NS_SIZE=SIZE   namespace size (numfmt IEC, e.g. 1G, 512M)                                 [1G]
#   RIG_MEM, RIG_SMP   guest RAM and vCPUs                                                     [2G, 2]
#   RIG_APPEND=...     extra kernel command line, e.g. "hugepages=64"
#   RIG_RUNDIR=DIR     per-run dir, shared read-write at /rig in the guest    [$CACHE/runs/run.XXXXXX]
#   RIG_TIMEOUT=S      seconds before the guest is killed (not with RIG_SHELL)                   [600]
#   RIG_QEMU_EXTRA=... extra QEMU arguments (word-split)
#   RIG_NVME_OPTS=...  extra properties of every nvme controller, e.g. ",ioeventfd=on"         [none]
#   RIG_HALTPOLL_NS=N  for the boot, the host's cpuidle haltpoll window (how long an idle host
#                      CPU polls before it halts), when the host is itself a VM with haltpoll;
#                      put back afterwards                                        [unchanged]
#   RIG_TIMERSLACK_NS=N timer slack of the QEMU process (inherited from this shell); the host
#                      default is 50000, which can stretch QEMU's 500 ns NVMe timers   [unchanged]
#   RIG_KERNEL=PATH    kernel to boot                                  [the uncompressed vmlinux]
#   RIG_SHELL=1        interactive shell on the serial console (Ctrl-A X quits QEMU)
#   RIG_QMP_WATCH=0    do not start qmp-watch.py (the guest's QMP request channel, /rig/qmp)      [1]
#   VFNVME_VM_CACHE    cache dir (see setup.sh)                          [<repo>/target/vm-cache]
#
# Files in the run dir: cmd.sh (what the guest runs), out.log (its output), exit-code,
# console.log (the serial console), qemu.cmdline, qemu.stderr, qemu.pid, qmp.sock, ns1.img,
# qmp/ (the guest's QMP requests and their answers, qmp/watcher.log).
#
# Exit code: the command's; 124 if the guest timed out; 125 if it did not boot or died before
# the command finished; 2 for a usage error.
# QEMU options are comma-separated lists inside one argument, not array separators.
# shellcheck disable=SC2054
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export VFNVME_VM_CACHE=${VFNVME_VM_CACHE:-$REPO/target/vm-cache}

die() { echo "run-guest: ERROR: $1" >&2; exit "${2:-125}"; }

IOMMU=${RIG_IOMMU:-1}
NCTRL=${RIG_NCTRL:-2}
BACKING=${RIG_BACKING:-file}
NS_SIZE=$(numfmt --from=iec "${RIG_NS_SIZE:-1G}") || die "bad RIG_NS_SIZE '${RIG_NS_SIZE:-}'" 2
MEM=${RIG_MEM:-2G}
SMP=${RIG_SMP:-2}
TIMEOUT=${RIG_TIMEOUT:-600}
SHELL_MODE=${RIG_SHELL:-0}
[ "$SHELL_MODE" = 0 ] || SHELL_MODE=1
[[ "$NCTRL" =~ ^[0-9]+$ ]] || die "RIG_NCTRL must be a number, got '$NCTRL'" 2

if [ "$SHELL_MODE" = 0 ] && [ $# -eq 0 ]; then
    sed -n '2,8p' "$0" >&2
    exit 2
fi

# Kernel, initramfs and modules (a fast no-op once cached).
"$HERE/setup.sh" --quiet || die "setup.sh failed"
# shellcheck source=/dev/null
. "$VFNVME_VM_CACHE/rig.env"
CACHE=$(cd "$VFNVME_VM_CACHE" && pwd)
KERNEL=${RIG_KERNEL:-$RIG_VMLINUX}

# ---------------------------------------------------------------------------------------------
# Run dir. New ones go under $CACHE/runs; only the newest 20 are kept.
# ---------------------------------------------------------------------------------------------
if [ -z "${RIG_RUNDIR:-}" ]; then
    mkdir -p "$CACHE/runs"
    # shellcheck disable=SC2012
    { ls -1dt "$CACHE"/runs/run.* 2>/dev/null || true; } | tail -n +20 | xargs -r rm -rf --
    RIG_RUNDIR=$(mktemp -d "$CACHE/runs/run.XXXXXX")
fi
mkdir -p "$RIG_RUNDIR"
RD=$(cd "$RIG_RUNDIR" && pwd)
case "$RD" in /tmp|/tmp/*) die "RIG_RUNDIR=$RD is under /tmp, which the guest cannot see" 2 ;; esac
[ "${#RD}" -lt 95 ] || die "RIG_RUNDIR=$RD is too long for a unix socket path ($RD/qmp.sock)" 2
rm -f "$RD/exit-code" "$RD/out.log" "$RD/console.log" "$RD/qmp.sock" "$RD/qemu.pid"

# What the guest runs: a preamble with the rig's environment, then the command.
{
    printf 'export RIG_DIR=%q RIG_NCTRL=%q RIG_IOMMU=%q\n' "$HERE" "$NCTRL" "$IOMMU"
    if [ "${1:-}" = "-f" ]; then
        if [ $# -lt 2 ] || [ ! -r "$2" ]; then die "-f needs a readable script file" 2; fi
        cp "$2" "$RD/script.sh"
        shift 2
        printf 'set -- '; printf '%q ' "$@"; printf '\n'
        printf 'exec /bin/sh /rig/script.sh "$@"\n'
    else
        printf '%s\n' "$*"
    fi
} > "$RD/cmd.sh"

# ---------------------------------------------------------------------------------------------
# QEMU command line
# ---------------------------------------------------------------------------------------------
A=(-accel tcg,thread=multi -cpu max)     # KVM does not work on these machines (see README)
# no_timer_check: under a loaded TCG host the IO-APIC timer check can fail with interrupt
# remapping on ("timer doesn't work through Interrupt-remapped IO-APIC") and panic the guest.
APPEND="console=ttyS0 loglevel=4 panic=-1 no_timer_check rig.cache=$CACHE"
if [ "$IOMMU" = 1 ]; then
    # caching-mode=on is required for VFIO in the guest; aw-bits=48 lets IOVA = VA work.
    A+=(-M q35,kernel-irqchip=split -device intel-iommu,intremap=on,caching-mode=on,aw-bits=48)
    APPEND+=" intel_iommu=on"
else
    A+=(-M q35)
fi
APPEND+=" ${RIG_APPEND:-}"
[ "$SHELL_MODE" = 1 ] && APPEND+=" rig.shell=1"

if [ "$SHELL_MODE" = 1 ]; then SERIAL=mon:stdio; else SERIAL=file:$RD/console.log; fi
A+=(-m "$MEM" -smp "$SMP" -nographic -no-reboot -nodefaults
    -serial "$SERIAL"
    -kernel "$KERNEL" -initrd "$RIG_INITRD" -append "$APPEND"
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap
    -virtfs "local,path=$RD,mount_tag=rundir,security_model=none,multidevs=remap"
    -qmp "unix:$RD/qmp.sock,server=on,wait=off"
    -pidfile "$RD/qemu.pid")

# Namespace backing. The data tests write through one controller and read through the other, so
# the default must really store data; null-co is for benchmarks only.
file_backing() {
    local img=$1
    [ -f "$img" ] || truncate -s "$NS_SIZE" "$img"     # sparse
    A+=(-blockdev "driver=file,node-name=nsfile1,filename=$img,aio=threads"
        -blockdev "driver=raw,node-name=nsblk1,file=nsfile1")
}
case "$BACKING" in
    null)   A+=(-blockdev "driver=null-co,node-name=nsblk1,size=$NS_SIZE,read-zeroes=on") ;;
    file)   file_backing "$RD/ns1.img" ;;
    file:*) file_backing "${BACKING#file:}" ;;
    shm)    file_backing /dev/shm/vfnvme-rig-ns.img ;;
    *)      die "RIG_BACKING must be null, file, file:PATH or shm; got '$BACKING'" 2 ;;
esac

if [ "$NCTRL" -gt 0 ]; then
    A+=(-device nvme-subsys,id=subsys0,nqn=rig-subsys0)
    for ((i = 0; i < NCTRL; i++)); do
        A+=(-device "pcie-root-port,id=rp$i,chassis=$((i + 1)),slot=$((i + 1)),bus=pcie.0"
            -device "nvme,id=nvme$i,serial=RIGSERIAL0,subsys=subsys0,bus=rp$i${RIG_NVME_OPTS:-}")
    done
    # NGUID reads as zeros in QEMU 7.2: eui64 and uuid give multipath a unique id.
    A+=(-device nvme-ns,id=ns1,drive=nsblk1,nsid=1,shared=on,bus=nvme0,eui64=0x52494700000001,uuid=4e564d45-5249-4700-0000-000000000001)
fi
A+=(-device pcie-root-port,id=rpspare,chassis=99,slot=99,bus=pcie.0)   # free slot for hot-add
# shellcheck disable=SC2206
A+=(${RIG_QEMU_EXTRA:-})

if [ -n "${RIG_TIMERSLACK_NS:-}" ]; then
    echo "$RIG_TIMERSLACK_NS" > "/proc/$$/timerslack_ns" || die "cannot set timer slack" 2
fi
printf '%q ' qemu-system-x86_64 "${A[@]}" > "$RD/qemu.cmdline"
echo >> "$RD/qemu.cmdline"

if [ "$SHELL_MODE" = 1 ]; then
    {
        echo '[ -f /root/.bashrc ] && . /root/.bashrc'
        head -1 "$RD/cmd.sh"                      # the RIG_* exports
        echo 'cd /rig'
        # shellcheck disable=SC2016  # expanded in the guest
        echo 'echo "rig shell: $RIG_DIR/guest-bind.sh binds the NVMe controllers to vfio-pci; exit or poweroff -f ends the guest"'
    } > "$RD/shellrc"
    echo "run-guest: interactive guest; run dir $RD; QMP at $RD/qmp.sock; Ctrl-A X quits" >&2
    exec qemu-system-x86_64 "${A[@]}"
fi

# ---------------------------------------------------------------------------------------------
# Boot, stream the command's output (the guest tees it into out.log over 9p), collect the code.
# ---------------------------------------------------------------------------------------------
T0=$(date +%s.%N)
touch "$RD/out.log"
tail -n +1 -F "$RD/out.log" 2>/dev/null &
TAILPID=$!
QPID=
WATCHPID=
HALTPOLL=/sys/module/haltpoll/parameters/guest_halt_poll_ns
HALTPOLL_WAS=
# shellcheck disable=SC2317  # (called by the trap)
cleanup() {
    [ -n "$QPID" ] && kill "$QPID" 2>/dev/null
    [ -n "$WATCHPID" ] && kill "$WATCHPID" 2>/dev/null
    kill "$TAILPID" 2>/dev/null || true
    if [ -n "$HALTPOLL_WAS" ]; then echo "$HALTPOLL_WAS" > "$HALTPOLL" || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# The host's haltpoll window for this boot (put back by cleanup). Set before the watcher
# starts, so that its "haltpoll restore" means this boot's value.
if [ -n "${RIG_HALTPOLL_NS:-}" ]; then
    [ -w "$HALTPOLL" ] || die "RIG_HALTPOLL_NS: $HALTPOLL is not writable (no haltpoll cpuidle driver, or not root)" 2
    HALTPOLL_WAS=$(cat "$HALTPOLL")
    echo "$RIG_HALTPOLL_NS" > "$HALTPOLL" || die "RIG_HALTPOLL_NS: cannot write $HALTPOLL" 2
fi
# The guest -> QMP request channel (qmp-watch.py): the guest writes /rig/qmp/req-NAME, the
# watcher runs it on this boot's QMP socket and answers in /rig/qmp/done-NAME.
if [ "${RIG_QMP_WATCH:-1}" != 0 ]; then
    rm -rf "$RD/qmp"
    mkdir -p "$RD/qmp"
    python3 "$HERE/qmp-watch.py" "$RD" --parent $$ 2>> "$RD/qmp/watcher.log" &
    WATCHPID=$!
fi

set +e
timeout -k 5 "$TIMEOUT" qemu-system-x86_64 "${A[@]}" 2> "$RD/qemu.stderr" &
QPID=$!
wait "$QPID"
QRC=$?
QPID=
set -e
T1=$(date +%s.%N)
sleep 0.3                      # let tail print the last lines
kill "$TAILPID" 2>/dev/null || true
wait "$TAILPID" 2>/dev/null || true
if [ -n "$WATCHPID" ]; then
    kill "$WATCHPID" 2>/dev/null || true
    wait "$WATCHPID" 2>/dev/null || true
    WATCHPID=
fi
WALL=$(echo "$T1 - $T0" | bc)
READY=$(grep -ao 'rig-init: root ready at uptime [0-9.]*s' "$RD/console.log" 2>/dev/null | tr -d '\r' || true)

if [ -s "$RD/exit-code" ]; then
    RC=$(cat "$RD/exit-code")
else
    if [ "$QRC" = 124 ]; then
        what="the guest timed out after ${TIMEOUT}s (RIG_TIMEOUT)"; RC=124
    elif [ -z "$READY" ]; then
        what="the guest did not boot (qemu exit code $QRC)"; RC=125
    else
        what="the guest stopped before the command finished (qemu exit code $QRC)"; RC=125
    fi
    {
        echo "run-guest: ERROR: $what. Last console lines ($RD/console.log):"
        tail -n 30 "$RD/console.log" 2>/dev/null | awk '{ print "  | " $0 }'
        if [ -s "$RD/qemu.stderr" ]; then
            echo "run-guest: qemu stderr:"
            tail -n 20 "$RD/qemu.stderr" | awk '{ print "  | " $0 }'
        fi
    } >&2
fi
echo "run-guest: rc=$RC wall=${WALL}s ${READY:+(${READY#rig-init: }) }rundir=$RD" >&2
exit "$RC"
