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
# 5. one enrolled agent cycle inside the rootfs (check-in -> download ->
#    train -> upload) against `fedge serve` on the host's loopback.
#
# Environment:
#   FEDGE_ARM64_CACHE      cache directory (default .cache/arm64-rootfs)
#   FEDGE_ARM64_ROOTFS     root file system (default $FEDGE_ARM64_CACHE/rootfs)
#   FEDGE_ARM64_MODEL_DIR  check this export directory instead of exporting `mlp`
#                          (it must take the digits data: 64 float inputs, 10 classes)
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
else
    "$venv/bin/fedge" export mlp --out "$work/model" --input-shape 64 --classes 10 \
        > "$work/export.log" 2>&1 || { cat "$work/export.log" >&2; die "fedge export mlp failed"; }
    log "exported and verified mlp with \`fedge export\`"
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
if [[ -n $native_ms ]]; then
    # Same model, data and steps: aarch64 and x86_64 kernels round differently,
    # but the trained model must agree far closer than this.
    "$venv/bin/python" -c '
import json, math, sys
device, native = (json.loads(a)["eval_loss_after"] for a in sys.argv[1:])
sys.exit(0 if math.isclose(device, native, rel_tol=1e-3) else 1)' "$device" "$native" \
        || die "the device's trained loss differs from the native run's"
    log "device and native runs agree on the trained loss"
fi

# 5. One agent cycle on the (emulated) device against the real service on the
#    host's loopback: the chroot shares the host's network namespace. The
#    host runs `fedge serve`, pushes the model with K = 1 (one accepted update
#    publishes version 2) and makes a one-use enrollment token; the device
#    enrolls (`fedge agent init`) and runs one cycle (`fedge agent run
#    --once`: check-in -> download -> train under tflite-runtime 2.14 ->
#    encode -> upload). The check passes when the agent reports the update
#    accepted AND the service has published version 2 from it.
log "step 5/5: agent cycle against \`fedge serve\` on the host's 127.0.0.1"
agent_start=$SECONDS
operator_token=$("$venv/bin/python" -c 'import secrets; print(secrets.token_urlsafe(24))')
server_pid=""
stop_server() {
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" && wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=""
}
trap 'stop_server; rm -rf -- "$work"' EXIT
FEDGE_OPERATOR_TOKEN=$operator_token "$venv/bin/fedge" serve --data-dir "$work/server" \
    --host 127.0.0.1 --port 0 --port-file "$work/port" > "$work/serve.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 120); do
    [[ -s $work/port ]] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/serve.log" >&2; die "fedge serve exited"; }
    sleep 0.5
done
[[ -s $work/port ]] || { cat "$work/serve.log" >&2; die "fedge serve wrote no port file in 60 s"; }
server=http://127.0.0.1:$(cat "$work/port")
operator() { FEDGE_OPERATOR_TOKEN=$operator_token "$venv/bin/fedge" "$@" --server "$server"; }
operator push --model digits "$work/model" > "$work/push.json" \
    || die "fedge push failed: $(cat "$work/push.json")"
operator models config digits --set buffer_size=1 > /dev/null
enroll_token=$(operator enroll-token --uses 1 --ttl 600 \
    | "$venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["token"])')
log "service on $server: pushed digits v1, buffer_size 1, one-use enrollment token"

"$here/run-in-rootfs.sh" "$root" fedge agent init --server "$server" \
    --enroll-token "$enroll_token" --model digits --data "$inside/digits.npz" \
    --state-dir "$inside/agent" --config "$inside/agent.yaml" --profile raspberry-pi-4 \
    > "$work/init.log" 2>&1 || { cat "$work/init.log" >&2; die "fedge agent init failed"; }
# The host running this check is rarely idle or on a schedule: train now.
"$here/run-in-rootfs.sh" "$root" python -c '
import sys, yaml
path = sys.argv[1]
with open(path) as fh:
    config = yaml.safe_load(fh)
config["policy"] = {"require_power": False, "min_idle_minutes": 0, "max_cpu_load": 1.0,
                    "min_battery_pct": None, "max_temperature_c": None,
                    "unmetered_only": False, "allowed_hours": None}
with open(path, "w") as fh:
    yaml.safe_dump(config, fh)' "$inside/agent.yaml"
log "device enrolled (fedge agent init, inside the rootfs)"

cycle_status=0
# Bounded: a hung cycle fails the check (run-in-rootfs forwards the SIGTERM).
timeout 1200 "$here/run-in-rootfs.sh" "$root" fedge agent run --once --config "$inside/agent.yaml" \
    > "$work/cycle.json" 2> "$work/cycle.log" || cycle_status=$?
if [[ $cycle_status -ne 0 ]]; then
    tail -n 30 "$work/cycle.log" >&2
    die "fedge agent run --once exited $cycle_status: $(cat "$work/cycle.json")"
fi
log "device cycle: $(tail -n1 "$work/cycle.json")"
latest=$(operator models show digits \
    | "$venv/bin/python" -c '
import json, sys
print(max(version["version"] for version in json.load(sys.stdin)["versions"]))')
[[ $latest -ge 2 ]] || die "the service did not publish a new version from the device's update (latest: $latest)"
stop_server
agent_s=$((SECONDS - agent_start))
log "service published digits v$latest from the device's update (${agent_s}s)"

comparison="no native baseline"
if [[ -n $native_ms ]]; then
    comparison=$("$venv/bin/python" -c '
import sys
device, native = float(sys.argv[1]), float(sys.argv[2])
print(f"{device:.2f} ms/step under qemu vs {native:.3f} ms/step native ({device / native:.0f}x)")' \
        "$device_ms" "$native_ms")
fi
log "PASSED: rootfs step ${rootfs_s}s, device run ${device_s}s, agent cycle ${agent_s}s; ${comparison}"
