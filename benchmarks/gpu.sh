#!/usr/bin/env bash
# The benchmark on a lent GPU machine, as one command (the device tool runs
# it in the repository root, over a copy of the working tree):
#
#   bash benchmarks/gpu.sh [MAX_SECONDS]
#
# It needs jax with CUDA, optax and chex there (the GPU image has them, with
# scipy, optimistix, scikit-learn, tqdm and matplotlib; a missing peer is a
# row that says so) and installs nothing: `python -m` runs the checkout's
# package, configs included. Every config runs on the GPU with each run cut
# at MAX_SECONDS (default 20) and 2 timed repeats, so that --all fits one
# 10-minute call. What comes back from $OUT (at most 8 files): the summary
# table, the log, and one archive of every config's JSON, Markdown and plot.
set -uo pipefail
out="${OUT:-results/gpu}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
python3 -c "import jax; print(jax.__version__, jax.devices())" >> "$out/gpu.txt" 2>&1
python3 -m ggn_jax.cli bench --all --device gpu --quiet --max-seconds "${1:-20}" --repeats 2 \
    --out-dir "$out/bench" 2>&1 | tee "$out/log.txt"
cp "$out/bench/summary.md" "$out/bench/summary.json" "$out/" 2>/dev/null
tar -czf "$out/bench.tar.gz" -C "$out" bench && rm -rf "$out/bench"
