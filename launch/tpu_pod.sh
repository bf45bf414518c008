#!/usr/bin/env bash
# Train on every host of a Cloud TPU VM slice: create or reuse it, install, run.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/tpu_pod.sh --name=NAME --zone=ZONE --accelerator=TYPE --version=RUNTIME \
           --config=CONFIG --workdir=gs://BUCKET/RUN [--data=gs://BUCKET/DATA]
           [--project=PROJECT] [--spot] [-- MAIN FLAGS...]

Creates the TPU VM slice NAME (or reuses it if it exists), copies this checkout to
every worker and installs it there (pip install -e '.[tpu,gcs]'), then runs
`python -m kmcl_jax.main --config=CONFIG --workdir=WORKDIR MAIN FLAGS` on all workers
at once (gcloud ... ssh --worker=all). JAX's multi-controller runtime configures
itself on Cloud TPU: every host reads its share of each global batch, the mesh spans
every chip of the slice, and the KMCL loss is over the global batch.

  --name          TPU VM name, e.g. kmcl-v4-32
  --zone          e.g. us-central2-b
  --accelerator   accelerator type, e.g. v4-32, v5p-64, v5litepod-16
  --version       TPU software version, e.g. tpu-ubuntu2204-base (v4),
                  v2-alpha-tpuv5 (v5p), v2-alpha-tpuv5-lite (v5e)
  --config        config file of this checkout, path[:variant], e.g. configs/voc.py:tresnet_l
  --workdir       gs:// folder for checkpoints, metrics, TensorBoard and plots; every
                  host must reach it (a VM's default service account can, in its project)
  --data          optional gs:// folder of a dataset in a local layout (see README,
                  Data): copied to /tmp/kmcl_data on every worker before training and
                  passed as --config.data.root (TFDS configs can read a gs:// data_dir
                  directly: pass --config.data.root=gs://... after --)
  --project       Google Cloud project (default: gcloud's configured project)
  --spot          create the slice as Spot capacity (cheaper, can be preempted)
  -- MAIN FLAGS   anything after -- goes to kmcl_jax.main, e.g. --config.batch_size=1024

Preemption (--spot): when Google reclaims the slice, the trainer saves a checkpoint
on the preemption notice (JAX's preemption sync; SIGTERM on one host) if it has time,
and every checkpoint lives in the gs:// workdir. Run the same command again: a
preempted slice is deleted and recreated, and training resumes from the latest
checkpoint with the data iterator where it was, so the run ends as an uninterrupted
one would. Delete the slice when done:
  gcloud compute tpus tpu-vm delete NAME --zone=ZONE
USAGE
}

fail() { echo "tpu_pod.sh: $*" >&2; exit 2; }

name="" zone="" accelerator="" version="" config="" workdir="" data="" project="" spot=""
main_flags=()
while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --name=*) name=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --accelerator=*) accelerator=${1#*=} ;;
    --version=*) version=${1#*=} ;;
    --config=*) config=${1#*=} ;;
    --workdir=*) workdir=${1#*=} ;;
    --data=*) data=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --spot) spot=1 ;;
    --) shift; main_flags=("$@"); break ;;
    *) fail "unknown argument '$1' (flags for kmcl_jax.main go after --); see --help." ;;
  esac
  shift
done

for required in name zone accelerator version config workdir; do
  [[ -n ${!required} ]] || fail "--$required is required; see --help."
done
[[ $workdir == gs://* ]] ||
  fail "--workdir must be a gs:// folder that every TPU host can reach, got '$workdir'."
[[ -z $data || $data == gs://* ]] || fail "--data must be a gs:// folder, got '$data'."
command -v gcloud >/dev/null ||
  fail "needs the gcloud CLI (https://cloud.google.com/sdk/docs/install), logged in."
command -v git >/dev/null || fail "needs git, to package this checkout."
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel 2>/dev/null) ||
  fail "run it from a checkout of the kmcl_jax repository."
[[ -f $repo/${config%%:*} ]] || fail "--config: no file '${config%%:*}' in $repo."

if [[ -z $project ]]; then
  project=$(gcloud config get-value project 2>/dev/null || true)
  [[ -n $project ]] || fail "--project is required: gcloud has no default project."
fi
where=(--zone="$zone" --project="$project")
tpu() { gcloud compute tpus tpu-vm "$@"; }

# 1. The slice: reuse a healthy one, replace a preempted one, else create it.
state=$(tpu describe "$name" "${where[@]}" --format='value(state)' 2>/dev/null || true)
if [[ $state == PREEMPTED || $state == TERMINATED ]]; then
  echo "tpu_pod.sh: $name is $state; deleting it to create it again."
  tpu delete "$name" "${where[@]}" --quiet
  state=""
fi
if [[ -z $state ]]; then
  echo "tpu_pod.sh: creating $name ($accelerator, $version${spot:+, spot})."
  tpu create "$name" "${where[@]}" --accelerator-type="$accelerator" --version="$version" \
    ${spot:+--spot}
else
  echo "tpu_pod.sh: reusing $name ($state)."
fi

# 2. This checkout (tracked and new files, as they are now) on every worker, installed.
archive=$(mktemp --suffix=.tar.gz)
trap 'rm -f "$archive"' EXIT
(cd "$repo" && git ls-files -z --cached --others --exclude-standard |
  xargs -0 tar -czf "$archive" --)
tpu scp "$archive" "$name:kmcl_jax.tar.gz" "${where[@]}" --worker=all
tpu ssh "$name" "${where[@]}" --worker=all --command \
  "rm -rf ~/kmcl_jax && mkdir -p ~/kmcl_jax && tar -xzf ~/kmcl_jax.tar.gz -C ~/kmcl_jax &&
   cd ~/kmcl_jax && python3 -m pip install -q -e '.[tpu,gcs]'"

# 3. The dataset on every worker's local disk.
if [[ -n $data ]]; then
  tpu ssh "$name" "${where[@]}" --worker=all --command \
    "mkdir -p /tmp/kmcl_data && gcloud storage rsync --recursive $(printf '%q' "$data") /tmp/kmcl_data"
  main_flags=(--config.data.root=/tmp/kmcl_data "${main_flags[@]+"${main_flags[@]}"}")
fi

# 4. The same command on every host.
command="cd ~/kmcl_jax && python3 -m kmcl_jax.main --config=$(printf '%q' "$config")"
command+=" --workdir=$(printf '%q' "$workdir")"
for flag in "${main_flags[@]+"${main_flags[@]}"}"; do
  command+=" $(printf '%q' "$flag")"
done
echo "tpu_pod.sh: on every worker of $name: $command"
tpu ssh "$name" "${where[@]}" --worker=all --command "$command"
