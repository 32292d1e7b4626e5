#!/usr/bin/env bash
# Install codi_jax on every worker of a TPU VM: clones REPO at REF and installs the tpu extra.
#   NAME=codi ZONE=us-central2-b REPO=https://github.com/<you>/codi_jax REF=main launch/tpu_setup.sh
set -euo pipefail
: "${NAME:?set NAME}" "${ZONE:?set ZONE}" "${REPO:?set REPO (git URL of this project)}"
REF=${REF:-main}
gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command "
  set -e
  if [ ! -d codi_jax ]; then git clone '$REPO' codi_jax; fi
  cd codi_jax && git fetch -q && git checkout -q '$REF' && git pull -q || true
  python3 -m venv ~/venv && . ~/venv/bin/activate
  pip install -q --upgrade pip && pip install -q -e '.[tpu]'
  python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.device_count())'
"
