#!/usr/bin/env bash
# N JAX processes on this machine, talking over 127.0.0.1: a TPU pod in miniature.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/multiprocess_local.sh N [--devices_per_process=K] [--port=P] [MAIN FLAGS...]

Runs N processes of `python -m kmcl_jax.main` on this machine as one JAX
multi-controller job (jax.distributed over 127.0.0.1, gloo collectives on the CPU),
the way the tests simulate a pod: process i gets --process_id=i, every process builds
the same mesh over all N x K devices and reads its own share of every global batch.
Each process's output is prefixed with [process i]; at the end the script prints the
global device count each process saw. SIGTERM (or Ctrl-C) to the script reaches every
process; each saves its current step. Exit status: 0 finished, 75 stopped with the step
saved (run the same command again to resume), otherwise the first failing process's.

  N                       processes (>= 1)
  --devices_per_process=K simulated CPU devices per process (default 1)
  --port=P                coordinator port on 127.0.0.1 (default: a free one)
  MAIN FLAGS              passed to kmcl_jax.main; defaults --config=configs/demo.py
                          and --workdir=/tmp/kmcl_multiprocess_N

Example (a few demo steps with 2 processes):
  launch/multiprocess_local.sh 2 --config=configs/demo.py:smoke --workdir=/tmp/mp_demo
USAGE
}

fail() { echo "multiprocess_local.sh: $*" >&2; exit 2; }

if [[ $# -eq 0 ]]; then usage >&2; exit 2; fi
if [[ $1 == -h || $1 == --help ]]; then usage; exit 0; fi
processes=$1; shift
[[ $processes =~ ^[1-9][0-9]*$ ]] || fail "N must be a positive number of processes, got '$processes'."

devices_per_process=1
port=""
main_flags=()
for arg in "$@"; do
  case $arg in
    -h|--help) usage; exit 0 ;;
    --devices_per_process=*) devices_per_process=${arg#*=} ;;
    --port=*) port=${arg#*=} ;;
    *) main_flags+=("$arg") ;;
  esac
done
[[ $devices_per_process =~ ^[1-9][0-9]*$ ]] ||
  fail "--devices_per_process must be a positive number, got '$devices_per_process'."

python=${PYTHON:-python3}
command -v "$python" >/dev/null || fail "needs $python on PATH (or PYTHON=/path/to/python)."
"$python" -c "import kmcl_jax" 2>/dev/null ||
  fail "$python cannot import kmcl_jax: run 'pip install -e .' in the repository first."
if [[ -z $port ]]; then
  port=$("$python" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
fi
[[ $port =~ ^[0-9]+$ ]] || fail "--port must be a port number, got '$port'."

has_flag() {
  local flag
  for flag in "${main_flags[@]+"${main_flags[@]}"}"; do
    [[ $flag == "$1"=* ]] && return 0
  done
  return 1
}
has_flag --config || main_flags+=("--config=configs/demo.py")
has_flag --workdir || main_flags+=("--workdir=/tmp/kmcl_multiprocess_$processes")

logs=$(mktemp -d)
pids=()
# shellcheck disable=SC2317  # cleanup and forward run from traps
cleanup() {
  local pid
  for pid in "${pids[@]+"${pids[@]}"}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$logs"
}
trap cleanup EXIT
# SIGTERM or Ctrl-C here reaches every process: each saves its step and exits 75.
# shellcheck disable=SC2317
forward() { kill -TERM "${pids[@]+"${pids[@]}"}" 2>/dev/null || true; }
trap forward TERM INT

echo "multiprocess_local.sh: $processes processes x $devices_per_process CPU device(s), coordinator 127.0.0.1:$port"
for ((i = 0; i < processes; i++)); do
  JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=$devices_per_process \
    JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo \
    "$python" -m kmcl_jax.main "${main_flags[@]}" --coordinator_address="127.0.0.1:$port" \
    --num_processes="$processes" --process_id="$i" \
    > >(tee "$logs/$i.log" | sed -u "s/^/[process $i] /") 2>&1 &
  pids+=($!)
done

# Exit status: 0 when every process finished, 75 when they stopped on SIGTERM or a
# preemption notice with their step saved (rerun to resume), else the first failure's.
status=0
for ((i = 0; i < processes; i++)); do
  while true; do
    wait "${pids[$i]}" && code=0 || code=$?
    # A trapped signal interrupts `wait` (status > 128) while the process runs on.
    if [[ $code -gt 128 ]] && kill -0 "${pids[$i]}" 2>/dev/null; then continue; fi
    break
  done
  if [[ $code -ne 0 && $code -ne 75 ]]; then
    echo "multiprocess_local.sh: process $i failed (exit $code); stopping the others." >&2
    exit "$code"
  fi
  [[ $code -eq 75 ]] && status=75
done
pids=()

for ((i = 0; i < processes; i++)); do
  seen=$(grep -o "[0-9]* global devices" "$logs/$i.log" | head -n 1 || true)
  echo "process $i saw ${seen:-an unknown number of global devices}"
done
exit "$status"
