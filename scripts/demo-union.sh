#!/usr/bin/env bash
# The filesystem alone, on a fresh machine: build stratafs, mount a union of two layers, change it,
# and show what the upper layer recorded. Run as root or as a user who can use /dev/fuse.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v fusermount3 >/dev/null; then
    echo "installing fuse3 (needs root)"; apt-get update -qq && apt-get install -y -qq fuse3 >/dev/null
fi
cargo build --release --locked --bin stratafs
bin="$PWD/target/release/stratafs"
dir=$(mktemp -d)
trap 'fusermount3 -u "$dir/merged" 2>/dev/null || true; rm -rf "$dir"' EXIT
mkdir -p "$dir"/{base,app,upper,work,merged}
echo "from the base layer" > "$dir/base/readme"
echo "old config" > "$dir/base/config"
mkdir -p "$dir/base/etc" && echo "base" > "$dir/base/etc/hostname"
echo "from the app layer" > "$dir/app/app.txt"
echo "new config" > "$dir/app/config"

"$bin" -o "lowerdir=$dir/app:$dir/base,upperdir=$dir/upper,workdir=$dir/work" "$dir/merged"
echo "== merged view (app over base):"; (cd "$dir/merged" && ls -l && cat config)
echo "== change it: write a file, append to a lower file, delete one"
echo "written in the union" > "$dir/merged/new.txt"
echo "appended" >> "$dir/merged/readme"
rm "$dir/merged/app.txt"
(cd "$dir/merged" && ls -l)
echo "== the lower layers are untouched:"; cat "$dir/base/readme"; ls "$dir/app"
echo "== the upper layer holds only the changes (app.txt is a 0/0 whiteout):"
ls -l "$dir/upper"
fusermount3 -u "$dir/merged"
echo "== unmounted; the upper layer mounts again with the same view:"
"$bin" -o "lowerdir=$dir/app:$dir/base,upperdir=$dir/upper,workdir=$dir/work" "$dir/merged"
ls -l "$dir/merged"
