#!/bin/sh
# bench-guest.sh — runs INSIDE the rig guest for bench.sh: vfnvme-perf over VFIO, then the kernel
# nvme driver with fio, on the same emulated subsystem, in one boot.
#
#   bench-guest.sh PERF OUTDIR REPS SECS DEADLINE [AB [ORDER]]
#
#   PERF      the vfnvme-perf binary (host-built, seen through the 9p root)
#   OUTDIR    where the raw results go (under /rig, so the host reads them after the boot)
#   REPS      repeats of every configuration (interleaved: rep 1 of everything, then rep 2, ...)
#   SECS      measured seconds per run (after 1 s of warm-up, excluded)
#   DEADLINE  guest uptime (s) after which no new polled-kernel run starts (the last stage)
#   AB        slack | pin | haltpoll: also run vfnvme (1 controller) and the polled kernel at QD 1 with a
#             host-side variant switched on through the /rig/qmp request channel, then off again:
#             slack = QEMU's timer slack at 1 ns (host default 50 us); pin = vCPU 0's thread alone
#             on host CPU 0, QEMU's other threads on the other CPU; haltpoll = the host's idle
#             CPUs poll 200 us before they halt (a host that is itself a VM, with cpuidle
#             haltpoll)                                                   -> vf1ab-*, kpollab-*
#             shadow: also run vfnvme (1 controller) at every QD with --no-shadow-doorbells
#             (MMIO doorbells only; the kernel has no such switch)                 -> vf1ab-*
#             (- for none, when ORDER follows)
#   ORDER     rounds (default): each repeat runs all three stages below, the controllers handed
#             from vfio-pci to nvme and back between them, so that every vfnvme run has kernel
#             runs of the same repeat within about two minutes of it (the host drifts over
#             minutes, and a ratio of runs far apart measures the drift too); blocks: every
#             repeat of stage 1, then of stage 2, then of stage 3 (one rebinding in all)
#
# Stages (in each round, or each for all repeats):
#   1. bind both controllers to vfio-pci (64 hugepages); per rep, per QD (1, 32):
#      vfnvme-perf on controller 0 and --multipath on both, in turns (odd reps one controller
#      first, even reps multipath first: the first QD 1 run after QD 32 runs is faster)
#                                                                -> vf1-*.json, vfmp-*.json
#   2. unbind, `modprobe nvme` (interrupts); per rep, per QD, in turns as above: fio io_uring on the multipath head
#      /dev/nvmeXn1 (--direct=1), then fio io_uring_cmd on its char device /dev/ngXn1 (NVMe
#      passthrough: no page cache, and the char device refuses O_DIRECT, so no --direct)  -> kio-*.json, kcmd-*.json
#   3. `rmmod nvme; modprobe nvme poll_queues=1`; fio io_uring --hipri   -> kpoll-*.json
# A deadline on guest uptime keeps the boot inside RIG_TIMEOUT: no polled-kernel run starts
# after it, and in rounds no round starts that the first round's length says would pass it.
# Every run writes OUTDIR/<name>.json (the tool's JSON) and OUTDIR/<name>.err; failures are
# logged and the script goes on. The logic is plain sh and kept short: forks are slow under TCG.
set -u

PERF=$1 OUT=$2 REPS=$3 SECS=$4 DEADLINE=$5 AB=${6:-} ORDER=${7:-rounds}
[ "$AB" = - ] && AB=
case "$ORDER" in rounds|blocks) ;; *) echo "bench-guest: ORDER must be rounds or blocks" >&2; exit 2 ;; esac
QDS="1 32"
mkdir -p "$OUT"

uptime_s() { cut -d. -f1 /proc/uptime; }
log() { echo "bench-guest: [$(uptime_s) s] $*"; }

{
    echo "guest_kernel=$(uname -r)"
    echo "guest_nproc=$(nproc)"
    echo "guest_cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "guest_mem_kb=$(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2)"
    echo "order=$ORDER"
} > "$OUT/guest.env"

# ---------------------------------------------------------------------------------------------
# 1. vfnvme over VFIO
# ---------------------------------------------------------------------------------------------
# A boot without the emulated IOMMU (RIG_IOMMU=0) binds in VFIO's no-IOMMU mode.
NOIOMMU=
[ "${RIG_IOMMU:-1}" = 0 ] && NOIOMMU=--noiommu
BDFS=
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/class")" = 0x010802 ] && BDFS="$BDFS $(basename "$d")"
done
set -- $BDFS
B0=$1
B1=${2:-}
echo "bdfs=$BDFS" >> "$OUT/guest.env"

to_vfio() {   # the controllers to vfio-pci (from no driver: nvme is unloaded before)
    "$RIG_DIR/guest-bind.sh" $NOIOMMU --hugepages 64 || { log "guest-bind failed"; exit 1; }
}
to_kernel() {   # the controllers off vfio-pci, for modprobe nvme
    for b in $BDFS; do
        echo "$b" > /sys/bus/pci/drivers/vfio-pci/unbind
        echo > "/sys/bus/pci/devices/$b/driver_override"
    done
}

vf() {   # vf NAME ARGS...
    name=$1; shift
    log "$name: $PERF $* -a 1 -t $SECS --json"
    "$PERF" "$@" -a 1 -t "$SECS" --json > "$OUT/$name.json" 2> "$OUT/$name.err"
    rc=$?
    [ "$rc" = 0 ] || { log "$name: exit code $rc; stderr:"; tail -20 "$OUT/$name.err"; }
    echo "$rc" > "$OUT/$name.rc"
}

# Asks the host (qmp-watch.py) for a request; waits for the answer.
REQ_N=0
host_req() {   # host_req WORDS...
    REQ_N=$((REQ_N + 1))
    key=ab$REQ_N
    echo "$*" > "/rig/qmp/.req-$key" && mv "/rig/qmp/.req-$key" "/rig/qmp/req-$key"
    i=0
    while [ ! -f "/rig/qmp/done-$key" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    log "host request '$*': $(head -1 "/rig/qmp/done-$key" 2>/dev/null || echo 'no answer')"
}
ab_on() {
    case "$AB" in slack) host_req timerslack 1 ;; pin) host_req pin on ;;
        haltpoll) host_req haltpoll 200000 ;; esac
}
ab_off() {
    case "$AB" in slack) host_req timerslack 50000 ;; pin) host_req pin off ;;
        haltpoll) host_req haltpoll restore ;; esac
}

# in_turn R A B: runs commands A and B (each one word: a function name), A first in odd rounds R
# and B first in even ones (the first QD 1 run after QD 32 runs is faster).
in_turn() {
    if [ $(($1 % 2)) = 1 ]; then "$2"; "$3"; else "$3"; "$2"; fi
}

vf1_run() { vf "vf1-qd$qd-r$r" -r "$B0" -q "$qd"; }
vfmp_run() { vf "vfmp-qd$qd-r$r" -r "$B0" -r "$B1" --multipath -q "$qd"; }

vf_round() {   # every vfnvme run of repeat $r
    if [ "$AB" = shadow ]; then
        for qd in $QDS; do vf "vf1ab-qd$qd-r$r" -r "$B0" -q "$qd" --no-shadow-doorbells; done
    elif [ -n "$AB" ]; then
        ab_on
        vf "vf1ab-qd1-r$r" -r "$B0" -q 1
        ab_off
    fi
    for qd in $QDS; do
        if [ -n "$B1" ]; then in_turn "$r" vf1_run vfmp_run; else vf1_run; fi
    done
}

# ---------------------------------------------------------------------------------------------
# 2. the kernel driver (interrupts): fio io_uring on the block device, io_uring_cmd on ngXn1
# ---------------------------------------------------------------------------------------------
HEAD=
kernel_up() {   # kernel_up TAG MODPROBE-ARGS...: load nvme, wait for the multipath head
    tag=$1; shift
    modprobe nvme "$@" || { log "modprobe nvme $* failed"; return 1; }
    i=0
    HEAD=
    while [ $i -lt 60 ]; do
        HEAD=$(ls /sys/block | grep -E '^nvme[0-9]+n1$' | head -1)
        [ -n "$HEAD" ] && [ -e "/dev/$HEAD" ] && break
        sleep 0.5
        i=$((i + 1))
    done
    [ -n "$HEAD" ] || { log "no nvme head block device after modprobe nvme $*"; return 1; }
    log "kernel nvme $*: head /dev/$HEAD, char /dev/ng${HEAD#nvme}; block devices: $(ls /sys/block | grep nvme | tr '\n' ' ')"
    echo "io_poll=$(cat /sys/block/$HEAD/queue/io_poll 2>/dev/null) iopolicy=$(cat /sys/class/nvme-subsystem/*/iopolicy 2>/dev/null | head -1)" \
        > "$OUT/kernel-$tag.queue" 2>/dev/null
}

fio_run() {   # fio_run NAME DEV QD ENGINE-ARGS...
    name=$1 dev=$2 qd=$3; shift 3
    log "$name: fio $dev QD $qd $*"
    fio --name=bench --filename="$dev" --rw=randread --bs=4k --iodepth="$qd" \
        --runtime="$SECS" --ramp_time=1 --time_based --cpus_allowed=0 --norandommap \
        --randrepeat=0 --output-format=json --output="$OUT/$name.json" "$@" 2> "$OUT/$name.err"
    rc=$?
    [ "$rc" = 0 ] || { log "$name: fio exit code $rc"; tail -20 "$OUT/$name.err"; }
    echo "$rc" > "$OUT/$name.rc"
}

kio_run() { fio_run "kio-qd$qd-r$r" "/dev/$HEAD" "$qd" --ioengine=io_uring --direct=1; }
kcmd_run() { fio_run "kcmd-qd$qd-r$r" "/dev/$NG" "$qd" --ioengine=io_uring_cmd --cmd_type=nvme; }

kirq_up() {   # modprobe nvme (interrupts); notes the head and its char device
    kernel_up irq || return 1
    NG=ng${HEAD#nvme}
    grep -q '^kernel_head=' "$OUT/guest.env" || echo "kernel_head=$HEAD kernel_char=$NG" >> "$OUT/guest.env"
}
kirq_round() {   # every interrupt-driven kernel run of repeat $r
    for qd in $QDS; do
        in_turn "$r" kio_run kcmd_run
    done
}

# ---------------------------------------------------------------------------------------------
# 3. the kernel driver with a poll queue: fio io_uring --hipri, while the deadline allows
# ---------------------------------------------------------------------------------------------
kpoll_up() {   # rmmod nvme; modprobe nvme poll_queues=1
    rmmod nvme || log "rmmod nvme failed"
    kernel_up poll poll_queues=1 || return 1
    dmesg | grep -E 'nvme.*poll queues' | tail -2 > "$OUT/kernel-poll.dmesg"
    grep -q '^kernel_poll_head=' "$OUT/guest.env" || echo "kernel_poll_head=$HEAD" >> "$OUT/guest.env"
}
kpoll_round() {   # every polled kernel run of repeat $r, while the deadline allows
    if [ -n "$AB" ] && [ "$AB" != shadow ] && [ $(( $(uptime_s) + SECS + 3 )) -lt "$DEADLINE" ]; then
        ab_on
        fio_run "kpollab-qd1-r$r" "/dev/$HEAD" 1 --ioengine=io_uring --direct=1 --hipri
        ab_off
    fi
    for qd in $QDS; do
        if [ $(( $(uptime_s) + SECS + 3 )) -lt "$DEADLINE" ]; then
            fio_run "kpoll-qd$qd-r$r" "/dev/$HEAD" "$qd" --ioengine=io_uring --direct=1 --hipri
        else
            log "kpoll-qd$qd-r$r: skipped (deadline ${DEADLINE}s of uptime)"
        fi
    done
}

if [ "$ORDER" = rounds ]; then
    r=1
    while [ "$r" -le "$REPS" ]; do
        if [ "$r" -gt 1 ] && [ $(( $(uptime_s) + round_s )) -ge "$DEADLINE" ]; then
            log "rounds $r-$REPS skipped (a round takes ${round_s}s; deadline ${DEADLINE}s of uptime)"
            break
        fi
        t0=$(uptime_s)
        log "round $r of $REPS"
        to_vfio
        vf_round
        to_kernel
        if kirq_up; then kirq_round; fi
        if kpoll_up; then kpoll_round; fi
        rmmod nvme || log "rmmod nvme failed"
        [ "$r" = 1 ] && round_s=$(( $(uptime_s) - t0 ))
        r=$((r + 1))
    done
else
    to_vfio
    r=1
    while [ "$r" -le "$REPS" ]; do vf_round; r=$((r + 1)); done
    to_kernel
    if kirq_up; then
        r=1
        while [ "$r" -le "$REPS" ]; do kirq_round; r=$((r + 1)); done
    fi
    if [ $(( $(uptime_s) + SECS + 8 )) -lt "$DEADLINE" ]; then
        if kpoll_up; then
            r=1
            while [ "$r" -le "$REPS" ]; do kpoll_round; r=$((r + 1)); done
        fi
    else
        log "polled-kernel stage skipped (deadline ${DEADLINE}s of uptime)"
    fi
fi
log "done"
