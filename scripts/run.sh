#!/usr/bin/env bash
# The main job: build the Cloister image (kernel, initramfs with the default model, command
# line, manifest) from the pinned inputs, then boot it under QEMU with its web ports
# forwarded to 127.0.0.1: the chat is at https://localhost:8443/.
#
# On a TDX host (KVM offers TD VMs) this builds the production image and boots it as a TD
# (`--tdx`). Anywhere else there is no TEE to attest, so it builds a SIMULATED image
# (`cloister build --tee simulated`): the chat works end to end, but NOTHING about it is
# confidential. CLOISTER_TEE=tdx or CLOISTER_TEE=simulated overrides the choice.
# Extra arguments go to `cloister run` (try --detach or --dry-run).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export CLOISTER_CACHE=${CLOISTER_CACHE:-/var/cache/cloister}
"$here/scripts/setup.sh"

tee=${CLOISTER_TEE:-}
if [[ -z $tee ]]; then
  if [[ $(cat /sys/module/kvm_intel/parameters/tdx 2>/dev/null) == Y ]]; then
    tee=tdx
  else
    tee=simulated
  fi
fi
run_args=()
case $tee in
  tdx) run_args+=(--tdx) ;;
  simulated)
    cat >&2 <<'WARN'
################################################################################
#  This host cannot run a TDX trust domain, so run.sh builds a SIMULATED image.  #
#  The chat works end to end, but it is NOT CONFIDENTIAL: the attestation is    #
#  signed by a public development key, and every page says                      #
#  "SIMULATED, not confidential". Do not type anything private into it.         #
################################################################################
WARN
    ;;
  *) echo "CLOISTER_TEE must be tdx or simulated, not $tee" >&2; exit 2 ;;
esac

cargo run --release --locked -q -p cloister -- build --tee "$tee" --out target/cloister-image
exec cargo run --release --locked -q -p cloister -- run "${run_args[@]}" "$@"
