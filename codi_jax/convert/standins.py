"""Tiny stand-ins of the four released CoDi files, built from the golden fixtures.

    python -m codi_jax.convert.standins --out checkpoints [--fp16] [--goldens DIR]

The real files are 6-12 GB and cannot be fetched by tests or CI. The golden fixtures hold the original
modules' state dicts at tiny sizes under the official key names; prefixed with the attribute names CoDi
gives those modules (`clip.`, `audioldm.`, `model.diffusion_model.unet_image.`, ...) they are the
released files in miniature. `state_dicts` gives {file: {key: array}}; `save` writes them the way the
originals were written, `torch.save` of the state dict (a zip-format pickle of an OrderedDict of
tensors), in float32 or as the fp16 copies are (`net.half()`: every floating tensor halved). `models`
is the matching `models` section of a sampling config (configs/released_standin.py).

Two kinds of tensors are not the fixtures' own, so that the networks fit together as CoDi's do: CLIP's
24-wide projections get 8 more rows (drawn as the fixtures draw weights, N(0, 0.05)) to meet the UNets'
32-wide context, and GPT-2's 120-token tables keep their first 30 rows, the Shapes & Tones vocabulary
the tiny pipelines tokenize with. The video diffuser stand-in also carries CoDi's top-level DDPM schedule
buffers (which real file holds them, if any, is not known: manifest_full.json), so the converter's
handling of tensors outside every network is exercised.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import pathlib
import sys

import numpy as np

from codi_jax.convert import clap as clap_convert
from codi_jax.convert import clip as clip_convert
from codi_jax.data import tokenizers
from codi_jax.diffusion.schedule import make_schedule
from codi_jax.models import autoencoder, optimus, unet, unet_text, vocoder

DEFAULT_GOLDENS = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "goldens"
ENCODERS = "CoDi_encoders.pth"
VIDEO = "CoDi_video_diffuser_8frames.pth"
# Fixture folder -> (released file, the prefix CoDi's state dict puts before the fixture's keys).
FIXTURES = (
    ("clip", ENCODERS, "clip."),
    ("clap", ENCODERS, "clap."),
    ("optimus", ENCODERS, "optimus."),
    ("autokl", ENCODERS, "autokl."),
    ("audio_vae", ENCODERS, "audioldm."),  # its vocoder.* keys are the vocoder's, as in the original
    ("mel_frontend", ENCODERS, "audioldm.fn_STFT."),
    ("unet_video", VIDEO, "model.diffusion_model.unet_image."),
    ("unet_text", "CoDi_text_diffuser.pth", "model.diffusion_model.unet_text."),
    ("unet_audio", "CoDi_audio_diffuser_m.pth", "model.diffusion_model.unet_audio."),
)
_CLIP_PROJECTIONS = ("model.text_projection.weight", "model.visual_projection.weight")
_GPT2_TABLES = ("decoder.transformer.wte.weight", "decoder.lm_head.weight")


def goldens_dir(path=None) -> pathlib.Path:
    """The fixture folder: `path`, else $CODI_GOLDENS, else ../shared/goldens beside the repository."""
    return pathlib.Path(path or os.environ.get("CODI_GOLDENS", DEFAULT_GOLDENS))


def _config(goldens: pathlib.Path, fixture: str) -> dict:
    return json.loads((goldens / fixture / "config.json").read_text())


def context_dim(goldens: pathlib.Path) -> int:
    return int(_config(goldens, "unet_video")["constructor"]["context_dim"])


def gpt2_vocab() -> int:
    return tokenizers.shapes_tones_tokenizer("gpt2").vocab_size


def state_dicts(goldens=None) -> dict[str, dict[str, np.ndarray]]:
    """{released file name: {official key: float32 / int64 array}} of the stand-ins."""
    from safetensors.numpy import load_file

    goldens = goldens_dir(goldens)
    files: dict[str, dict[str, np.ndarray]] = collections.defaultdict(dict)
    for fixture, file, prefix in FIXTURES:
        params = load_file(str(goldens / fixture / "params.safetensors"))
        if fixture == "clip":
            rng = np.random.default_rng(0)
            for key in _CLIP_PROJECTIONS:
                w = params[key]
                extra = rng.normal(0.0, 0.05, (context_dim(goldens) - w.shape[0], w.shape[1])).astype(w.dtype)
                params[key] = np.concatenate([w, extra])
        if fixture == "optimus":
            for key in _GPT2_TABLES:
                params[key] = params[key][:gpt2_vocab()]
        files[file].update({prefix + key: value for key, value in params.items()})
    files[VIDEO].update(make_schedule().buffers())
    return dict(files)


def save(folder, sds: dict[str, dict[str, np.ndarray]], half: bool = False) -> list[pathlib.Path]:
    """Each state dict as `folder/<file>` (torch.save of an OrderedDict of tensors); `half`: fp16 copies."""
    import torch

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for file, sd in sds.items():
        tensors = collections.OrderedDict()
        for key, value in sd.items():
            tensor = torch.from_numpy(np.array(value))
            tensors[key] = tensor.half() if half and tensor.is_floating_point() else tensor
        torch.save(tensors, folder / file)
        paths.append(folder / file)
    return paths


def _fields(module) -> dict:
    """A flax module's constructor arguments, less the ones the training configs set per run."""
    skip = {"parent", "name", "dtype", "remat_policy"}
    return {f.name: getattr(module, f.name) for f in dataclasses.fields(module) if f.init and f.name not in skip}


def models(goldens=None) -> dict[str, dict]:
    """{network: {"variant": constructor kwargs, "overrides": {}}} fitting the stand-ins."""
    goldens = goldens_dir(goldens)
    clip_ctor = _config(goldens, "clip")["constructor"]
    clap_ctor = _config(goldens, "clap")["constructor"]
    opt_ctor = _config(goldens, "optimus")["constructor"]
    image_ctor = _config(goldens, "autokl")["constructor"]
    audio = _config(goldens, "audio_vae")
    text_model = optimus.kwargs_from_official(opt_ctor["encoder"]["config"], opt_ctor["encoder"]["latent_size"],
                                              opt_ctor["decoder"]["config"])
    text_model["decoder"]["vocab_size"] = gpt2_vocab()
    kwargs = {
        "clip": clip_convert.model_kwargs(clip_ctor["CLIPConfig"]["text_config_dict"],
                                          clip_ctor["CLIPConfig"]["vision_config_dict"], context_dim(goldens),
                                          temporal=clip_ctor.get("add_temporal_attention", True)),
        "clap": clap_convert.model_kwargs(clap_ctor["HTSAT_Swin_Transformer"], clap_ctor["CLAP"]),
        "optimus": text_model,
        "image_vae": autoencoder.kwargs_from_official(image_ctor["ddconfig"], image_ctor["embed_dim"], audio=False),
        "audio_vae": autoencoder.kwargs_from_official(audio["constructor"]["ddconfig"],
                                                      audio["constructor"]["embed_dim"], audio=True),
        "vocoder": vocoder.kwargs_from_official(audio["vocoder_h"]),
        "unet_image": _fields(unet.from_official(_config(goldens, "unet_video")["constructor"])),
        "unet_text": _fields(unet_text.from_official(_config(goldens, "unet_text")["constructor"])),
        "unet_audio": _fields(unet.from_official(_config(goldens, "unet_audio")["constructor"])),
    }
    return {name: {"variant": value, "overrides": {}} for name, value in kwargs.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m codi_jax.convert.standins", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the four stand-in .pth files")
    parser.add_argument("--fp16", action="store_true", help="write the fp16 copies")
    parser.add_argument("--goldens", help="golden fixture folder (default: $CODI_GOLDENS or ../shared/goldens)")
    args = parser.parse_args(argv)
    if not (goldens_dir(args.goldens) / "unet_video" / "config.json").is_file():
        print(f"codi_jax.convert.standins: error: no golden fixtures in {goldens_dir(args.goldens)}", file=sys.stderr)
        return 2
    for path in save(args.out, state_dicts(args.goldens), half=args.fp16):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
