#!/usr/bin/env bash
# Run one training job on all workers of a TPU VM (jax.distributed discovers the pod by itself).
#   NAME=codi ZONE=us-central2-b WORKDIR=gs://bucket/codi/latent_align \
#     launch/tpu_run.sh --config configs/latent_align.py:full --config.batch_size=1024
# Checkpoints go to WORKDIR (a gs:// path works with orbax); re-running the same command resumes.
# A preempted VM gets SIGTERM: the trainer writes a checkpoint and exits 0.
set -euo pipefail
: "${NAME:?set NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR}"
ARGS=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command "
  cd codi_jax && . ~/venv/bin/activate &&
  nohup python -m codi_jax.train $ARGS --config.distributed.initialize=True --workdir '$WORKDIR' > ~/train.log 2>&1 &
  echo started on \$(hostname)
"
echo "logs: gcloud compute tpus tpu-vm ssh $NAME --zone $ZONE --worker=0 --command 'tail -f ~/train.log'"
