"""The one table of CoDi's networks and modalities; every stage, config, converter and the sampler read it.

Each network has one name everywhere: the key of its parameters in a stage's tree (`<name>/params/...`), of
`config.model.<name>` in training configs and `config.models.<name>` / `config.components.<name>` in sampling
configs. This module imports nothing of the package, so any layer can read it.
"""
from __future__ import annotations

import dataclasses

# The paper's order; reports and error messages list the modalities this way.
MODALITIES = ("text", "image", "video", "audio")


@dataclasses.dataclass(frozen=True)
class Network:
    name: str
    module: str     # codi_jax.models.<module>: its `build(variant, **overrides)` and `CONFIGS` presets
    converter: str  # codi_jax.convert registry name of the released weights' converter
    stage: str      # the training stage that trains it last (later stages take it from there)


# Released-file order (CoDi_encoders.pth, then the diffusers). The image UNet's converter is the image+video one:
# the released image UNet carries the temporal layers.
NETWORKS = {n.name: n for n in (
    Network("clip", "clip", "clip", "bridging_align"),
    Network("clap", "clap", "clap_audio", "bridging_align"),
    Network("optimus", "optimus", "optimus", "autoencoders"),
    Network("image_vae", "autoencoder", "image_autoencoder_kl", "autoencoders"),
    Network("audio_vae", "autoencoder", "audio_autoencoder_kl", "autoencoders"),
    Network("vocoder", "vocoder", "hifigan_generator", "autoencoders"),
    Network("unet_image", "unet", "unet_video", "latent_align"),
    Network("unet_text", "unet_text", "unet_text", "latent_align"),
    Network("unet_audio", "unet", "unet_audio", "latent_align"),
)}
NAMES = tuple(NETWORKS)
UNETS = ("unet_image", "unet_text", "unet_audio")
LATENT_CODERS = ("image_vae", "audio_vae", "optimus")

# Per modality: the diffuser that generates it, the autoencoder of its latents, the prompt encoder of its condition.
UNET_OF = {"text": "unet_text", "image": "unet_image", "video": "unet_image", "audio": "unet_audio"}
LATENT_CODER_OF = {"text": "optimus", "image": "image_vae", "video": "image_vae", "audio": "audio_vae"}
PROMPT_ENCODER_OF = {"text": "clip", "image": "clip", "video": "clip", "audio": "clap"}
