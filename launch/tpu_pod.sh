#!/usr/bin/env bash
# Train on every host of a Cloud TPU VM slice: get the slice, install, run detached; then
# follow, check, stop or delete it.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/tpu_pod.sh COMMAND --name=NAME --zone=ZONE [--project=PROJECT] [OPTIONS]

Commands:
  run      get the slice, install this checkout on every worker and start training there,
           detached from this shell: the run goes on when you log out or close the laptop;
           refused while a run is alive on the slice (`stop` it first)
             --accelerator=TYPE  e.g. v4-32, v5p-64, v5litepod-16, v6e-16
             --version=RUNTIME   TPU software version, e.g. tpu-ubuntu2204-base (v4),
                                 v2-alpha-tpuv5 (v5p), v2-alpha-tpuv5-lite (v5e),
                                 v2-alpha-tpuv6e (v6e)
             --config=CONFIG     config file of this checkout, path[:variant]
             --workdir=gs://...  checkpoints, metrics, TensorBoard, plots, logs/ and
                                 launch/ (this checkout, the start script); every host
                                 must reach it (a VM's default service account can, in
                                 its project)
             --data=gs://...     optional: a dataset in a local layout (see README, Data),
                                 copied to /tmp/kmcl_data on every worker and passed as
                                 --config.data.root (TFDS configs can read a gs://
                                 data_dir directly: pass --config.data.root=gs://... after --)
             --spot              Spot capacity, requested as a queued resource: the slice
                                 is created when capacity exists, and may be preempted
             --auto_resume       training restarts without a person: the slice is a queued
                                 resource whose workers run the start script at every boot
                                 (node metadata startup-script), and this command stays in
                                 the foreground until the run finished, requesting the
                                 slice again whenever it is SUSPENDED (preempted) or FAILED;
                                 keep it running where it can stay (tmux, a small VM)
             --reservation=NAME  capacity of this reservation (a queued resource)
             --internal_ips      workers without external IPs (this machine must reach
                                 them: Cloud VPN, IAP or a VM in the network)
             --network=NETWORK --subnetwork=SUBNETWORK --service_account=EMAIL
                                 passed to the slice's creation
             --python=X.Y        Python of the workers' virtual environment (default 3.12)
             -- MAIN FLAGS       anything after -- goes to kmcl_jax.main
  logs     print a worker's log (--worker=N, default 0; --follow to keep following it);
           every worker also copies its log to WORKDIR/logs/worker-N.log each minute
  status   the queued resource's and the slice's state, one line saying what it means, and
           on every worker whether training runs or how it ended (exit 0 finished, 75
           stopped with its step saved, 1 error)
  stop     SIGTERM to the training on every worker: each saves its current step and
           exits 75; `run` again resumes it
  delete   delete the slice (and its queued resource)

How it runs: this checkout is copied to WORKDIR/launch/ with a start script that every
worker runs as root: it installs the checkout in /opt/kmcl/src, a virtual environment
in /opt/kmcl/venv with Python --python (made by uv, which brings its own Python: TPU VM
images ship 3.10), the package with its tpu and gcs extras at the versions pinned in
launch/requirements-tpu.txt, and starts the same `python -m kmcl_jax.main
--config=CONFIG --workdir=WORKDIR MAIN FLAGS` under nohup/setsid, its output in
/opt/kmcl/run/train.log. JAX's multi-controller runtime starts by itself on Cloud TPU
VMs: the mesh spans every chip of the slice, every host reads its share of each global
batch, and the KMCL loss is over the global batch.

Preemption: when Google reclaims a Spot slice, the trainer saves a checkpoint on the
preemption notice (JAX's preemption sync, SIGTERM on any host) if it has time, and
every checkpoint lives in the gs:// workdir. Run the same `run` command again (or let
--auto_resume do it): a preempted slice (or a failed queued resource) is deleted and
requested anew, and training resumes from the latest checkpoint, reading the batches
it would have read.

Examples:
  launch/tpu_pod.sh run --name=kmcl-v4 --zone=us-central2-b --accelerator=v4-32 \
      --version=tpu-ubuntu2204-base --config=configs/voc.py --workdir=gs://BUCKET/voc \
      --data=gs://BUCKET/data/voc --spot --auto_resume -- --config.init_from=gs://BUCKET/tresnet_m
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
auto_resume="" reservation="" internal_ips="" network="" subnetwork="" service_account=""
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
    --auto_resume) auto_resume=1 ;;
    --reservation=*) reservation=${1#*=} ;;
    --internal_ips) internal_ips=1 ;;
    --network=*) network=${1#*=} ;;
    --subnetwork=*) subnetwork=${1#*=} ;;
    --service_account=*) service_account=${1#*=} ;;
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
    fail "--workdir must be a gs:// folder that every TPU host can reach, got '$workdir' (a local folder lives on one worker's disk: the other hosts cannot read it, and a preemption or a deleted slice takes it with every checkpoint)."
  [[ -z $data || $data == gs://* ]] || fail "--data must be a gs:// folder, got '$data'."
  [[ $python_version =~ ^3\.[0-9]+$ && ${python_version#3.} -ge 11 ]] ||
    fail "--python must be 3.11 or newer (kmcl_jax needs it), got '$python_version'."
  [[ -z $spot || -z $reservation ]] ||
    fail "--spot and --reservation exclude each other: Spot capacity is not reserved."
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
launch=${workdir%/}/launch  # this checkout and the start script, for every worker
tpu() { gcloud compute tpus tpu-vm "$@"; }
# --reservation=NAME exists in the alpha track of queued-resources create only.
queued() { gcloud ${reservation:+alpha} compute tpus queued-resources "$@"; }
on_workers() {
  tpu ssh "$name" "${where[@]}" --worker="$1" ${internal_ips:+--internal-ip} --command "$2"
}
node_state() { tpu describe "$name" "${where[@]}" --format='value(state)' 2>/dev/null || true; }
queued_state() {
  queued describe "$name" "${where[@]}" --format='value(state.state)' 2>/dev/null || true
}
# On the workers (root): the checkout, its virtual environment, and the run's files.
# shellcheck disable=SC2016  # expanded on the workers
kmcl='${KMCL_HOME:-/opt/kmcl}'
alive="[ -f $kmcl/run/pid ] && kill -0 \$(cat $kmcl/run/pid) 2>/dev/null"

delete_slice() {
  if [[ -n $(queued_state) ]]; then
    queued delete "$name" "${where[@]}" --force --quiet
  elif [[ -n $(node_state) ]]; then
    tpu delete "$name" "${where[@]}" --quiet
  fi
}

# What `status` says a queued resource's state means.
explain_queued_state() {
  case $1 in
    "") echo "no queued resource" ;;
    ACTIVE) echo "provisioned: the slice is up" ;;
    ACCEPTED|CREATING|WAITING_FOR_RESOURCES|PROVISIONING)
      echo "waiting for capacity: the workers start training when it is provisioned" ;;
    SUSPENDING)
      echo "being preempted: the workers are saving their step, then the VMs go away" ;;
    SUSPENDED)
      echo "preempted, no VMs left: run the same 'run' command (or keep --auto_resume going) to request it again; training resumes from the latest checkpoint" ;;
    DELETING) echo "being deleted" ;;
    FAILED)
      echo "the request failed (gcloud compute tpus queued-resources describe $name says why); run the same 'run' command to request it again" ;;
    *) echo "a state this script does not know" ;;
  esac
}

request_slice() {
  local node=() queue=()
  [[ -n $internal_ips ]] && node+=(--internal-ips)
  [[ -n $network ]] && node+=(--network="$network")
  [[ -n $subnetwork ]] && node+=(--subnetwork="$subnetwork")
  [[ -n $service_account ]] && node+=(--service-account="$service_account")
  if [[ -n $spot || -n $auto_resume || -n $reservation ]]; then
    [[ -n $spot ]] && queue+=(--spot)
    [[ -n $reservation ]] && queue+=(--reserved --reservation="$reservation")
    [[ -n $auto_resume ]] && queue+=(--metadata-from-file=startup-script="$start_file")
    echo "tpu_pod.sh: requesting $name ($accelerator, $version) as a queued resource${spot:+ on Spot capacity}${reservation:+ in reservation $reservation}."
    queued create "$name" "${where[@]}" --node-id="$name" --accelerator-type="$accelerator" \
      --runtime-version="$version" "${queue[@]+"${queue[@]}"}" "${node[@]+"${node[@]}"}"
  else
    echo "tpu_pod.sh: creating $name ($accelerator, $version)."
    tpu create "$name" "${where[@]}" --accelerator-type="$accelerator" --version="$version" \
      "${node[@]+"${node[@]}"}"
  fi
}

wait_until_active() {
  local queue
  until [[ $(queued_state) == ACTIVE ]]; do
    queue=$(queued_state)
    [[ $queue == FAILED || $queue == SUSPENDED ]] &&
      fail "the queued resource $name is $queue; run the same command again to request it anew."
    echo "tpu_pod.sh: waiting for $name (${queue:-requested})..."
    sleep "${TPU_POD_POLL_SECONDS:-60}"
  done
}

# What every worker runs, detached: training, its exit code, and its log copied to the
# workdir every minute and at the end (the exit code too, for --auto_resume to read).
worker_script() {
  local main
  main="python -m kmcl_jax.main --config=$(printf '%q' "$config") --workdir=$(printf '%q' "$workdir")"
  for flag in "${main_flags[@]+"${main_flags[@]}"}"; do main+=" $(printf '%q' "$flag")"; done
  cat <<SCRIPT
#!/usr/bin/env bash
kmcl=$kmcl
echo \$\$ > \$kmcl/run/pid  # this script leads its own session (setsid): stop signals it
number=\$(curl -s -H 'Metadata-Flavor: Google' \\
  http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)
log=\$kmcl/run/train.log
logs=$(printf '%q' "${workdir%/}")/logs
copy_log() { gcloud storage cp --quiet "\$log" "\$logs/worker-\$number.log" >/dev/null 2>&1 || true; }
(while sleep 60; do copy_log; done) >/dev/null 2>&1 &
copier=\$!
cd \$kmcl/src && source \$kmcl/venv/bin/activate
$main >> "\$log" 2>&1
code=\$?
echo "\$code" > \$kmcl/run/exit_code
kill "\$copier" 2>/dev/null
copy_log
echo "\$code" | gcloud storage cp --quiet - "\$logs/worker-\$number.exit" >/dev/null 2>&1
exit "\$code"
SCRIPT
}

# The start script every worker runs as root (over SSH, and with --auto_resume at every
# boot): install this run's checkout if needed, then start its training unless a run is
# alive. Idempotent, and a boot start and an SSH start never overlap (flock).
start_script() {
  local data_copy=""
  [[ -n $data ]] &&
    data_copy="mkdir -p /tmp/kmcl_data && gcloud storage rsync --recursive $(printf '%q' "$data") /tmp/kmcl_data"
  cat <<START
#!/usr/bin/env bash
# kmcl_jax, written by launch/tpu_pod.sh run: installs this run's checkout and starts
# (or resumes) its training on this worker, detached.
export HOME=/root  # a startup script may run without one
kmcl=$kmcl
mkdir -p \$kmcl/run
exec 9> \$kmcl/start.lock
flock 9
if $alive; then
  echo "\$(hostname): a run is alive; not starting another"
  exit 0
fi
set -e
gcloud storage cp --quiet $(printf '%q' "$launch")/kmcl_jax.tar.gz \$kmcl/kmcl_jax.tar.gz
rm -rf \$kmcl/src && mkdir -p \$kmcl/src && tar -xzf \$kmcl/kmcl_jax.tar.gz -C \$kmcl/src
command -v uv >/dev/null || [ -x ~/.local/bin/uv ] || curl -LsSf https://astral.sh/uv/install.sh | sh
export PATH=~/.local/bin:\$PATH
[ -x \$kmcl/venv/bin/python ] || uv venv --python $python_version \$kmcl/venv
cd \$kmcl/src && uv pip install --python \$kmcl/venv/bin/python -q -c launch/requirements-tpu.txt -e '.[tpu,gcs]'
$data_copy
cat > \$kmcl/run/run.sh <<'KMCL_RUN'
$(worker_script)
KMCL_RUN
rm -f \$kmcl/run/exit_code
nohup setsid bash \$kmcl/run/run.sh >/dev/null 2>&1 < /dev/null &
START
}

# --auto_resume: until the run finished, request the slice again whenever it is
# preempted or failed; its workers resume training at boot from the startup script.
keep_requested() {
  local queue ended
  echo "tpu_pod.sh: keeping $name requested until the run finished (Ctrl-C stops watching, not the run)."
  while true; do
    if gcloud storage ls "${workdir%/}/summary.json" >/dev/null 2>&1; then
      echo "tpu_pod.sh: the run finished (${workdir%/}/summary.json); delete the slice: launch/tpu_pod.sh delete --name=$name --zone=$zone"
      return 0
    fi
    ended=$(gcloud storage cat "${workdir%/}/logs/worker-*.exit" 2>/dev/null || true)
    if grep -qvxE '(0|75)?' <<<"$ended"; then
      echo "tpu_pod.sh: a worker's training ended with an error (exit $(grep -vxE '(0|75)?' <<<"$ended" | head -1)); see ${workdir%/}/logs/; not requesting the slice again." >&2
      return 1
    fi
    queue=$(queued_state)
    case $queue in
      SUSPENDED|FAILED)
        echo "tpu_pod.sh: $name is $queue; requesting it again (its workers resume training at boot)."
        delete_slice
        request_slice
        ;;
      "")
        echo "tpu_pod.sh: the queued resource $name is gone (deleted by someone); stopping." >&2
        return 1
        ;;
    esac
    sleep "${TPU_POD_POLL_SECONDS:-60}"
  done
}

case $action in
  run)
    state=$(node_state)
    queue=$(queued_state)
    if [[ $state == PREEMPTED || $state == TERMINATED || $queue == FAILED || $queue == SUSPENDED ]]; then
      echo "tpu_pod.sh: $name is ${state:-$queue}; deleting it to request it again."
      delete_slice
      state="" queue=""
    fi
    if [[ -n $state ]]; then
      running=$(on_workers all "if $alive; then echo \"alive on \$(hostname)\"; fi" || true)
      [[ $running != *"alive on"* ]] ||
        fail "a run is alive on $name ($(grep -o 'alive on [^ ]*' <<<"$running" | cut -d' ' -f3 | paste -sd, -)); stop it first with: launch/tpu_pod.sh stop --name=$name --zone=$zone (every worker saves its step and exits 75), then run again."
    fi
    if [[ -n $data ]]; then
      main_flags=(--config.data.root=/tmp/kmcl_data "${main_flags[@]+"${main_flags[@]}"}")
    fi
    # This checkout (tracked and new files, as they are now) and the start script, in the
    # workdir: every worker (and every reboot of one) installs from there.
    archive=$(mktemp --suffix=.tar.gz)
    start_file=$(mktemp --suffix=.sh)
    trap 'rm -f "$archive" "$start_file"' EXIT
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard |
      xargs -0 tar -czf "$archive" --)
    start_script > "$start_file"
    gcloud storage cp --quiet "$archive" "$launch/kmcl_jax.tar.gz"
    gcloud storage cp --quiet "$start_file" "$launch/start.sh"
    gcloud storage rm --quiet "${workdir%/}/logs/worker-*.exit" >/dev/null 2>&1 || true
    if [[ -n $state ]]; then
      echo "tpu_pod.sh: reusing $name ($state)."
    else
      [[ -n $queue ]] || request_slice
      [[ -z $queue && -z $spot && -z $auto_resume && -z $reservation ]] || wait_until_active
    fi
    # A slice requested with --auto_resume starts training at boot; the SSH start finds
    # it alive, or starts it if the boot start has not run.
    on_workers all "gcloud storage cp --quiet $(printf '%q' "$launch/start.sh") /tmp/kmcl_start.sh && sudo bash /tmp/kmcl_start.sh"
    echo "tpu_pod.sh: training started on every worker of $name; it runs on without this shell."
    echo "  follow: launch/tpu_pod.sh logs --name=$name --zone=$zone --follow"
    echo "  logs:   ${workdir%/}/logs/   stop: launch/tpu_pod.sh stop --name=$name --zone=$zone"
    [[ -z $auto_resume ]] || keep_requested
    ;;
  logs)
    on_workers "$worker" "sudo tail -n 200 ${follow:+-f} $kmcl/run/train.log"
    ;;
  status)
    slice=$(node_state)
    queue=$(queued_state)
    echo "tpu_pod.sh: $name: slice ${slice:-absent}, queued resource ${queue:-none}: $(explain_queued_state "$queue")"
    if [[ $slice == READY ]]; then
      on_workers all "if [ -f $kmcl/run/exit_code ]; then echo \"\$(hostname): ended, exit \$(cat $kmcl/run/exit_code)\";
        elif sudo bash -c '$alive'; then echo \"\$(hostname): training\";
        else echo \"\$(hostname): not running\"; fi"
    else
      echo "tpu_pod.sh: no worker to ask (the slice is ${slice:-absent}); the run's logs are in WORKDIR/logs/."
    fi
    ;;
  stop)
    on_workers all "[ -f $kmcl/run/pid ] && sudo pkill -TERM -s \$(cat $kmcl/run/pid) -f kmcl_jax.main || true"
    echo "tpu_pod.sh: SIGTERM sent; every worker saves its step and exits 75 (see status)."
    ;;
  delete)
    delete_slice
    ;;
esac
