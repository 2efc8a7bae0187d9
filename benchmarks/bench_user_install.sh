#!/usr/bin/env bash
# What the user-install steps of .ci/run cost, step by step, REPEATS times (default 1): build the
# sdist and wheel (no isolation) and check them; a fresh venv with the wheel and no extras
# (pip, from the pip cache the test venv's install filled: run once first to warm it); the demo;
# recon of the APS tooth. Prints each step's median and range in seconds, and `uptime` (the
# machine may be shared). Usage: bash benchmarks/bench_user_install.sh [REPEATS] (from the root,
# with .venv installed from ".[test]"); PIP_COMPILE=--compile times pip's byte-compiling too.
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-1}
export PIP_DISABLE_PIP_VERSION_CHECK=1 MPLBACKEND=Agg EPICS_PVA_AUTO_ADDR_LIST=NO
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tooth="$(pwd)/tests/data/tomopy_tooth/tooth.h5"
declare -A times
timed() {  # timed NAME COMMAND...: run, append the seconds to times[NAME]
  local name=$1 t0
  shift
  t0=$(date +%s.%N)
  "$@" >"$work/$name.log" 2>&1 || { echo "$name failed:"; tail -20 "$work/$name.log"; exit 1; }
  times[$name]+="$(echo "$(date +%s.%N) - $t0" | bc) "
}
echo "load before: $(uptime)"
for i in $(seq "$repeats"); do
  rm -rf "$work/dist" "$work/plain"
  timed build .venv/bin/python -m build --no-isolation --outdir "$work/dist" .
  timed check .venv/bin/python tools/check_dist.py "$work/dist"
  timed venv python3 -m venv "$work/plain"
  timed pip_upgrade "$work/plain/bin/python" -m pip install -q --upgrade pip
  timed install "$work/plain/bin/python" -m pip install -q ${PIP_COMPILE:---no-compile} "$work"/dist/*.whl
  timed demo bash -c "cd '$work' && plain/bin/bluesky-tomo-hpc demo --data-dir demo_$i"
  timed recon bash -c "cd '$work' && plain/bin/bluesky-tomo-hpc recon '$tooth' --center 296 --out rec_$i"
done
echo "load after:  $(uptime)"
echo "installed venv: $(du -sm "$work/plain" | cut -f1) MB"
for name in build check venv pip_upgrade install demo recon; do
  python3 -c "
import statistics, sys
v = [float(x) for x in sys.argv[2:]]
print(f'{sys.argv[1]:<12} median {statistics.median(v):7.1f} s  range {min(v):.1f}-{max(v):.1f} s  (n={len(v)})')
" "$name" ${times[$name]}
done
