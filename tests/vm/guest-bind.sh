#!/bin/sh
# guest-bind.sh — runs INSIDE the rig guest: hand the NVMe controllers to vfio-pci.
#
#   guest-bind.sh [--noiommu] [--hugepages N] [BDF...]
#
#   BDF...          PCI functions to bind (default: every function of class 0x010802, NVMe)
#   --noiommu       load the rebuilt vfio.ko with enable_unsafe_noiommu_mode=1 first, so groups
#                   appear as /dev/vfio/noiommu-N. Needs a guest booted with RIG_IOMMU=0 (and
#                   the vfio modules not yet loaded); setup.sh builds that vfio.ko.
#   --hugepages N   reserve N 2 MiB hugepages (mounted at /dev/hugepages)
#
# Binding goes through driver_override, so it works whether or not the nvme driver is loaded
# (there is no udev in the guest: nvme is not loaded unless something runs `modprobe nvme`).
set -eu

die() { echo "guest-bind: ERROR: $*" >&2; exit 1; }

NOIOMMU=0
HUGEPAGES=
while [ $# -gt 0 ]; do
    case "$1" in
        --noiommu) NOIOMMU=1; shift ;;
        --hugepages) [ $# -ge 2 ] || die "--hugepages needs a count"; HUGEPAGES=$2; shift 2 ;;
        --hugepages=*) HUGEPAGES=${1#--hugepages=}; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        -*) die "unknown option $1" ;;
        *) break ;;
    esac
done

if [ "$NOIOMMU" = 1 ]; then
    [ -d /sys/class/iommu ] && [ -n "$(ls /sys/class/iommu 2>/dev/null)" ] \
        && die "--noiommu needs a guest without an IOMMU (boot with RIG_IOMMU=0)"
    if [ -e /sys/module/vfio ]; then
        [ -e /sys/module/vfio/parameters/enable_unsafe_noiommu_mode ] \
            || die "the distro vfio module is already loaded (no no-IOMMU support); --noiommu must come first"
        echo Y > /sys/module/vfio/parameters/enable_unsafe_noiommu_mode
    else
        KO=${RIG_CACHE:-}/vfio-noiommu/$(uname -r)/vfio.ko
        [ -n "${RIG_CACHE:-}" ] && [ -f "$KO" ] || die "no-IOMMU vfio.ko not found at '$KO' (run tests/vm/setup.sh on the host)"
        # Load what vfio.ko depends on, then the rebuilt module itself.
        for dep in $(modinfo -F depends "$KO" | tr ',' ' '); do modprobe "$dep"; done
        insmod "$KO" enable_unsafe_noiommu_mode=1 || die "insmod $KO failed"
        echo "guest-bind: loaded $KO (enable_unsafe_noiommu_mode=1; this taints the kernel)"
    fi
fi
modprobe vfio-pci || die "modprobe vfio-pci failed"
modprobe vfio_iommu_type1 2>/dev/null || true

if [ -n "$HUGEPAGES" ]; then
    echo "$HUGEPAGES" > /proc/sys/vm/nr_hugepages
    got=$(cat /proc/sys/vm/nr_hugepages)
    echo "guest-bind: hugepages: $got x 2 MiB reserved (asked for $HUGEPAGES)"
    [ "$got" -ge "$HUGEPAGES" ] || die "only $got of $HUGEPAGES hugepages could be reserved (raise RIG_MEM?)"
fi

if [ $# -eq 0 ]; then
    for d in /sys/bus/pci/devices/*; do
        [ "$(cat "$d/class")" = 0x010802 ] && set -- "$@" "$(basename "$d")"
    done
    [ $# -gt 0 ] || die "no NVMe (class 0x010802) PCI functions found"
fi

for bdf in "$@"; do
    d=/sys/bus/pci/devices/$bdf
    [ -e "$d" ] || die "no PCI function $bdf"
    if [ -e "$d/driver" ]; then
        drv=$(basename "$(readlink "$d/driver")")
        if [ "$drv" = vfio-pci ]; then
            echo "guest-bind: $bdf already on vfio-pci"
            continue
        fi
        echo "guest-bind: $bdf: unbinding from $drv"
        echo "$bdf" > "$d/driver/unbind"
    fi
    echo vfio-pci > "$d/driver_override"
    echo "$bdf" > /sys/bus/pci/drivers_probe
    [ -e "$d/driver" ] || die "$bdf: vfio-pci did not bind (see dmesg)"
    drv=$(basename "$(readlink "$d/driver")")
    [ "$drv" = vfio-pci ] || die "$bdf: bound to $drv instead of vfio-pci"
    group=$(basename "$(readlink "$d/iommu_group")")
    if [ -e "/dev/vfio/$group" ]; then node=/dev/vfio/$group; else node=/dev/vfio/noiommu-$group; fi
    echo "guest-bind: $bdf -> vfio-pci, iommu_group $group, $node"
done
echo "guest-bind: /dev/vfio: $(ls /dev/vfio | tr '\n' ' ')"
