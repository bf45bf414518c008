#!/usr/bin/env bash
# Train on every host of a Cloud TPU VM slice: get the slice, install, run detached; then
# follow, check, stop or delete it.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/tpu_pod.sh COMMAND --name=NAME --zone=ZONE [--project=PROJECT] [OPTIONS]

Commands:
  run      get the slice, install this checkout on every worker and start training there,
           detached from this shell: the run goes on when you log out or close the laptop
             --accelerator=TYPE  e.g. v4-32, v5p-64, v5litepod-16, v6e-16
             --version=RUNTIME   TPU software version, e.g. tpu-ubuntu2204-base (v4),
                                 v2-alpha-tpuv5 (v5p), v2-alpha-tpuv5-lite (v5e),
                                 v2-alpha-tpuv6e (v6e)
             --config=CONFIG     config file of this checkout, path[:variant]
             --workdir=gs://...  checkpoints, metrics, TensorBoard, plots and logs/; every
                                 host must reach it (a VM's default service account can,
                                 in its project)
             --data=gs://...     optional: a dataset in a local layout (see README, Data),
                                 copied to /tmp/kmcl_data on every worker and passed as
                                 --config.data.root (TFDS configs can read a gs://
                                 data_dir directly: pass --config.data.root=gs://... after --)
             --spot              Spot capacity, requested as a queued resource: the slice
                                 is created when capacity exists, and may be preempted
             --python=X.Y        Python of the workers' virtual environment (default 3.12)
             -- MAIN FLAGS       anything after -- goes to kmcl_jax.main
  logs     print a worker's log (--worker=N, default 0; --follow to keep following it);
           every worker also copies its log to WORKDIR/logs/worker-N.log each minute
  status   the slice's state, and on every worker whether training runs or how it ended
           (exit 0 finished, 75 stopped with its step saved, 1 error)
  stop     SIGTERM to the training on every worker: each saves its current step and
           exits 75; `run` again resumes it
  delete   delete the slice (and its queued resource)

How it runs: each worker gets a virtual environment at ~/kmcl_venv with Python --python
(made by uv, which brings its own Python: TPU VM images ship 3.10, kmcl_jax needs 3.11
or newer), this checkout at ~/kmcl_jax installed with the tpu and gcs extras, and the
same `python -m kmcl_jax.main --config=CONFIG --workdir=WORKDIR MAIN FLAGS` started under
nohup/setsid, its output in ~/kmcl_run/train.log. JAX's multi-controller runtime starts
by itself on Cloud TPU VMs: the mesh spans every chip of the slice, every host reads its
share of each global batch, and the KMCL loss is over the global batch.

Preemption: when Google reclaims a Spot slice, the trainer saves a checkpoint on the
preemption notice (JAX's preemption sync, SIGTERM on any host) if it has time, and
every checkpoint lives in the gs:// workdir. Run the same `run` command again: a
preempted slice (or a failed queued resource) is deleted and requested anew, and
training resumes from the latest checkpoint with the data iterator where it was.

Examples:
  launch/tpu_pod.sh run --name=kmcl-v4 --zone=us-central2-b --accelerator=v4-32 \
      --version=tpu-ubuntu2204-base --config=configs/voc.py --workdir=gs://BUCKET/voc \
      --data=gs://BUCKET/data/voc --spot -- --config.init_from=gs://BUCKET/tresnet_m
  launch/tpu_pod.sh logs --name=kmcl-v4 --zone=us-central2-b --follow
  launch/tpu_pod.sh stop --name=kmcl-v4 --zone=us-central2-b
  launch/tpu_pod.sh delete --name=kmcl-v4 --zone=us-central2-b
USAGE
}

fail() { echo "tpu_pod.sh: $*" >&2; exit 2; }

[[ $# -gt 0 ]] || { usage >&2; exit 2; }
case $1 in
  -h|--help) usage; exit 0 ;;
  run|logs|status|stop|delete) action=$1; shift ;;
  *) fail "unknown command '$1': expected run, logs, status, stop or delete; see --help." ;;
esac

name="" zone="" project="" accelerator="" version="" config="" workdir="" data="" spot=""
python_version=3.12 worker=0 follow=""
main_flags=()
while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --name=*) name=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --accelerator=*) accelerator=${1#*=} ;;
    --version=*) version=${1#*=} ;;
    --config=*) config=${1#*=} ;;
    --workdir=*) workdir=${1#*=} ;;
    --data=*) data=${1#*=} ;;
    --python=*) python_version=${1#*=} ;;
    --spot) spot=1 ;;
    --worker=*) worker=${1#*=} ;;
    --follow) follow=1 ;;
    --) shift; main_flags=("$@"); break ;;
    *) fail "unknown argument '$1' (flags for kmcl_jax.main go after --); see --help." ;;
  esac
  shift
done

required=(name zone)
[[ $action == run ]] && required+=(accelerator version config workdir)
for field in "${required[@]}"; do
  [[ -n ${!field} ]] || fail "--$field is required for '$action'; see --help."
done
if [[ $action == run ]]; then
  [[ $workdir == gs://* ]] ||
    fail "--workdir must be a gs:// folder that every TPU host can reach, got '$workdir'."
  [[ -z $data || $data == gs://* ]] || fail "--data must be a gs:// folder, got '$data'."
  [[ $python_version =~ ^3\.[0-9]+$ && ${python_version#3.} -ge 11 ]] ||
    fail "--python must be 3.11 or newer (kmcl_jax needs it), got '$python_version'."
fi
[[ $worker =~ ^[0-9]+$ ]] || fail "--worker must be a worker number, got '$worker'."
command -v gcloud >/dev/null ||
  fail "needs the gcloud CLI (https://cloud.google.com/sdk/docs/install), logged in."
if [[ $action == run ]]; then
  command -v git >/dev/null || fail "needs git, to package this checkout."
  repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel 2>/dev/null) ||
    fail "run it from a checkout of the kmcl_jax repository."
  [[ -f $repo/${config%%:*} ]] || fail "--config: no file '${config%%:*}' in $repo."
fi
if [[ -z $project ]]; then
  project=$(gcloud config get-value project 2>/dev/null || true)
  [[ -n $project ]] || fail "--project is required: gcloud has no default project."
fi

where=(--zone="$zone" --project="$project")
tpu() { gcloud compute tpus tpu-vm "$@"; }
queued() { gcloud compute tpus queued-resources "$@"; }
on_workers() { tpu ssh "$name" "${where[@]}" --worker="$1" --command "$2"; }
node_state() { tpu describe "$name" "${where[@]}" --format='value(state)' 2>/dev/null || true; }
queued_state() {
  queued describe "$name" "${where[@]}" --format='value(state.state)' 2>/dev/null || true
}

delete_slice() {
  if [[ -n $(queued_state) ]]; then
    queued delete "$name" "${where[@]}" --force --quiet
  elif [[ -n $(node_state) ]]; then
    tpu delete "$name" "${where[@]}" --quiet
  fi
}

# The slice: reuse a healthy one, replace a preempted or failed one, else request it.
ensure_slice() {
  local state queue
  state=$(node_state)
  queue=$(queued_state)
  if [[ $state == PREEMPTED || $state == TERMINATED || $queue == FAILED || $queue == SUSPENDED ]]; then
    echo "tpu_pod.sh: $name is ${state:-$queue}; deleting it to request it again."
    delete_slice
    state="" queue=""
  fi
  if [[ -n $state ]]; then
    echo "tpu_pod.sh: reusing $name ($state)."
    return
  fi
  if [[ -n $spot ]]; then
    if [[ -z $queue ]]; then
      echo "tpu_pod.sh: requesting $name ($accelerator, $version) as Spot capacity."
      queued create "$name" "${where[@]}" --node-id="$name" --accelerator-type="$accelerator" \
        --runtime-version="$version" --spot
    fi
    until [[ $(queued_state) == ACTIVE ]]; do
      queue=$(queued_state)
      [[ $queue == FAILED || $queue == SUSPENDED ]] &&
        fail "the queued resource $name is $queue; run the same command again to request it anew."
      echo "tpu_pod.sh: waiting for $name (${queue:-requested})..."
      sleep "${TPU_POD_POLL_SECONDS:-60}"
    done
  else
    echo "tpu_pod.sh: creating $name ($accelerator, $version)."
    tpu create "$name" "${where[@]}" --accelerator-type="$accelerator" --version="$version"
  fi
}

# What every worker runs, detached: training, its exit code, and its log copied to the
# workdir every minute and at the end.
worker_script() {
  local main
  main="python -m kmcl_jax.main --config=$(printf '%q' "$config") --workdir=$(printf '%q' "$workdir")"
  for flag in "${main_flags[@]+"${main_flags[@]}"}"; do main+=" $(printf '%q' "$flag")"; done
  cat <<SCRIPT
#!/usr/bin/env bash
echo \$\$ > ~/kmcl_run/pid  # this script leads its own session (setsid): stop signals it
number=\$(curl -s -H 'Metadata-Flavor: Google' \\
  http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)
log=~/kmcl_run/train.log
copy_log() { gcloud storage cp --quiet "\$log" $(printf '%q' "${workdir%/}")/logs/worker-\$number.log >/dev/null 2>&1 || true; }
(while sleep 60; do copy_log; done) >/dev/null 2>&1 &
copier=\$!
cd ~/kmcl_jax && source ~/kmcl_venv/bin/activate
$main >> "\$log" 2>&1
code=\$?
echo "\$code" > ~/kmcl_run/exit_code
kill "\$copier" 2>/dev/null
copy_log
exit "\$code"
SCRIPT
}

case $action in
  run)
    ensure_slice
    # This checkout (tracked and new files, as they are now) on every worker, installed in
    # a virtual environment with a supported Python.
    archive=$(mktemp --suffix=.tar.gz)
    trap 'rm -f "$archive"' EXIT
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard |
      xargs -0 tar -czf "$archive" --)
    tpu scp "$archive" "$name:kmcl_jax.tar.gz" "${where[@]}" --worker=all
    on_workers all "set -e
      rm -rf ~/kmcl_jax && mkdir -p ~/kmcl_jax ~/kmcl_run && tar -xzf ~/kmcl_jax.tar.gz -C ~/kmcl_jax
      command -v uv >/dev/null || [ -x ~/.local/bin/uv ] || curl -LsSf https://astral.sh/uv/install.sh | sh
      export PATH=~/.local/bin:\$PATH
      [ -x ~/kmcl_venv/bin/python ] || uv venv --python $python_version ~/kmcl_venv
      cd ~/kmcl_jax && uv pip install --python ~/kmcl_venv/bin/python -q -e '.[tpu,gcs]'"
    if [[ -n $data ]]; then
      on_workers all "mkdir -p /tmp/kmcl_data && gcloud storage rsync --recursive $(printf '%q' "$data") /tmp/kmcl_data"
      main_flags=(--config.data.root=/tmp/kmcl_data "${main_flags[@]+"${main_flags[@]}"}")
    fi
    script=$(worker_script)
    on_workers all "cat > ~/kmcl_run/run.sh <<'KMCL_RUN'
$script
KMCL_RUN
      rm -f ~/kmcl_run/exit_code && nohup setsid bash ~/kmcl_run/run.sh >/dev/null 2>&1 < /dev/null &"
    echo "tpu_pod.sh: training started on every worker of $name; it runs on without this shell."
    echo "  follow: launch/tpu_pod.sh logs --name=$name --zone=$zone --follow"
    echo "  logs:   ${workdir%/}/logs/   stop: launch/tpu_pod.sh stop --name=$name --zone=$zone"
    ;;
  logs)
    on_workers "$worker" "tail -n 200 ${follow:+-f} ~/kmcl_run/train.log"
    ;;
  status)
    slice=$(node_state)
    queue=$(queued_state)
    echo "tpu_pod.sh: $name: slice ${slice:-absent}, queued resource ${queue:-none}"
    on_workers all "if [ -f ~/kmcl_run/exit_code ]; then echo \"\$(hostname): ended, exit \$(cat ~/kmcl_run/exit_code)\";
      elif [ -f ~/kmcl_run/pid ] && kill -0 \$(cat ~/kmcl_run/pid) 2>/dev/null; then echo \"\$(hostname): training\";
      else echo \"\$(hostname): not running\"; fi"
    ;;
  stop)
    on_workers all "[ -f ~/kmcl_run/pid ] && pkill -TERM -s \$(cat ~/kmcl_run/pid) -f kmcl_jax.main || true"
    echo "tpu_pod.sh: SIGTERM sent; every worker saves its step and exits 75 (see status)."
    ;;
  delete)
    delete_slice
    ;;
esac
