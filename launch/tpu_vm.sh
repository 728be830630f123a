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
  train    start `python -m jaxgpt.train` on every worker in the background
  logs     follow worker 0's log until training ends
  sample   run `python -m jaxgpt.sample` on worker 0 and save its output in ./samples-RUN.txt
  delete   delete the TPU VM (or queued resource)
  all      create setup train logs sample delete

Keep the workdir on a bucket (--bucket) or a persistent disk (--disk): a preempted spot
VM loses its own disk, and running `launch/tpu_vm.sh --spot ...` again resumes the run
from its newest checkpoint, with its compilation cache. Multi-host slices need --bucket
(every worker writes its part of each checkpoint to the same folder).

Options (each also read from the environment variable in brackets):
  --name NAME          TPU VM name [TPU_NAME]                default: jaxgpt
  --project ID         Google Cloud project [PROJECT]         default: gcloud's
  --zone ZONE          zone [ZONE]                             default: us-central2-b
  --accelerator TYPE   accelerator type [ACCELERATOR_TYPE]     default: v4-8
  --version VERSION    TPU runtime version [RUNTIME_VERSION]   default: tpu-ubuntu2204-base
  --bucket gs://B      workdir under gs://B/jaxgpt/RUN, mounted with gcsfuse [BUCKET]
  --disk NAME          workdir on this persistent disk (one-host TPU VMs only) [DISK]
  --spot               a spot (preemptible) VM [SPOT=1]
  --queued             a queued resource instead of a plain create [QUEUED=1]
  --config FILE        config file [CONFIG]                    default: configs/default.py
  --run NAME           run name, the workdir's last folder [RUN]   default: the config's name
  --repo URL           clone this git repository instead of copying this checkout [REPO]
  --dry-run            print every command instead of running it [DRY_RUN=1]
  -h, --help           this help
Flags after -- go to python -m jaxgpt.train, e.g. -- --config.train.max_steps=2000

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
SPOT="${SPOT:-0}"
QUEUED="${QUEUED:-0}"
CONFIG="${CONFIG:-configs/default.py}"
RUN="${RUN:-}"
REPO="${REPO:-}"
DRY_RUN="${DRY_RUN:-0}"
STEPS=()
TRAIN_FLAGS=()

# On the workers: the checkout, its virtual environment, the log, and the mount point.
REMOTE_DIR="\$HOME/jaxgpt"
REMOTE_VENV="\$HOME/jaxgpt-venv"
REMOTE_LOG="\$HOME/jaxgpt-train.log"
REMOTE_PID="\$HOME/jaxgpt-train.pid"
MOUNT="/mnt/jaxgpt"
PYTHON_VERSION="3.12"

die() {
  echo "error: $*" >&2
  exit 2
}

parse_args() {
  while (($#)); do
    case "$1" in
      -h | --help) usage; exit 0 ;;
      --dry-run) DRY_RUN=1 ;;
      --spot) SPOT=1 ;;
      --queued) QUEUED=1 ;;
      --name=* | --project=* | --zone=* | --accelerator=* | --version=* | --bucket=* | \
        --disk=* | --config=* | --run=* | --repo=*)
        set_option "${1%%=*}" "${1#*=}" ;;
      --name | --project | --zone | --accelerator | --version | --bucket | --disk | \
        --config | --run | --repo)
        (($# >= 2)) || die "$1 needs a value (see --help)"
        set_option "$1" "$2"
        shift ;;
      --) shift; TRAIN_FLAGS=("$@"); break ;;
      create | setup | train | logs | sample | delete) STEPS+=("$1") ;;
      all) STEPS+=(create setup train logs sample delete) ;;
      *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
  done
  ((${#STEPS[@]})) || STEPS=(create setup train logs sample delete)
  RUN="${RUN:-$(basename "$CONFIG" .py)}"
  [[ -z "$BUCKET" || "$BUCKET" == gs://* ]] || die "--bucket must look like gs://NAME, got '$BUCKET'"
  [[ -z "$BUCKET" || -z "$DISK" ]] || die "choose --bucket or --disk, not both"
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

quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//"'"/"'\\''"}"
  fi
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

workdir() {
  if [[ -n "$BUCKET" || -n "$DISK" ]]; then
    echo "$MOUNT/jaxgpt/$RUN"
  else
    echo "$REMOTE_DIR/runs/$RUN"
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

setup() {
  copy_project
  on_workers all "$(install_command) && $(mount_command)"
}

copy_project() {
  if [[ -n "$REPO" ]]; then
    on_workers all "rm -rf $REMOTE_DIR && git clone --depth=1 $(printf '%q' "$REPO") $REMOTE_DIR"
    return
  fi
  local archive="${TMPDIR:-/tmp}/jaxgpt-$TPU_NAME.tar.gz"
  run tar -czf "$archive" -C "$(project_root)" --exclude=./runs --exclude=./.venv \
    --exclude=./.git --exclude='__pycache__' .
  gcloud_tpu tpu-vm scp "$archive" "$TPU_NAME:jaxgpt.tar.gz" --worker=all
  on_workers all "rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -xzf jaxgpt.tar.gz -C $REMOTE_DIR"
}

project_root() {
  cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd
}

# TPU images ship an older Python than jax needs: uv brings its own.
install_command() {
  printf '%s' "(command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh)" \
    " && export PATH=\$HOME/.local/bin:\$PATH" \
    " && uv venv --allow-existing --python=$PYTHON_VERSION $REMOTE_VENV" \
    " && grep -v -e '^tensorflow' $REMOTE_DIR/requirements.txt > /tmp/jaxgpt-requirements.txt" \
    " && VIRTUAL_ENV=$REMOTE_VENV uv pip install 'jax[tpu]' -r /tmp/jaxgpt-requirements.txt"
}

mount_command() {
  if [[ -n "$BUCKET" ]]; then
    # Orbax finishes a checkpoint by renaming its folder: gcsfuse allows that with --rename-dir-limit.
    printf '%s' "(command -v gcsfuse >/dev/null || (curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg" \
      " | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null" \
      " && echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\"" \
      " | sudo tee /etc/apt/sources.list.d/gcsfuse.list && sudo apt-get update -q && sudo apt-get install -yq gcsfuse))" \
      " && sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT" \
      " && (mountpoint -q $MOUNT || gcsfuse --implicit-dirs --rename-dir-limit=1000000 ${BUCKET#gs://} $MOUNT)"
  elif [[ -n "$DISK" ]]; then
    local device=/dev/disk/by-id/google-persistent-disk-1
    printf '%s' "(sudo blkid $device >/dev/null || sudo mkfs.ext4 -q -m 0 $device)" \
      " && sudo mkdir -p $MOUNT && (mountpoint -q $MOUNT || sudo mount $device $MOUNT)" \
      " && sudo chown \$USER $MOUNT"
  else
    printf '%s' "echo 'warning: the workdir is on the VM itself: a preempted VM loses it (use --bucket)'"
  fi
}

train_command() {
  local flags
  flags="$(printf ' %q' --config="$CONFIG" --workdir="$(workdir)" "${TRAIN_FLAGS[@]}")"
  printf '%s' "cd $REMOTE_DIR && . $REMOTE_VENV/bin/activate" \
    " && (nohup python -m jaxgpt.train$flags > $REMOTE_LOG 2>&1 < /dev/null & echo \$! > $REMOTE_PID)"
}

train() {
  on_workers all "$(train_command)"
}

logs() {
  on_workers 0 "tail -n +1 --pid=\$(cat $REMOTE_PID) -f $REMOTE_LOG"
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
