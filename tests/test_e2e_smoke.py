"""The end-to-end Shapes & Tones experiment: its stage plan and hand-offs, the sampling config it derives from
the training configs, resumption, and (slow) the smoke variant from its documented command."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from codi_jax.eval import shapes_tones_eval as ste
from codi_jax.experiments import shapes_tones as experiment

REPO = pathlib.Path(__file__).resolve().parents[1]
SMOKE = experiment.VARIANTS["smoke"]


def test_plan_hands_every_stage_its_earlier_workdirs(tmp_path):
    plans = experiment.plan(tmp_path, SMOKE)
    stages = list(experiment.STAGES)
    assert [p.name for p in plans] == stages[:2] + [experiment.ENCODINGS] + stages[2:] + [experiment.ABLATION_STAGE]
    by_name = {p.name: p for p in plans}
    encodings = by_name.pop(experiment.ENCODINGS)
    assert (encodings.module, encodings.spec) == ("codi_jax.precompute", "configs/precompute.py:tiny")
    assert encodings.overrides == {"init_from.autoencoders": str(tmp_path / "autoencoders"),
                                   "init_from.bridging_align": str(tmp_path / "bridging_align")}
    for p in by_name.values():
        assert p.workdir == tmp_path / p.name
        assert p.overrides["total_steps"] == 2
        # The diffusers read the cache; the stages it is made from cannot.
        assert p.overrides.get("data.encodings") == (
            None if p.name in ("autoencoders", "bridging_align") else str(tmp_path / experiment.ENCODINGS))
        for key, value in p.overrides.items():
            if key.startswith("init_from.") and p.module == "codi_jax.train":
                source = key.split(".", 1)[1]
                assert value == str(tmp_path / source)
                assert experiment.STAGES.index(source) < experiment.STAGES.index(p.config_name)
    assert "init_from.image_ldm" in by_name["video_ldm"].overrides
    handed = {k.split(".", 1)[1] for k in by_name["latent_align"].overrides if k.startswith("init_from.")}
    assert handed == set(experiment.STAGES[:-1])
    own = by_name[experiment.ABLATION_STAGE]
    assert own.config_name == "latent_align" and own.overrides["model.wiring"] == "own"
    assert {k: v for k, v in own.overrides.items() if k != "model.wiring"} == by_name["latent_align"].overrides
    assert "model.wiring" not in by_name["latent_align"].overrides
    assert experiment.ABLATION_STAGE not in [p.name for p in experiment.plan(tmp_path, SMOKE, wiring_ablation=False)]


def test_cpu_plan_trains_the_carried_autoencoders_first(tmp_path):
    plans = experiment.plan(tmp_path, experiment.VARIANTS["cpu"])
    image, text, autoencoders = plans[:3]
    assert [(p.name, p.spec) for p in (image, text)] == [("image_vae", "configs/autoencoders.py:cpu_image"),
                                                          ("text_vae", "configs/autoencoders.py:cpu_text")]
    assert "init_from.autoencoders" not in image.overrides
    assert text.overrides["init_from.autoencoders"] == str(tmp_path / "image_vae")
    assert autoencoders.name == "autoencoders"
    assert autoencoders.overrides["init_from.autoencoders"] == str(tmp_path / "text_vae")
    # Each run trains what the next one carries; the autoencoders run ends up holding every component.
    carried = set()
    for p in plans[:3]:
        config = experiment.load_stage_config("autoencoders", p.config_variant)
        assert set(config.model.carried) == carried
        carried |= set(config.model.components)
    assert carried == {"optimus", "image_vae", "audio_vae"}
    chained = [p.name for p in plans[2:] if p.name not in (experiment.ENCODINGS, "bridging_text_video")]
    assert chained == list(experiment.STAGES) + [experiment.ABLATION_STAGE]


def test_cpu_plan_pretrains_the_text_tower_before_bridging(tmp_path):
    by_name = {p.name: p for p in experiment.plan(tmp_path, experiment.VARIANTS["cpu"])}
    text_video, bridging = by_name["bridging_text_video"], by_name["bridging_align"]
    assert text_video.spec == "configs/bridging_align.py:cpu_text_video"
    assert bridging.overrides["init_from.clip_from"] == str(tmp_path / "bridging_text_video")
    first = experiment.load_stage_config("bridging_align", "cpu_text_video")
    second = experiment.load_stage_config("bridging_align", "cpu")
    assert first.model.pairs == ("text_video",) and "clip:*" in first.model.trainable
    # The bridge: what the text tower learned from videos is kept while the other encoders align to it.
    assert "clip:text" not in second.model.trainable and "clip:*" not in second.model.trainable


def test_finished_step_ignores_unfinished_saves(tmp_path):
    assert experiment.finished_step(tmp_path) is None
    (tmp_path / "checkpoints" / "4").mkdir(parents=True)
    (tmp_path / "checkpoints" / "8.orbax-checkpoint-tmp-1234").mkdir()
    assert experiment.finished_step(tmp_path) == 4


def test_sampling_config_is_the_trained_networks(tmp_path):
    """Networks, latents and durations of the sampling config follow the stage configs, so the pipeline
    loads the stages' checkpoints and generates at the sizes the LDMs trained on."""
    from codi_jax import sampling
    from codi_jax.sample import load_config

    for variant in ("smoke", "cpu"):
        v = experiment.VARIANTS[variant]
        specs = experiment.sample_configs(tmp_path / variant, v, wiring_ablation=True)
        assert set(specs) == {ste.MAIN, ste.OWN}
        main, own = load_config(specs[ste.MAIN]), load_config(specs[ste.OWN])
        assert (main.wiring, own.wiring) == ("others", "own")
        assert main.components.unet_image == f"workdir:{tmp_path / variant / 'latent_align'}"
        assert own.components.unet_audio == f"workdir:{tmp_path / variant / experiment.ABLATION_STAGE}"
        assert main.components.clap == own.components.clap == f"workdir:{tmp_path / variant / 'bridging_align'}"
        image_ldm = experiment.load_stage_config("image_ldm", v.train)
        assert main.models.unet_image.to_dict() == image_ldm.model.unet_image.to_dict()
        nets = sampling.build_networks(main)
        factor = 2 ** (len(nets.image_vae.ch_mult) - 1)
        assert main.latents.image[0] * factor == image_ldm.data.preprocess.image.size
        assert main.latents.text == (nets.optimus.decoder.latent_size,)
        audio_frames = experiment.load_stage_config("audio_ldm", v.train).model.audio_frames
        assert round(main.audio_seconds * 16000) == audio_frames * 160
    # The cpu run trains no vocoder: its sampling inverts mels with Griffin-Lim and never loads one.
    cpu = load_config(experiment.sample_configs(tmp_path / "cpu", experiment.VARIANTS["cpu"], False)[ste.MAIN])
    assert (cpu.mel_inversion, cpu.components.vocoder) == ("griffin_lim", "random")


def test_a_run_without_a_vocoder_must_not_sample_with_one(tmp_path, monkeypatch):
    from codi_jax.sample import load_config

    original = load_config

    def vocoder_sampling(spec):
        config = original(spec)
        config.mel_inversion = "vocoder"
        return config

    monkeypatch.setattr("codi_jax.sample.load_config", vocoder_sampling)
    with pytest.raises(ValueError, match="trains no vocoder but configs/sample.py:cpu decodes audio with one"):
        experiment.sample_configs(tmp_path, experiment.VARIANTS["cpu"], False)


def _environment():
    # The documented command runs on the host's devices, not on the tests' 8 simulated ones.
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "").strip()
    return env


@pytest.mark.slow
def test_smoke_variant_end_to_end(tmp_path):
    """Every stage (2 steps each), the evaluation of every cell on 2 examples, the report under the workdir;
    a second invocation skips every stage and every generation."""
    workdir = tmp_path / "run"
    docs = REPO / "docs" / "results.md"
    docs_before = docs.stat().st_mtime_ns if docs.exists() else None
    command = [sys.executable, "-m", "codi_jax.experiments.shapes_tones", "--variant", "smoke", "--workdir",
               str(workdir)]
    first = subprocess.run(command, cwd=REPO, env=_environment(), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-4000:]
    for stage in experiment.STAGES + (experiment.ABLATION_STAGE,):
        assert f"stage {stage}: 2 steps in" in first.stdout
        assert experiment.finished_step(workdir / stage) == 2
    assert f"stage {experiment.ENCODINGS}: 64 examples in" in first.stdout
    report = (workdir / "report" / "results.md").read_text()
    for heading in ("## Single input -> single output", "## Multi-condition", "## Joint generation",
                    "## Context-wiring ablation", "## Unseen combinations", "![samples](results_grid.png)"):
        assert heading in report
    assert (workdir / "report" / "results_grid.png").stat().st_size > 0
    results = json.loads((workdir / "eval" / "results.json").read_text())
    cells = ste.make_cells(experiment.trained_pairs(SMOKE))
    assert [r["key"] for r in results] == [c.key for c in cells]
    assert all(r["n"] == SMOKE.num_examples for r in results)
    for name in (ste.MAIN, ste.OWN):
        records = [json.loads(line) for line in (workdir / "eval" / f"requests_{name}.jsonl").read_text().splitlines()]
        assert ste.pending(records, workdir / "eval" / f"outputs_{name}") == []
    assert (docs.stat().st_mtime_ns if docs.exists() else None) == docs_before

    second = subprocess.run(command, cwd=REPO, env=_environment(), capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-4000:]
    assert second.stdout.count("exists, skipped") == len(experiment.STAGES) + 2
    assert json.loads((workdir / "eval" / "results.json").read_text()) == results
