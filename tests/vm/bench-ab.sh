#!/bin/sh
# bench-ab.sh — same-boot A/B of two vfnvme-perf variants on one controller, in the rig guest.
#
#   tests/vm/run-guest.sh "$PWD/tests/vm/bench-ab.sh A B [ROUNDS] [SECS] [EXTRA_A] [EXTRA_B]"
#
#   A, B       vfnvme-perf binaries (host paths outside /tmp: the guest sees the host's root)
#   ROUNDS     rounds of QD 1 and QD 32 for each variant                                   [3]
#   SECS       measured seconds per run, after 1 s of warm-up                              [6]
#   EXTRA_A/B  extra vfnvme-perf arguments of each variant, e.g. --no-shadow-doorbells    [none]
#
# Within a round the run that follows the previous round's QD 32 runs is faster at QD 1 (by
# 10-15% in docs/benchmarks.md), so the order alternates: A first in odd rounds, B first in even
# ones. Prints one line per run: "round qdN A|B IOPS". Run with RIG_BACKING=null for numbers
# comparable with bench.sh. Both variants run on the first NVMe function (`-r BDF`), or on
# AB_BDF when set; EXTRA may add `-r OTHER --multipath ...`.
set -u
A=$1 B=$2 ROUNDS=${3:-3} SECS=${4:-6} XA=${5:-} XB=${6:-}
"$RIG_DIR/guest-bind.sh" --hugepages 64 > /dev/null || { echo "bench-ab: guest-bind failed"; exit 1; }
BDF=${AB_BDF:-$(for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/class")" = 0x010802 ] && basename "$d"; done | head -1)}
one() {   # one ROUND QD NAME BIN EXTRA
    v=$("$4" -r "$BDF" -q "$2" -a 1 -t "$SECS" --json $5 2> /dev/null |
        python3 -c "import json,sys; print(round(json.load(sys.stdin)['total']['iops']))" 2> /dev/null)
    echo "r$1 qd$2 $3 ${v:-FAILED}"
}
r=1
while [ "$r" -le "$ROUNDS" ]; do
    for qd in 1 32; do
        if [ $((r % 2)) = 1 ]; then
            one "$r" "$qd" A "$A" "$XA"; one "$r" "$qd" B "$B" "$XB"
        else
            one "$r" "$qd" B "$B" "$XB"; one "$r" "$qd" A "$A" "$XA"
        fi
    done
    r=$((r + 1))
done
