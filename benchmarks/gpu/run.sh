#!/usr/bin/env bash
# One prepared device run of pdist's benchmarks (the "speed on accelerators" issue).
#
#   bash benchmarks/gpu/run.sh            # on the GPU machine (device tool, carry [".whl"])
#   DRY=1 PY=.venv/bin/python bash benchmarks/gpu/run.sh   # here: tiny sizes, no wheel install
#
# 1. installs the carried wheels (.whl/: ml-collections, dp-accounting, dm-tree, cryptography,
#    cffi, pycparser, tensorboardX, mnist1d) into /tmp/site, and adds a .pth so that benchmark
#    subprocesses that reset PYTHONPATH (dp.py's peak-RSS probe) still see them;
# 2. prints nvidia-smi -L, jax's version and devices;
# 3. runs each benchmark under `timeout` (bounded by a global deadline), teeing to $OUT/log.txt,
#    collecting each benchmark's JSON line into $OUT/results.jsonl and its wall time into
#    $OUT/timings.txt.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/pdist_gpu_out}
mkdir -p "$OUT"
LOG=$OUT/log.txt RES=$OUT/results.jsonl TIM=$OUT/timings.txt
: >"$RES"; : >"$TIM"
PY=${PY:-python3}
DRY=${DRY:-0}
DEADLINE=${DEADLINE:-330}   # seconds from start; the device call's timeout is ~360
START=$(date +%s)
export PYTHONUNBUFFERED=1
# Two processes may hold the GPU at once (ps.py and dp.py start a fresh subprocess for peak RSS):
# keep XLA's preallocation but at 40% each, so the child is not refused memory.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.4}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}

main() {
echo "== start $(date -u +%FT%TZ) DRY=$DRY PY=$PY"
if [ "$DRY" != 1 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "wheel install failed"; exit 1; }
  SITE=$("$PY" -c "import site; print(site.getsitepackages()[0])")
  echo /tmp/site >"$SITE/zz_pdist_gpu_site.pth" || echo "could not write .pth into $SITE"
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi

echo "== devices"
nvidia-smi -L 2>&1 || echo "no nvidia-smi"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
"$PY" - <<'EOF' || { echo "jax/pdist import failed"; exit 1; }
import sys, jax, jaxlib
print("python", sys.version.split()[0], "jax", jax.__version__, "jaxlib", jaxlib.__version__)
print("devices", jax.devices())
import flax, optax, orbax.checkpoint, ml_collections, dp_accounting, tensorboardX, mnist1d, cryptography
print("flax", flax.__version__, "optax", optax.__version__)
import pdist, pdist.train
print("pdist import ok")
EOF

bench() {  # bench NAME CAP_SECONDS ARGS...
  local name=$1 cap=$2; shift 2
  local now left t0 t1 rc
  now=$(date +%s); left=$((DEADLINE - (now - START)))
  if [ "$left" -lt 25 ]; then
    echo "== $name: skipped, ${left}s left before the deadline"
    echo "$name skipped (no time)" >>"$TIM"; return
  fi
  [ "$cap" -gt "$left" ] && cap=$left
  echo "== $name $* (timeout ${cap}s, $(date -u +%T))"
  t0=$(date +%s%N)
  timeout -k 5 "$cap" "$PY" "benchmarks/$name.py" "$@" >"$OUT/.$name.out" 2>&1
  rc=$?
  t1=$(date +%s%N)
  cat "$OUT/.$name.out"
  grep -E '^\{"benchmark"' "$OUT/.$name.out" >>"$RES"
  rm -f "$OUT/.$name.out"
  local ms=$(( (t1 - t0) / 1000000 ))
  printf '%s rc=%d wall=%d.%03ds args=%s\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000)) "$*" | tee -a "$TIM"
}

if [ -n "${ONLY:-}" ]; then   # ONLY="name cap args...;name cap args..." (a second, shorter try)
  IFS=';' read -ra items <<<"$ONLY"
  for item in "${items[@]}"; do bench $item; done
elif [ "$DRY" = 1 ]; then
  bench single_device 120 --steps 200
  bench checkpoint 120 --steps 200 --every 100 --no-encrypt
else
  # issue "Accelerator figures": the loop, ps K=4/256, checkpoint every 1000, federated, DP, charlm
  bench single_device 45 --steps 3000
  bench ps 70 --steps 1000
  bench checkpoint 50 --steps 5000 --every 1000
  bench dp 50 --steps 500
  bench charlm 50 --steps 200
  bench federated 60 --rounds 300 --scale_rounds 24
fi
echo "== done in $(( $(date +%s) - START ))s"
cat "$TIM"
}

main 2>&1 | tee "$LOG"
