#!/usr/bin/env bash
# bench.sh — reproduces every table of docs/benchmarks.md.
#
#   tests/vm/bench.sh [sim] [callgrind] [guest] [guest_report]   (no argument: the first three)
#
#   sim        host, inline simulator: vfnvme-perf 4 KiB randread, null namespace, 1 core, QD 1,
#              32 and 128, each repeated; then QD 128 bare queue pair vs --multipath over 1 and 2
#              simulated controllers, in rounds (the order rotated each round), compared by
#              medians and by the median of per-round ratios; then the overhead example's
#              paired wall-clock mode (`overhead ab`, QD 32)
#   callgrind  host: instructions per I/O at QD 128 (bare and --multipath), split between the
#              simulator, the driver, the multipath layer and the tool; startup cancelled by
#              running two -d values and taking the difference
#   guest      one TCG boot of the rig (RIG_BACKING=null): vfnvme-perf over VFIO on one
#              controller and on both (--multipath), then the kernel nvme driver with fio
#              (io_uring on the multipath head, io_uring_cmd on its char device, io_uring --hipri
#              with a poll queue); guest half: tests/vm/bench-guest.sh
#   guest_report the guest tables again from the boot already in BENCH_OUT (no boot)
#
# Environment:
#   BENCH_OUT=DIR          raw results and results.md          [target/bench/<UTC date-time>]
#   BENCH_SIM_REPS, BENCH_SIM_SECS       sim repeats and seconds per run             [3, 5]
#   BENCH_CG_IOS="A B"     the two -d values for callgrind                  ["100000 300000"]
#   BENCH_GUEST_REPS, BENCH_GUEST_SECS   guest repeats and seconds per run           [2, 10]
#   BENCH_GUEST_DEADLINE   guest uptime (s) after which no polled-kernel run (and no round)
#                          starts                                  [330, more for more repeats]
#   BENCH_GUEST_ORDER=rounds|blocks   guest: every repeat of every configuration together, the
#                          controllers handed between vfio-pci and nvme in each, so that the
#                          ratios pair runs minutes apart at most; or all vfnvme runs, then all
#                          kernel runs (one rebinding; the order before 2026-12-02)     [rounds]
#   BENCH_AB=slack|pin|haltpoll|shadow   guest: also run vfnvme (1 ctrl) and the polled kernel
#                          at QD 1 with QEMU's timer slack at 1 ns, with vCPU 0 pinned alone to
#                          a host CPU, or with the host's idle CPUs polling 200 us before they
#                          halt; or vfnvme (1 ctrl) at every QD with --no-shadow-doorbells;
#                          in the same boot (see bench-guest.sh)                         [none]
#   BENCH_AB_ROUNDS        sim: rounds of the overhead example's paired mode (0: none)  [41]
#   BENCH_BUILD=0          skip `cargo build --release -p vfnvme-tools` (and the example)
#   RIG_TIMEOUT            guest time limit (s)                [420, or the deadline + 90 s]
#   RIG_NVME_OPTS=,ioeventfd=on   guest: extra properties of the emulated nvme controllers (here:
#                          doorbell writes through an eventfd; see docs/benchmarks.md)     [none]
#   RIG_HALTPOLL_NS=N      guest: the host's cpuidle haltpoll window for the boot (see
#                          run-guest.sh and docs/benchmarks.md)                    [unchanged]
#   RIG_IOMMU=0            guest: boot without the emulated IOMMU (VFIO no-IOMMU mode; the
#                          kernel driver then maps DMA directly too)                       [1]
#
# Every table is printed with the machine, the date and the exact commands, and the whole
# report is written to $BENCH_OUT/results.md (raw JSON next to it).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PERF=$REPO/target/release/vfnvme-perf

STAGES=("$@")
[ ${#STAGES[@]} -gt 0 ] || STAGES=(sim callgrind guest)
for s in "${STAGES[@]}"; do
    case "$s" in sim|callgrind|guest|guest_report) ;; -h|--help) sed -n '2,39p' "$0"; exit 0 ;;
        *) echo "bench.sh: unknown stage '$s' (sim, callgrind, guest, guest_report)" >&2; exit 2 ;; esac
done

SIM_REPS=${BENCH_SIM_REPS:-3}
SIM_SECS=${BENCH_SIM_SECS:-5}
AB_ROUNDS=${BENCH_AB_ROUNDS:-41}
read -r CG_A CG_B <<< "${BENCH_CG_IOS:-100000 300000}"
G_REPS=${BENCH_GUEST_REPS:-2}
G_SECS=${BENCH_GUEST_SECS:-10}
G_ORDER=${BENCH_GUEST_ORDER:-rounds}
case "$G_ORDER" in rounds|blocks) ;; *) echo "bench.sh: BENCH_GUEST_ORDER must be rounds or blocks" >&2; exit 2 ;; esac
# A round: 10 runs of SECS + 1 s warm-up + ~1 s to start, and ~20 s of rebinding; the boot ~10 s.
G_DEADLINE=${BENCH_GUEST_DEADLINE:-$(( (40 + G_REPS * (10 * (G_SECS + 2) + 20)) > 330 ? 40 + G_REPS * (10 * (G_SECS + 2) + 20) : 330 ))}
G_TIMEOUT=${RIG_TIMEOUT:-$(( G_DEADLINE + 90 > 420 ? G_DEADLINE + 90 : 420 ))}
G_AB=${BENCH_AB:-}
case "$G_AB" in ""|slack|pin|haltpoll|shadow) ;; *) echo "bench.sh: BENCH_AB must be slack, pin, haltpoll or shadow" >&2; exit 2 ;; esac
OUT=${BENCH_OUT:-$REPO/target/bench/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
case "$OUT" in /tmp|/tmp/*) echo "bench.sh: BENCH_OUT must not be under /tmp (the guest cannot see it)" >&2; exit 2 ;; esac
REPORT=$OUT/results.md
: > "$REPORT"

say() { echo "$*" | tee -a "$REPORT"; }
log() { echo "bench: $*" >&2; }

if [ "${BENCH_BUILD:-1}" = 1 ]; then
    log "cargo build --release -p vfnvme-tools -p vfnvme-mpath --bins --example overhead"
    (cd "$REPO" && cargo build --release -p vfnvme-tools -p vfnvme-mpath --bins --example overhead) >&2
fi
[ -x "$PERF" ] || { echo "bench.sh: $PERF missing (cargo build --release -p vfnvme-tools)" >&2; exit 1; }
# Run a private copy: a concurrent cargo build that relinks target/release/vfnvme-perf while the
# guest executes it through 9p makes the guest's later runs die with SIGSEGV.
cp "$PERF" "$OUT/vfnvme-perf"
PERF=$OUT/vfnvme-perf

# ---------------------------------------------------------------------------------------------
# The machine (kept from the boot when only reporting it again)
# ---------------------------------------------------------------------------------------------
[ "${STAGES[*]}" = guest_report ] && [ -s "$OUT/machine.env" ] || {
    echo "date=$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "nproc=$(nproc)"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "kernel=$(uname -r)"
    echo "qemu=$(qemu-system-x86_64 --version 2>/dev/null | head -1)"
    echo "fio=$(fio --version 2>/dev/null)"
    echo "valgrind=$(valgrind --version 2>/dev/null)"
    echo "rustc=$(rustc --version 2>/dev/null)"
    echo "commit=$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null)$(cd "$REPO" && git diff --quiet HEAD -- driver mpath hugepages tools 2>/dev/null || echo ' (+ uncommitted changes in driver/mpath/hugepages/tools)')"
    echo "load=$(cut -d' ' -f1-3 /proc/loadavg)"
} > "$OUT/machine.env"

host_sampler() {   # once a second: UTC seconds, CPU steal % and busy % (both cores) since the last
    local u n sy i w q sq st rest t prev_t= prev_st= prev_i=
    while :; do
        read -r _ u n sy i w q sq st rest < /proc/stat
        t=$((u + n + sy + i + w + q + sq + st))
        if [ -n "$prev_t" ] && [ "$t" -gt "$prev_t" ]; then
            echo "$(date +%s) $((100 * (st - prev_st) / (t - prev_t))) $((100 - 100 * (i + w - prev_i) / (t - prev_t)))"
        fi
        prev_t=$t prev_st=$st prev_i=$((i + w))
        sleep 1
    done
}

machine() {   # the machine block, printed with every table
    say ""
    say "Machine: $(grep '^nproc=' "$OUT/machine.env" | cut -d= -f2) cores, $(grep '^cpu=' "$OUT/machine.env" | cut -d= -f2-), kernel $(grep '^kernel=' "$OUT/machine.env" | cut -d= -f2-), $(grep '^qemu=' "$OUT/machine.env" | cut -d= -f2-), $(grep '^fio=' "$OUT/machine.env" | cut -d= -f2-), $(grep '^rustc=' "$OUT/machine.env" | cut -d= -f2-)"
    say "Date: $(date -u '+%Y-%m-%d %H:%M UTC'); vfnvme $(grep '^commit=' "$OUT/machine.env" | cut -d= -f2-); host load average before: $(grep '^load=' "$OUT/machine.env" | cut -d= -f2-)"
}

python_table() { python3 - "$OUT" "$@" <<'EOF'
import json, os, statistics, sys, glob, re
out, kind = sys.argv[1], sys.argv[2]
args = sys.argv[3:]

def perf_iops(path):
    try:
        with open(path) as f:
            j = json.load(f)
        return j["total"]["iops"]
    except Exception:
        return None

def fio_iops(path):
    try:
        with open(path) as f:
            txt = f.read()
        j = json.loads(txt[txt.index("{"):])
        return sum(job["read"]["iops"] for job in j["jobs"])
    except Exception:
        return None

def stats(vals):
    v = [x for x in vals if x]
    if not v:
        return None
    med = statistics.median(v)
    return dict(vals=v, med=med, lo=min(v), hi=max(v),
                spread=(max(v) - min(v)) / med * 100 if med else 0.0)

def fmt_iops(x):
    return f"{x/1e6:.2f}M" if x >= 1e6 else f"{x/1e3:.1f}k"

def runs(s):
    return ", ".join(fmt_iops(x) for x in s["vals"])

if kind == "sim-qd":
    reps = int(args[0]); qds = args[1:]
    print("| QD | IOPS (median) | ns per I/O (1e9/IOPS) | best run | ns per I/O, best | runs | spread (max-min)/median |")
    print("|---:|---:|---:|---:|---:|---|---:|")
    for qd in qds:
        s = stats([perf_iops(f"{out}/sim/qd{qd}-r{r}.json") for r in range(1, reps + 1)])
        if not s:
            print(f"| {qd} | FAILED | | | | | |"); continue
        print(f"| {qd} | {s['med']/1e6:.2f}M | {1e9/s['med']:.1f} | {s['hi']/1e6:.2f}M | {1e9/s['hi']:.1f} | {runs(s)} | {s['spread']:.1f}% |")
elif kind == "sim-mp":
    reps = int(args[0])
    rows = [("bare queue pair (`-q 128`)", "bare"),
            ("`--multipath -r sim:ctrls=1` (1 path)", "mp1"),
            ("`--multipath` (2 paths, round-robin)", "mp2")]
    # Each configuration's IOPS by round (None for a failed run), read once.
    by_round = {key: [perf_iops(f"{out}/sim/{key}-r{r}.json") for r in range(1, reps + 1)]
                for _, key in rows}
    base = stats(by_round["bare"])
    print("| QD 128 | IOPS (median) | ns per I/O | runs | spread | vs bare (IOPS ratio, medians) | overhead ns/IO (medians) | vs bare (best runs) | overhead ns/IO (best runs) | vs bare, paired (median of per-round IOPS ratios) |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for label, key in rows:
        s = stats(by_round[key])
        if not s:
            print(f"| {label} | FAILED | | | | | | | | |"); continue
        ratio = s["med"] / base["med"] if base else float("nan")
        dns = 1e9 / s["med"] - 1e9 / base["med"] if base else float("nan")
        rb = s["hi"] / base["hi"] if base else float("nan")
        dnb = 1e9 / s["hi"] - 1e9 / base["hi"] if base else float("nan")
        # Paired: each round's ratio to that round's bare run (noise that lasts a round moves
        # both), then the median of those.
        pairs = [a / b for a, b in zip(by_round[key], by_round["bare"]) if a and b]
        paired = statistics.median(pairs) if pairs else float("nan")
        print(f"| {label} | {s['med']/1e6:.2f}M | {1e9/s['med']:.1f} | {runs(s)} | {s['spread']:.1f}% | {ratio:.3f} | {dns:+.1f} | {rb:.3f} | {dnb:+.1f} | {paired:.3f} |")
elif kind == "guest":
    reps = int(args[0])
    ab = args[1] if len(args) > 1 else ""
    ab_label = {"slack": "QEMU timer slack 1 ns", "pin": "vCPU 0 pinned alone",
                "haltpoll": "host haltpoll 200 us",
                "shadow": "--no-shadow-doorbells"}.get(ab, ab)
    g = f"{out}/guest/bench"
    cfgs = [("vf1", "vfnvme-perf, 1 controller (VFIO)", perf_iops),
            ("vfmp", "vfnvme-perf --multipath, 2 controllers (VFIO)", perf_iops),
            ("kio", "kernel nvme, fio io_uring, /dev/nvmeXn1 (interrupts)", fio_iops),
            ("kcmd", "kernel nvme, fio io_uring_cmd, /dev/ngXn1 (interrupts)", fio_iops),
            ("kpoll", "kernel nvme poll_queues=1, fio io_uring --hipri, /dev/nvmeXn1", fio_iops),
            ("vf1ab", f"vfnvme-perf, 1 controller, {ab_label}", perf_iops),
            ("kpollab", f"kernel polled (--hipri), {ab_label}", fio_iops)]
    S = {}
    print("| configuration | QD | IOPS (median) | runs | spread |")
    print("|---|---:|---:|---|---:|")
    for key, label, fn in cfgs:
        for qd in (1, 32):
            if key.endswith("ab") and not glob.glob(f"{g}/{key}-qd{qd}-r*.rc"):
                continue   # the A/B variant runs only when asked for (slack, pin: at QD 1 only)
            s = stats([fn(f"{g}/{key}-qd{qd}-r{r}.json") for r in range(1, reps + 1)])
            S[(key, qd)] = s
            if not s:
                why = "not run" if not glob.glob(f"{g}/{key}-qd{qd}-r*.rc") else "FAILED"
                print(f"| {label} | {qd} | {why} | | |"); continue
            print(f"| {label} | {qd} | {fmt_iops(s['med'])} | {runs(s)} | {s['spread']:.0f}% |")
    print()
    print("Ratios: of the medians, with the range over all pairs of runs (worst to best) in brackets;")
    print("then per round: the ratio of the two runs of the same repeat, each round's, and their median")
    print("(in rounds order the two ran minutes apart at most, so host drift cancels; a goal is met in")
    print("a round when that round's ratio meets it).")
    print()
    print("| ratio | QD 1 | QD 1, per round | QD 32 | QD 32, per round | goal |")
    print("|---|---:|---|---:|---|---|")
    def ratio(a, b, qd):
        sa, sb = S.get((a, qd)), S.get((b, qd))
        if not sa or not sb:
            return "n/a"
        return f"{sa['med']/sb['med']:.2f}x ({sa['lo']/sb['hi']:.2f}-{sa['hi']/sb['lo']:.2f})"
    def per_round(a, b, qd):
        fa = perf_iops if a.startswith("vf") else fio_iops
        fb = perf_iops if b.startswith("vf") else fio_iops
        rs = []
        for r in range(1, reps + 1):
            x, y = fa(f"{g}/{a}-qd{qd}-r{r}.json"), fb(f"{g}/{b}-qd{qd}-r{r}.json")
            if x and y:
                rs.append(x / y)
        if not rs:
            return "n/a"
        return f"{statistics.median(rs):.2f}x: " + ", ".join(f"{x:.2f}" for x in rs)
    for a, b, label, goal in [
            ("vf1", "kio", "vfnvme 1 ctrl / kernel io_uring", "≥ 6x at QD 1, ≥ 8x at QD 32"),
            ("vfmp", "kio", "vfnvme multipath / kernel io_uring", "≥ 6x at QD 1, ≥ 8x at QD 32"),
            ("vf1", "kcmd", "vfnvme 1 ctrl / kernel io_uring_cmd", ""),
            ("vf1", "kpoll", "vfnvme 1 ctrl / kernel polled (--hipri)", "≥ 3.5x at QD 1"),
            ("vfmp", "kpoll", "vfnvme multipath / kernel polled (--hipri)", "≥ 3.5x at QD 1"),
            ("vfmp", "vf1", "vfnvme multipath / vfnvme 1 ctrl", ""),
            ("vf1ab", "kpollab", f"vfnvme 1 ctrl / kernel polled, both with {ab_label}", ""),
            ("vf1ab", "vf1", f"vfnvme 1 ctrl: {ab_label} / without", ""),
            ("kpollab", "kpoll", f"kernel polled: {ab_label} / without", "")]:
        if (a.endswith("ab") or b.endswith("ab")) and not (S.get((a, 1)) and S.get((b, 1))):
            continue
        print(f"| {label} | {ratio(a, b, 1)} | {per_round(a, b, 1)} | {ratio(a, b, 32)} | {per_round(a, b, 32)} | {goal} |")
elif kind == "callgrind":
    # args: A B, then names of the configs (files cg/<name>.<N>)
    A, B = int(args[0]), int(args[1]); names = args[2:]
    line_re = re.compile(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S.*?)(?:\s+\[[^\]]*\])?\s*$")
    def classify_fn(fn):
        if "vfnvme::sim::" in fn: return "sim"
        if "vfnvme_mpath" in fn: return "mpath"
        if re.search(r"vfnvme::(qpair|ctrl)|vfnvme_hugepages", fn): return "driver"
        if "vfnvme::" in fn: return "driver (other vfnvme:: modules)"
        if re.search(r"vfnvme_tools|vfnvme_perf|hdrhistogram", fn): return "tool"
        return "other (std, libc, ld.so, ...)"
    def classify_file(path, fn):
        # the source file of the instruction (inlining-aware), else the function; paths may be
        # absolute or relative to the workspace
        p = "/" + path
        if "/driver/src/sim/" in p: return "sim"
        if "/mpath/src/" in p: return "mpath"
        if "/driver/src/" in p or "/hugepages/src/" in p: return "driver"
        if "/tools/src/" in p or "hdrhistogram" in p: return "tool"
        return classify_fn(fn)
    def load(path):
        by_fn, by_file, total = {}, {}, 0
        with open(path) as f:
            for line in f:
                if "PROGRAM TOTALS" in line:
                    total = int(line.split()[0].replace(",", "")); continue
                m = line_re.match(line)
                if not m or ":" not in m.group(2):
                    continue
                n = int(m.group(1).replace(",", ""))
                loc = m.group(2)
                # "file:function" (file may be ???); split at the first ':' after the file path
                fpath, _, fn = loc.partition(":") if not loc.startswith("???") else ("???", None, loc[4:])
                c1 = classify_fn(fn); c2 = classify_file(fpath, fn)
                by_fn[c1] = by_fn.get(c1, 0) + n
                by_file[c2] = by_file.get(c2, 0) + n
        return total, by_fn, by_file
    cats = ["sim", "driver", "driver (other vfnvme:: modules)", "mpath", "tool", "other (std, libc, ld.so, ...)"]
    res = {}
    for name in names:
        ta, fa, la = load(f"{out}/cg/{name}.{A}.txt")
        tb, fb, lb = load(f"{out}/cg/{name}.{B}.txt")
        n = B - A
        res[name] = dict(total=(tb - ta) / n,
                         fn={c: (fb.get(c, 0) - fa.get(c, 0)) / n for c in cats},
                         file={c: (lb.get(c, 0) - la.get(c, 0)) / n for c in cats})
    for mode, title in [("fn", "by function symbol (inlined code counts for the function it was inlined into)"),
                        ("file", "by source file of each instruction (inlining-aware: driver code inlined into the tool's loop counts as driver)")]:
        print(f"Instructions per I/O, {title}:")
        print()
        print("| component | " + " | ".join(f"{n}: Ir/IO" for n in names) + " | " + " | ".join(f"{n}: share" for n in names) + " |")
        print("|---|" + "---:|" * (2 * len(names)))
        for c in cats:
            if all(abs(res[n][mode][c]) < 0.05 for n in names):
                continue
            print(f"| {c} | " + " | ".join(f"{res[n][mode][c]:.1f}" for n in names) + " | "
                  + " | ".join(f"{100*res[n][mode][c]/res[n]['total']:.1f}%" for n in names) + " |")
        print("| **total** | " + " | ".join(f"**{res[n]['total']:.1f}**" for n in names) + " | "
              + " | ".join("100%" for n in names) + " |")
        print()
    with open(f"{out}/cg/summary.json", "w") as f:
        json.dump(res, f, indent=1)
EOF
}

# ---------------------------------------------------------------------------------------------
# sim: the inline simulator on the host
# ---------------------------------------------------------------------------------------------
run_perf() {   # run_perf FILE ARGS...
    local f=$1; shift
    log "vfnvme-perf $*"
    "$PERF" "$@" --json > "$f" 2> "${f%.json}.err" || { log "FAILED (exit $?): vfnvme-perf $*"; tail -5 "${f%.json}.err" >&2; }
}

stage_sim() {
    mkdir -p "$OUT/sim"
    local r qd
    for r in $(seq "$SIM_REPS"); do
        for qd in 1 32 128; do
            run_perf "$OUT/sim/qd$qd-r$r.json" -w randread -o 4k -q "$qd" -t "$SIM_SECS"
        done
    done
    local k cfgs=(bare mp1 mp2)
    for r in $(seq "$SIM_REPS"); do
        # The order rotated each round, so that no configuration always runs first.
        for k in 0 1 2; do
            case ${cfgs[$(( (r + k) % 3 ))]} in
            bare) run_perf "$OUT/sim/bare-r$r.json" -w randread -o 4k -q 128 -t "$SIM_SECS" ;;
            mp1) run_perf "$OUT/sim/mp1-r$r.json" -w randread -o 4k -q 128 -t "$SIM_SECS" --multipath -r sim:ctrls=1 ;;
            mp2) run_perf "$OUT/sim/mp2-r$r.json" -w randread -o 4k -q 128 -t "$SIM_SECS" --multipath ;;
            esac
        done
    done
    local ex=$REPO/target/release/examples/overhead
    if [ "$AB_ROUNDS" -gt 0 ] && [ -x "$ex" ]; then
        log "overhead ab $AB_ROUNDS 500000"
        "$ex" ab "$AB_ROUNDS" 500000 > "$OUT/sim/overhead-ab.txt" 2> "$OUT/sim/overhead-ab.err" \
            || log "FAILED (exit $?): overhead ab"
    fi
    say ""
    say "## Inline simulator: 4 KiB random reads, null namespace, 1 core"
    machine
    say ""
    say "Commands ($SIM_REPS repeats, rounds interleaved over QD):"
    say ""
    say '```'
    say "target/release/vfnvme-perf -w randread -o 4k -q {1,32,128} -t $SIM_SECS --json   # target: the default sim (2 ctrls, null, 16G, 4 KiB LBAs); core 0"
    say '```'
    say ""
    python_table sim-qd "$SIM_REPS" 1 32 128 | tee -a "$REPORT"
    say ""
    say "## Multipath channel vs bare queue pair (inline simulator, QD 128)"
    machine
    say ""
    say "Commands ($SIM_REPS rounds of bare / 1 path / 2 paths, the order rotated each round):"
    say ""
    say '```'
    say "target/release/vfnvme-perf -w randread -o 4k -q 128 -t $SIM_SECS --json"
    say "target/release/vfnvme-perf -w randread -o 4k -q 128 -t $SIM_SECS --json --multipath -r sim:ctrls=1"
    say "target/release/vfnvme-perf -w randread -o 4k -q 128 -t $SIM_SECS --json --multipath"
    say '```'
    say ""
    python_table sim-mp "$SIM_REPS" | tee -a "$REPORT"
    if [ -s "$OUT/sim/overhead-ab.txt" ]; then
        say ""
        say "Paired wall-clock time, bare queue pair (qp), the same keeping the channel's 24-byte"
        say "descriptor (qpd) and the channel through a Submitter (chs), QD 32, one process, the"
        say "order rotated each round:"
        say ""
        say '```'
        say "target/release/examples/overhead ab $AB_ROUNDS 500000"
        cat "$OUT/sim/overhead-ab.txt" | tee -a "$REPORT"
        say '```'
    fi
}

# ---------------------------------------------------------------------------------------------
# callgrind: instructions per I/O and their split
# ---------------------------------------------------------------------------------------------
stage_callgrind() {
    mkdir -p "$OUT/cg"
    local name n
    for name in bare mp1 mp2; do
        for n in "$CG_A" "$CG_B"; do
            local extra=()
            case $name in mp1) extra=(--multipath -r sim:ctrls=1) ;; mp2) extra=(--multipath) ;; esac
            log "callgrind: vfnvme-perf -q 128 -d $n ${extra[*]}"
            valgrind --tool=callgrind --callgrind-out-file="$OUT/cg/$name.$n.out" \
                "$PERF" -w randread -o 4k -q 128 -d "$n" "${extra[@]}" > "$OUT/cg/$name.$n.stdout" 2> "$OUT/cg/$name.$n.stderr" \
                || { log "callgrind run failed: $name $n"; tail -5 "$OUT/cg/$name.$n.stderr" >&2; }
            callgrind_annotate --inclusive=no --threshold=100 --auto=no "$OUT/cg/$name.$n.out" > "$OUT/cg/$name.$n.txt" 2> /dev/null
        done
    done
    say ""
    say "## Instructions per I/O (callgrind, inline simulator, QD 128, 4 KiB randread)"
    machine
    say ""
    say "Ir per I/O = (Ir of the $CG_B-I/O run - Ir of the $CG_A-I/O run) / $((CG_B - CG_A)), which cancels startup and teardown."
    say "bare = the bare queue pair, mp1 = \`--multipath -r sim:ctrls=1\`, mp2 = \`--multipath\` (2 paths). Commands:"
    say ""
    say '```'
    say "valgrind --tool=callgrind --callgrind-out-file=cg.N target/release/vfnvme-perf -w randread -o 4k -q 128 -d N [--multipath [-r sim:ctrls=1]]   # N = $CG_A, $CG_B"
    say "callgrind_annotate --inclusive=no --threshold=100 --auto=no cg.N"
    say '```'
    say ""
    python_table callgrind "$CG_A" "$CG_B" bare mp1 mp2 | tee -a "$REPORT"
}

# ---------------------------------------------------------------------------------------------
# guest: one TCG boot, vfnvme over VFIO vs the kernel driver
# ---------------------------------------------------------------------------------------------
stage_guest() {
    local rd=$OUT/guest
    mkdir -p "$rd"
    local cmd="$HERE/bench-guest.sh $PERF /rig/bench $G_REPS $G_SECS $G_DEADLINE ${G_AB:--} $G_ORDER"
    log "guest: RIG_BACKING=null RIG_TIMEOUT=$G_TIMEOUT RIG_RUNDIR=$rd tests/vm/run-guest.sh '$cmd'"
    local rc=0
    # The host's CPU steal and load during the boot, once a second: a noisy boot shows here.
    host_sampler > "$rd/host-cpu.txt" &
    local sampler=$!
    RIG_BACKING=null RIG_TIMEOUT=$G_TIMEOUT RIG_RUNDIR=$rd "$HERE/run-guest.sh" "$cmd" >&2 || rc=$?
    kill "$sampler" 2> /dev/null
    wait "$sampler" 2> /dev/null || true
    echo "$rc" > "$rd/boot.rc"
    [ "$rc" = 0 ] || log "guest exited with $rc (see $rd/out.log, $rd/console.log)"
    # On a fresh machine the rig installs QEMU and fio during the boot: record their versions now.
    sed -i -e "s|^qemu=\$|qemu=$(qemu-system-x86_64 --version 2>/dev/null | head -1)|" \
        -e "s|^fio=\$|fio=$(fio --version 2>/dev/null)|" "$OUT/machine.env"
    stage_guest_report
}

# The report of a guest boot already in $BENCH_OUT/guest (`bench.sh guest_report`: after a boot
# whose report was lost, or to report it again).
stage_guest_report() {
    local rd=$OUT/guest
    local rc
    rc=$(cat "$rd/boot.rc" 2> /dev/null || echo unknown)
    local genv=$rd/bench/guest.env
    # The repeats the boot ran (a boot reported again may have had more than the default).
    local n
    n=$(ls "$rd"/bench/vf1-qd1-r*.rc 2> /dev/null | wc -l)
    [ "$n" -gt 0 ] && G_REPS=$n
    say ""
    say "## Guest (QEMU TCG): vfnvme over VFIO vs the kernel nvme driver, 4 KiB random reads"
    machine
    say "Guest: $(grep -h '^guest_nproc=' "$genv" 2>/dev/null | cut -d= -f2) vCPUs ($(grep -h '^guest_cpu=' "$genv" 2>/dev/null | cut -d= -f2-)), kernel $(grep -h '^guest_kernel=' "$genv" 2>/dev/null | cut -d= -f2), 2 GiB; one boot, RIG_BACKING=null (null-co, read-zeroes=on), 2 controllers sharing namespace 1 (1 GiB, 512 B LBAs) $([ "${RIG_IOMMU:-1}" = 0 ] && echo "without an IOMMU (VFIO no-IOMMU mode)" || echo "behind the emulated intel-iommu"); $G_REPS repeats of $G_SECS s after 1 s warm-up, $( [ "$(grep -h '^order=' "$genv" 2>/dev/null | cut -d= -f2)" = rounds ] && echo "in rounds (each repeat of every configuration together, the controllers handed between vfio-pci and nvme in every round)" || echo "interleaved within each driver's block (all vfnvme runs, then all kernel runs)"), the order of one controller and multipath (and of io_uring and io_uring_cmd) swapped in even repeats; vfnvme-perf and fio on guest CPU 0. Boot exit code $rc; kernel head: $(grep -h '^kernel_head=' "$genv" 2>/dev/null | cut -d= -f2- | tr '\n' ' ')$(cat "$rd"/bench/kernel-poll.dmesg 2>/dev/null | tr -d '\r' | sed 's/^\[[^]]*\] //' | tr '\n' ' ')"
    say ""
    say "Commands:"
    say ""
    say '```'
    say "RIG_IOMMU=${RIG_IOMMU:-1}${RIG_NVME_OPTS:+ RIG_NVME_OPTS=$RIG_NVME_OPTS}${RIG_HALTPOLL_NS:+ RIG_HALTPOLL_NS=$RIG_HALTPOLL_NS} RIG_BACKING=null RIG_TIMEOUT=$G_TIMEOUT tests/vm/run-guest.sh 'tests/vm/bench-guest.sh \$BENCH_OUT/vfnvme-perf /rig/bench $G_REPS $G_SECS $G_DEADLINE ${G_AB:--} $G_ORDER'   # a copy of target/release/vfnvme-perf"
    say "# in the guest, after guest-bind.sh --hugepages 64:"
    say "vfnvme-perf -r 0000:01:00.0 -q {1,32} -a 1 -t $G_SECS --json"
    say "vfnvme-perf -r 0000:01:00.0 -r 0000:02:00.0 --multipath -q {1,32} -a 1 -t $G_SECS --json"
    say "# unbind from vfio-pci, modprobe nvme:"
    say "fio --name=bench --filename=/dev/nvmeXn1 --ioengine=io_uring --rw=randread --bs=4k --iodepth={1,32} --runtime=$G_SECS --ramp_time=1 --time_based --cpus_allowed=0 --norandommap --randrepeat=0 --output-format=json --direct=1"
    say "fio ...same, without --direct=1 (the char device refuses O_DIRECT; passthrough bypasses the page cache)... --filename=/dev/ngXn1 --ioengine=io_uring_cmd --cmd_type=nvme"
    say "# rmmod nvme; modprobe nvme poll_queues=1:"
    say "fio ...same... --filename=/dev/nvmeXn1 --ioengine=io_uring --direct=1 --hipri"
    say '```'
    say ""
    python_table guest "$G_REPS" "$G_AB" | tee -a "$REPORT"
    say ""
    say "Host CPU during the boot ($rd/host-cpu.txt, 1 s samples of /proc/stat over both cores): $(awk '{n++; st+=$2; bu+=$3; if ($2>mx) mx=$2} END {if (n) printf "steal mean %.1f%%, max %d%%; busy mean %.1f%% (%d samples)", st/n, mx, bu/n, n; else printf "no samples"}' "$rd/host-cpu.txt")."
    local f
    for f in "$rd"/bench/*.rc; do
        [ -e "$f" ] || continue
        if [ "$(cat "$f")" != 0 ]; then
            say ""
            say "FAILED: $(basename "${f%.rc}") exit code $(cat "$f"); stderr:"
            say '```'
            tail -20 "${f%.rc}.err" | tee -a "$REPORT"
            say '```'
        fi
    done
    if grep -q 'WARN\|ERROR' "$rd"/bench/vf*.err 2>/dev/null; then
        say ""
        say "vfnvme-perf warnings in the guest (first 3 distinct, from $rd/bench/*.err):"
        say '```'
        grep -h 'WARN\|ERROR' "$rd"/bench/vf*.err | sed -E 's/0x[0-9a-f]+/0x…/g' | sort | uniq -c | head -3 | tee -a "$REPORT"
        say '```'
    fi
}

for s in "${STAGES[@]}"; do "stage_$s"; done
log "report: $REPORT"
