#!/bin/bash
# One Slurm task per node: start the DeepSpeed launcher for this node only (no ssh), all nodes meeting at
# the first host of the allocation. Called by train.sbatch and shard.sbatch through srun; see README
# "Slurm". Usage: node.sh train|shard CONFIG [key=value ...]
set -euo pipefail
STAGE=${1:?usage: node.sh train|shard CONFIG [key=value ...]}
CONFIG=${2:?usage: node.sh train|shard CONFIG [key=value ...]}
shift 2
: "${SLURM_JOB_NODELIST:?not inside a Slurm allocation (SLURM_JOB_NODELIST is unset)}"
: "${SLURM_NODEID:?not inside a Slurm task (SLURM_NODEID is unset)}"

PROJECT=${DIST_SYNDR_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
PYTHON=${DIST_SYNDR_PYTHON:-$PROJECT/.venv/bin/python}
SLOTS=${RANKS_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
MASTER_PORT=${MASTER_PORT:-29500}
RUN_DIR=${DIST_SYNDR_JOB_DIR:-$PROJECT/.slurm/$SLURM_JOB_ID}
mkdir -p "$RUN_DIR"

# Every task writes the same hostfile (one line per allocated host) from the node list; the first
# host is node 0, where the rendezvous listens.
if command -v scontrol >/dev/null 2>&1; then
  HOSTS=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
else
  HOSTS=$("$PYTHON" "$PROJECT/launchers/slurm/hostnames.py" "$SLURM_JOB_NODELIST")
fi
MASTER_ADDR=${MASTER_ADDR:-$(head -n 1 <<<"$HOSTS")}
HOSTFILE="$RUN_DIR/hostfile.$SLURM_NODEID"
sed "s/\$/ slots=$SLOTS/" <<<"$HOSTS" >"$HOSTFILE"

EXTRA=()
case "$STAGE" in
  train) SCRIPT="$PROJECT/launchers/train.py" ;;
  shard) SCRIPT="$PROJECT/launchers/shard.py"; EXTRA=(--no_local_rank) ;;  # shard.py reads LOCAL_RANK
  *) echo "node.sh: unknown stage '$STAGE' (train or shard)" >&2; exit 2 ;;
esac
echo "node $SLURM_NODEID of $(wc -l <<<"$HOSTS"): $SLOTS rank(s), rendezvous at $MASTER_ADDR:$MASTER_PORT" >&2
exec "$PYTHON" -m deepspeed.launcher.runner --hostfile "$HOSTFILE" --no_ssh --node_rank "$SLURM_NODEID" "${EXTRA[@]}" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" "$SCRIPT" --config "$CONFIG" "$@"
