#!/usr/bin/env bash
# Build (or reuse) a Debian bookworm arm64 root file system — the base of
# Raspberry Pi OS bookworm, Python 3.11 — with a venv that has what a device
# running fedge under tflite-runtime has: tflite-runtime 2.14.0, numpy<2,
# aiohttp, zstandard, pyyaml and fedge itself (installed from this tree).
#
#   scripts/arm64/build-rootfs.sh [DIR]
#
# DIR defaults to $FEDGE_ARM64_CACHE/rootfs; FEDGE_ARM64_CACHE defaults to
# .cache/arm64-rootfs under the repository. The cache also keeps the .deb
# files debootstrap fetched, so a rebuild does not download them again.
#
# Idempotent: each stage leaves a marker in DIR/.fedge/ and is skipped when
# its marker is there; the fedge source is reinstalled only when it changed.
# On an x86_64 host, arm64 binaries run through qemu-user-static + binfmt_misc
# (installed and registered here if missing). Needs root and access to the
# Debian archive and PyPI.
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd -- "$here/../.." && pwd)
cache=${FEDGE_ARM64_CACHE:-$repo/.cache/arm64-rootfs}
root=${1:-$cache/rootfs}
suite=${FEDGE_ARM64_SUITE:-bookworm}
mirror=${FEDGE_ARM64_MIRROR:-http://deb.debian.org/debian}
# The device's Python packages (what `make venv` puts in .venv-tflite).
requirements=("tflite-runtime==2.14.0" "numpy<2" "aiohttp" "zstandard" "pyyaml")

t_start=$SECONDS
log() { printf '[build-rootfs %4ds] %s\n' "$((SECONDS - t_start))" "$*"; }
die() { printf '[build-rootfs] error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "needs root (debootstrap, chroot, mount)"
mkdir -p "$cache/debs" "$root/.fedge"
root=$(realpath -- "$root")
markers=$root/.fedge
# One build per rootfs at a time (a second caller waits, then reuses it).
exec 9> "$markers/lock"
if ! flock -n 9; then
    log "another build of $root is running; waiting for it"
    flock 9
fi

# 1. Host tools: debootstrap, and qemu-user-static + binfmt_misc unless the
#    host is arm64 already.
host_arch=$(uname -m)
need_pkgs=()
command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
if [[ $host_arch != aarch64 ]]; then
    command -v qemu-aarch64-static >/dev/null || need_pkgs+=(qemu-user-static)
    command -v update-binfmts >/dev/null || need_pkgs+=(binfmt-support)
fi
if ((${#need_pkgs[@]})); then
    log "installing host packages: ${need_pkgs[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_pkgs[@]}"
else
    log "host tools present (debootstrap${host_arch:+, host $host_arch})"
fi

if [[ $host_arch != aarch64 ]]; then
    binfmt=/proc/sys/fs/binfmt_misc
    if [[ ! -e $binfmt/register ]]; then
        log "mounting binfmt_misc"
        mount -t binfmt_misc binfmt_misc "$binfmt" \
            || die "cannot mount binfmt_misc at $binfmt (a container without CAP_SYS_ADMIN?)"
    fi
    if [[ "$(head -n1 "$binfmt/qemu-aarch64" 2>/dev/null)" != enabled ]]; then
        log "registering qemu-aarch64 with binfmt_misc"
        update-binfmts --enable qemu-aarch64
    fi
    # The F (fix-binary) flag makes the kernel open the interpreter at
    # registration, so it works inside the chroot without copying qemu in.
    grep -q '^flags: .*F' "$binfmt/qemu-aarch64" \
        || die "qemu-aarch64 is registered without the F flag; copy qemu-aarch64-static into $root/usr/bin"
    log "binfmt: qemu-aarch64 enabled ($(qemu-aarch64-static --version | head -n1))"
fi

# 2. The base system.
if [[ -e $markers/debootstrap.done ]]; then
    log "reusing root file system at $root"
else
    log "debootstrap $suite arm64 (minbase) into $root"
    debootstrap --arch=arm64 --variant=minbase \
        --include=python3,python3-venv,python3-pip,ca-certificates \
        --cache-dir="$cache/debs" \
        "$suite" "$root" "$mirror"
    touch "$markers/debootstrap.done"
fi

# 3. Network configuration for pip: the host's resolver and CA bundle (the
#    latter also covers a TLS-intercepting proxy the host trusts).
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
log "copied the host's resolv.conf and CA bundle"

run() { "$here/run-in-rootfs.sh" "$root" "$@"; }

# pip runs ~100x slower under qemu-user, and resolving, downloading and
# building is most of its work. So the host does those natively: it downloads
# the aarch64 wheels (cached in $cache/wheels) and builds fedge's wheel; pip
# inside the rootfs then only installs local wheels (--no-index), and skips
# byte-compiling (Python compiles on first import instead).
host_python=${HOST_PYTHON:-}
if [[ -z $host_python ]]; then
    if [[ -x $repo/.venv/bin/python ]]; then host_python=$repo/.venv/bin/python; else host_python=python3; fi
fi
host_pip() { "$host_python" -m pip --disable-pip-version-check -q "$@"; }
wheels=$root/opt/fedge/wheels
mkdir -p "$wheels"

# 4. The venv with the device's runtime packages.
req_id=$(printf '%s\n' "${requirements[@]}" | sha256sum | cut -c1-16)
if [[ "$(cat "$markers/venv.done" 2>/dev/null)" == "$req_id" ]]; then
    log "reusing venv /opt/fedge/venv"
else
    log "downloading aarch64 wheels on the host: ${requirements[*]}"
    mkdir -p "$cache/wheels"
    # Every manylinux tag glibc 2.36 (bookworm) accepts.
    platforms=(--platform manylinux2014_aarch64)
    for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_aarch64"); done
    host_pip download --dest "$cache/wheels" --only-binary=:all: "${platforms[@]}" \
        --python-version 3.11 --implementation cp "${requirements[@]}"
    cp "$cache/wheels"/*.whl "$wheels/"
    log "creating venv /opt/fedge/venv and installing the wheels in the rootfs"
    run /usr/bin/python3 -m venv /opt/fedge/venv
    run /opt/fedge/venv/bin/python -m pip install -q --no-index --find-links /opt/fedge/wheels \
        --no-compile "${requirements[@]}"
    printf '%s\n' "$req_id" > "$markers/venv.done"
fi

# 5. fedge from this tree (no dependencies: the device set is above). The
#    packages are copied, not bind-mounted, so the rootfs stays usable on its
#    own and nothing is ever written to the repository from inside.
packages=(fedge model_export quantization aggregation_service edge_client device_profiles privacy)
src_id=$(cd "$repo" && find pyproject.toml README.md "${packages[@]}" \
    -type f ! -path '*/__pycache__/*' -print0 2>/dev/null \
    | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
if [[ "$(cat "$markers/fedge.done" 2>/dev/null)" == "$src_id" ]]; then
    log "fedge source unchanged ($src_id); not reinstalling"
else
    log "installing fedge from $repo ($src_id)"
    rm -rf "$root/opt/fedge/src" "$wheels"/fedge-*.whl
    mkdir -p "$root/opt/fedge/src"
    (cd "$repo" && tar -cf - --exclude=__pycache__ pyproject.toml README.md "${packages[@]}") \
        | tar -xf - -C "$root/opt/fedge/src"
    host_pip wheel --no-deps --wheel-dir "$wheels" "$root/opt/fedge/src" \
        > "$markers/fedge-wheel.log" 2>&1 \
        || { cat "$markers/fedge-wheel.log" >&2; die "building the fedge wheel failed"; }
    wheel=$(cd "$wheels" && ls fedge-*.whl)
    run /opt/fedge/venv/bin/python -m pip install -q --no-deps --no-index --no-compile \
        --force-reinstall "/opt/fedge/wheels/$wheel"
    printf '%s\n' "$src_id" > "$markers/fedge.done"
fi

# 6. Smoke: the chroot is arm64 and imports the runtime and fedge.
run /opt/fedge/venv/bin/python -c '
import platform, numpy, tflite_runtime, fedge
print(f"python {platform.python_version()} on {platform.machine()}, numpy {numpy.__version__}, "
      f"tflite-runtime {tflite_runtime.__version__}, fedge {fedge.__version__}")' \
    | while read -r line; do log "chroot: $line"; done
log "root file system ready: $root"
