#!/usr/bin/env bash
# Boots cloister-init as PID 1 under QEMU (TCG) on top of an image folder written by
# `cloister build` (vmlinuz + initramfs.cpio.zst), to check the real syscall path: mounts,
# finit_module of .ko.xz files, DHCP from QEMU's user network (or a static address), entropy,
# the supervisor, and the power-off or reboot at the end.
#
# It replaces /init with a fresh musl build of this checkout. In the default mode it adds
# one service that always fails, with start_limit_action = "poweroff": the supervisor gives
# up on it and asks for a power-off, which must end QEMU by itself. With
# SMOKE_MODE=ctrl-alt-del there is no service: once the supervisor runs, the script presses
# Ctrl-Alt-Del through QEMU's monitor, which must end in an orderly reboot (init routes it
# to the supervisor with reboot(CAD_OFF)). Not a reproducible image: a smoke test for init
# only. The image's own end-to-end tests live in tests/.
#
# Usage: [SMOKE_MODE=poweroff|ctrl-alt-del] init/scripts/qemu-smoke.sh IMAGE_DIR [kernel args...]
# Prints the console log and exits non-zero when a boot phase or the ending is missing.
set -euo pipefail
image=${1:?usage: qemu-smoke.sh IMAGE_DIR [kernel args...]}
shift
extra_args="$*"
mode=${SMOKE_MODE:-poweroff}
here=$(cd "$(dirname "$0")/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$here/target}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

(cd "$here" && cargo build -p cloister-init --release --target x86_64-unknown-linux-musl --locked -q)
binary=$target_dir/x86_64-unknown-linux-musl/release/cloister-init

mkdir "$work/root"
zstd -dc "$image/initramfs.cpio.zst" | (cd "$work/root" && cpio -idm --quiet --no-absolute-filenames)
install -m 0755 "$binary" "$work/root/init"
rm -rf "$work/root/etc/cloister/services"
mkdir -p "$work/root/etc/cloister/services"
if [ "$mode" = poweroff ]; then
    cat > "$work/root/etc/cloister/services/always-fails.toml" <<'EOF'
# Run /init again: not being PID 1, it exits with status 2 at once.
command = "/init"
restart = "on-failure"
restart_delay_ms = 100
start_limit_burst = 2
start_limit_interval_ms = 60000
start_limit_action = "poweroff"
EOF
fi
(cd "$work/root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet) \
    | zstd -q -3 > "$work/initramfs.cpio.zst"

log=$work/console.log
monitor=$work/monitor.sock
set +e
timeout 300 qemu-system-x86_64 -machine q35 -cpu max -m 512 -smp 1 \
    -display none -serial "file:$log" -monitor "unix:$monitor,server,nowait" -no-reboot \
    -kernel "$image/vmlinuz" -initrd "$work/initramfs.cpio.zst" \
    -append "console=ttyS0 panic=-1 $extra_args" \
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0 \
    -device virtio-rng-pci </dev/null >"$work/qemu.out" 2>&1 &
qemu=$!
if [ "$mode" = ctrl-alt-del ]; then
    for _ in $(seq 1 240); do
        grep -q "init: supervisor_start" "$log" 2>/dev/null && break
        sleep 1
    done
    sleep 2
    python3 - "$monitor" <<'EOF'
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"sendkey ctrl-alt-delete\n")
time.sleep(1)
s.close()
EOF
fi
wait $qemu
status=$?
set -e
tr -d '\r' < "$log"
cat "$work/qemu.out"
echo "--- qemu exit status $status"
ending=poweroff
kernel_ending="reboot: Power down"
if [ "$mode" = ctrl-alt-del ]; then
    ending=reboot
    kernel_ending="reboot: Restarting system"
fi
missing=0
for phase in start mounts_done modules_done entropy_done network_done supervisor_start \
    shutdown_start $ending; do
    if ! grep -q "init: $phase boottime_ms=" "$log"; then
        echo "MISSING: init: $phase"
        missing=1
    fi
done
grep -q "$kernel_ending" "$log" || { echo "MISSING: $kernel_ending"; missing=1; }
exit $((missing || status))
