#!/usr/bin/env bash
# setup.sh — prepare everything the vfnvme QEMU test rig needs, in one command.
#
#   tests/vm/setup.sh [--refresh] [--quiet]
#
# What it does (each step is skipped when its result is already cached):
#   1. installs the host packages the rig uses (QEMU, static busybox, kmod, ...) with apt-get;
#   2. resolves the guest kernel package through `apt-cache depends linux-image-amd64` (the ABI
#      number changes with Debian's updates, so it is never hard-coded), downloads and unpacks it;
#   3. extracts an uncompressed `vmlinux` from the kernel image: QEMU boots it through the PVH entry
#      point, which skips the bzImage decompressor (about 6 s saved per boot under TCG);
#   4. builds the initramfs (static busybox, the virtio/9p/overlay modules, tests/vm/init);
#   5. rebuilds the guest's vfio.ko with CONFIG_VFIO_NOIOMMU (Debian's kernels have it off), for
#      the no-IOMMU tests, from Debian's own kernel source and headers packages.
#
# Everything lands in the cache dir: $VFNVME_VM_CACHE, default <repo>/target/vm-cache. The guest
# sees the host's root file system at the same paths, so the cache must not be under /tmp (the
# guest mounts a fresh tmpfs there). Re-running is a fast no-op; stamps are keyed on the kernel
# version. `--refresh` asks apt again which kernel is current (otherwise the cached one is kept).
#
# It needs root only when something must be installed or built for the first time.
set -euo pipefail
# (.deb names are plain: `ls` is fine for picking them.)
# shellcheck disable=SC2012

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${VFNVME_VM_CACHE:-$REPO/target/vm-cache}

REFRESH=0
QUIET=0
for arg in "$@"; do
    case "$arg" in
        --refresh) REFRESH=1 ;;
        --quiet) QUIET=1 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

log() { [ "$QUIET" = 1 ] || echo "setup: $*" >&2; }
die() { echo "setup: ERROR: $*" >&2; exit 1; }

case "$CACHE" in
    /tmp|/tmp/*) die "cache dir $CACHE is under /tmp, which the guest cannot see (it mounts a fresh tmpfs on /tmp); set VFNVME_VM_CACHE elsewhere" ;;
esac
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)

# ---------------------------------------------------------------------------------------------
# apt helpers. Lists may be missing or stale on a fresh machine: install/download first, and run
# `apt-get update` (then retry once) only when that fails or when there are no lists at all.
# ---------------------------------------------------------------------------------------------
export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0

need_root() {
    [ "$(id -u)" = 0 ] || die "$1 needs root (run: sudo $0)"
}

apt_update() {
    [ "$APT_UPDATED" = 1 ] && return 0
    log "apt-get update"
    apt-get update -q >&2 || die "apt-get update failed (network access to the Debian mirror?)"
    APT_UPDATED=1
}

apt_lists_empty() {
    ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null
}

apt_install() {
    need_root "installing $*"
    apt_lists_empty && apt_update
    log "apt-get install $*"
    if ! apt-get install -y -q --no-install-recommends "$@" >&2; then
        [ "$APT_UPDATED" = 1 ] && die "apt-get install $* failed"
        apt_update
        apt-get install -y -q --no-install-recommends "$@" >&2 || die "apt-get install $* failed"
    fi
}

pkg_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

# ---------------------------------------------------------------------------------------------
# 1. host packages
#   qemu-system-x86  the emulator        busybox-static  the initramfs userland
#   kmod             depmod/modprobe     cpio            initramfs archive
#   xz-utils         vmlinux + modules   fio, bc, python3  used by tests, timing and qmp.py
#   gcc, make        the no-IOMMU vfio.ko build (plus the kernel's own gcc-N, checked below)
# ---------------------------------------------------------------------------------------------
HOST_PKGS=(qemu-system-x86 busybox-static kmod fio cpio bc python3 xz-utils gcc make)
missing=()
for p in "${HOST_PKGS[@]}"; do pkg_installed "$p" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
fi
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found after installing qemu-system-x86"
[ -x /bin/busybox ] || die "/bin/busybox not found after installing busybox-static"

# ---------------------------------------------------------------------------------------------
# 2. guest kernel: resolve, download, unpack
# ---------------------------------------------------------------------------------------------
DEBS=$CACHE/debs
STAMPS=$CACHE/stamps
mkdir -p "$DEBS" "$STAMPS"

resolve_kernel_pkg() {
    apt-cache depends linux-image-amd64 2>/dev/null \
        | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}

# Download the image, headers, kbuild and source packages of one kernel, all at the image's
# exact version (they are built from the same Debian source package). Prints the image package.
download_kernel_debs() {
    local img ver abi series
    img=$(resolve_kernel_pkg)
    [ -n "$img" ] || return 1
    ver=$(apt-cache show "$img" 2>/dev/null | awk '/^Version:/ { print $2; exit }')
    [ -n "$ver" ] || return 1
    abi=${img#linux-image-}; abi=${abi%-amd64}            # e.g. 6.1.0-56
    series=$(echo "$abi" | cut -d. -f1,2)                  # e.g. 6.1
    log "guest kernel: $img $ver (series $series)"
    (cd "$DEBS" && apt-get download -q \
        "$img=$ver" \
        "linux-headers-$abi-amd64=$ver" "linux-headers-$abi-common=$ver" \
        "linux-kbuild-$series=$ver" "linux-source-$series=$ver" >&2) || return 1
    echo "$img"
}

KV=""
[ "$REFRESH" = 0 ] && [ -f "$CACHE/kernel-version" ] && KV=$(cat "$CACHE/kernel-version")
if [ -z "$KV" ] || [ ! -f "$STAMPS/$KV.kernel" ]; then
    apt_lists_empty && apt_update
    IMG=$(download_kernel_debs) || {
        # Stale lists point at a kernel the mirror no longer has: refresh once and retry.
        apt_update
        IMG=$(download_kernel_debs) || die "cannot resolve/download the guest kernel (apt-cache depends linux-image-amd64 gave '$(resolve_kernel_pkg)')"
    }
    KV=${IMG#linux-image-}                                 # e.g. 6.1.0-56-amd64
    if [ ! -f "$STAMPS/$KV.kernel" ]; then
        log "unpacking $IMG"
        rm -rf "$CACHE/kernel/$KV.tmp"
        mkdir -p "$CACHE/kernel/$KV.tmp"
        deb=$(ls "$DEBS/${IMG}_"*.deb | tail -1)
        dpkg -x "$deb" "$CACHE/kernel/$KV.tmp"
        depmod -b "$CACHE/kernel/$KV.tmp" "$KV"
        rm -rf "$CACHE/kernel/$KV"
        mv "$CACHE/kernel/$KV.tmp" "$CACHE/kernel/$KV"
        touch "$STAMPS/$KV.kernel"
    fi
    echo "$KV" > "$CACHE/kernel-version"
fi
KROOT=$CACHE/kernel/$KV                                    # unpacked image: boot/, lib/modules/$KV
ABI=${KV%-amd64}
SERIES=$(echo "$ABI" | cut -d. -f1,2)

# ---------------------------------------------------------------------------------------------
# 3. uncompressed vmlinux (ELF with the PVH note) from the bzImage
# ---------------------------------------------------------------------------------------------
VMLINUX=$KROOT/vmlinux
if [ ! -f "$STAMPS/$KV.vmlinux" ]; then
    log "extracting vmlinux"
    vmlinuz=$KROOT/boot/vmlinuz-$KV
    [ -f "$vmlinuz" ] || die "$vmlinuz missing from the kernel package"
    # The payload is an xz stream inside the bzImage; xz complains about the trailing data
    # after it, which is expected, so judge by the result (an ELF file) instead.
    off=$(grep -abo $'\xfd\x37\x7a\x58\x5a\x00' "$vmlinuz" | head -1 | cut -d: -f1 || true)
    [ -n "$off" ] || die "no xz stream in $vmlinuz (compression changed?); set RIG_KERNEL=$vmlinuz to boot it directly"
    tail -c +$((off + 1)) "$vmlinuz" | xz -dc > "$VMLINUX.tmp" 2>/dev/null || true
    [ "$(head -c 4 "$VMLINUX.tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] \
        || die "extracted vmlinux is not an ELF file"
    mv "$VMLINUX.tmp" "$VMLINUX"
    touch "$STAMPS/$KV.vmlinux"
fi

# ---------------------------------------------------------------------------------------------
# 4. initramfs: busybox + the modules needed to reach the 9p root + /init.
#    The stamp holds a hash of /init and this recipe, so editing tests/vm/init rebuilds it.
# ---------------------------------------------------------------------------------------------
INITRD=$CACHE/initramfs-$KV.cpio.gz
INITRAMFS_MODULES=(virtio_pci 9pnet_virtio 9p overlay)
want=$(cat "$HERE/init" <(echo "${INITRAMFS_MODULES[*]}") /bin/busybox | sha256sum | cut -d' ' -f1)
if [ ! -f "$INITRD" ] || [ "$(cat "$STAMPS/$KV.initramfs" 2>/dev/null)" != "$want" ]; then
    log "building initramfs"
    stage=$CACHE/initramfs.stage
    rm -rf "$stage"
    mkdir -p "$stage"/{bin,proc,sys,dev,tmp,lower,upper,newroot,lib/modules/"$KV"}
    cp /bin/busybox "$stage/bin/busybox"
    install -m 755 "$HERE/init" "$stage/init"
    mods=$KROOT/lib/modules/$KV
    for m in "${INITRAMFS_MODULES[@]}"; do
        deps=$(modprobe -d "$KROOT" -S "$KV" --show-depends "$m" | awk '$1 == "insmod" { print $2 }') \
            || die "modprobe --show-depends $m failed for $KV"
        for f in $deps; do
            rel=${f#"$mods"/}
            mkdir -p "$stage/lib/modules/$KV/$(dirname "$rel")"
            case "$f" in    # busybox's modprobe may not read compressed modules: store them plain
                *.ko.xz) xz -dc "$f" > "$stage/lib/modules/$KV/${rel%.xz}" ;;
                *.ko.zst) zstd -qdc "$f" > "$stage/lib/modules/$KV/${rel%.zst}" ;;
                *) cp "$f" "$stage/lib/modules/$KV/$rel" ;;
            esac
        done
    done
    cp "$mods"/modules.{order,builtin,builtin.modinfo} "$stage/lib/modules/$KV/"
    depmod -b "$stage" "$KV"
    (cd "$stage" && find . | cpio -o -H newc --quiet | gzip -1) > "$INITRD.tmp"
    mv "$INITRD.tmp" "$INITRD"
    rm -rf "$stage"
    echo "$want" > "$STAMPS/$KV.initramfs"
fi

# ---------------------------------------------------------------------------------------------
# 5. no-IOMMU vfio.ko: Debian builds with "# CONFIG_VFIO_NOIOMMU is not set". Rebuild only the
#    vfio core module from the matching source with that option on, against Debian's headers.
#    Its exported-symbol CRCs must equal the distro's, so the distro's vfio_pci and
#    vfio_iommu_type1 load on top of it.
# ---------------------------------------------------------------------------------------------
NOIOMMU_DIR=$CACHE/vfio-noiommu/$KV
NOIOMMU_KO=$NOIOMMU_DIR/vfio.ko
if [ ! -f "$STAMPS/$KV.noiommu" ] || [ ! -f "$NOIOMMU_KO" ]; then
    log "building no-IOMMU vfio.ko for $KV"
    need_root "building the no-IOMMU vfio.ko (first time)"
    hdr=$CACHE/headers/$KV
    hdrdir=$hdr/usr/src/linux-headers-$KV
    if [ ! -d "$hdrdir" ]; then
        rm -rf "$hdr" && mkdir -p "$hdr"
        for p in "linux-headers-$KV" "linux-headers-$ABI-common" "linux-kbuild-$SERIES"; do
            deb=$(ls "$DEBS/${p}_"*.deb 2>/dev/null | tail -1)
            [ -n "$deb" ] || die "$p .deb missing from $DEBS; run: $0 --refresh"
            dpkg -x "$deb" "$hdr"
        done
        # The arch headers' Makefile includes the common one by its installed absolute path.
        sed -i "s|include /usr/src/|include $hdr/usr/src/|" "$hdrdir/Makefile"
    fi
    # The compiler the kernel was built with (e.g. gcc-12) must be present.
    kcc=$(sed -n 's/^CONFIG_CC_VERSION_TEXT="\([^ ]*\) .*/\1/p' "$hdrdir/.config")
    if [ -n "$kcc" ] && ! command -v "$kcc" >/dev/null; then apt_install "$kcc"; fi

    src=$CACHE/src/$KV
    if [ ! -d "$src/linux-source-$SERIES/drivers/vfio" ]; then
        deb=$(ls "$DEBS/linux-source-${SERIES}_"*.deb 2>/dev/null | tail -1)
        [ -n "$deb" ] || die "linux-source-$SERIES .deb missing from $DEBS; run: $0 --refresh"
        rm -rf "$src" && mkdir -p "$src"
        dpkg --fsys-tarfile "$deb" | tar -xO "./usr/src/linux-source-$SERIES.tar.xz" \
            | xz -dc | tar -x -C "$src" --wildcards "linux-source-$SERIES/drivers/vfio/*"
    fi
    rm -rf "$NOIOMMU_DIR" && mkdir -p "$NOIOMMU_DIR"
    cp "$src/linux-source-$SERIES/drivers/vfio/"*.[ch] "$NOIOMMU_DIR/"
    {
        echo 'obj-m := vfio.o'
        # The core module's object list, verbatim from the source Makefile (including its
        # CONFIG_-conditional parts, evaluated against the distro config).
        awk '/^vfio-[^ \t]*[ \t]*[:+]?=/ { p = 1 } p { print; if ($0 !~ /\\$/) p = 0 }' \
            "$src/linux-source-$SERIES/drivers/vfio/Makefile"
        echo 'ccflags-y += -DCONFIG_VFIO_NOIOMMU=1'
    } > "$NOIOMMU_DIR/Makefile"
    make -s -C "$hdrdir" M="$NOIOMMU_DIR" modules >&2 || die "vfio.ko build failed (see above)"
    modinfo -F parm "$NOIOMMU_KO" | grep -q enable_unsafe_noiommu_mode \
        || die "rebuilt vfio.ko lacks enable_unsafe_noiommu_mode"
    if ! diff <(awk '{ print $1, $2 }' "$NOIOMMU_DIR/Module.symvers" | sort -k2) \
              <(awk '$3 == "drivers/vfio/vfio" { print $1, $2 }' "$hdrdir/Module.symvers" | sort -k2) >&2; then
        die "rebuilt vfio.ko exports symbols whose CRCs differ from Debian's; vfio_pci would not load on it"
    fi
    touch "$STAMPS/$KV.noiommu"
fi

# ---------------------------------------------------------------------------------------------
# What run-guest.sh reads.
# ---------------------------------------------------------------------------------------------
cat > "$CACHE/rig.env.tmp" <<EOF
# written by tests/vm/setup.sh
RIG_KV=$KV
RIG_VMLINUX=$VMLINUX
RIG_VMLINUZ=$KROOT/boot/vmlinuz-$KV
RIG_INITRD=$INITRD
RIG_MODULES=$KROOT/lib/modules/$KV
RIG_NOIOMMU_KO=$NOIOMMU_KO
EOF
mv "$CACHE/rig.env.tmp" "$CACHE/rig.env"
log "ready: kernel $KV, cache $CACHE"
