#!/bin/sh
# Run CMD with this MPI rank's GPUs in $SELECTOR.
# Usage: bind_gpus.sh SELECTOR "IDS_OF_RANK_0;IDS_OF_RANK_1;..." CMD [ARGS...]
# The local rank comes from whichever launcher started us (Hydra, PALS, Open MPI, Slurm).
selector=$1
lists=$2
shift 2
rank=${MPI_LOCALRANKID:-${PALS_LOCAL_RANKID:-${OMPI_COMM_WORLD_LOCAL_RANK:-${SLURM_LOCALID:-0}}}}
ids=$(printf '%s' "$lists" | cut -d';' -f"$((rank + 1))")
export "$selector=$ids"
exec "$@"
