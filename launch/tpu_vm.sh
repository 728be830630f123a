#!/usr/bin/env bash
# Trains jaxgpt on a Cloud TPU VM (one host or a multi-host slice). Run it with --help.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh [options] [STEP...] [-- TRAIN_FLAGS...]

Trains jaxgpt on a Cloud TPU VM: creates it (or a queued resource), installs jax[tpu] and
the requirements (no TensorFlow), copies this checkout, runs the same training command on
every worker, follows the logs, fetches samples and deletes the VM.

STEPs, in the order given (default: all):
  create   create the TPU VM (--queued: a queued resource, waiting until it is ACTIVE)
  setup    copy this checkout (or clone --repo) and install on every worker; mount the workdir
  train    start `python -m jaxgpt.train` on every worker in the background (refused while
           a training started before still runs there)
  logs     follow worker 0's log until training ends; exits 1 if training failed
  sample   run `python -m jaxgpt.sample` on worker 0 and save its output in ./samples-RUN.txt
  stop     stop the training on every worker (it saves a checkpoint first) and wait for it
  delete   delete the TPU VM (or queued resource)
  all      create setup train logs sample delete (if training fails it stops after logs,
           leaving the VM up to look at: delete it with the delete step)

Keep the workdir on a bucket (--bucket) or a persistent disk (--disk): a preempted spot
VM loses its own disk, and running `launch/tpu_vm.sh --spot ...` again resumes the run
from its newest checkpoint, with its compilation cache. Multi-host slices need --bucket
(every worker writes its part of each checkpoint to the same folder): setup and train
refuse a slice of several workers without it.

Options (each also read from the environment variable in brackets):
  --name NAME          TPU VM name [TPU_NAME]                default: jaxgpt
  --project ID         Google Cloud project [PROJECT]         default: gcloud's
  --zone ZONE          zone [ZONE]                             default: us-central2-b
  --accelerator TYPE   accelerator type [ACCELERATOR_TYPE]     default: v4-8
  --version VERSION    TPU runtime version [RUNTIME_VERSION]   default: tpu-ubuntu2204-base
  --bucket gs://B      workdir under gs://B/jaxgpt/RUN, mounted with gcsfuse [BUCKET]
  --disk NAME          workdir on this persistent disk (one-host TPU VMs only) [DISK]
  --mount DIR          where the workers mount --bucket or --disk [MOUNT]   default: /mnt/jaxgpt
  --spot               a spot (preemptible) VM [SPOT=1]
  --queued             a queued resource instead of a plain create [QUEUED=1]
  --config FILE        config file [CONFIG]                    default: configs/default.py
  --run NAME           run name, the workdir's last folder [RUN]   default: the config's name
  --repo URL           clone this git repository instead of copying this checkout [REPO]
  --skip-install       setup installs nothing: the workers already have ~/jaxgpt-venv with
                       jax and the requirements [SKIP_INSTALL=1]
  --dry-run            print every command instead of running it [DRY_RUN=1]
  -h, --help           this help
Flags after -- go to python -m jaxgpt.train, e.g. -- --config.train.max_steps=2000

The workdir is MOUNT/jaxgpt/RUN with --bucket or --disk, else ~/jaxgpt-runs/RUN on each
worker (beside the checkout, which setup replaces). On the workers, the training's output
goes to ~/jaxgpt-train.log.

Example:
  launch/tpu_vm.sh --project=my-project --bucket=gs://my-bucket --spot all
EOF
}

TPU_NAME="${TPU_NAME:-jaxgpt}"
PROJECT="${PROJECT:-}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
BUCKET="${BUCKET:-}"
DISK="${DISK:-}"
MOUNT="${MOUNT:-/mnt/jaxgpt}"
SPOT="${SPOT:-0}"
QUEUED="${QUEUED:-0}"
CONFIG="${CONFIG:-configs/default.py}"
RUN="${RUN:-}"
REPO="${REPO:-}"
SKIP_INSTALL="${SKIP_INSTALL:-0}"
DRY_RUN="${DRY_RUN:-0}"
STEPS=()
TRAIN_FLAGS=()
WORKERS_CHECKED=0

# On the workers, as words of their shell (which expands $HOME there): the checkout, its
# virtual environment, and the training's log, process id and exit status.
# shellcheck disable=SC2016
REMOTE_HOME='"$HOME"'
REMOTE_DIR="$REMOTE_HOME/jaxgpt"
REMOTE_VENV="$REMOTE_HOME/jaxgpt-venv"
REMOTE_RUNS="$REMOTE_HOME/jaxgpt-runs"  # not in the checkout: setup replaces that
REMOTE_LOG="$REMOTE_HOME/jaxgpt-train.log"
REMOTE_PID="$REMOTE_HOME/jaxgpt-train.pid"
REMOTE_STATUS="$REMOTE_HOME/jaxgpt-train.status"
PYTHON_VERSION="3.12"

die() {
  echo "error: $*" >&2
  exit 2
}

fail() {
  echo "error: $*" >&2
  exit 1
}

parse_args() {
  while (($#)); do
    case "$1" in
      -h | --help) usage; exit 0 ;;
      --dry-run) DRY_RUN=1 ;;
      --spot) SPOT=1 ;;
      --queued) QUEUED=1 ;;
      --skip-install) SKIP_INSTALL=1 ;;
      --name=* | --project=* | --zone=* | --accelerator=* | --version=* | --bucket=* | \
        --disk=* | --mount=* | --config=* | --run=* | --repo=*)
        set_option "${1%%=*}" "${1#*=}" ;;
      --name | --project | --zone | --accelerator | --version | --bucket | --disk | \
        --mount | --config | --run | --repo)
        (($# >= 2)) || die "$1 needs a value (see --help)"
        set_option "$1" "$2"
        shift ;;
      --) shift; TRAIN_FLAGS=("$@"); break ;;
      create | setup | train | logs | sample | stop | delete) STEPS+=("$1") ;;
      all) STEPS+=(create setup train logs sample delete) ;;
      *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
  done
  ((${#STEPS[@]})) || STEPS=(create setup train logs sample delete)
  RUN="${RUN:-$(basename "$CONFIG" .py)}"
  BUCKET="${BUCKET%/}"
  [[ -z "$BUCKET" || "$BUCKET" =~ ^gs://[a-z0-9][a-z0-9._-]*$ ]] ||
    die "--bucket must look like gs://NAME, a bucket's name alone (the workdir goes under" \
      "gs://NAME/jaxgpt/RUN), got '$BUCKET'"
  [[ -n "$ZONE" ]] || die "--zone needs a zone, e.g. us-central2-b"
  [[ -z "$BUCKET" || -z "$DISK" ]] || die "choose --bucket or --disk, not both"
  [[ "$MOUNT" == /* ]] || die "--mount must be an absolute path on the workers, got '$MOUNT'"
}

set_option() {
  case "$1" in
    --name) TPU_NAME="$2" ;;
    --project) PROJECT="$2" ;;
    --zone) ZONE="$2" ;;
    --accelerator) ACCELERATOR_TYPE="$2" ;;
    --version) RUNTIME_VERSION="$2" ;;
    --bucket) BUCKET="$2" ;;
    --disk) DISK="$2" ;;
    --mount) MOUNT="$2" ;;
    --config) CONFIG="$2" ;;
    --run) RUN="$2" ;;
    --repo) REPO="$2" ;;
  esac
}

# Runs a command, or with --dry-run prints it, quoted so that it can be pasted.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    local arg line=""
    for arg in "$@"; do
      line+="$(quote "$arg") "
    done
    echo "${line% }"
  else
    "$@"
  fi
}

# One word for a POSIX shell: as it is, or in single quotes.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//"'"/"'\\''"}"
  fi
}

quote_all() {
  local arg words=()
  for arg in "$@"; do
    words+=("$(quote "$arg")")
  done
  printf '%s' "${words[*]}"
}

gcloud_tpu() {
  local flags=(--zone="$ZONE")
  [[ -z "$PROJECT" ]] || flags+=(--project="$PROJECT")
  run gcloud compute tpus "$@" "${flags[@]}"
}

# Runs a shell command on the workers: WORKER is "all" or a worker number.
on_workers() {
  local worker="$1" command="$2"
  gcloud_tpu tpu-vm ssh "$TPU_NAME" --worker="$worker" --command="$command"
}

# The workdir as a word of the workers' shell.
workdir() {
  if [[ -n "$BUCKET" || -n "$DISK" ]]; then
    quote "$MOUNT/jaxgpt/$RUN"
  else
    printf '%s' "$REMOTE_RUNS/$(quote "$RUN")"
  fi
}

create() {
  local spot=()
  [[ "$SPOT" != 1 ]] || spot=(--spot)
  if [[ "$QUEUED" == 1 ]]; then
    gcloud_tpu queued-resources create "$TPU_NAME" --node-id="$TPU_NAME" \
      --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" "${spot[@]}"
    wait_until_active
  else
    local disk=()
    [[ -z "$DISK" ]] || disk=(--data-disk="source=$(disk_path),mode=read-write")
    gcloud_tpu tpu-vm create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" \
      --version="$RUNTIME_VERSION" "${spot[@]}" "${disk[@]}"
  fi
}

disk_path() {
  echo "projects/${PROJECT:-$(gcloud config get-value project 2>/dev/null)}/zones/$ZONE/disks/$DISK"
}

wait_until_active() {
  local state=""
  while [[ "$DRY_RUN" != 1 && "$state" != ACTIVE ]]; do
    sleep 30
    state="$(gcloud_tpu queued-resources describe "$TPU_NAME" --format='value(state.state)')"
    echo "queued resource $TPU_NAME: $state"
    [[ "$state" != FAILED && "$state" != SUSPENDED ]] || die "queued resource $TPU_NAME is $state"
  done
  [[ "$DRY_RUN" != 1 ]] || gcloud_tpu queued-resources describe "$TPU_NAME" \
    --format='value(state.state)'
}

# Without --bucket each worker has its own workdir, and a checkpoint of several workers would
# be split between them: a multi-host slice is refused (--dry-run prints the question only).
check_shared_workdir() {
  [[ -z "$BUCKET" && "$WORKERS_CHECKED" == 0 ]] || return 0
  WORKERS_CHECKED=1
  local describe=(tpu-vm describe "$TPU_NAME" --format='value(networkEndpoints.len())') workers
  if [[ "$DRY_RUN" == 1 ]]; then
    gcloud_tpu "${describe[@]}"
    return
  fi
  workers="$(gcloud_tpu "${describe[@]}")"
  [[ "$workers" =~ ^[0-9]+$ ]] || fail "could not count the workers of $TPU_NAME (got '$workers')"
  ((workers <= 1)) || die "$TPU_NAME has $workers workers: a multi-host slice needs" \
    "--bucket=gs://NAME (every worker writes its part of each checkpoint to the same folder)"
}

setup() {
  check_shared_workdir
  copy_project
  on_workers all "$(install_command) && $(mount_command)"
}

# The checkout is replaced only where no training runs from it.
copy_project() {
  if [[ -n "$REPO" ]]; then
    on_workers all "$(not_running_command); rm -rf $REMOTE_DIR && git clone --depth=1 $(quote "$REPO") $REMOTE_DIR"
    return
  fi
  local archive="${TMPDIR:-/tmp}/jaxgpt-$TPU_NAME.tar.gz"
  run tar -czf "$archive" -C "$(project_root)" --exclude=./runs --exclude=./.venv \
    --exclude=./.git --exclude='__pycache__' .
  gcloud_tpu tpu-vm scp "$archive" "$TPU_NAME:jaxgpt.tar.gz" --worker=all
  run rm -f "$archive"
  on_workers all "$(not_running_command); rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -xzf jaxgpt.tar.gz -C $REMOTE_DIR"
}

project_root() {
  cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd
}

# TPU images ship an older Python than jax needs: uv brings its own.
install_command() {
  if [[ "$SKIP_INSTALL" == 1 ]]; then
    printf '%s' "(test -x $REMOTE_VENV/bin/python" \
      " || (echo \"error: --skip-install, but \$(hostname) has no ~/jaxgpt-venv\" >&2 && exit 1))"
    return
  fi
  printf '%s' "(command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh)" \
    " && export PATH=\"\$HOME/.local/bin:\$PATH\"" \
    " && uv venv --allow-existing --python=$PYTHON_VERSION $REMOTE_VENV" \
    " && grep -v -e '^tensorflow' $REMOTE_DIR/requirements.txt > /tmp/jaxgpt-requirements.txt" \
    " && VIRTUAL_ENV=$REMOTE_VENV uv pip install 'jax[tpu]' -r /tmp/jaxgpt-requirements.txt"
}

mount_command() {
  local mount
  mount="$(quote "$MOUNT")"
  if [[ -n "$BUCKET" ]]; then
    # Orbax finishes a checkpoint by renaming its folder: gcsfuse allows that with --rename-dir-limit.
    printf '%s' "(command -v gcsfuse >/dev/null || (curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg" \
      " | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null" \
      " && echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\"" \
      " | sudo tee /etc/apt/sources.list.d/gcsfuse.list && sudo apt-get update -q && sudo apt-get install -yq gcsfuse))" \
      " && sudo mkdir -p $mount && sudo chown \"\$(id -u)\" $mount" \
      " && (mountpoint -q $mount || gcsfuse --implicit-dirs --rename-dir-limit=1000000 $(quote "${BUCKET#gs://}") $mount)"
  elif [[ -n "$DISK" ]]; then
    local device=/dev/disk/by-id/google-persistent-disk-1
    printf '%s' "(sudo blkid $device >/dev/null || sudo mkfs.ext4 -q -m 0 $device)" \
      " && sudo mkdir -p $mount && (mountpoint -q $mount || sudo mount $device $mount)" \
      " && sudo chown \"\$(id -u)\" $mount"
  else
    printf '%s' "echo 'warning: the workdir is on the VM itself: a preempted VM loses it (use --bucket)'"
  fi
}

# True on a worker while the training started there runs: its wrapper is alive and has not
# written the exit status (a wrapper that ended but was not reaped yet still answers kill -0).
running_test() {
  printf '%s' "[ -f $REMOTE_PID ] && [ ! -f $REMOTE_STATUS ] && kill -0 \"\$(cat $REMOTE_PID)\" 2>/dev/null"
}

not_running_command() {
  printf '%s' "if $(running_test); then echo \"error: a training is still running on \$(hostname)" \
    " (pid \$(cat $REMOTE_PID)): follow it with the logs step or end it with the stop step\" >&2;" \
    " exit 1; fi"
}

# A wrapper shell runs the training and then records its exit status for `logs`; setsid
# detaches it from the ssh session.
train_command() {
  local python
  python="python -m jaxgpt.train $(quote_all --config="$CONFIG") --workdir=$(workdir)"
  ((${#TRAIN_FLAGS[@]} == 0)) || python+=" $(quote_all "${TRAIN_FLAGS[@]}")"
  python+="; echo \$? > $REMOTE_STATUS.tmp && mv $REMOTE_STATUS.tmp $REMOTE_STATUS"
  printf '%s' "cd $REMOTE_DIR && . $REMOTE_VENV/bin/activate && rm -f $REMOTE_STATUS" \
    " && (setsid nohup bash -c $(quote "$python") > $REMOTE_LOG 2>&1 < /dev/null & echo \$! > $REMOTE_PID)"
}

train() {
  check_shared_workdir
  on_workers all "$(not_running_command)"
  on_workers all "$(train_command)"
}

# tail stops once the watcher, a child of the same shell, ends with the training.
logs_command() {
  printf '%s' "if [ ! -f $REMOTE_PID ]; then" \
    " echo 'error: no training was started on worker 0 (run the train step)' >&2; exit 1; fi" \
    "; (while $(running_test); do sleep 1; done) & tail -n +1 -f --pid=\$! $REMOTE_LOG" \
    "; status=\"\$(cat $REMOTE_STATUS 2>/dev/null)\"" \
    "; if [ \"\$status\" = 0 ]; then echo 'training finished'; exit 0; fi" \
    "; if [ \"\$status\" = 130 ] || [ \"\$status\" = 143 ]; then echo 'error: training was" \
    " stopped by a signal after saving its checkpoint: run the train step again to resume'" \
    " >&2; exit 1; fi" \
    "; echo \"error: training failed on worker 0 (exit status" \
    " \${status:-unknown: it was killed or its VM restarted}): its log is above and in its" \
    " ~/jaxgpt-train.log\" >&2; exit 1"
}

logs() {
  if ! on_workers 0 "$(logs_command)"; then
    echo "the TPU VM $TPU_NAME is still up: look at it, then delete it (the delete step)" >&2
    exit 1
  fi
}

# SIGTERM makes the training save a checkpoint and stop (on every worker at the same step).
stop() {
  local command
  command="if $(running_test); then pkill -TERM -P \"\$(cat $REMOTE_PID)\""
  command+="; while $(running_test); do sleep 1; done; echo \"stopped the training on \$(hostname)\""
  command+="; else echo \"no training is running on \$(hostname)\"; fi"
  on_workers all "$command"
}

sample() {
  local command out="samples-$RUN.txt"
  # CPU on worker 0 alone: a multi-host TPU slice cannot be used by one of its hosts.
  command="cd $REMOTE_DIR && . $REMOTE_VENV/bin/activate && JAX_PLATFORMS=cpu python -m jaxgpt.sample"
  command+=" --workdir=$(workdir) --num_samples=3 --max_new_tokens=500"
  if [[ "$DRY_RUN" == 1 ]]; then
    on_workers 0 "$command"
    echo "# its output is saved in $out"
  else
    on_workers 0 "$command" | tee "$out"
  fi
}

delete() {
  if [[ "$QUEUED" == 1 ]]; then
    gcloud_tpu queued-resources delete "$TPU_NAME" --force --quiet
  else
    gcloud_tpu tpu-vm delete "$TPU_NAME" --quiet
  fi
}

main() {
  parse_args "$@"
  [[ "$DRY_RUN" == 1 ]] || command -v gcloud >/dev/null ||
    die "gcloud is not installed: see https://cloud.google.com/sdk/docs/install"
  local step
  for step in "${STEPS[@]}"; do
    [[ "$DRY_RUN" != 1 ]] || echo "# $step"
    "$step"
  done
}

main "$@"
