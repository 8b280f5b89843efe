#!/usr/bin/env bash
# Boots cloister-init as PID 1 under QEMU (TCG) on top of an image folder written by
# `cloister build` (vmlinuz + initramfs.cpio.zst), to check the real syscall path: mounts,
# finit_module of .ko.xz files, DHCP from QEMU's user network, entropy, the supervisor, and
# the power-off at the end.
#
# It replaces /init with a fresh musl build of this checkout and adds one service that
# always fails, with start_limit_action = "poweroff": the supervisor gives up on it and
# asks for a power-off, which must end QEMU by itself. Not a reproducible image: a smoke
# test for init only. The image's own end-to-end tests live in tests/.
#
# Usage: init/scripts/qemu-smoke.sh IMAGE_DIR [extra kernel args...]
# Prints the console log and exits non-zero when a boot phase or the power-off is missing.
set -euo pipefail
image=${1:?usage: qemu-smoke.sh IMAGE_DIR [kernel args...]}
shift
extra_args="$*"
here=$(cd "$(dirname "$0")/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$here/target}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

(cd "$here" && cargo build -p cloister-init --release --target x86_64-unknown-linux-musl --locked -q)
binary=$target_dir/x86_64-unknown-linux-musl/release/cloister-init

mkdir "$work/root"
zstd -dc "$image/initramfs.cpio.zst" | (cd "$work/root" && cpio -idm --quiet --no-absolute-filenames)
install -m 0755 "$binary" "$work/root/init"
mkdir -p "$work/root/etc/cloister/services"
cat > "$work/root/etc/cloister/services/always-fails.toml" <<'EOF'
# Run /init again: not being PID 1, it exits with status 2 at once.
command = "/init"
restart = "on-failure"
restart_delay_ms = 100
start_limit_burst = 2
start_limit_interval_ms = 60000
start_limit_action = "poweroff"
EOF
(cd "$work/root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet) \
    | zstd -q -3 > "$work/initramfs.cpio.zst"

log=$work/console.log
set +e
timeout 300 qemu-system-x86_64 -machine q35 -cpu max -m 512 -smp 1 \
    -nographic -no-reboot \
    -kernel "$image/vmlinuz" -initrd "$work/initramfs.cpio.zst" \
    -append "console=ttyS0 panic=-1 $extra_args" \
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0 \
    -device virtio-rng-pci </dev/null >"$log" 2>&1
status=$?
set -e
tr -d '\r' < "$log"
echo "--- qemu exit status $status"
missing=0
for phase in start mounts_done modules_done entropy_done network_done supervisor_start \
    shutdown_start poweroff; do
    if ! grep -q "init: $phase boottime_ms=" "$log"; then
        echo "MISSING: init: $phase"
        missing=1
    fi
done
grep -q "reboot: Power down" "$log" || { echo "MISSING: kernel power-down"; missing=1; }
exit $((missing || status))
