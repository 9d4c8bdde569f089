#!/usr/bin/env bash
# The arm64 device check: does a fedge model train on a Raspberry Pi OS
# (Debian bookworm arm64, Python 3.11) device under tflite-runtime 2.14?
#
#   scripts/arm64/check.sh
#
# 1. builds or reuses the arm64 root file system (build-rootfs.sh);
# 2. on the host, exports the reference `mlp` (64 inputs, 10 classes) with the
#    development venv, and writes the digits data to an .npz (the device has
#    no scikit-learn);
# 3. runs device_check.py natively under tflite-runtime 2.14 (.venv-tflite),
#    as the baseline for the step time;
# 4. runs device_check.py inside the rootfs, emulated by qemu-user: it loads
#    the model with fedge.runtime.TrainableModel(runtime="tflite-runtime"),
#    trains 30 steps, and checks that the loss falls and that the weights
#    round-trip exactly;
# 5. the agent cycle against a service on the host's loopback (hook: see
#    agent_cycle below).
#
# Environment:
#   FEDGE_ARM64_CACHE      cache directory (default .cache/arm64-rootfs)
#   FEDGE_ARM64_ROOTFS     root file system (default $FEDGE_ARM64_CACHE/rootfs)
#   FEDGE_ARM64_MODEL_DIR  check this export directory instead of exporting `mlp`
#   FEDGE_ARM64_STEPS      training steps (default 30)
#   VENV, TFLITE_VENV      host venvs (default .venv and .venv-tflite)
#
# Exit status 0 only when every check passed. Needs root.
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd -- "$here/../.." && pwd)
cache=${FEDGE_ARM64_CACHE:-$repo/.cache/arm64-rootfs}
root=${FEDGE_ARM64_ROOTFS:-$cache/rootfs}
steps=${FEDGE_ARM64_STEPS:-30}
venv=$(realpath -m -- "${VENV:-$repo/.venv}")
tflite_venv=$(realpath -m -- "${TFLITE_VENV:-$repo/.venv-tflite}")

t_start=$SECONDS
log() { printf '[arm64-check %4ds] %s\n' "$((SECONDS - t_start))" "$*"; }
die() { printf '[arm64-check] FAILED: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "needs root (chroot, mount)"
[[ -x $venv/bin/python ]] || die "no development venv at $venv (run \`make venv\`)"

# 1. Root file system.
step_start=$SECONDS
log "step 1/5: root file system"
"$here/build-rootfs.sh" "$root"
root=$(realpath -- "$root")
rootfs_s=$((SECONDS - step_start))

# Everything the chroot needs lives in one directory inside it; the host sees
# it as $work, the chroot as $inside. Removed on exit.
work=$(mktemp -d "$root/tmp/fedge-check.XXXXXX")
inside=${work#"$root"}
trap 'rm -rf -- "$work"' EXIT
cp "$here/device_check.py" "$work/"

# 2. Model and data, exported on the host.
log "step 2/5: export the model and the data on the host"
if [[ -n ${FEDGE_ARM64_MODEL_DIR:-} ]]; then
    [[ -f $FEDGE_ARM64_MODEL_DIR/manifest.json ]] \
        || die "FEDGE_ARM64_MODEL_DIR=$FEDGE_ARM64_MODEL_DIR has no manifest.json"
    cp -r -- "$FEDGE_ARM64_MODEL_DIR" "$work/model"
    log "using the export in $FEDGE_ARM64_MODEL_DIR"
elif "$venv/bin/fedge" export --help >/dev/null 2>&1; then
    "$venv/bin/fedge" export mlp --out "$work/model" --input-shape 64 --classes 10 \
        > "$work/export.log" 2>&1 || { cat "$work/export.log" >&2; die "fedge export mlp failed"; }
    log "exported mlp with \`fedge export\`"
else
    "$venv/bin/python" -c '
import sys
from model_export import export_reference
export_reference("mlp", sys.argv[1], input_shape=(64,), classes=10)
' "$work/model" > "$work/export.log" 2>&1 \
        || { cat "$work/export.log" >&2; die "model_export.export_reference(\"mlp\") failed"; }
    log "exported mlp with model_export.export_reference"
fi
"$venv/bin/python" -c '
import sys
import numpy as np
from sklearn.datasets import load_digits
digits = load_digits()
np.savez(sys.argv[1], x=(digits.data / 16.0).astype(np.float32), y=digits.target.astype(np.int32))
' "$work/digits.npz"
log "wrote the digits data (1797 examples) to $work/digits.npz"

check_args=(--steps "$steps" --runtime tflite-runtime)
field() { "$venv/bin/python" -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

# 3. Native baseline (same script, same runtime version, x86_64).
log "step 3/5: native baseline under $tflite_venv"
native_ms=""
if [[ -x $tflite_venv/bin/python ]]; then
    native=$("$tflite_venv/bin/python" "$work/device_check.py" "$work/model" "$work/digits.npz" \
        "${check_args[@]}" | tail -n1) || die "device_check failed natively: $native"
    log "native: $(field "$native" summary)"
    native_ms=$(field "$native" step_ms_median)
else
    log "no $tflite_venv: no native baseline (run \`make venv\`)"
fi

# 4. On the (emulated) device.
log "step 4/5: train inside the arm64 rootfs"
device_start=$SECONDS
device=$("$here/run-in-rootfs.sh" "$root" python "$inside/device_check.py" \
    "$inside/model" "$inside/digits.npz" "${check_args[@]}" | tail -n1) \
    || die "device_check failed in the arm64 rootfs: ${device:-no result}"
device_s=$((SECONDS - device_start))
[[ $(field "$device" machine) == aarch64 ]] || die "the rootfs did not run aarch64 code"
log "device: $(field "$device" summary)"
device_ms=$(field "$device" step_ms_median)

# 5. Agent cycle hook. The device-agent check (enroll -> check-in -> download
#    -> train -> upload against `fedge serve` on the host's 127.0.0.1; the
#    chroot shares the host's network namespace) goes here.
agent_cycle() {
    if ! "$here/run-in-rootfs.sh" "$root" fedge agent --help >/dev/null 2>&1; then
        log "step 5/5: SKIPPED: the rootfs's fedge has no \`agent\` command yet"
        return 0
    fi
    log "step 5/5: SKIPPED: \`fedge agent\` exists but the agent cycle is not wired into this check yet"
}
agent_cycle

comparison="no native baseline"
if [[ -n $native_ms ]]; then
    comparison=$("$venv/bin/python" -c '
import sys
device, native = float(sys.argv[1]), float(sys.argv[2])
print(f"{device:.2f} ms/step under qemu vs {native:.3f} ms/step native ({device / native:.0f}x)")' \
        "$device_ms" "$native_ms")
fi
log "PASSED: rootfs step ${rootfs_s}s, device run ${device_s}s; ${comparison}"
