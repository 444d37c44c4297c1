#!/bin/sh
# tools-demo.sh — runs INSIDE the rig guest: the vfnvme-setup / vfnvme-identify session that
# docs/guest-tool-output.txt shows, verbatim. From the host:
#
#   cargo build --release -p vfnvme-tools
#   tests/vm/run-guest.sh "$PWD/tests/vm/tools-demo.sh" > docs/guest-tool-output.txt
#
# (then strip the rig's own log lines, which go to stderr). Each tool command is shown after
# '# ' and followed by its exit status as [exit N]; setup commands (modprobe, mkfs, mount) only
# by their line.
set -u
BIN=$(cd "$(dirname "$0")/../.." && pwd)/target/release
export PATH="$BIN:$PATH"

cat <<'HEAD'
vfnvme-setup and vfnvme-identify in the QEMU guest rig (tests/vm: QEMU 7.2, two NVMe controllers
0000:01:00.0 and 0000:02:00.0 of one subsystem sharing namespace 1, emulated Intel IOMMU; the
controllers start unbound because the guest has no udev). Captured verbatim with

    cargo build --release -p vfnvme-tools
    tests/vm/run-guest.sh "$PWD/tests/vm/tools-demo.sh"

which runs, as root in the guest, the commands shown after each '#' and prints each tool
command's exit status as [exit N].
HEAD

run() { # a tool command, shown and followed by its exit status
    printf '\n# %s\n' "$*"
    sh -c "$*" 2>&1
    printf '[exit %s]\n' "$?"
}
quiet() { # a setup command, shown only
    printf '\n# %s\n' "$*"
    sh -c "$*" >/dev/null 2>&1 || echo "(failed: $*)"
}

run vfnvme-setup status
quiet modprobe nvme
sleep 2
run vfnvme-setup status
mkdir -p /mnt/data
# The namespace head's name depends on probe order (nvme0n1 or nvme1n1).
HEAD=$(ls /sys/block | grep -E '^nvme[0-9]+n1$' | head -1)
quiet "modprobe ext4; mkfs.ext4 /dev/$HEAD; mount /dev/$HEAD /mnt/data"
run vfnvme-setup status
run vfnvme-setup bind
quiet umount /mnt/data
run vfnvme-setup bind
run vfnvme-setup bind 0000:01:00.0
run vfnvme-setup status
run vfnvme-setup hugepages 32
run cat /run/vfnvme-setup.json
run vfnvme-identify 0000:01:00.0 0000:02:00.0
run "vfnvme-identify --json -n 1 'trtype:PCIe traddr:0000:02:00.0' | head -30"
run vfnvme-identify 0000:03:00.0
run vfnvme-setup hugepages 1100
run vfnvme-setup reset
run vfnvme-setup reset
run vfnvme-setup status
