#!/usr/bin/env bash
# One prepared GPU check (issue 12), at most ~8 minutes on one H100/H200-class GPU:
#   1. installs the `gpu` extra (cupy-cuda12x, cufinufft) into the Python that runs it,
#   2. runs the engine and preview tests parametrised over NumPy and CuPy (the CuPy cases
#      skip where CuPy sees no GPU, so this proves nothing on a CPU-only machine),
#   3. runs the three GPU benchmarks (preview fps + stop->final at 2160 x 2560, a 2048^3 volume
#      with host transfers, the ALS scan 1969 x 2160 x 2560) via benchmarks/bench_gpu.py,
# and writes gpu_check.json (plus the logs) into the folder given, else $OUT, else ./gpu_check_out.
# Not yet run on a GPU: no GPU machine was lent to the task that wrote it.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh /tmp/report
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-gpu_check_out}}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
step() { echo "== $(date -u +%T) $*" | tee -a "$OUT_DIR/steps.log"; }

step "install the gpu extra"
timeout 150 "$PY" -m pip install --quiet -e ".[gpu,test]" >"$OUT_DIR/pip.log" 2>&1
echo "pip exit $?" | tee -a "$OUT_DIR/steps.log"
nvidia-smi >"$OUT_DIR/nvidia-smi.txt" 2>&1 || true

step "engine and preview tests on NumPy and CuPy"
timeout 120 "$PY" -m pytest -q -p no:cacheprovider -rs \
  tests/test_engine_recon.py tests/test_engine_recon_pipeline.py tests/test_preview.py \
  --junitxml="$OUT_DIR/tests.xml" >"$OUT_DIR/tests.log" 2>&1
TESTS_RC=$?
tail -5 "$OUT_DIR/tests.log" | tee -a "$OUT_DIR/steps.log"

step "GPU benchmarks"
timeout 240 "$PY" benchmarks/bench_gpu.py --out "$OUT_DIR/bench_gpu.json" >"$OUT_DIR/bench_gpu.log" 2>&1
BENCH_RC=$?
tail -5 "$OUT_DIR/bench_gpu.log" | tee -a "$OUT_DIR/steps.log"

"$PY" - "$OUT_DIR" "$TESTS_RC" "$BENCH_RC" <<'EOF'
import json, sys, pathlib
out, tests_rc, bench_rc = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
bench = out / "bench_gpu.json"
report = {"tests_exit": tests_rc, "bench_exit": bench_rc,
          "bench": json.loads(bench.read_text()) if bench.exists() else None,
          "tests_tail": (out / "tests.log").read_text().splitlines()[-5:] if (out / "tests.log").exists() else []}
(out / "gpu_check.json").write_text(json.dumps(report, indent=1))
print(json.dumps(report, indent=1))
EOF
step "done: $OUT_DIR/gpu_check.json"
[ "$TESTS_RC" = 0 ] && [ "$BENCH_RC" = 0 ]
