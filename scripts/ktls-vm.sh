#!/usr/bin/env bash
# A throwaway VM with kernel TLS, for tests that need kTLS on a host kernel without it.
#
#   scripts/ktls-vm.sh prepare               install what the VM needs (and the musl target for a
#                                            static replink), fetch and unpack the kernel
#   scripts/ktls-vm.sh run SCRIPT [BINARY…]  boot, run SCRIPT (busybox sh) inside, print the console
#
# The VM: a Debian kernel from $KTLS_VM_SUITE (default trixie-backports: kTLS key updates
# need Linux 6.13 or later, and bookworm's 6.1 and trixie's 6.12 are older), fetched with
# `apt-get download` under a private apt configuration (the host's sources are not touched),
# never installed; QEMU TCG (no KVM needed), 512 MiB, no disk, no network but loopback. Its
# initramfs holds a static busybox, the kernel's tls/crypto modules (`modprobe tls` works) and
# each BINARY in /bin (they must be static: nothing else is there). /init mounts proc, sys and
# devtmpfs, brings lo up, runs SCRIPT from /tmp, prints `ktls-vm: exit=N` and powers off.
# `run` exits with SCRIPT's status (125 when the marker never came: the VM did not finish).
#
# Cache: KTLS_VM_DIR (default target/ktls-vm): the .debs, the unpacked kernel and the base
# archive (busybox + modules, decompressed: busybox's modprobe reads only plain .ko) are made
# once per suite; each run adds a small archive with /init, SCRIPT
# and the binaries (the kernel unpacks concatenated cpio archives in order). A boot takes
# about 8 s. KTLS_VM_TIMEOUT (seconds, default 180) bounds a run.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/debian-deps.sh

dir=${KTLS_VM_DIR:-target/ktls-vm}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

suite=${KTLS_VM_SUITE:-trixie-backports}
cache=kernel-$suite

# apt-get with its own sources, lists and cache under $dir/apt, for one suite.
vm_apt() {
    local a=$dir/apt/$suite
    "$@" -o Dir::Etc::SourceList="$a/sources.list" -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::State::Lists="$a/lists" -o Dir::Cache="$a/cache" -o Dir::State::status=/dev/null \
        -o APT::Architecture=amd64 -o Debug::NoLocking=1
}

fetch_kernel() {
    local a=$dir/apt/$suite
    mkdir -p "$a/lists/partial" "$a/cache/archives/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" \
        >"$a/sources.list"
    vm_apt apt-get update -qq
    # linux-image-amd64 -> linux-image-VERSION-amd64, which may pull its kernel and modules from
    # linux-binary-VERSION / linux-modules-VERSION (trixie-backports' layout) or carry them.
    local image pkgs
    image=$(vm_apt apt-cache depends "linux-image-amd64/$suite" | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    [[ -n $image ]] || { echo "ktls-vm: no linux-image-*-amd64 in $suite" >&2; exit 1; }
    local version=${image#linux-image-}
    pkgs=$(vm_apt apt-cache depends "$image" | awk -v v="$version" '$1 == "Depends:" && ($2 == "linux-binary-" v || $2 == "linux-modules-" v) { print $2 }')
    rm -rf "$dir/deb" "$dir/kernel.tmp" "$dir/base.tmp"
    mkdir -p "$dir/deb" "$dir/kernel.tmp"
    # Into a directory _apt may not read: apt warns and downloads as root, which is fine.
    # shellcheck disable=SC2086
    (cd "$dir/deb" && vm_apt apt-get download -q "$image" $pkgs 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
    local deb
    for deb in "$dir"/deb/*.deb; do
        dpkg-deb -x "$deb" "$dir/kernel.tmp"
    done
    local mods=
    for mods in "$dir"/kernel.tmp/{usr/,}lib/modules/"$version" ""; do
        [[ -d $mods ]] && break
    done
    [[ -n $mods ]] || { echo "ktls-vm: no modules for $version in $image" >&2; exit 1; }
    local vmlinuz=
    for vmlinuz in "$mods/vmlinuz" "$dir/kernel.tmp/boot/vmlinuz-$version" ""; do
        [[ -f $vmlinuz ]] && break
    done
    [[ -n $vmlinuz ]] || { echo "ktls-vm: no vmlinuz in $image" >&2; exit 1; }
    local base=$dir/base.tmp
    local dest=$base/lib/modules/$version
    mkdir -p "$base"/{bin,sbin,proc,sys,dev,tmp} "$dest/kernel/arch/x86" "$dest/kernel/net"
    cp /bin/busybox "$base/bin/busybox"
    cp -a "$mods"/kernel/{crypto,lib} "$dest/kernel/"
    cp -a "$mods/kernel/arch/x86/crypto" "$dest/kernel/arch/x86/"
    cp -a "$mods/kernel/net/tls" "$dest/kernel/net/"
    find "$dest" -name '*.ko.xz' -exec xz -d {} +
    find "$dest" -name '*.ko.zst' -exec zstd -q -d --rm {} +
    local f
    for f in modules.order modules.builtin modules.builtin.modinfo; do
        # (trixie-backports' packages ship none: depmod only wants them present)
        if [[ -f $mods/$f ]]; then cp "$mods/$f" "$dest/"; else : >"$dest/$f"; fi
    done
    depmod -b "$base" "$version"
    (cd "$base" && find . | busybox cpio -o -H newc 2>/dev/null) >"$dir/$cache.cpio.tmp"
    cp "$vmlinuz" "$dir/$cache.vmlinuz"
    rm -rf "$dir/deb" "$dir/kernel.tmp" "$base"
    mv "$dir/$cache.cpio.tmp" "$dir/$cache.cpio"
}

prepare() {
    # busybox-static's doc directory tells it apart from the dynamic busybox (same /bin/busybox).
    need_debian qemu-system-x86_64 qemu-system-x86 /usr/share/doc/busybox-static busybox-static \
        depmod kmod musl-gcc musl-tools xz xz-utils zstd zstd
    # The static replink for the VM (tests/src/vm.rs builds it with musl-gcc for ring's C).
    if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
        rustup target add x86_64-unknown-linux-musl
    fi
    # One preparer at a time (two test processes may start together); the others wait and
    # then find the cache ready.
    exec 9>"$dir/.prepare.lock"
    flock 9
    if [[ ! -f $dir/$cache.cpio ]]; then
        fetch_kernel
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
# The kernel loads crypto modules on demand (e.g. chacha20poly1305 for a kTLS key) through
# modprobe_path, /sbin/modprobe by default: busybox's is in /bin here.
echo /bin/modprobe >/proc/sys/kernel/modprobe
# What udev would load for this CPU on a real machine: without it the kernel's AES-GCM is the
# generic C code, and kTLS would be measured against an unfair baseline.
modprobe aesni_intel 2>/dev/null
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
    cat "$dir/$cache.cpio" "$work/run.cpio" >"$work/initrd"
    local kernel=$dir/$cache.vmlinuz
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
