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
# CoDi in JAX: any-to-any generation and evaluation on a Colab TPU

This notebook installs `codi_jax`, connects to the TPU runtime and loads CoDi from one of three sources:
- **released**: the four files of huggingface.co/ZinengTang/CoDi, converted once into training workdirs
  (`python -m codi_jax.convert.released`), then sampled exactly as `python -m codi_jax.sample --checkpoint
  converted/latent_align` does;
- **shapes_tones**: a trained run of `python -m codi_jax.experiments.shapes_tones` (local or in a GCS bucket);
- **random**: randomly initialised tiny networks (every cell runs; the outputs are noise).

It then generates a few any-to-any examples (images, videos and audio shown inline) and evaluates N
examples: the paper's joint-generation coherence (`configs/evaluate.py:joint`) for released weights, the
Shapes & Tones oracle cells for a trained run. Runtime > Change runtime type > **TPU**.
"""),
    ("markdown", "## 1. Install from the repository (skipped where codi_jax is already installed)"),
    ("code", """
import importlib.util
import os
import pathlib
import subprocess
import sys

REPO_URL = "https://github.com/codi-jax/codi_jax.git"  # @param {type:"string"}
BRANCH = "main"  # @param {type:"string"}


def sh(*argv):
    # Runs a command, shows its output, and stops the notebook with its last error line if it fails.
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    print(result.stdout, end="")
    if result.returncode:
        raise RuntimeError(f"{argv[0]} exited {result.returncode}: {result.stderr.strip().splitlines()[-1:]}")


if importlib.util.find_spec("codi_jax") is None:
    sh("git", "clone", "--depth", "1", "--branch", BRANCH, REPO_URL, "/content/codi_jax")
    sh(sys.executable, "-m", "pip", "install", "-q", "-e", "/content/codi_jax[tpu]")
    sys.path.insert(0, "/content/codi_jax")  # an editable install is seen by new processes only
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
## 3. Choose the weights

`released`: `WORK_DIR` is laid out as the README's "From the released weights" section says: `checkpoints/`
(the four `.pth` files, fp32 or fp16) and `tokenizers/` (`clip-vit-large-patch14`, `optimus-gpt2`); a
`gs://` folder is copied to the VM first. The conversion writes `WORK_DIR/converted/latent_align` once (every
network sampling needs) and is skipped when it is already there. `SAMPLE_CONFIG` names the networks.
`shapes_tones`: `RUN_DIR` is the `--workdir` of a Shapes & Tones run and `VARIANT` the size it trained.
"""),
    ("code", """
SOURCE = "released"  # @param ["released", "shapes_tones", "random"]
WORK_DIR = "gs://your-bucket/codi"  # @param {type:"string"}
SAMPLE_CONFIG = "configs/sample.py:full"  # @param {type:"string"}
RUN_DIR = "gs://your-bucket/workdirs/shapes_tones"  # @param {type:"string"}
VARIANT = "cpu"  # @param ["cpu", "smoke"]
STEPS = 50  # @param {type:"integer"}
N = 16  # @param {type:"integer"}


def local_copy(path: str, name: str) -> pathlib.Path:
    # A gs:// folder copied onto the VM, or a local path as it is.
    if not path.startswith("gs://"):
        return pathlib.Path(path).resolve()
    from google.colab import auth

    auth.authenticate_user()
    local = pathlib.Path("/content") / name
    local.mkdir(exist_ok=True)
    sh("gsutil", "-m", "-q", "cp", "-r", f"{path}/*", local)
    return local
"""),
    ("code", """
from codi_jax import sampling
from codi_jax.eval import shapes_tones_eval as ste
from codi_jax.eval import shapes_tones_report
from codi_jax.experiments import shapes_tones
from codi_jax.sample import load_config, run_batch

how = dict(sampler="ddim", steps=STEPS, seed=0)
resolution = 64
if SOURCE == "released":
    work = local_copy(WORK_DIR, "codi")
    os.chdir(work)  # the sampling config reads checkpoints/ and tokenizers/ from here
    checkpoint = work / "converted" / "latent_align"
    if not checkpoint.exists():
        sh(sys.executable, "-m", "codi_jax.convert.released", "--checkpoints", "checkpoints", "--out", "converted",
           "--stages", "latent_align", "--config", SAMPLE_CONFIG)
    config = load_config(SAMPLE_CONFIG)
    pipe = sampling.CoDiPipeline.from_checkpoint(checkpoint, config)
elif SOURCE == "shapes_tones":
    run_dir = local_copy(RUN_DIR, "run")
    variant = shapes_tones.VARIANTS[VARIANT]
    # The run's sampler and steps, inputs at the resolution its prompt encoders were aligned on.
    settings = shapes_tones.eval_settings(variant)
    specs = shapes_tones.sample_configs(run_dir, variant, wiring_ablation=True)
    how, resolution = dict(sampler=settings.sampler, steps=settings.steps, seed=0), settings.resolution
    config = load_config(specs[ste.MAIN])
    pipe = sampling.CoDiPipeline.from_config(config)
else:
    SAMPLE_CONFIG = "configs/sample.py:tiny"
    config = load_config(SAMPLE_CONFIG)
    pipe = sampling.CoDiPipeline.from_config(config, random_init=True)
sampling.enable_compilation_cache(config.compilation_cache_dir)
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

examples = [st.generate("test", i, resolution) for i in range(3)]
requests = [
    sampling.Request(outputs=("image",), text=examples[0]["text"], **how),
    sampling.Request(outputs=("video", "audio"), text=examples[1]["text"], **how),
    sampling.Request(outputs=("text",), image=examples[2]["image"], audio=examples[2]["audio"], **how),
]
results = pipe.generate_batch(requests)
for example, request, result in zip(examples, requests, results):
    print(request.input_modalities, "->", request.outputs, "| inputs of:", example["text"])
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
## 5. Evaluation on N examples

Released weights (or random ones): the paper's joint-generation coherence, `python -m codi_jax.evaluate
--config configs/evaluate.py:joint` (SIM-IT, SIM-AT, SIM-VT, SIM-VA of outputs generated together against
independently), on N Shapes & Tones test examples. A Shapes & Tones run: every cell of its evaluation (single
pairs, multi-condition, joint against independent, the zero-shot pair, the wiring ablation) through the
oracle; the documented run uses N = 200.
"""),
    ("code", """
from IPython.display import Image as ShowImage
from IPython.display import Markdown

from codi_jax import evaluate

eval_dir = pathlib.Path("eval").resolve()
if SOURCE == "shapes_tones":
    settings.num_examples, settings.progress = N, True
    outcome = ste.evaluate(specs, eval_dir / "shapes_tones", settings, run_batch)
    display(Markdown(shapes_tones_report.render_markdown(outcome["results"], {"title": f"Shapes & Tones, {N} examples per cell"})))
    display(ShowImage(filename=str(outcome["grid"])))
else:
    weights = ["--checkpoint", str(checkpoint)] if SOURCE == "released" else ["--random-init"]
    status = evaluate.main(["--config", "configs/evaluate.py:joint", *weights, "--out", str(eval_dir / "joint"),
                            f"--config.sample_config={SAMPLE_CONFIG}", "--config.data.dataset=shapes_tones",
                            f"--config.data.num_examples={N}", f"--config.generation.steps={STEPS}"])
    assert status == 0, "the evaluation stopped (its error is printed above)"
    display(Markdown((eval_dir / "joint" / "results.md").read_text()))
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
