"""Cached encodings (codi_jax.precompute): the frozen encoders run once over the training and validation data.

    python -m codi_jax.precompute --config configs/precompute.py:cpu --workdir workdirs/encodings \
        --config.init_from.autoencoders=workdirs/autoencoders --config.init_from.bridging_align=workdirs/bridging_align

writes WORKDIR/encodings.json and <split>-*.array_record: per example the image, video, audio and text
posteriors and the text, image, video and audio prompt encodings; prints the example counts and the rms of
each modality's latents. The ldm and latent_align stages read the cache with
`--config.data.encodings=WORKDIR`.

Variants:
  tiny  tests: the tiny networks (random where no init_from is given), 64 train / 16 validation examples.
  cpu   the Shapes & Tones run's networks and preprocessing: 8192 train / 256 validation examples (the cpu ldms
        see each cached example 2-8 times; the cache takes ~5 minutes).
  full  the released sizes on prepared records (set data.objectives.all.path and the tokenizer paths).
"""
import ml_collections

from codi_jax.train.defaults import CPU_AUDIO_FRAMES, CPU_RESOLUTION, model_components, shapes_tones_data

NETWORKS = ("image_vae", "audio_vae", "optimus", "clip", "clap")
MODALITIES = ("text", "image", "video", "audio")


def get_config(variant: str = "tiny"):
    c = ml_collections.ConfigDict()
    c.workdir = "./workdirs/encodings"
    c.seed = 0
    c.dtype = "float32"
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.init_from = ml_collections.ConfigDict({"autoencoders": "", "bridging_align": ""})
    c.init_from_ema = True
    c.latents = MODALITIES
    c.embeddings = MODALITIES
    lengths = {"clip": 16, "bert": 16}
    if variant == "tiny":
        c.model = model_components(NETWORKS, "tiny")
        c.model.audio_frames = 24
        c.data = shapes_tones_data(["text_image_video_audio"], resolution=16, num_frames=4, audio_samples=4096,
                                   text_lengths=lengths)
        c.splits = ml_collections.ConfigDict({"train": 64, "validation": 16})
        c.batch_size = 16
    elif variant == "cpu":
        c.model = model_components(NETWORKS, "cpu")
        c.model.audio_frames = CPU_AUDIO_FRAMES
        c.data = shapes_tones_data(["text_image_video_audio"], resolution=CPU_RESOLUTION, num_frames=8,
                                   audio_samples=16384, text_lengths=lengths)
        c.splits = ml_collections.ConfigDict({"train": 8192, "validation": 256})
        c.batch_size = 128
    elif variant == "full":
        c.model = model_components(NETWORKS, "full")
        c.model.audio_frames = 1024
        c.data = shapes_tones_data(["text_image_video_audio"], resolution=256, num_frames=8, audio_samples=163840,
                                   text_lengths={"clip": 77, "bert": 64})
        c.data.objectives.text_image_video_audio.dataset = "records"  # set its path to prepared records
        c.splits = ml_collections.ConfigDict({"train": 1_000_000, "validation": 2048})
        c.batch_size = 256
        c.dtype = "bfloat16"
    else:
        raise ValueError(f"unknown variant {variant!r} of configs/precompute.py; expected tiny, cpu or full")
    return c
