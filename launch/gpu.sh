#!/usr/bin/env bash
# One host, all of its GPUs: one JAX process drives every GPU through one device mesh.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/gpu.sh --config=CONFIG --workdir=WORKDIR [MAIN FLAGS...]

Trains with `python -m kmcl_jax.main` on every GPU of this host: one process, the
batch sharded over all GPUs, the KMCL loss over the global batch. Running the same
command again resumes from WORKDIR's latest checkpoint.

Environment it sets (an existing value wins):
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.9   JAX may take 90% of each GPU's memory
                                       (default 75%); lower it to share a GPU
  XLA_FLAGS += --xla_gpu_enable_latency_hiding_scheduler=true
                                       overlaps the gradient all-reduce with the
                                       backward pass on several GPUs
  CUDA_VISIBLE_DEVICES                 restricts the GPUs used, as usual

Example:
  launch/gpu.sh --config=configs/voc.py --workdir=/runs/voc \
      --config.data.root=/data/voc --config.init_from=/ckpt/tresnet_m
Needs: NVIDIA driver (nvidia-smi), and JAX with CUDA in this Python:
  pip install -e '.[cuda12]'      (or '.[cuda13]' with a CUDA 13 driver)
USAGE
}

fail() { echo "gpu.sh: $*" >&2; exit 2; }

for arg in "$@"; do
  if [[ $arg == -h || $arg == --help ]]; then usage; exit 0; fi
done
[[ " $* " == *" --config="* ]] || fail "--config=CONFIG is required (e.g. --config=configs/voc.py); see --help."
[[ " $* " == *" --workdir="* ]] || fail "--workdir=WORKDIR is required; see --help."

python=${PYTHON:-python3}
command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: this host has no NVIDIA driver."
command -v "$python" >/dev/null || fail "needs $python on PATH (or PYTHON=/path/to/python)."
"$python" -c "import kmcl_jax" 2>/dev/null ||
  fail "$python cannot import kmcl_jax: run 'pip install -e .' in the repository first."
gpus=$("$python" -c "import jax; print(len(jax.devices('gpu')))" 2>/dev/null) ||
  fail "JAX in $python sees no GPU: pip install -e '.[cuda12]' (or '.[cuda13]') in the repository."

export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
echo "gpu.sh: $gpus GPU(s): $(nvidia-smi --query-gpu=name --format=csv,noheader | sort | uniq -c | xargs)"
exec "$python" -m kmcl_jax.main "$@"
