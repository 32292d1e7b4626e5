"""The networks of the tiny released-weight stand-ins (codi_jax.convert.standins), for running the README's
"From the released weights" commands without the 36 GB of real files (tests, CI, the notebook):

    python -m codi_jax.convert.standins --out checkpoints
    python -m codi_jax.convert.released --checkpoints checkpoints --out converted \
        --config configs/released_standin.py:sample
    python -m codi_jax.sample --checkpoint converted/latent_align --text "a red circle" --outputs image,audio,text \
        --out out --config configs/released_standin.py:sample

The networks are the golden fixtures' (read from $CODI_GOLDENS or ../shared/goldens), so the weights are
the original modules' at tiny sizes: image 32x32 (latent [4, 4, 4], the fixture VAE downsamples by 8),
video 4 frames, audio 0.32 s (latent [8, 16, 8] -> mel [32, 64] -> 5,120 samples), text latent [16].

Variants:
  sample           sampling: every network from --checkpoint (a converted workdir), 2 DDIM steps.
  sample_released  the same networks, every one read from the stand-in files in ./checkpoints through the
                   converters (`released:` sources): what sampling from a converted workdir must reproduce.
  latent_align     configs/latent_align.py:full with the stand-in networks, on data of the same sizes: records
                   at data.objectives.<pair>.path, 32 px, 4 frames, 32 mel frames, 1 step of batch 8 (each pair
                   drawn compiles its own step, minutes for the full layout on 2 cores).
"""
import pathlib

from codi_jax.convert import standins
from codi_jax.convert.released import FILES
from codi_jax.train.defaults import load_config_file, shapes_tones_data
from ml_collections import ConfigDict

REPO = pathlib.Path(__file__).resolve().parents[1]
RESOLUTION, FRAMES, MEL_FRAMES = 32, 4, 32
TEXT_LENGTHS = {"clip": 16, "bert": 16}  # CLIP's and BERT's position tables in the fixtures: 16 and 32


def _models(names) -> ConfigDict:
    models = standins.models()
    return ConfigDict({name: models[name] for name in names})


def get_config(variant: str = "sample") -> ConfigDict:
    if variant in ("sample", "sample_released"):
        c = load_config_file(f"{REPO / 'configs' / 'sample.py'}:tiny")
        c.variant = f"released_standin:{variant}"
        c.models = _models(c.models.keys())
        if variant == "sample_released":
            c.components = ConfigDict({name: f"released:checkpoints/{file}" for file, names in FILES.items()
                                       for name in names})
        c.latents = ConfigDict(dict(image=(4, 4, 4), video=(FRAMES, 4, 4, 4), audio=(MEL_FRAMES // 4, 16, 8),
                                    text=(16,)))
        c.audio_seconds = MEL_FRAMES * 160 / 16000
        c.text_max_tokens = 8  # the fixture GPT-2 has 24 positions
        c.compilation_cache_dir = ""
        return c
    if variant == "latent_align":
        c = load_config_file(f"{REPO / 'configs' / 'latent_align.py'}:full")
        models = standins.models()
        for name in [k for k in c.model if isinstance(c.model[k], ConfigDict) and "variant" in c.model[k]]:
            c.model[name] = ConfigDict(models[name])
        c.model.audio_frames = MEL_FRAMES
        c.data = shapes_tones_data(c.model.objectives, resolution=RESOLUTION, num_frames=FRAMES,
                                   audio_samples=MEL_FRAMES * 160, text_lengths=TEXT_LENGTHS)
        for objective in c.data.objectives.values():
            objective.dataset = "records"  # data.objectives.<pair>.path, as the full variant
        c.dtype, c.remat_policy = "float32", "none"
        c.total_steps, c.batch_size = 1, 8
        c.log_every_steps, c.checkpoint_every_steps, c.sample_every_steps = 1, 1, 1000
        c.optim.schedule, c.optim.warmup_steps = "constant", 0  # the one step trains at the full rate
        c.tensorboard = False
        return c
    raise ValueError(f"unknown variant {variant!r} of configs/released_standin.py; expected sample, "
                     f"sample_released or latent_align")
