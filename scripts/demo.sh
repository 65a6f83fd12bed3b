#!/usr/bin/env bash
# The main job, on a fresh machine: build the example image from a Dockerfile (FROM scratch
# with the host's static busybox, nothing from the internet), run two containers of it that
# write different files, show that each sees only its own and that the image was not copied.
# Run as root (rootful containers); uses a private store so it leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v runc >/dev/null || need+=(runc)
[ -x /bin/busybox ] && /bin/busybox --list >/dev/null 2>&1 || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}"; apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --locked --bin strata --bin stratafs
export PATH="$PWD/target/release:$PATH"
export STRATA_ROOT=$(mktemp -d /var/tmp/strata-demo.XXXXXX)
cleanup() { strata rm -f one two >/dev/null 2>&1 || true; rm -rf "$STRATA_ROOT"; }
trap cleanup EXIT
cp /bin/busybox examples/hello/busybox

echo "== strata build -t hello examples/hello"
time strata build -t hello examples/hello
echo "== again: every step from the cache"
time strata build -q -t hello examples/hello
strata images
strata history hello

echo "== two containers of one image, each writing its own file"
strata run -d --name one hello sh -c 'echo "written by one" > /app/mine; sleep 600' >/dev/null
strata run -d --name two hello sh -c 'echo "written by two" > /app/mine; sleep 600' >/dev/null
sleep 1
strata exec one cat /app/mine
strata exec two cat /app/mine
strata ps
echo "== what each writable layer holds (strata diff one):"
strata diff one
echo "== disk: the image's layers once; each container only its changes"
du -sh "$STRATA_ROOT"/layers
for c in one two; do
    id=$(strata inspect $c | sed -n 's/.*"id": "\([0-9a-f]*\)".*/\1/p' | head -1)
    echo "container $c upper: $(du -sh "$STRATA_ROOT/containers/$id/upper" | cut -f1)"
done
strata run --rm hello
