"""Every combination of one or two inputs with one or two outputs over text, image, video and audio runs
on the tiny randomly initialised CoDi and writes valid files of the configured sizes and durations.

All 100 requests go through one `generate_batch` (10 output sets, so 10 compiled sampling calls), with
the inputs read from files (Shapes & Tones example 0 of the test split, written as png / mp4 / wav).
Marked slow: the ten compiles take about two minutes on a 2-core CPU (three under load). The fast files
(test_sample_pipeline.py, test_sample_cli.py) generate every output modality, alone and jointly.
"""
import itertools
import json
import re

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from codi_jax import media
from codi_jax.data import media as codec
from codi_jax.data import shapes_tones as st
from codi_jax.models import optimus
from codi_jax.sampling import MODALITIES, CoDiPipeline, Request
from codi_jax.sample import load_config

SUBSETS = [c for k in (1, 2) for c in itertools.combinations(MODALITIES, k)]
COMBOS = [(i, o) for i in SUBSETS for o in SUBSETS]
STEPS = 2
# ffmpeg reads the written videos back in forked children, which JAX's fork warning does not concern.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:os.fork")]


def _id(inputs, outputs):
    return f"in-{'+'.join(inputs)}_out-{'+'.join(outputs)}"


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """{request id: output folder} for every combination, plus the pipeline that wrote them."""
    root = tmp_path_factory.mktemp("matrix")
    example = st.generate("test", 0, resolution=48)
    files = media.write_outputs(root / "inputs", {m: example[m] for m in ("image", "video", "audio")},
                                fps=st.SAMPLE_RATE / 2048)
    paths = {p.name.split(".")[0]: str(p) for p in files if p.suffix != ".gif"}
    config = load_config("configs/sample.py:tiny")
    pipe = CoDiPipeline.from_config(config, random_init=True)
    requests = [Request(outputs=outputs, steps=STEPS, seed=n, id=_id(inputs, outputs),
                        **{m: example["text"] if m == "text" else paths[m] for m in inputs})
                for n, (inputs, outputs) in enumerate(COMBOS)]
    results = pipe.generate_batch(requests, progress=False)
    for request, result in zip(requests, results):
        pipe.save(root / request.id, result, request)
    return root, pipe


@pytest.mark.parametrize("inputs,outputs", COMBOS, ids=[_id(i, o) for i, o in COMBOS])
def test_combination_writes_valid_files(generated, inputs, outputs):
    root, pipe = generated
    folder = root / _id(inputs, outputs)
    expected = {name for m in outputs for name in media.OUTPUT_FILES[m]} | {"request.json"}
    assert {p.name for p in folder.iterdir()} == expected
    config = pipe.config
    side = 2 * config.latents.image[0]  # the tiny VAE upsamples by 2
    if "image" in outputs:
        with Image.open(folder / "image.png") as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (side, side))
    if "video" in outputs:
        frames, width = config.latents.video[0], 2 * config.latents.video[2]
        for name in ("video.mp4", "video.gif"):
            video, fps = codec.read_video(folder / name)
            assert video.shape == (frames, width, width, 3), name
            assert fps == pytest.approx(config.video_fps, rel=0.02), name
    if "audio" in outputs:
        info = sf.info(str(folder / "audio.wav"))
        assert (info.samplerate, info.channels) == (16000, 1)
        assert info.frames == round(config.audio_seconds * 16000) == 5120
        wave, _ = sf.read(str(folder / "audio.wav"))
        assert np.isfinite(wave).all() and np.abs(wave).max() <= 1.0
    if "text" in outputs:
        text = (folder / "text.txt").read_text(encoding="utf-8")
        assert text.endswith("\n") and text.count("\n") == 1
        # The decoder's own tokens (words, punctuation, <unk>), detokenised ("left," is "left" ","), and the glue
        # mark CoDi's repeated-phrase removal can leave behind, as the original's does.
        vocabulary = {pipe.tokenizers["gpt2"].decode([token]).strip() for token in range(30)} | {optimus._GLUE}
        assert set(re.findall(r"<\w+>|\w+|[^\w\s<>]", text)) <= vocabulary, text
    record = json.loads((folder / "request.json").read_text())
    assert record["outputs"] == list(outputs) and set(record["weights"]) == set(inputs)
    assert (record["steps"], record["sampler"], record["guidance"]) == (STEPS, "ddim", 7.5)
    assert record["files"] == sorted(expected - {"request.json"})
    assert record["run"]["wiring"] == "others" and record["run"]["audio_seconds"] == 0.32
