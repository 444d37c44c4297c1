#!/bin/sh
# bench-sim-ab.sh — interleaved wall-clock A/B of two vfnvme-perf binaries on the inline
# simulator, on this host (no guest).
#
#   tests/vm/bench-sim-ab.sh A B [ROUNDS] [SECS] [-- vfnvme-perf ARGS...]
#
#   A, B     vfnvme-perf binaries, e.g. one built in a worktree of an older commit:
#              git worktree add ../old <commit> && (cd ../old && cargo build --release -p vfnvme-tools)
#   ROUNDS   rounds; each runs A then B                                                   [10]
#   SECS     seconds per run                                                               [2]
#   ARGS     extra arguments for both, e.g. -q 128 --multipath -r sim:ctrls=1          [-q 128]
#
# Every run is `taskset -c 0 BIN -w randread -o 4k -t SECS --json ARGS`. This host is a shared
# 2-core VM whose speed drifts by 10-25% over minutes, so the two binaries alternate within each
# round and the ratio of medians is what to read. Prints each run, then medians, bests and the
# ratio B/A.
set -eu
[ $# -ge 2 ] || { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
A=$1 B=$2
shift 2
ROUNDS=10 SECS=2
case ${1:-} in [0-9]*) ROUNDS=$1; shift ;; esac
case ${1:-} in [0-9]*) SECS=$1; shift ;; esac
[ "${1:-}" = "--" ] && shift
[ $# -eq 0 ] && set -- -q 128
for bin in "$A" "$B"; do
    [ -x "$bin" ] || { echo "bench-sim-ab: $bin is not an executable" >&2; exit 2; }
done
r=1
while [ "$r" -le "$ROUNDS" ]; do
    for v in A B; do
        bin=$A; [ "$v" = B ] && bin=$B
        iops=$(taskset -c 0 "$bin" -w randread -o 4k -t "$SECS" --json "$@" 2> /dev/null |
            python3 -c "import json,sys; print(json.load(sys.stdin)['total']['iops'])" 2> /dev/null) ||
            { echo "bench-sim-ab: $bin $* failed" >&2; exit 1; }
        echo "r$r $v $iops"
    done
    r=$((r + 1))
done | python3 -c '
import statistics as st, sys
runs = {"A": [], "B": []}
for line in sys.stdin:
    print(line.rstrip())
    _, v, iops = line.split()
    runs[v].append(float(iops) / 1e6)
# A failed run stops the loop above (in its own subshell): report it as a failure here too.
want = int(sys.argv[1])
if any(len(r) != want for r in runs.values()):
    sys.exit("bench-sim-ab: %d of %d rounds completed" % (min(len(r) for r in runs.values()), want))
for v in "AB":
    print("%s: median %.2fM IOPS, best %.2fM, %d runs" % (v, st.median(runs[v]), max(runs[v]), len(runs[v])))
print("B/A: median %.3f, best %.3f" % (st.median(runs["B"]) / st.median(runs["A"]), max(runs["B"]) / max(runs["A"])))
' "$ROUNDS"
