#!/usr/bin/env bash
# The train loop before (.bench_base: a git worktree of the previous commit) and after a change,
# alternately, on one device machine: bash benchmarks/gpu/loop_before_after.sh (carry .whl, .bench_base)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.4
nvidia-smi -L
for round in 1 2; do
  for tree in .bench_base .; do
    echo "== $tree round $round"
    (cd $tree && timeout 60 python3 benchmarks/single_device.py --steps 3000 2>&1 | grep benchmark)
  done
done
for tree in .bench_base .; do
  echo "== $tree compute_bound"
  (cd $tree && timeout 45 python3 benchmarks/compute_bound.py --steps 1000 2>&1 | grep benchmark)
done
