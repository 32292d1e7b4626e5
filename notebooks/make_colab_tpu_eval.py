"""Writes colab_tpu_eval.ipynb (nbformat 4) from the cells below: `python notebooks/make_colab_tpu_eval.py`.

The notebook is generated so that its code stays readable and reviewable here; tests/test_notebook.py checks
that the committed .ipynb is what this script writes and that every code cell parses.
"""
from __future__ import annotations

import json
import pathlib

NOTEBOOK = pathlib.Path(__file__).with_name("colab_tpu_eval.ipynb")

CELLS = [
    ("markdown", """
# CoDi in JAX: any-to-any generation and the Shapes & Tones evaluation on a Colab TPU

This notebook installs `codi_jax` from its repository, connects to the TPU runtime, loads a trained run
(a workdir of `python -m codi_jax.experiments.shapes_tones`, on local disk or in a GCS bucket), runs a few
any-to-any generations through `codi_jax.pipeline.CoDiPipeline`, shows the images, videos and audio inline,
and scores N test examples with the Shapes & Tones oracle.

Runtime > Change runtime type > **TPU**. Without a checkpoint, set `RANDOM_INIT = True` to try every cell on
randomly initialised tiny networks (the outputs are noise, the scores near chance).
"""),
    ("markdown", "## 1. Install from the repository"),
    ("code", """
REPO_URL = "https://github.com/codi-jax/codi_jax.git"  # @param {type:"string"}
BRANCH = "main"  # @param {type:"string"}
!git clone --depth 1 --branch {BRANCH} {REPO_URL} /content/codi_jax
!pip install -q -e "/content/codi_jax[tpu]"
%cd /content/codi_jax
"""),
    ("markdown", "## 2. Connect to the TPU"),
    ("code", """
import jax

devices = jax.devices()
print(f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform})")
if devices[0].platform != "tpu":
    print("No TPU attached: everything below still runs, on", devices[0].platform)
"""),
    ("markdown", """
## 3. Load a checkpoint

`RUN_DIR` is the `--workdir` of a Shapes & Tones run (it holds one training workdir per stage:
autoencoders, bridging_align, the LDMs, latent_align and latent_align_own). A `gs://` path is copied to the
VM first. `VARIANT` is the size the run trained (`cpu` for the documented CPU run).
"""),
    ("code", """
RUN_DIR = "gs://your-bucket/workdirs/shapes_tones"  # @param {type:"string"}
VARIANT = "cpu"  # @param ["cpu", "smoke"]
RANDOM_INIT = False  # @param {type:"boolean"}

import pathlib

if RUN_DIR.startswith("gs://") and not RANDOM_INIT:
    from google.colab import auth

    auth.authenticate_user()
    local = pathlib.Path("/content/run")
    local.mkdir(exist_ok=True)
    !gsutil -m -q cp -r {RUN_DIR}/* {local}
    RUN_DIR = str(local)
"""),
    ("code", """
from codi_jax import pipeline
from codi_jax.eval import shapes_tones_eval as ste
from codi_jax.experiments import shapes_tones
from codi_jax.sample import load_config

variant = shapes_tones.VARIANTS[VARIANT]
# The run's sampler and steps, inputs at the resolution its prompt encoders were aligned on.
settings = shapes_tones.eval_settings(variant, wiring_ablation=not RANDOM_INIT)
if RANDOM_INIT:
    settings.steps = 2
    # The tiny sampling config takes every component from a random init.
    specs = {ste.MAIN: "configs/sample.py:tiny"}
else:
    specs = shapes_tones.sample_configs(pathlib.Path(RUN_DIR), variant, wiring_ablation=True)
config = load_config(specs[ste.MAIN])
pipeline.enable_compilation_cache("/content/xla_cache")
pipe = pipeline.CoDiPipeline.from_config(config)
print("wiring:", pipe.wiring)
for component, source in pipe.sources.items():
    print(f"{component:11s} {source}")
"""),
    ("markdown", """
## 4. Any-to-any generation

Inputs are the first test examples of Shapes & Tones; each request names its inputs, its outputs and the
sampler. Two outputs are generated jointly (environment encoders + joint cross-attention).
"""),
    ("code", """
from codi_jax.data import shapes_tones as st
from codi_jax.eval import oracle

examples = [st.generate("test", i, settings.resolution) for i in range(3)]
how = dict(sampler=settings.sampler, steps=settings.steps, seed=0)
requests = [
    pipeline.Request(outputs=("image",), text=examples[0]["text"], **how),
    pipeline.Request(outputs=("video", "audio"), text=examples[1]["text"], **how),
    pipeline.Request(outputs=("text",), image=examples[2]["image"], audio=examples[2]["audio"], **how),
]
results = pipe.generate_batch(requests)
for example, request, result in zip(examples, requests, results):
    print(request.input_modalities, "->", request.outputs, "| truth:", example["text"])
"""),
    ("code", """
import base64
import io

from IPython.display import HTML, Audio, display
from PIL import Image


def show_image(image, scale=3):
    image = Image.fromarray(image)
    display(image.resize((image.width * scale, image.height * scale), Image.NEAREST))


def show_video(frames, fps, scale=3):
    images = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps),
                   loop=0)
    display(HTML(f'<img src="data:image/gif;base64,{base64.b64encode(buffer.getvalue()).decode()}">'))


for request, result in zip(requests, results):
    print("outputs:", ", ".join(request.outputs))
    for modality, value in result.items():
        if modality == "image":
            show_image(value)
        elif modality == "video":
            show_video(value, float(config.video_fps))
        elif modality == "audio":
            display(Audio(value, rate=16000))
            show_image(ste.spectrogram_image(value), scale=2)
        else:
            print("text:", value)
    print("oracle:", {m: oracle.decode(m, v) for m, v in result.items()})
"""),
    ("markdown", """
## 5. Shapes & Tones scores on N examples

Every cell of the evaluation (12 single pairs, 4 multi-condition, joint pairs with their independent
baselines, the zero-shot pair and, with a trained run, the wiring ablation) on the first N test examples,
through the batch sampler and the oracle. The documented run uses N = 200.
"""),
    ("code", """
N = 16  # @param {type:"integer"}

from IPython.display import Image as ShowImage
from IPython.display import Markdown

settings.num_examples, settings.progress = N, True
outcome = ste.evaluate(specs, "/content/eval", settings)
display(Markdown(ste.render_markdown(outcome["results"], {"title": f"Shapes & Tones, {N} examples per cell"})))
display(ShowImage(filename=str(outcome["grid"])))
"""),
]


def _lines(text: str) -> list[str]:
    lines = text.strip("\n").split("\n")
    return [line + "\n" for line in lines[:-1]] + lines[-1:]


def notebook() -> dict:
    cells = []
    for index, (kind, text) in enumerate(CELLS):
        cell = {"cell_type": kind, "id": f"cell-{index:02d}", "metadata": {}, "source": _lines(text)}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        cells.append(cell)
    return {
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"accelerator": "TPU", "colab": {"name": "colab_tpu_eval.ipynb", "provenance": []},
                     "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                     "language_info": {"name": "python"}},
        "cells": cells,
    }


def render() -> str:
    return json.dumps(notebook(), indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    NOTEBOOK.write_text(render())
    print(f"wrote {NOTEBOOK}")
