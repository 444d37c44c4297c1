#!/bin/sh
# guest-smoke.sh — runs INSIDE the rig guest, after guest-bind.sh: check the rig itself.
#
#   guest-smoke.sh [--noiommu]
#
# Checks that every NVMe function (expected: $RIG_NCTRL of them, default 2) is bound to vfio-pci,
# that each has its VFIO group node (/dev/vfio/N, or /dev/vfio/noiommu-N with --noiommu), that
# the groups are distinct, and prints an lspci-like table from sysfs.
set -eu

NOIOMMU=0
[ "${1:-}" = --noiommu ] && NOIOMMU=1
EXPECT=${RIG_NCTRL:-2}
fails=0
bad() { echo "smoke: FAIL: $*"; fails=$((fails + 1)); }

echo "smoke: kernel $(uname -r), cmdline: $(cat /proc/cmdline)"
if [ -n "$(ls /sys/class/iommu 2>/dev/null)" ]; then
    echo "smoke: IOMMU: $(ls /sys/class/iommu | tr '\n' ' ')"
else
    echo "smoke: IOMMU: none"
fi

echo "smoke: PCI functions (from sysfs):"
printf '  %-13s %-8s %-9s %-14s %-9s %s\n' BDF CLASS VEN:DEV DRIVER GROUP BAR0
for d in /sys/bus/pci/devices/*; do
    bdf=$(basename "$d")
    drv=-; [ -e "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
    grp=-; [ -e "$d/iommu_group" ] && grp=$(basename "$(readlink "$d/iommu_group")")
    read -r start end _flags < "$d/resource"
    if [ $((end)) = 0 ]; then bar0=-; else
        size=$((end - start + 1))
        if [ "$size" -ge 1024 ]; then bar0="$start/$((size / 1024))K"; else bar0="$start/${size}B"; fi
    fi
    printf '  %-13s %-8s %-9s %-14s %-9s %s\n' "$bdf" "$(cat "$d/class")" \
        "$(sed 's/^0x//' "$d/vendor"):$(sed 's/^0x//' "$d/device")" "$drv" "$grp" "$bar0"
done

n=0
groups=
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/class")" = 0x010802 ] || continue
    bdf=$(basename "$d")
    n=$((n + 1))
    drv=none; [ -e "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
    [ "$drv" = vfio-pci ] || bad "$bdf is bound to $drv, not vfio-pci"
    if [ ! -e "$d/iommu_group" ]; then bad "$bdf has no iommu_group"; continue; fi
    grp=$(basename "$(readlink "$d/iommu_group")")
    if [ "$NOIOMMU" = 1 ]; then node=/dev/vfio/noiommu-$grp; else node=/dev/vfio/$grp; fi
    if [ -c "$node" ]; then echo "smoke: ok: $bdf -> group $grp ($node)"; else bad "$node missing for $bdf"; fi
    case " $groups " in *" $grp "*) bad "group $grp is shared by two controllers" ;; esac
    groups="$groups $grp"
done
[ "$n" = "$EXPECT" ] || bad "found $n NVMe functions, expected $EXPECT (RIG_NCTRL)"
[ -c /dev/vfio/vfio ] || bad "/dev/vfio/vfio (the container node) is missing"
echo "smoke: /dev/vfio: $(ls /dev/vfio | tr '\n' ' ')"
echo "smoke: hugepages: $(cat /proc/sys/vm/nr_hugepages) x 2 MiB; /dev/hugepages: $(grep -c ' /dev/hugepages hugetlbfs' /proc/mounts) mount"

if [ "$fails" -gt 0 ]; then
    echo "smoke: $fails check(s) failed"
    exit 1
fi
echo "smoke: all checks passed ($n controllers)"
