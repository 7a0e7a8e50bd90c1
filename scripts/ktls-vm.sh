#!/usr/bin/env bash
# A throwaway VM with kernel TLS, for tests that need kTLS on a host kernel without it.
#
#   scripts/ktls-vm.sh prepare               install what the VM needs (and the musl target for a
#                                            static replink), fetch and unpack the kernel
#   scripts/ktls-vm.sh run SCRIPT [BINARY…]  boot, run SCRIPT (busybox sh) inside, print the console
#
# The VM: Debian bookworm's kernel (linux-image-6.1.0-*-amd64, from `apt-get download`, never
# installed) under QEMU TCG (no KVM needed), 512 MiB, no disk, no network but loopback. Its
# initramfs holds a static busybox, the kernel's tls/crypto modules (`modprobe tls` works) and
# each BINARY in /bin (they must be static: nothing else is there). /init mounts proc, sys and
# devtmpfs, brings lo up, runs SCRIPT from /tmp, prints `ktls-vm: exit=N` and powers off.
# `run` exits with SCRIPT's status (125 when the marker never came: the VM did not finish).
#
# Cache: KTLS_VM_DIR (default target/ktls-vm): the .deb, the unpacked kernel and the base
# archive (busybox + modules) are made once; each run adds a small archive with /init, SCRIPT
# and the binaries (the kernel unpacks concatenated cpio archives in order). A boot takes
# about 8 s. KTLS_VM_TIMEOUT (seconds, default 180) bounds a run.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/debian-deps.sh

dir=${KTLS_VM_DIR:-target/ktls-vm}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

prepare() {
    # busybox-static's doc directory tells it apart from the dynamic busybox (same /bin/busybox).
    need_debian qemu-system-x86_64 qemu-system-x86 /usr/share/doc/busybox-static busybox-static \
        depmod kmod musl-gcc musl-tools
    # The static replink for the VM (tests/src/vm.rs builds it with musl-gcc for ring's C).
    if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
        rustup target add x86_64-unknown-linux-musl
    fi
    # One preparer at a time (two test processes may start together); the others wait and
    # then find the cache ready.
    exec 9>"$dir/.prepare.lock"
    flock 9
    if [[ ! -f $dir/base.cpio ]]; then
        local pkg
        pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
        if [[ -z $pkg ]]; then
            apt-get update -qq
            pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
        fi
        [[ -n $pkg ]] || { echo "ktls-vm: no linux-image-*-amd64 package in apt's lists" >&2; exit 1; }
        rm -rf "$dir/deb" "$dir/kernel.tmp" "$dir/base.tmp"
        mkdir -p "$dir/deb" "$dir/kernel.tmp"
        # Into a directory _apt may not read: apt warns and downloads as root, which is fine.
        (cd "$dir/deb" && apt-get download -q "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
        dpkg-deb -x "$dir"/deb/"$pkg"_*.deb "$dir/kernel.tmp"
        local version=${pkg#linux-image-}
        local base=$dir/base.tmp
        mkdir -p "$base"/{bin,sbin,proc,sys,dev,tmp,lib/modules/"$version"/kernel/arch/x86}
        cp /bin/busybox "$base/bin/busybox"
        local mods=$dir/kernel.tmp/lib/modules/$version
        cp -a "$mods"/kernel/{crypto,lib} "$base/lib/modules/$version/kernel/"
        cp -a "$mods/kernel/arch/x86/crypto" "$base/lib/modules/$version/kernel/arch/x86/"
        mkdir -p "$base/lib/modules/$version/kernel/net"
        cp -a "$mods/kernel/net/tls" "$base/lib/modules/$version/kernel/net/"
        cp "$mods"/modules.{order,builtin,builtin.modinfo} "$base/lib/modules/$version/"
        depmod -b "$base" "$version"
        (cd "$base" && find . | busybox cpio -o -H newc 2>/dev/null) >"$dir/base.cpio.tmp"
        rm -rf "$dir/kernel"
        mv "$dir/kernel.tmp" "$dir/kernel"
        rm -rf "$base"
        mv "$dir/base.cpio.tmp" "$dir/base.cpio"
    fi
    exec 9>&-
}

run() {
    local script=$1
    shift
    # Global: the EXIT trap runs after this function has returned.
    work=$(mktemp -d "$dir/run.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/root/bin" "$work/root/tmp"
    for bin in "$@"; do
        cp "$bin" "$work/root/bin/$(basename "$bin")"
        # Debug info would only make the archive (and the boot) bigger.
        strip "$work/root/bin/$(basename "$bin")" 2>/dev/null || true
    done
    cp "$script" "$work/root/tmp/test.sh"
    cat >"$work/root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ip link set lo up
echo "ktls-vm: booted $(uname -r)"
cd /tmp
sh /tmp/test.sh
echo "ktls-vm: exit=$?"
poweroff -f
EOF
    chmod -R a+rX "$work/root"
    chmod 755 "$work/root/init"
    (cd "$work/root" && find . | busybox cpio -o -H newc 2>/dev/null) >"$work/run.cpio"
    cat "$dir/base.cpio" "$work/run.cpio" >"$work/initrd"
    local kernel
    kernel=$(echo "$dir"/kernel/boot/vmlinuz-*)
    timeout "${KTLS_VM_TIMEOUT:-180}" qemu-system-x86_64 -accel tcg -cpu max -m 512 -nographic \
        -no-reboot -kernel "$kernel" -initrd "$work/initrd" \
        -append "console=ttyS0 quiet panic=-1" </dev/null | tr -d '\r' | tee "$work/console"
    local status
    status=$(sed -n 's/^ktls-vm: exit=\([0-9]*\)$/\1/p' "$work/console" | tail -1)
    exit "${status:-125}"
}

case ${1:-} in
prepare) prepare ;;
run)
    (($# >= 2)) || { echo "usage: $0 run SCRIPT [BINARY…]" >&2; exit 2; }
    shift
    prepare
    run "$@"
    ;;
*)
    echo "usage: $0 prepare | run SCRIPT [BINARY…]" >&2
    exit 2
    ;;
esac
