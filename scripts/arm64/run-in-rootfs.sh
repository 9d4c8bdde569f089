#!/usr/bin/env bash
# Run a command inside the arm64 root file system built by build-rootfs.sh.
#
#   scripts/arm64/run-in-rootfs.sh DIR CMD [ARG...]
#
# /proc, /sys and /dev are mounted for the command and unmounted afterwards,
# also when it fails or is interrupted. A chroot shares the host's network
# namespace, so a service listening on the host's 127.0.0.1 is reachable from
# inside. The command sees a clean environment (the host's pip configuration
# and paths do not exist in the chroot) plus:
#   - OPENBLAS_CORETYPE=ARMV8: NumPy's OpenBLAS mis-detects the CPU under
#     qemu-user and dies with "Illegal instruction" without it;
#   - PATH starting with the fedge venv (/opt/fedge/venv/bin);
#   - every FEDGE_* variable of the caller, passed through unchanged.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 DIR CMD [ARG...]" >&2
    exit 2
fi
root=$(realpath -- "$1")
shift
if [[ $(id -u) -ne 0 ]]; then
    echo "run-in-rootfs: needs root (chroot and mount)" >&2
    exit 2
fi
if [[ ! -x "$root/usr/bin/env" || ! -d "$root/proc" ]]; then
    echo "run-in-rootfs: $root is not a root file system (run scripts/arm64/build-rootfs.sh first)" >&2
    exit 2
fi

mounted=()
cleanup() {
    # Unmount in reverse order. Each invocation stacks its own mounts, so two
    # concurrent invocations on one rootfs never pull the mounts from under
    # each other: a umount removes the topmost one, and they are all alike.
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount "${mounted[i]}" 2>/dev/null || umount -l "${mounted[i]}" || true
    done
    mounted=()
}
trap cleanup EXIT

mount -t proc proc "$root/proc" && mounted+=("$root/proc")
mount -t sysfs sysfs "$root/sys" && mounted+=("$root/sys")
mount --bind /dev "$root/dev" && mounted+=("$root/dev")

env_args=(
    HOME=/root
    LANG=C.UTF-8
    PATH=/opt/fedge/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    OPENBLAS_CORETYPE=ARMV8
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
    PIP_DISABLE_PIP_VERSION_CHECK=1
)
for name in $(compgen -e); do
    if [[ $name == FEDGE_* ]]; then env_args+=("$name=${!name}"); fi
done

# The command runs as a background child so that a SIGTERM or SIGINT sent to
# this script is forwarded to it at once (bash defers traps until a
# foreground child exits); the mounts come down after the child has exited.
# `<&0` keeps stdin: a background job would otherwise read /dev/null.
child=""
forward() { if [[ -n $child ]]; then kill "-$1" "$child" 2>/dev/null || true; fi; }
trap 'forward TERM' TERM
trap 'forward INT' INT
set +e
chroot "$root" /usr/bin/env -i "${env_args[@]}" "$@" <&0 &
child=$!
wait "$child"
status=$?
while kill -0 "$child" 2>/dev/null; do # a signal interrupted wait: wait for the exit
    wait "$child"
    status=$?
done
exit "$status"
