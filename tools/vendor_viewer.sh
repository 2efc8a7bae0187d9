#!/usr/bin/env bash
# For maintainers upgrading the 3D viewer; users and CI never run it. niivue (BSD-2-Clause,
# maintained, npm @niivue/niivue) ships a self-contained UMD build, dist/niivue.umd.js, that a
# plain <script> loads; it is committed in bluesky_tomo_hpc/web/static/vendor/ (package data) with
# its licence (vendor/LICENSE: niivue's and those of the npm packages its build bundles), so a
# pip install has it and the page fetches nothing at run time. Pinned version and npm integrity
# hash. Needs node + npm. After an upgrade, check vendor/LICENSE against the new bundle's
# dependencies (package.json "dependencies") and commit the three files.
set -euo pipefail
VERSION=0.69.0
INTEGRITY="sha512-YMjQvJgD1W2b7DuoxkwlC4VxbrgIePRJ5qyQzXKxi2v2MBVg285P/CIQyg46oDDGDIcaNlbd+MhtO/edMbXJkA=="
cd "$(dirname "$0")/.."
dest=bluesky_tomo_hpc/web/static/vendor
if [ -f "$dest/niivue.umd.js" ] && grep -qx "$VERSION" "$dest/VERSION" 2>/dev/null; then
  echo "niivue $VERSION already in $dest"; exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
got=$(cd "$tmp" && npm pack --json --silent "@niivue/niivue@$VERSION" | grep '"integrity"' | cut -d'"' -f4)
if [ "$got" != "$INTEGRITY" ]; then
  echo "niivue $VERSION: integrity $got does not match the pinned $INTEGRITY" >&2; exit 1
fi
tar -xzf "$tmp/niivue-niivue-$VERSION.tgz" -C "$tmp" package/dist/niivue.umd.js
mkdir -p "$dest"
cp "$tmp/package/dist/niivue.umd.js" "$dest/niivue.umd.js"
echo "$VERSION" > "$dest/VERSION"
echo "niivue $VERSION -> $dest/niivue.umd.js"
