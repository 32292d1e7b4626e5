"""The trainer: one sharded, resumable loop for every CoDi training stage.

    python -m codi_jax.train --config configs/<stage>.py[:variant] [--workdir DIR] [--config.key=value]

Modules:
  loop        Trainer / train_and_evaluate(config, workdir): set-up, resume, the step loop
  stages/     the stage registry (toy, autoencoders, bridging_align, ldm, latent_align) and the
              networks they share (components.py)
  state       TrainState (trainable / frozen trees, optimizer state, EMA) and its sharded layout
  step        the jitted train step: gradients of the trainable tree, accumulation, EMA, NaN guard
  optimizer   AdamW + warm-up / cosine + clipping
  freeze      parameter paths and the trainable / frozen split
  checkpoint  orbax CheckpointManager items: state, per-process data-iterator state, config,
              digests; damaged checkpoints moved aside, failed saves reported
  integrity   value digests and finiteness of a state, written at save, checked at restore
  config_diff which config changes a resume accepts (state-shaping keys must match)
  handoff     pretrained components from earlier stages' workdirs (config.init_from)
  reporting   clu metric writers, progress line with ETA, TFLOP/s
  preemption  SIGTERM -> checkpoint and exit 0
  validation  start-up config checks (ConfigError, exit code 2)
  defaults    the base config every configs/*.py starts from, and config helpers
"""
