#!/usr/bin/env bash
# The cost of a container's network, strata against podman in the same run, rootful and
# rootless:
#   start-up  median wall time of `run --rm IMG true` on the bridge network minus the same
#             with --network none (N runs each): what the network adds to a start;
#   transfer  iperf3 from the host to an iperf3 server in a container through a port
#             published on 127.0.0.1 (a bounded transfer of SIZE bytes), in Gbit/s: every
#             row's server runs at once and the transfers go in ROUNDS interleaved rounds
#             (one per row each), the median of each row's.
# rootful: strata → netavark on its bridge (strata0); podman → netavark on a network of its
# own (bridge stratapb0, 10.90.0.0/24, in a private --network-config-dir: podman's default
# network is never touched). rootless: strata → slirp4netns with strata's port forwarder
# (`strata __forward`), and again with slirp4netns's API port forwards ("rl slirp",
# STRATA_PORT_FORWARDER=slirp4netns); podman 4 → slirp4netns with rootlessport.
#
# Run as root from the repository: `benches/network.sh` (N=10 ROUNDS=5 SIZE=1G by default; uses
# target/release/{strata,stratafs}, build them first with `cargo build --release`). Needs
# podman, runc, netavark, slirp4netns, iperf3, busybox-static, uidmap, and the test user
# strata-rootless with subordinate ids (the test suite makes it). Host ports 5280-5289.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-10}
ROUNDS=${ROUNDS:-5}
SIZE=${SIZE:-1G}
STRATA=${STRATA:-$PWD/target/release/strata}
STRATAFS=${STRATAFS:-$PWD/target/release/stratafs}
USER_NAME=strata-rootless

[ "$(id -u)" -eq 0 ] || { echo "benches/network.sh: run as root" >&2; exit 1; }
for t in podman runc iperf3 slirp4netns busybox setpriv; do
    command -v "$t" >/dev/null || { echo "benches/network.sh: $t is missing" >&2; exit 1; }
done
[ -x "$STRATA" ] && [ -x "$STRATAFS" ] || { echo "build first: cargo build --release" >&2; exit 1; }
id "$USER_NAME" >/dev/null 2>&1 || { echo "no user $USER_NAME (run the test suite once)" >&2; exit 1; }
UID_=$(id -u "$USER_NAME"); GID_=$(id -g "$USER_NAME")

W=$(mktemp -d /tmp/strata-netbench.XXXXXX)
chmod 755 "$W"
PNET=stratabench

podman_root() {
    CONTAINERS_CONF="$W/containers.conf" podman --root "$W/proot" --runroot "$W/prun" --network-config-dir "$W/pnet" \
        --cgroup-manager cgroupfs --runtime runc --events-backend file "$@"
}
as_user() {
    setpriv --reuid="$UID_" --regid="$GID_" --init-groups -- env HOME="$W/home" \
        XDG_RUNTIME_DIR="$W/xdg" CONTAINERS_STORAGE_CONF="$W/storage.conf" \
        CONTAINERS_CONF="$W/containers.conf" STRATA_STRATAFS="$STRATAFS" "$@"
}
strata_root() { STRATA_STRATAFS="$STRATAFS" "$STRATA" --root "$W/store" "$@"; }
strata_user() { as_user "$STRATA" --root "$W/ustore" "$@"; }
# Rootless TCP ports through slirp4netns's API instead of strata's forwarder (the old way).
strata_user_slirp() { as_user env STRATA_PORT_FORWARDER=slirp4netns "$STRATA" --root "$W/ustore" "$@"; }
podman_user() { as_user podman "$@"; }

cleanup() {
    set +e
    strata_root ps -a 2>/dev/null | awk 'NR>1{print $NF}' | while read -r n; do strata_root rm -f "$n" >/dev/null 2>&1; done
    strata_user ps -a 2>/dev/null | awk 'NR>1{print $NF}' | while read -r n; do strata_user rm -f "$n" >/dev/null 2>&1; done
    podman_root rm -af -t 0 >/dev/null 2>&1
    podman_root network rm -f "$PNET" >/dev/null 2>&1
    podman_user rm -af -t 0 >/dev/null 2>&1
    # Rootless podman's pause process (by its pid file), then anything naming the bench dir.
    [ -f "$W/xdg/libpod/tmp/pause.pid" ] && kill -9 "$(cat "$W/xdg/libpod/tmp/pause.pid")" 2>/dev/null
    for p in $(pgrep -f "$W"); do kill -9 "$p" 2>/dev/null; done
    grep -F "$W" /proc/mounts | awk '{print $2}' | sort -r | while read -r m; do umount -l "$m"; done
    rm -rf "$W"
}
trap cleanup EXIT

# The image: busybox, plus /lib and /lib64 into /usr so the host's /usr (mounted read-only)
# runs iperf3 inside.
R=$W/rootfs
mkdir -p "$R"/{bin,etc,tmp,proc,dev,sys,usr}
cp /bin/busybox "$R/bin/"
for a in sh true sleep cat; do ln -s busybox "$R/bin/$a"; done
ln -s usr/lib "$R/lib"; ln -s usr/lib64 "$R/lib64"
echo 'root:x:0:0:root:/root:/bin/sh' > "$R/etc/passwd"
echo 'root:x:0:' > "$R/etc/group"
tar -C "$R" -cf "$W/rootfs.tar" .
mkdir -p "$W/home" "$W/xdg" "$W/pnet" "$W/ustore"
chmod 700 "$W/xdg"
cp -a "$R" "$W/urootfs"
cat > "$W/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$W/ugraph"
runroot = "$W/xdg/c"
EOF
cat > "$W/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
chown -R "$UID_:$GID_" "$W/home" "$W/xdg" "$W/ustore" "$W/urootfs" "$W/rootfs.tar" "$W/storage.conf" "$W/containers.conf"

podman_root import "$W/rootfs.tar" bench:img >/dev/null
# podman 4.3 cannot name the bridge on the command line: the network's file, written here.
cat > "$W/pnet/$PNET.json" <<EOF
{"name": "$PNET", "id": "$(printf '%064d' 90)", "driver": "bridge",
 "network_interface": "stratapb0", "created": "2026-01-01T00:00:00Z",
 "subnets": [{"subnet": "10.90.0.0/24", "gateway": "10.90.0.1"}],
 "ipv6_enabled": false, "internal": false, "dns_enabled": false,
 "ipam_options": {"driver": "host-local"}}
EOF
podman_root network inspect "$PNET" | grep -q stratapb0
podman_user import "$W/rootfs.tar" bench:img >/dev/null

# median_ms CMD...: the median wall time of N runs, in ms (one warm-up run first).
median_ms() {
    "$@" >/dev/null 2>&1 || { echo "benches/network.sh: failed: $*" >&2; "$@"; exit 1; }
    local i t0 t1 times=()
    for ((i = 0; i < N; i++)); do
        t0=$(date +%s%N); "$@" >/dev/null 2>&1; t1=$(date +%s%N)
        times+=($(( (t1 - t0) / 1000000 )))
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'
}

# gbit_once PORT: one iperf3 transfer through 127.0.0.1:PORT (retried until the server
# answers), in Gbit/s.
gbit_once() {
    local port=$1 i out g
    for ((i = 0; i < 50; i++)); do
        # A refused or reset first connection (the server still starting) is retried.
        out=$(iperf3 -c 127.0.0.1 -p "$port" -n "$SIZE" -J 2>/dev/null || true)
        if g=$(echo "$out" | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))' 2>/dev/null); then
            echo "$g"
            return
        fi
        sleep 0.2
    done
    echo "benches/network.sh: no iperf3 answer on port $port" >&2
    exit 1
}

# row KEY NAME NONE_CMD BRIDGE_CMD SERVER_START_CMD PORT: the start-up medians of one row,
# then its iperf3 server is started and left running for the transfer rounds.
KEYS=()
row() {
    local key=$1 name=$2 none=$3 bridge=$4 srv=$5 port=$6
    local tn tb
    tn=$(median_ms $none)
    tb=$(median_ms $bridge)
    $srv >/dev/null
    KEYS+=("$key")
    eval "${key}_name=\"$name\" ${key}_none=$tn ${key}_bridge=$tb ${key}_added=$((tb - tn))" \
        "${key}_port=$port ${key}_all="
}

# iperf3 keeps its buffer in an unlinked temp file: in /dev/shm (stratafs answers ENOENT to
# ftruncate of an open unlinked file, a bug of its own; the same for podman for fairness).
IPERF="-e TMPDIR=/dev/shm -v /usr:/usr:ro"
row strata_rootful "strata rootful" "strata_root run --rm --network none $R true" \
    "strata_root run --rm $R true" \
    "strata_root run -d --name ipf -p 127.0.0.1:5280:5201 $IPERF $R /usr/bin/iperf3 -s" 5280
row podman_rootful "podman rootful" "podman_root run --rm --network none bench:img true" \
    "podman_root run --rm --network $PNET bench:img true" \
    "podman_root run -d --name ipf --network $PNET -p 127.0.0.1:5281:5201 $IPERF bench:img /usr/bin/iperf3 -s" 5281
row strata_rootless "strata rootless" "strata_user run --rm --network none $W/urootfs true" \
    "strata_user run --rm $W/urootfs true" \
    "strata_user run -d --name ipf -p 127.0.0.1:5282:5201 $IPERF $W/urootfs /usr/bin/iperf3 -s" 5282
row strata_rl_slirp "strata rl slirp" "strata_user_slirp run --rm --network none $W/urootfs true" \
    "strata_user_slirp run --rm $W/urootfs true" \
    "strata_user_slirp run -d --name ipf2 -p 127.0.0.1:5284:5201 $IPERF $W/urootfs /usr/bin/iperf3 -s" 5284
row podman_rootless "podman rootless" "podman_user run --rm --network none bench:img true" \
    "podman_user run --rm --network slirp4netns bench:img true" \
    "podman_user run -d --name ipf --network slirp4netns -p 127.0.0.1:5283:5201 $IPERF bench:img /usr/bin/iperf3 -s" 5283

# The transfers in interleaved rounds (one per row per round), so a change in the machine's
# load during the run weighs on every row alike; each row's median.
for ((r = 0; r < ROUNDS; r++)); do
    for k in "${KEYS[@]}"; do
        port_var=${k}_port all_var=${k}_all
        g=$(gbit_once "${!port_var}")
        eval "${k}_all=\"${!all_var} $g\""
    done
done
median() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }

echo "N=$N runs per start-up median; transfers of $SIZE through a port on 127.0.0.1, median" \
     "of $ROUNDS interleaved rounds"
printf '%-16s %9s %11s %9s %8s  %s\n' "" "none ms" "bridge ms" "added ms" "Gbit/s" "(each round)"
for k in "${KEYS[@]}"; do
    n_=${k}_name tn=${k}_none tb=${k}_bridge ad=${k}_added all=${k}_all
    g=$(median "${!all}")
    eval "${k}_gbit=$g"
    printf '%-16s %9s %11s %9s %8s  %s\n' "${!n_}" "${!tn}" "${!tb}" "${!ad}" "$g" "${!all# }"
done
ratio() { python3 -c "print('%.2f' % ($1 / $2) if $2 else 'n/a')"; }
echo "ratios strata/podman: rootful added start-up $(ratio "$strata_rootful_added" "$podman_rootful_added")" \
     "(goal <= 1), transfer $(ratio "$strata_rootful_gbit" "$podman_rootful_gbit") (goal >= 1);" \
     "rootless added start-up $(ratio "$strata_rootless_added" "$podman_rootless_added")," \
     "transfer $(ratio "$strata_rootless_gbit" "$podman_rootless_gbit")" \
     "(slirp4netns port forwards: $(ratio "$strata_rl_slirp_gbit" "$podman_rootless_gbit"))"
