#!/usr/bin/env bash
# Create a TPU VM (or a queued resource) for codi_jax.
#   ZONE=us-central2-b TPU_TYPE=v4-32 NAME=codi launch/tpu_create.sh            # on-demand
#   QUEUED=1 SPOT=1 ZONE=... TPU_TYPE=v5p-128 NAME=codi launch/tpu_create.sh    # queued resource (spot)
set -euo pipefail
: "${NAME:?set NAME}" "${ZONE:?set ZONE}" "${TPU_TYPE:?set TPU_TYPE (e.g. v4-32, v5p-128, v5litepod-64)}"
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
if [[ "${QUEUED:-0}" == 1 ]]; then
  gcloud compute tpus queued-resources create "$NAME-qr" --node-id "$NAME" --zone "$ZONE" \
    --accelerator-type "$TPU_TYPE" --runtime-version "$RUNTIME" ${SPOT:+--spot}
  echo "queued; watch with: gcloud compute tpus queued-resources describe $NAME-qr --zone $ZONE"
else
  gcloud compute tpus tpu-vm create "$NAME" --zone "$ZONE" --accelerator-type "$TPU_TYPE" \
    --version "$RUNTIME" ${SPOT:+--spot}
fi
