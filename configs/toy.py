"""Toy stage: a small MLP denoiser on synthetic squares; the trainer's own test bed.

    python -m codi_jax.train --config configs/toy.py:tiny --workdir /tmp/toy

Produces checkpoints in WORKDIR/checkpoints and TensorBoard scalars (loss, grad_norm,
learning_rate, examples/s, TFLOP/s per device) plus clean/noisy/denoised images. The
`encoder` layer is frozen (it stands for a pretrained component); only `time`, the blocks
and `out` train. Variants: tiny (tests: 8x8 images, width 64, 40 steps), cpu (16x16,
width 256, 2000 steps).
"""
from codi_jax.train.defaults import base_config


def get_config(variant: str = "tiny"):
    c = base_config("toy", "./workdirs/toy")
    c.model.trainable = ("time/.*", "block_.*", "out/.*")
    if variant == "tiny":
        c.model.resolution, c.model.width, c.model.depth = 8, 64, 2
        c.total_steps, c.batch_size = 40, 16
        c.log_every_steps, c.checkpoint_every_steps, c.sample_every_steps = 10, 20, 20
        c.optim.learning_rate, c.optim.warmup_steps = 3e-3, 5
        c.ema_decay = 0.9
    elif variant == "cpu":
        c.model.resolution, c.model.width, c.model.depth = 16, 256, 3
        c.total_steps, c.batch_size = 2000, 64
        c.log_every_steps, c.checkpoint_every_steps, c.sample_every_steps = 100, 500, 500
        c.optim.learning_rate, c.optim.warmup_steps = 1e-3, 100
    else:
        raise ValueError(f"unknown variant {variant!r} of configs/toy.py; expected 'tiny' or 'cpu'")
    return c
