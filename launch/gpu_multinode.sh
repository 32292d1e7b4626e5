#!/usr/bin/env bash
# Run a training job on several GPU hosts. Start this script once per host (SLURM: `srun launch/gpu_multinode.sh ...`).
#   COORDINATOR=host0:1234 NUM_PROCESSES=4 PROCESS_ID=<0..3> WORKDIR=/shared/codi/run \
#     launch/gpu_multinode.sh --config configs/latent_align.py:full
# Under SLURM, COORDINATOR/NUM_PROCESSES/PROCESS_ID may be left unset: jax.distributed reads SLURM's variables.
set -euo pipefail
: "${WORKDIR:?set WORKDIR}"
args=(--config.distributed.initialize=True)
[[ -n "${COORDINATOR:-}" ]] && args+=(--config.distributed.coordinator_address="$COORDINATOR")
[[ -n "${NUM_PROCESSES:-}" ]] && args+=(--config.distributed.num_processes="$NUM_PROCESSES")
[[ -n "${PROCESS_ID:-}" ]] && args+=(--config.distributed.process_id="$PROCESS_ID")
exec python -m codi_jax.train "$@" "${args[@]}" --workdir "$WORKDIR"
