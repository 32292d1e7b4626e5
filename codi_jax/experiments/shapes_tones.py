"""The end-to-end Shapes & Tones run: every training stage on CPU, then the evaluation and its report.

    python -m codi_jax.experiments.shapes_tones --variant cpu --workdir workdirs/shapes_tones
    python -m codi_jax.experiments.shapes_tones --variant smoke --workdir /tmp/st_smoke

runs, in order, each stage's config variant (`cpu`, or `tiny` for smoke) through `python -m codi_jax.train`
in WORKDIR/<stage>, handing every finished stage's workdir to the later stages that take it
(`config.init_from.<stage>`):
  autoencoders -> bridging_align -> [encodings] -> image_ldm -> video_ldm -> audio_ldm -> text_ldm -> latent_align,
where `encodings` is `python -m codi_jax.precompute` (configs/precompute.py): the trained autoencoders and
prompt encoders run once over the training data, and every later stage reads that cache
(`config.data.encodings`) instead of encoding its batches again. In the cpu run, autoencoders is preceded
by image_vae -> text_vae (configs/autoencoders.py:cpu_image, cpu_text: the image VAE and Optimus trained on
their own, each run carrying the earlier ones on, the last one handed to autoencoders as its
init_from.autoencoders) and bridging_align by bridging_text_video (configs/bridging_align.py:cpu_text_video:
the CLIP text tower pre-trained on text-video pairs, then frozen, init_from.clip_from); plus latent_align_own, the same latent alignment with the
released code's context wiring (`own`) for the wiring ablation. Then `codi_jax.eval.shapes_tones_eval`
generates every cell through `python -m codi_jax.sample --batch` (the sampling configs are written to
WORKDIR/eval/sample_*.json) and scores it.
The report goes to docs/results.md + docs/results_grid.png for `cpu`, WORKDIR/report/ for `smoke`.

Resumable: a stage whose final checkpoint (the cache: its every split) exists is skipped, and generations
already written are kept.
Per-stage wall times are printed and kept in WORKDIR/timings.json (so a resumed run still reports them);
each stage's log is WORKDIR/logs/<stage>.log.

Time on a 2-core machine: smoke about 20 minutes (8 stages of 1-5 minutes each, nearly all of it XLA
compiling, then 2-3 minutes of evaluation); cpu about 87 minutes (10 stages of 2-10 minutes, 57 minutes in
all, then 30 minutes generating 200 examples for 22 of the 27 cells: the 5 independent baselines are read
from the single cells); the report states each stage's and the evaluation's time.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import platform
import shutil
import subprocess
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
STAGES = ("autoencoders", "bridging_align", "image_ldm", "video_ldm", "audio_ldm", "text_ldm", "latent_align")
ABLATION_STAGE = "latent_align_own"
ENCODINGS = "encodings"  # the precompute step's name and folder (codi_jax.precompute)
WIRING_KEY = "model.wiring"
# The init_from key through which a stage's chained pre-runs (below) hand it their workdir.
CHAIN_INIT = {"autoencoders": "autoencoders", "bridging_align": "clip_from"}


@dataclasses.dataclass(frozen=True)
class Variant:
    train: str                      # variant of every configs/<stage>.py
    sample: str                     # variant of configs/sample.py for what the stages do not fix
    num_examples: int               # examples per evaluation cell
    sampler: str
    steps: int
    report_in_docs: bool
    train_overrides: tuple = ()     # extra --config.key=value for every stage
    # {stage: ((name, configs/<stage>.py variant), ...)}: runs before `stage`, each one's workdir the next one's
    # (and finally the stage's) init_from.<CHAIN_INIT[stage]>. The autoencoders chain trains components alone
    # that the next run carries on (model.carried); the bridging chain pre-trains CLIP's text tower.
    chains: tuple = ()


VARIANTS = {
    "cpu": Variant(train="cpu", sample="cpu", num_examples=200, sampler="dpmpp_2m", steps=10, report_in_docs=True,
                   chains=(("autoencoders", (("image_vae", "cpu_image"), ("text_vae", "cpu_text"))),
                           ("bridging_align", (("bridging_text_video", "cpu_text_video"),)))),
    # Each tiny stage is cut to two steps: the smoke run checks that the stages hand over and that the
    # evaluation generates, reads, scores and reports, not what the tiny models learn.
    "smoke": Variant(train="tiny", sample="tiny", num_examples=2, sampler="ddim", steps=2, report_in_docs=False,
                     train_overrides=(("total_steps", 2), ("log_every_steps", 1), ("checkpoint_every_steps", 2),
                                      ("sample_every_steps", 2))),
}


def _log(message: str) -> None:
    print(f"[shapes_tones] {message}", flush=True)


def _format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def load_stage_config(stage: str, variant: str):
    from codi_jax.train.defaults import load_config_file

    return load_config_file(f"{REPO_ROOT / 'configs' / stage}.py:{variant}")


def finished_step(workdir: pathlib.Path) -> int | None:
    """The last finalised checkpoint step of a training workdir (orbax renames a step's temporary folder
    to the bare step number only once the save is complete), or None."""
    directory = workdir / "checkpoints"
    steps = [int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit()] \
        if directory.is_dir() else []
    return max(steps) if steps else None


def encodings_done(workdir: pathlib.Path, splits) -> bool:
    """Whether a cache directory holds every split of `splits` ({split: examples}) in full."""
    from codi_jax.data import encodings

    try:
        done = encodings.read_metadata(workdir)["splits"]
    except (encodings.CacheError, KeyError):
        return False
    return all(done.get(split) == count for split, count in splits.items())


@dataclasses.dataclass
class StagePlan:
    name: str
    config_name: str
    config_variant: str
    overrides: dict
    workdir: pathlib.Path
    module: str = "codi_jax.train"

    @property
    def spec(self) -> str:
        return f"configs/{self.config_name}.py:{self.config_variant}"


def plan(workdir: pathlib.Path, variant: Variant, wiring_ablation: bool = True) -> list[StagePlan]:
    """The stages in order, each with its --config overrides: every `init_from.<stage>` a stage's config
    declares points at that earlier stage's workdir (other init_from entries keep their values)."""
    names = list(STAGES) + ([ABLATION_STAGE] if wiring_ablation else [])
    plans, chains = [], dict(variant.chains)
    for name in names:
        chained = None
        for link, config_variant in chains.get(name, ()):
            overrides = dict(variant.train_overrides)
            if chained is not None:
                overrides[f"init_from.{CHAIN_INIT[name]}"] = str(chained.workdir)
            chained = StagePlan(link, name, config_variant, overrides, workdir / link)
            plans.append(chained)
        config_name = "latent_align" if name == ABLATION_STAGE else name
        config = load_stage_config(config_name, variant.train)
        overrides = dict(variant.train_overrides)
        if name == "image_ldm":  # the frozen encoders run once, then every diffuser reads their cache
            plans.append(StagePlan(ENCODINGS, "precompute", variant.train, {
                "init_from.autoencoders": str(workdir / "autoencoders"),
                "init_from.bridging_align": str(workdir / "bridging_align")}, workdir / ENCODINGS,
                module="codi_jax.precompute"))
        if STAGES.index(config_name) >= STAGES.index("image_ldm"):
            overrides["data.encodings"] = str(workdir / ENCODINGS)
        for source in config.init_from.keys():
            if source not in STAGES or source == config_name:  # its own: the chain's last run, below
                continue
            if STAGES.index(source) >= STAGES.index(config_name):
                raise ValueError(f"configs/{config_name}.py:{variant.train} takes init_from.{source}, which runs "
                                 f"later in {list(STAGES)}")
            overrides[f"init_from.{source}"] = str(workdir / source)
        if name == ABLATION_STAGE:
            overrides[WIRING_KEY] = "own"
        if chained is not None:
            overrides[f"init_from.{CHAIN_INIT[name]}"] = str(chained.workdir)
        plans.append(StagePlan(name, config_name, variant.train, overrides, workdir / name))
    return plans


def run_stage(stage: StagePlan, variant: Variant, logs: pathlib.Path) -> tuple[bool, float, int | str]:
    """Run one step of the plan (`python -m codi_jax.train`, or the precompute), its output in logs/<stage>.log;
    skipped when its final checkpoint (or its whole cache) exists. Returns (ran, wall seconds, steps)."""
    config = load_stage_config(stage.config_name, stage.config_variant)
    if stage.module == "codi_jax.precompute":
        amount = f"{config.splits.train} examples"
        done = encodings_done(stage.workdir, config.splits)
    else:
        amount = int(dict(variant.train_overrides).get("total_steps", config.total_steps))
        last = finished_step(stage.workdir)
        done = last is not None and last >= amount
    if done:
        return False, 0.0, amount
    command = [sys.executable, "-m", stage.module, f"--config={stage.spec}",
               f"--workdir={stage.workdir}"] + [f"--config.{k}={v}" for k, v in stage.overrides.items()]
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{stage.name}.log"
    start = time.perf_counter()
    # Appended to, so a stage resumed after an interruption keeps the log of its earlier attempt.
    with open(log_path, "a") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        status = subprocess.run(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    if status != 0:
        tail = log_path.read_text().splitlines()[-15:]
        raise RuntimeError(f"stage {stage.name} failed (exit {status}); last lines of {log_path}:\n"
                           + "\n".join(tail))
    return True, seconds, amount


def sampling_config(workdir: pathlib.Path, variant: Variant, align_stage: str, wiring: str):
    """The sampling config of the trained networks: each component's network as the stage that trained
    it configures it, its weights from that stage's workdir, latents of the sizes the LDM stages trained
    on; everything else (tokenizers, batch size, fps, ...) from configs/sample.py:<variant.sample>."""
    from codi_jax import sampling
    from codi_jax.data import mel
    from codi_jax.models import catalogue
    from codi_jax.sample import load_config

    config = load_config(f"{REPO_ROOT / 'configs' / 'sample.py'}:{variant.sample}")
    stages = {s: load_stage_config(s, variant.train) for s in ("autoencoders", "bridging_align", "image_ldm",
                                                                "video_ldm", "audio_ldm", "latent_align")}
    for component, network in catalogue.NETWORKS.items():  # each from the stage that trains it last
        stage = network.stage
        config.models[component] = stages[stage].model[component]
        config.components[component] = f"workdir:{workdir / (align_stage if stage == 'latent_align' else stage)}"
    if "vocoder" not in stages["autoencoders"].model.components:
        if config.mel_inversion == "vocoder":
            raise ValueError(f"configs/autoencoders.py:{variant.train} trains no vocoder but configs/sample.py:"
                             f"{variant.sample} decodes audio with one (mel_inversion)")
        config.components["vocoder"] = "random"  # built for the shape checks, never run
    nets = sampling.build_networks(config)
    image_factor = 2 ** (len(nets.image_vae.ch_mult) - 1)
    audio_factor = 2 ** (len(nets.audio_vae.ch_mult) - 1)
    image = stages["image_ldm"].data.preprocess.image.size // image_factor
    video = stages["video_ldm"].data.preprocess.video
    audio_frames = int(stages["audio_ldm"].model.audio_frames)
    config.latents = {
        "image": (image, image, nets.image_vae.embed_dim),
        "video": (video.num_frames, video.size // image_factor, video.size // image_factor, nets.image_vae.embed_dim),
        "audio": (audio_frames // audio_factor, mel.N_MELS // audio_factor, nets.audio_vae.embed_dim),
        "text": (nets.optimus.decoder.latent_size,)}
    config.audio_seconds = audio_frames * math.prod(nets.vocoder.upsample_rates) / mel.SAMPLE_RATE
    config.condition_frames = stages["bridging_align"].data.preprocess.video.num_frames
    config.wiring = wiring
    return config


def sample_configs(workdir: pathlib.Path, variant: Variant, wiring_ablation: bool) -> dict[str, str]:
    """{pipeline: `--config` spec} of the main run (latent_align, wiring `others`) and, for the ablation,
    of latent_align_own (wiring `own`); the configs are written to WORKDIR/eval/sample_<pipeline>.json."""
    from codi_jax.eval import shapes_tones_eval as ste
    from codi_jax.experiments import sample_json

    pipelines = {ste.MAIN: ("latent_align", "others")}
    if wiring_ablation:
        pipelines[ste.OWN] = (ABLATION_STAGE, "own")
    return {name: sample_json.write(sampling_config(workdir, variant, stage, wiring),
                                    workdir / "eval" / f"sample_{name}.json")
            for name, (stage, wiring) in pipelines.items()}


def eval_settings(variant: Variant, wiring_ablation: bool = True):
    """How the evaluation generates: the variant's sampler and sample count, conditioning inputs exported
    at the resolution the prompt encoders were aligned on."""
    from codi_jax.eval import shapes_tones_eval as ste

    resolution = load_stage_config("bridging_align", variant.train).data.preprocess.image.size
    return ste.EvalSettings(num_examples=variant.num_examples, sampler=variant.sampler, steps=variant.steps,
                            resolution=int(resolution), wiring_ablation=wiring_ablation)


def trained_pairs(variant: Variant) -> list[tuple[str, ...]]:
    """The modality pairs latent alignment trains together (its objectives, e.g. "text_image")."""
    return [tuple(name.split("_")) for name in load_stage_config("latent_align", variant.train).model.objectives]


def _git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" (with uncommitted changes)" if dirty else "")


def versions() -> str:
    from importlib import metadata

    names = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return f"Python {platform.python_version()}, " + ", ".join(found)


def machine() -> str:
    import os

    import jax

    devices = jax.devices()
    return (f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores, "
            f"{len(devices)} {devices[0].platform} device(s)")


def train(stages: list[StagePlan], variant: Variant, workdir: pathlib.Path, timings: dict) -> list[dict]:
    """Run (or skip) every stage in order; the report's rows. Raises RuntimeError when a stage fails."""
    rows = []
    for stage in stages:
        ran, seconds, steps = run_stage(stage, variant, workdir / "logs")
        if ran:
            timings[stage.name] = seconds
            _save_timings(workdir, timings)
            _log(f"stage {stage.name}: {steps}{'' if isinstance(steps, str) else ' steps'} in "
                 f"{_format_seconds(seconds)}")
        else:
            _log(f"stage {stage.name}: finished ({steps}{'' if isinstance(steps, str) else ' steps'}) exists, "
                 "skipped")
        wall = _format_seconds(timings[stage.name]) if stage.name in timings else "–"
        rows.append({"name": stage.name, "config": stage.spec, "steps": steps,
                     "wall_time": wall + ("" if ran or stage.name not in timings else " (earlier run)")})
    return rows


def _save_timings(workdir: pathlib.Path, timings: dict) -> None:
    (workdir / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m codi_jax.experiments.shapes_tones", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="cpu")
    parser.add_argument("--workdir", required=True, help="all stage workdirs, the evaluation and logs go here")
    parser.add_argument("--num-examples", type=int, help="examples per evaluation cell (default: the variant's)")
    parser.add_argument("--no-wiring-ablation", action="store_true",
                        help="skip latent_align_own and the wiring ablation")
    args = parser.parse_args(argv)
    variant = VARIANTS[args.variant]
    if args.num_examples is not None:
        if args.num_examples < 1:
            parser.error(f"--num-examples must be positive, got {args.num_examples}")
        variant = dataclasses.replace(variant, num_examples=args.num_examples)
    ablation = not args.no_wiring_ablation
    workdir = pathlib.Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    code = _git_commit()  # before the report's own files change the tree
    command = "python -m codi_jax.experiments.shapes_tones " + " ".join(argv if argv is not None else sys.argv[1:])
    timings_path = workdir / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    started = time.perf_counter()
    try:
        plans = plan(workdir, variant, ablation)
        rows = train(plans, variant, workdir, timings)
    except ValueError as err:
        print(f"shapes_tones: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        print(f"shapes_tones: {err}", file=sys.stderr)
        return 1

    from codi_jax import sample
    from codi_jax.eval import shapes_tones_eval as ste

    eval_start = time.perf_counter()
    specs = sample_configs(workdir, variant, ablation)
    outcome = ste.evaluate(specs, workdir / "eval", eval_settings(variant, ablation), sample.run_batch,
                           trained_pairs(variant))
    # Summed over invocations, so an interrupted and resumed evaluation reports all the time it took.
    timings["evaluation"] = timings.get("evaluation", 0.0) + time.perf_counter() - eval_start
    _save_timings(workdir, timings)
    _log(f"evaluation: {variant.num_examples} examples x {len(outcome['cells'])} cells, "
         f"{_format_seconds(timings['evaluation'])}")
    guidance = sample.load_config(specs[ste.MAIN]).defaults.guidance
    rows.append({"name": "evaluation", "config": f"eval/sample_{ste.MAIN}.json (configs/sample.py:{variant.sample} "
                 "with the stages' networks)", "steps": f"{variant.sampler}, {variant.steps} steps",
                 "wall_time": _format_seconds(timings["evaluation"])})

    report_dir = REPO_ROOT / "docs" if variant.report_in_docs else workdir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    grid_name = "results_grid.png"
    shutil.copyfile(outcome["grid"], report_dir / grid_name)
    seeds = sorted({int(load_stage_config(name, variant.train).seed) for name in STAGES})
    info = {
        "title": f"Shapes & Tones end to end ({args.variant})",
        "run": {"command": f"`{command}`",
                "variant": f"stages `configs/<stage>.py:{variant.train}`, "
                           f"sampling `configs/sample.py:{variant.sample}`",
                "wall time": f"{_format_seconds(sum(timings.values()))} in all (this invocation: "
                             f"{_format_seconds(time.perf_counter() - started)})",
                "seed": f"training: config seed {', '.join(map(str, seeds))}; generation: seed "
                        f"{ste.EvalSettings.seed} + example index (a joint request and its independent twin share it)",
                "generation": f"{variant.sampler}, {variant.steps} steps, guidance {guidance}; per pipeline: "
                              + "; ".join(f"`python -m codi_jax.sample --config {spec} --batch "
                                          f"{workdir / 'eval' / f'requests_{name}.jsonl'} --out "
                                          f"{workdir / 'eval' / f'outputs_{name}'}`" for name, spec in specs.items()),
                "versions": versions(), "code": code, "machine": machine(),
                "workdir": f"`{workdir}` (stage logs in logs/, generations in eval/outputs_*/)"},
        "stages": rows,
    }
    from codi_jax.eval import probe_report, shapes_tones_report

    probes = probe_report.load({stage.name: stage.workdir for stage in plans})
    if probes:
        info["probes"] = probe_report.table(probes)
        info["probe_plot"] = probe_report.plot(probes, report_dir / "probe_curves.png").name
    report = report_dir / "results.md"
    report.write_text(shapes_tones_report.render_markdown(outcome["results"], info, grid_name))
    _log(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
