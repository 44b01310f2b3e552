#!/usr/bin/env bash
# The benchmark on a lent GPU machine, as one command (the device tool runs
# it in the repository root, over a copy of the working tree):
#
#   bash benchmarks/gpu.sh [BUDGET_SECONDS]
#
# It needs jax with CUDA, optax and chex there (the GPU image has them, with
# scipy, optimistix, scikit-learn, tqdm and matplotlib; a missing peer is a
# row that says so): `python -m` runs the checkout's package, configs
# included. Pure-Python wheels the image lacks (folx for the PINN
# Laplacians, jaxopt for its LM peer) can travel in .whl/ (the device
# tool's `carry`); the script installs them into /tmp/site if present:
#
#   pip download --no-deps --only-binary=:all: -d .whl folx jaxopt
#
# A device call is at most 10 minutes and a task's device time 15, while
# `--all` compiles a few hundred programs (seconds each, on any device): it
# does not fit. So the script runs the configs in CONFIGS (default: the
# minibatch classification configs of issue 15 first, then the Poisson
# PINN and the regressions), only the optimisers whose label matches
# SELECT (default: the defaults, every peer and Adam's sweep, not the
# variants measured on the CPU), with each run cut at MAX_SECONDS (default
# 5) and one timed repeat, and stops the whole run with SIGINT at
# BUDGET_SECONDS (default 480): the runner then keeps every finished row
# and still writes the summary (on the H200, 490 s reached the seventh
# config; BENCHMARKS.md "On an NVIDIA H200"). Set
# CONFIGS=--all for everything on a machine with time to spare, and
# DEVICE=cpu to try the script without a GPU. What comes back from $OUT (at
# most 8 files): gpu.txt (the card and JAX), the summary table, the log,
# and one archive of every config's JSON, Markdown and plot.
set -uo pipefail
out="${OUT:-results/gpu}"
budget="${1:-480}"
configs="${CONFIGS:-classify_digits_mlp classify_synthetic classify_digits_cnn pinn/poisson2d wide_regression over_parameterised paper_demo}"
select="${SELECT:-defaults|Adam|ENGD|L-BFGS|auto: dual|optimistix|jaxopt|scipy}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
python3 -c "import jax, optax; print('jax', jax.__version__, 'optax', optax.__version__, jax.devices())" >> "$out/gpu.txt" 2>&1
python3 -c "import ggn_jax.pde as p; print('folx' if p.folx_available() else 'no folx')" >> "$out/gpu.txt" 2>&1
# shellcheck disable=SC2086  # CONFIGS is a list of names
timeout -s INT -k 30 "$budget" python3 -m ggn_jax.cli bench $configs --device "${DEVICE:-gpu}" \
    --select "$select" --quiet --max-seconds "${MAX_SECONDS:-5}" --repeats 1 --out-dir "$out/bench" 2>&1 \
    | tee "$out/log.txt"
cp "$out/bench/summary.md" "$out/bench/summary.json" "$out/" 2>/dev/null
tar -czf "$out/bench.tar.gz" -C "$out" bench && rm -rf "$out/bench"
