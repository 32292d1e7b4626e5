"""The Shapes & Tones evaluation's own logic, on hand-made outputs with known attributes: cells, requests,
reading files back, scores (generator outputs score 100 %, shuffled ones chance), the report and the grid."""
import json

import numpy as np
import pytest
from PIL import Image

from codi_jax import sampling
from codi_jax.data import media
from codi_jax.data import shapes_tones as st
from codi_jax.eval import oracle, scoring
from codi_jax.eval import shapes_tones_eval as ste
from codi_jax.eval import shapes_tones_report
from codi_jax.experiments import sample_json

NUM = 6
RESOLUTION = 32


def test_cells_cover_the_issue():
    cells = ste.make_cells()
    single = [c for c in cells if c.group == "single"]
    assert len(single) == 12 and len({(c.inputs, c.outputs) for c in single}) == 12
    assert {(c.inputs, c.outputs[0]) for c in cells if c.group == "multi"} == set(ste.MULTI_CONDITIONS)
    joint = {(c.inputs, c.outputs, c.independent) for c in cells if c.group == "joint"}
    assert joint == {(i, o, ind) for i, o in ste.JOINT for ind in (False, True)}
    # The paper's chain trains text+image, text+audio and audio+video: image+audio is zero-shot.
    zero = [c for c in cells if c.group == "zero_shot"]
    assert {c.outputs for c in zero} == {("image", "audio")} and {c.independent for c in zero} == {False, True}
    assert [c.trained_together for c in cells if c.group == "joint" and not c.independent] == [True, False, False,
                                                                                                True]
    (wiring,) = [c for c in cells if c.group == "wiring"]
    assert (wiring.inputs, wiring.outputs, wiring.pipeline) == (("text",), ("video", "audio"), ste.OWN)
    assert len({c.key for c in cells}) == len(cells)


def test_zero_shot_cell_follows_the_trained_pairs():
    pairs = ste.PAPER_TRAINED_PAIRS + (("image", "audio"),)
    (cell, _) = [c for c in ste.make_cells(pairs) if c.group == "zero_shot"]
    assert cell.outputs == ("image", "video")
    everything = [(a, b) for a in ste.MODALITIES for b in ste.MODALITIES if a < b]
    with pytest.raises(ValueError, match="zero-shot"):
        ste.make_cells(everything)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    return folder, ste.export_inputs(folder, NUM, RESOLUTION)


def test_export_is_reused_and_matches_the_generator(exported):
    folder, attributes = exported
    truth = [st.generate("test", i, RESOLUTION, modalities=())["attributes"] for i in range(NUM)]
    assert attributes == [{k: a[k] for k in st.ATTRIBUTES} for a in truth]
    stamp = (folder / "export.json").stat().st_mtime_ns
    assert ste.export_inputs(folder, NUM - 2, RESOLUTION) == attributes[:NUM - 2]
    assert (folder / "export.json").stat().st_mtime_ns == stamp


def test_requests_are_valid_sampling_requests(exported):
    folder, _ = exported
    cells = ste.make_cells()
    records = ste.build_requests(cells, folder, NUM, sampler="ddim", steps=2, guidance=3.0, seed=10)
    assert set(records) == {ste.MAIN, ste.OWN}
    assert len(records[ste.OWN]) == NUM
    # Independent cells read the single cells' generations (same condition, same seed, so the same noise).
    assert sum(len(r) for r in records.values()) == NUM * len([c for c in cells if not c.independent])
    ids = [r["id"] for recs in records.values() for r in recs]
    assert len(set(ids)) == len(ids)
    for record in records[ste.MAIN] + records[ste.OWN]:
        request = sampling.Request.from_dict(record)
        for modality in request.input_modalities:
            if modality != "text":
                assert sampling.load_inputs(request).__getattribute__(modality) is not None
    by_id = {r["id"]: r for r in records[ste.MAIN]}
    joint = by_id["text-to-video_audio-0003"]
    twin = next(c for c in cells if c.independent and c.outputs == ("video", "audio"))
    alone = [by_id[ste.request_id(twin.source(m), 3)] for m in twin.outputs]
    assert [r["outputs"] for r in alone] == [["video"], ["audio"]]
    assert joint["seed"] == alone[0]["seed"] == alone[1]["seed"] == 13
    assert joint["text"] == alone[0]["text"] == alone[1]["text"]
    assert not any(r.get("independent") for r in records[ste.MAIN])
    multi = by_id["audio_text-to-video-0001"]
    assert multi["text"] == (folder / "1" / "text.txt").read_text().strip()
    assert multi["audio"].endswith("1/audio.wav") and multi["outputs"] == ["video"]
    path = ste.write_requests(folder.parent / "requests.jsonl", records[ste.MAIN])
    assert [r["id"] for r in sampling.read_batch_file(path)] == [r["id"] for r in records[ste.MAIN]]


def _write_outputs(folder, example, outputs):
    """What the sampler writes, for the files the evaluation reads."""
    folder.mkdir(parents=True, exist_ok=True)
    for m in outputs:
        path = folder / ste.OUTPUT_FILES[m]
        if m == "image":
            media.write_image(path, example["image"])
        elif m == "video":
            media.write_video(path, example["video"], st.VIDEO_FPS)
        elif m == "audio":
            media.write_audio(path, example["audio"], st.SAMPLE_RATE)
        else:
            path.write_text(example["text"] + "\n")
    (folder / "request.json").write_text("{}\n")


@pytest.fixture(scope="module")
def generated(exported, tmp_path_factory):
    """Every request answered with the generator's own rendering of its example: a perfect model."""
    folder, attributes = exported
    cells = ste.make_cells()
    records = ste.build_requests(cells, folder, NUM, sampler="ddim", steps=2)
    out = tmp_path_factory.mktemp("outputs")
    out_dirs = {name: out / name for name in records}
    examples = [st.generate("test", i, RESOLUTION) for i in range(NUM)]
    for name, recs in records.items():
        for record in recs:
            index = int(record["id"].rsplit("-", 1)[1])
            _write_outputs(out_dirs[name] / record["id"], examples[index], record["outputs"])
    return cells, attributes, records, out_dirs


def test_generator_outputs_score_100_percent(generated):
    cells, attributes, records, out_dirs = generated
    decoded = {}
    for name, recs in records.items():
        assert ste.pending(recs, out_dirs[name]) == []
        decoded.update(ste.decode_outputs(recs, out_dirs[name]))
    results = ste.score(cells, attributes, decoded)
    for r in results:
        for m, c in r["conditional"].items():
            assert c["accuracy"] == 1.0, (r["title"], m, c)
            carried = {a for i in r["inputs"] for a in oracle.CARRIED[i]} & set(oracle.CARRIED[m])
            assert set(c["per_attribute"]) == carried
            assert c["scored"] == NUM * len(carried)
        if len(r["outputs"]) > 1:
            assert r["joint"]["agreement"] == 1.0
            assert ("onset_sync" in r["joint"]) == ({"video", "audio"} <= set(r["outputs"]))
            assert r["joint"].get("onset_sync", 1.0) == 1.0
    by_key = {r["key"]: r for r in results}
    # audio + text -> video: motion can only come from the text, the onset only from the audio.
    assert set(by_key["audio_text-to-video"]["conditional"]["video"]["per_attribute"]) == set(st.ATTRIBUTES)
    assert set(by_key["text-to-video"]["conditional"]["video"]["per_attribute"]) == {"color", "shape", "motion"}


def test_missing_outputs_are_pending(generated, tmp_path):
    _, _, records, _ = generated
    assert len(ste.pending(records[ste.MAIN], tmp_path)) == len(records[ste.MAIN])


def test_shuffled_outputs_score_chance():
    """Outputs of other examples (each output modality shuffled on its own): every attribute near its
    chance level, and joint outputs agree by chance only."""
    num = 1200
    attributes = [{k: a[k] for k in st.ATTRIBUTES}
                  for a in (st.sample_attributes("test", i) for i in range(num))]
    rng = np.random.default_rng(0)
    cells = [c for c in ste.make_cells() if c.pipeline == ste.MAIN]
    decoded = {}
    for cell in cells:
        perms = {m: rng.permutation(num) for m in cell.outputs}
        for i in range(num):
            decoded[ste.request_id(cell, i)] = {
                m: {a: attributes[perms[m][i]][a] for a in oracle.CARRIED[m]} for m in cell.outputs}
    for r in ste.score(cells, attributes, decoded):
        for m, c in r["conditional"].items():
            for name, accuracy in c["per_attribute"].items():
                assert abs(accuracy - scoring.CHANCE[name]) < 0.06, (r["title"], m, name, accuracy)
        if "joint" in r:
            assert r["joint"]["agreement"] < 0.4
            if "onset_sync" in r["joint"]:
                assert abs(r["joint"]["onset_sync"] - 0.25) < 0.06


def test_unseen_combinations_are_reported_apart():
    attributes = [{"color": "yellow", "shape": "triangle", "motion": "up", "onset": 1},
                  {"color": "red", "shape": "circle", "motion": "left", "onset": 0}]
    cell = ste.Cell("single", ("text",), ("image",))
    decoded = {ste.request_id(cell, 0): {"image": {"color": "yellow", "shape": "square"}},
               ste.request_id(cell, 1): {"image": {"color": "red", "shape": "circle"}}}
    c = ste.score_cell(cell, attributes, decoded)["conditional"]["image"]
    assert c["unseen"] == {"accuracy": 0.5, "per_attribute": {"color": 1.0, "shape": 0.0}, "scored": 2}
    assert c["seen"]["accuracy"] == 1.0 and c["accuracy"] == 0.75


def test_report_has_every_section(generated):
    cells, attributes, records, out_dirs = generated
    decoded = {}
    for name, recs in records.items():
        decoded.update(ste.decode_outputs(recs, out_dirs[name]))
    results = json.loads(json.dumps(ste.score(cells, attributes, decoded)))  # as results.json holds them
    info = {"title": "T", "run": {"command": "`python -m x`", "seed": "0"},
            "stages": [{"name": "autoencoders", "config": "configs/autoencoders.py:cpu", "steps": 10,
                        "wall_time": "5 s"}]}
    text = shapes_tones_report.render_markdown(results, info, "grid.png")
    for heading in ("## Run", "## Single input -> single output", "## Multi-condition", "## Joint generation",
                    "## Context-wiring ablation", "## Unseen combinations", "## Samples"):
        assert heading in text
    assert "| command | `python -m x` |" in text
    assert "| autoencoders | `configs/autoencoders.py:cpu` | 10 | 5 s |" in text
    assert "| **text** |  | 100.0 | 100.0 | 100.0 |" in text
    assert "| text -> video + audio | yes | independent | 100.0 | 100.0 | video 100.0, audio 100.0 |" in text
    assert "| video -> image + audio | no (zero-shot) | joint, wiring others | 100.0 | – |" in text
    assert "![samples](grid.png)" in text
    ablation = text.split("## Context-wiring ablation")[1].split("##")[0]
    assert [line.split(" | ")[1:] for line in ablation.splitlines() if line.startswith("| ") and "100" in line] == \
        [["100.0", "100.0 |"]] * 3


def test_grid_shows_outputs(generated, tmp_path):
    cells, _, records, out_dirs = generated
    rows = ste.grid_rows(cells, records, out_dirs, index=1)
    titles = [label.split(":")[0] for label, _, _ in rows]
    assert "text -> image" in titles and "image + audio -> text" in titles
    assert "image -> text" not in titles
    path = ste.render_grid(rows, tmp_path / "grid.png")
    picture = np.asarray(Image.open(path).convert("RGB"))
    row_height = ste._TILE + ste._GAP
    assert picture.shape[0] == 16 + len(rows) * row_height + ste._GAP
    example = st.generate("test", 1, RESOLUTION)
    doubled = lambda image: np.repeat(np.repeat(image, 2, 0), 2, 1)  # noqa: E731 (32 px shown at 64)
    input_left = ste._GAP + ste._LABEL_WIDTH + ste._GAP
    image_left = input_left + row_height
    spectrogram_left = image_left + row_height + 8 * row_height

    def cell(title, left, width=ste._TILE):
        top = 16 + titles.index(title) * row_height
        return picture[top:top + ste._TILE, left:left + width]

    assert np.array_equal(cell("text -> image", image_left), doubled(example["image"]))
    assert np.array_equal(cell("image -> video", input_left), doubled(example["image"]))
    assert np.array_equal(cell("video -> image", input_left), doubled(example["video"][-1]))
    assert (cell("text -> image", input_left) == 255).all()
    assert cell("text -> audio", spectrogram_left, ste._SPECTROGRAM_WIDTH).std() > 10
    assert cell("audio -> image", input_left).std() > 10
    assert path.stat().st_size < 300_000


def test_grid_over_budget_keeps_a_palette(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    rows = [(f"row {i}", {"video": noise, "image": noise[0]}, noise[1]) for i in range(6)]
    big = ste.render_grid(rows, tmp_path / "big.png", max_bytes=10 ** 9)
    small = ste.render_grid(rows, tmp_path / "small.png", max_bytes=300_000)
    assert Image.open(big).mode == "RGB" and Image.open(small).mode == "P"
    assert small.stat().st_size < big.stat().st_size


def test_spectrogram_puts_low_pitches_low():
    low = st.synthesize_audio({"color": "red", "shape": "circle", "onset": 0})
    high = st.synthesize_audio({"color": "yellow", "shape": "circle", "onset": 0})
    rows = [np.argmax(ste.spectrogram_image(w).astype(float).sum(axis=(1, 2))) for w in (low, high)]
    assert rows[0] > rows[1]


def test_sample_config_round_trips_through_json(tmp_path):
    from codi_jax.sample import load_config

    config = load_config("configs/sample.py:tiny")
    config.components.clip = "workdir:/somewhere"
    spec = sample_json.write(config, tmp_path / "sample.json")
    again = load_config(spec)
    assert again.to_dict() == config.to_dict()
    assert isinstance(again.latents.video, tuple)
    with pytest.raises(ValueError, match="no such JSON file"):
        sample_json.get_config(str(tmp_path / "missing.json"))
