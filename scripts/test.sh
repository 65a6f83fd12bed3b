#!/usr/bin/env bash
# Run the whole test suite on a fresh Debian machine that has only the Rust toolchain.
# Installs the Debian packages the tests use, then builds and runs every test. Needs root:
# the tests mount FUSE and kernel overlay filesystems.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: run as root (the tests mount filesystems)" >&2
    exit 1
fi

packages=(fuse3 fuse-overlayfs unionfs-fuse attr acl busybox-static uidmap
          runc crun podman skopeo fio e2fsprogs util-linux procps psmisc
          python3 tmux docker-registry openssl apache2-utils time
          netavark iptables slirp4netns)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
modprobe fuse 2>/dev/null || true
modprobe overlay 2>/dev/null || true
[ -e /dev/fuse ] || { echo "scripts/test.sh: /dev/fuse is missing" >&2; exit 1; }
# FUSE over io_uring (Linux 6.14+) is off until root switches it on; stratafs uses it by
# default (uring=auto) where it is on. Kernels without it have no such parameter: the
# io_uring tests then say they are skipped and everything runs over /dev/fuse.
uring=/sys/module/fuse/parameters/enable_uring
if [ -e "$uring" ]; then
    echo 1 > "$uring"
fi

# pjdfstest's Rust edition, for tests/pjdfstest.rs: built once (about two minutes), then kept
# in the cache, where `cargo install` finds it installed and returns at once.
tools="${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/strata/tools"
cargo install --locked --quiet --root "$tools" pjdfstest --version 0.2.2
export PJDFSTEST="$tools/bin/pjdfstest"

cargo build --locked --all-targets
# Every mounting test has its own deadline; this one only stops a runaway suite.
timeout --signal=KILL 2400 cargo test --locked --all-targets -- --test-threads=4
if [ -e "$uring" ]; then
    # The run above served stratafs over io_uring; run the operation suites and the
    # differential tests over /dev/fuse too.
    STRATAFS_TEST_OPTIONS=uring=off timeout --signal=KILL 900 cargo test --locked \
        --test ops_read --test ops_write --test ops_namespace --test copy_up \
        --test differential --test killpriv -- --test-threads=4
fi
