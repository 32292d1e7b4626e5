"""`python -m codi_jax.sample`, run in-process: generation to files, --batch, --checkpoint, and bad input
(exit status 2 with one line on stderr, nothing generated)."""
import filecmp
import json
import pathlib

import jax
import numpy as np
import pytest

from codi_jax import media, sample, sampling
from codi_jax.data import shapes_tones as st
from codi_jax.train.defaults import load_config_file

REPO = pathlib.Path(__file__).resolve().parents[1]

TINY = ["--config", "configs/sample.py:tiny", "--no-progress", "--compilation-cache", "none", "--steps", "2"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Shapes & Tones example 5 as in.png / in.mp4 / in.wav, its caption, and broken files."""
    folder = tmp_path_factory.mktemp("inputs")
    example = st.generate("test", 5, resolution=40)
    files = media.write_outputs(folder, {m: example[m] for m in ("image", "video", "audio")}, fps=8)
    paths = {p.suffix: str(p) for p in files}
    (folder / "broken.png").write_bytes(b"not a png")
    media.write_outputs(folder / "one_frame", {"video": example["video"][:1], "audio": example["audio"][:0]}, fps=8)
    return {"text": example["text"], "image": paths[".png"], "video": paths[".mp4"], "audio": paths[".wav"],
            "broken": str(folder / "broken.png"), "one_frame": str(folder / "one_frame" / "video.mp4"),
            "empty_wav": str(folder / "one_frame" / "audio.wav")}


def _run(argv, capsys):
    status = sample.main([str(a) for a in argv])
    return status, capsys.readouterr().err


def test_generates_files_and_records_the_request(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    status, err = _run(TINY + ["--random-init", "--text", inputs["text"], "--image", inputs["image"], "--audio",
                               inputs["audio"], "--video", inputs["video"], "--weights",
                               "text=0.5,image=0.5,audio=1,video=1", "--outputs", "video,audio", "--guidance",
                               "video=7.5,audio=4", "--seed", "3", "--out", out], capsys)
    assert status == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["audio.wav", "request.json", "video.gif", "video.mp4"]
    record = json.loads((out / "request.json").read_text())
    assert record["image"] == inputs["image"] and record["text"] == inputs["text"]
    assert record["weights"] == {"text": 0.5, "image": 0.5, "video": 1.0, "audio": 1.0}
    assert (record["outputs"], record["sampler"], record["steps"], record["seed"]) == (["video", "audio"], "ddim", 2, 3)
    assert record["guidance"] == {"video": 7.5, "audio": 4.0}
    assert record["run"]["config"] == "tiny" and set(record["run"]["components"].values()) == {"random"}
    # request.json replays as a --batch line: same request, same files.
    replay = tmp_path / "replay.jsonl"
    fields = {k: v for k, v in record.items() if k not in ("run", "files")}
    replay.write_text(json.dumps({**fields, "id": "again"}) + "\n")
    status, err = _run(TINY + ["--random-init", "--batch", replay, "--out", tmp_path / "batch"], capsys)
    assert status == 0, err
    names = ["audio.wav", "video.gif", "video.mp4"]
    assert filecmp.cmpfiles(out, tmp_path / "batch" / "again", names, shallow=False)[0] == names


def test_batch_writes_one_folder_per_request_like_single_runs(inputs, tmp_path, capsys):
    lines = [{"id": "a", "text": inputs["text"], "outputs": ["video", "audio"], "seed": 1},
             {"id": "b", "audio": inputs["audio"], "outputs": "video,audio", "seed": 2, "guidance": 3},
             {"id": "c", "image": inputs["image"], "outputs": ["video", "audio"], "seed": 3}]
    batch = tmp_path / "requests.jsonl"
    batch.write_text("".join(json.dumps(line) + "\n" for line in lines))
    status, err = _run(TINY + ["--random-init", "--batch", batch, "--out", tmp_path / "out"], capsys)
    assert status == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a", "b", "c"]
    assert json.loads((tmp_path / "out" / "b" / "request.json").read_text())["guidance"] == 3.0
    single = tmp_path / "single_b"
    status, err = _run(TINY + ["--random-init", "--audio", inputs["audio"], "--outputs", "video,audio", "--seed", "2",
                               "--guidance", "3", "--out", single], capsys)
    assert status == 0, err
    names = ["audio.wav", "video.gif", "video.mp4"]
    assert filecmp.cmpfiles(single, tmp_path / "out" / "b", names, shallow=False)[0] == names


def _write_workdir(workdir, trees, saved_config, steps=(1,)):
    """A workdir as the trainer writes it: {training name: variables} under params, and the run's config."""
    from codi_jax.train.checkpoint import Checkpointer

    checkpointer = Checkpointer(str(workdir), max_to_keep=3, async_save=False)
    for step in steps:
        state = {"params": {n: t for n, t in trees.items() if n.startswith("unet")},
                 "frozen": {n: t for n, t in trees.items() if not n.startswith("unet")}}
        checkpointer.save(step, jax.tree.map(np.asarray, state), {}, json.dumps(saved_config))
    checkpointer.wait()
    checkpointer.close()


def _random_trees(config, components):
    """Random variables of `components` at `config`'s sizes."""
    abstract = sampling.abstract_variables(sampling.build_networks(config))
    rng = np.random.default_rng(0)
    return {c: sampling.random_variables(abstract[c], rng) for c in components}


def _fake_training_run(workdir, config, steps):
    trees = _random_trees(config, ("image_vae", "unet_audio"))
    _write_workdir(workdir, trees, {"stage": "fake"}, steps)
    return trees


def test_checkpoint_workdir_supplies_the_components_it_holds(inputs, tmp_path, capsys):
    config = sample.load_config("configs/sample.py:tiny")
    trees = _fake_training_run(tmp_path / "run", config, steps=(1, 2))
    pipe = sampling.CoDiPipeline.from_checkpoint(tmp_path / "run" / "checkpoints" / "2", config)
    assert pipe.sources["image_vae"] == pipe.sources["unet_audio"] == f"workdir:{tmp_path / 'run' / 'checkpoints' / '2'}"
    assert pipe.sources["clip"] == "random"
    for name in ("image_vae", "unet_audio"):
        jax.tree.map(np.testing.assert_array_equal, pipe.variables[name], trees[name])
    status, err = _run(TINY + ["--checkpoint", tmp_path / "run", "--text", inputs["text"], "--outputs", "video,audio",
                               "--out", tmp_path / "out"], capsys)
    assert status == 0, err
    components = json.loads((tmp_path / "out" / "request.json").read_text())["run"]["components"]
    assert components["image_vae"] == f"workdir:{tmp_path / 'run'}" and components["unet_image"] == "random"
    status, err = _run(TINY + ["--checkpoint", tmp_path / "run" / "checkpoints" / "1", "--text", "x", "--outputs",
                               "image", "--out", tmp_path / "old"], capsys)
    assert status == 2 and "only the latest step (2)" in err


def test_a_workdir_names_its_size_and_the_workdirs_its_run_started_from(tmp_path, capsys):
    cpu = sample.load_config("configs/sample.py:cpu")
    bridging = tmp_path / "bridging_align"
    _write_workdir(bridging, _random_trees(cpu, ("clap",)), {"stage": "bridging_align"})
    training = json.loads(load_config_file(str(REPO / "configs" / "latent_align.py") + ":cpu").to_json_best_effort())
    training["init_from"] = {"bridging_align": str(bridging), "text_ldm": ""}
    _write_workdir(tmp_path / "latent_align", _random_trees(cpu, ("unet_audio",)), training)
    config = sampling.config_for_checkpoint(str(tmp_path / "latent_align"))
    assert config.variant == "cpu" and config.components.clap == f"workdir:{bridging}"
    # Networks of no sampling size: one line, exit 2.
    training["model"]["clip"]["overrides"]["projection_dim"] = 48
    _write_workdir(tmp_path / "odd", _random_trees(cpu, ("unet_audio",)), training)
    status, err = _run(["--checkpoint", tmp_path / "odd", "--text", "x", "--outputs", "image", "--out",
                        tmp_path / "out"], capsys)
    assert status == 2 and err.count("\n") == 1
    assert "its networks (latent_align) are none of configs/sample.py's sizes (tiny, cpu, full); give --config" in err


BAD = [
    (["--outputs", "", "--text", "x"], "outputs: the list is empty"),
    (["--outputs", "image,smell", "--text", "x"], "outputs: unknown modality 'smell'"),
    (["--outputs", "image", "--image", "/no/such.png"], "image /no/such.png: no such file"),
    (["--outputs", "image", "--image", "{audio}"], "unsupported file type '.wav'"),
    (["--outputs", "image", "--image", "{broken}"], "unreadable image"),
    (["--outputs", "image", "--video", "{image}"], "video {image}: unsupported file type '.png'"),
    (["--outputs", "image", "--text", "x", "--weights", "text=1,image=1"], "weights: given for ['image', 'text']"),
    (["--outputs", "image", "--text", "x", "--weights", "text=0"], "non-negative with a positive sum"),
    (["--outputs", "image", "--text", "x", "--guidance", "audio=2"], "guidance: given for ['audio']"),
    (["--outputs", "image", "--text", "x", "--sampler", "euler"], "argument --sampler: invalid choice: 'euler'"),
    (["--outputs", "image", "--text", "x", "--steps", "0"], "steps: 0 is out of range"),
    (["--outputs", "image", "--text", "x", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["--outputs", "image", "--text", "a red circle " * 10], "text: text too long for the clip tokenizer"),
    (["--batch", "/no/such.jsonl"], "batch file /no/such.jsonl: no such file"),
    (["--batch", "{batch}", "--text", "x"], "--text cannot be combined with --batch"),
    (["--batch", "{batch}"], "batch request 'r2': outputs: unknown modality 'smell'"),
    (["--config", "configs/nope.py", "--outputs", "image"], "--config: no such file configs/nope.py"),
    (["--config", "configs/sample.py:huge", "--outputs", "image"], "unknown sample config variant 'huge'"),
    (["--config", "configs/latent_align.py:tiny", "--outputs", "image", "--text", "x"],
     "the training config of stage latent_align; sampling takes a configs/sample.py variant"),
    (["--checkpoint", "/no/such/run", "--outputs", "image"], "checkpoint /no/such/run: no such directory"),
    (["--checkpoint", "{tmp}", "--outputs", "image"], "neither a training workdir"),
    (["--outputs", "image", "--text", ""], "text: expected a non-empty caption, got ''"),
    (["--outputs", "image", "--audio", "{empty_wav}"], "audio {empty_wav}: no audio samples"),
    (["--outputs", "image", "--video", "{one_frame}"], "video has 1 frames, too few: expected at least 4"),
    (["--outputs", "image", "--text", "x", "--steps", "-3"], "steps: -3 is out of range"),
    (["--outputs", "image", "--text", "x", "--out", "{earlier}"],
     "--out: {earlier} already holds a generation (request.json, text.txt)"),
    (["--batch", "{batch_ok}", "--out", "{tmp}"], "--out: {tmp}/r1 already holds a generation (request.json)"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_exits_2_with_one_line(inputs, tmp_path, capsys, argv, message):
    batch = tmp_path / "requests.jsonl"
    batch.write_text('{"id": "r1", "outputs": ["image"]}\n{"id": "r2", "outputs": ["smell"]}\n')
    (tmp_path / "batch_ok.jsonl").write_text('{"id": "r1", "outputs": ["image"], "text": "x"}\n')
    # Folders an earlier generation wrote: a single run's, and one request's of a batch into tmp_path.
    for folder, names in ((tmp_path / "earlier", ("request.json", "text.txt")), (tmp_path / "r1", ("request.json",))):
        folder.mkdir()
        for name in names:
            (folder / name).write_text("earlier\n")
    fill = {**inputs, "batch": str(batch), "tmp": str(tmp_path), "batch_ok": str(tmp_path / "batch_ok.jsonl"),
            "earlier": str(tmp_path / "earlier")}
    argv = [a.format(**fill) if isinstance(a, str) else a for a in argv]
    flags = [] if "--checkpoint" in argv else ["--random-init"]
    out = pathlib.Path(argv[argv.index("--out") + 1]) if "--out" in argv else tmp_path / "out"
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    status, err = _run(TINY + flags + argv + ([] if "--out" in argv else ["--out", out]), capsys)
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("codi_jax.sample: error: "), err
    assert message.format(**fill) in lines[0]
    # Nothing written, nothing an earlier run wrote touched.
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_missing_out_and_conflicting_sources(tmp_path, capsys):
    status, err = _run(["--outputs", "image", "--text", "x"], capsys)
    assert status == 2 and "the following arguments are required: --out" in err
    status, err = _run(TINY + ["--random-init", "--checkpoint", tmp_path, "--outputs", "image", "--out", tmp_path],
                       capsys)
    assert status == 2 and "--checkpoint and --random-init exclude each other" in err
    (tmp_path / "file").write_text("x")
    status, err = _run(TINY + ["--random-init", "--outputs", "image", "--out", tmp_path / "file" / "sub"], capsys)
    assert status == 2 and "--out: cannot create" in err
