#!/usr/bin/env bash
# The benchmark on a lent GPU machine, as one command (the device tool runs
# it in the repository root, over a copy of the working tree):
#
#   bash benchmarks/gpu.sh [BUDGET_SECONDS]
#
# It needs jax with CUDA, optax and chex there (the GPU image has them, with
# scipy, optimistix, scikit-learn, tqdm and matplotlib; a missing peer is a
# row that says so) and installs nothing: `python -m` runs the checkout's
# package, configs included.
#
# A device call is at most 10 minutes and a task's device time 15, while
# `--all` compiles a few hundred programs (seconds each, on any device): it
# does not fit. So the script runs the configs in CONFIGS (default: the six
# where the GPU has the most to show, largest curvature work first) with
# each run cut at MAX_SECONDS (default 5) and one timed repeat, and stops
# the whole run with SIGINT at BUDGET_SECONDS (default 480): the runner
# then keeps every finished row and still writes the summary. Set
# CONFIGS=--all for everything on a machine with time to spare, and
# DEVICE=cpu to try the script without a GPU. What comes back from $OUT (at
# most 8 files): gpu.txt (the card and JAX), the summary table, the log,
# and one archive of every config's JSON, Markdown and plot.
set -uo pipefail
out="${OUT:-results/gpu}"
budget="${1:-480}"
configs="${CONFIGS:-wide_regression over_parameterised classify_synthetic classify_digits_mlp pinn/poisson2d paper_demo}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
python3 -c "import jax; print(jax.__version__, jax.devices())" >> "$out/gpu.txt" 2>&1
# shellcheck disable=SC2086  # CONFIGS is a list of names
timeout -s INT -k 30 "$budget" python3 -m ggn_jax.cli bench $configs --device "${DEVICE:-gpu}" \
    --quiet --max-seconds "${MAX_SECONDS:-5}" --repeats 1 --out-dir "$out/bench" 2>&1 \
    | tee "$out/log.txt"
cp "$out/bench/summary.md" "$out/bench/summary.json" "$out/" 2>/dev/null
tar -czf "$out/bench.tar.gz" -C "$out" bench && rm -rf "$out/bench"
