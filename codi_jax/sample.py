"""Any-to-any generation to files: `python -m codi_jax.sample ...`.

  python -m codi_jax.sample --checkpoint DIR --text "a red circle moving left" --image in.png --audio in.wav \
      --video in.mp4 --weights text=0.5,image=0.5 --outputs video,audio --sampler ddim --steps 50 \
      --guidance 7.5 --seed 0 --out OUT

writes OUT/video.mp4, OUT/video.gif, OUT/audio.wav (and image.png / text.txt for those outputs) plus
OUT/request.json. `--batch requests.jsonl` runs one request per line (the same fields as the flags, plus
an `id`; flags given on the command line are the lines' defaults) into OUT/<id>/. `--config
configs/sample.py:tiny --random-init` runs randomly initialised networks (smoke tests, timing).

Bad input (an unreadable or wrong-type file, an empty or unknown output, weights that do not match the
inputs, a missing checkpoint, an --out folder already holding a generation, ...) prints one line on stderr and exits with status 2.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from codi_jax import config_files, media, sampling
from codi_jax.errors import ConfigError

EXIT_BAD_INPUT = 2


class UsageError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m codi_jax.sample", description="CoDi any-to-any generation to files.")
    src = p.add_argument_group("weights")
    src.add_argument("--checkpoint", help="a training workdir (its latest checkpoint) or one checkpoint folder")
    src.add_argument("--config", default=None,
                     help="sampling config FILE[:variant] (default: the one a --checkpoint's run implies, "
                          "configs/sample.py:full, or :tiny with --random-init)")
    src.add_argument("--random-init", action="store_true",
                     help="every component randomly initialised (overrides the config's sources)")
    inp = p.add_argument_group("inputs")
    inp.add_argument("--text", help="a caption")
    inp.add_argument("--image", help="an image file (png, jpg, ...)")
    inp.add_argument("--video", help="a video file (mp4, gif, ...)")
    inp.add_argument("--audio", help="an audio file (wav, flac, ogg; resampled to 16 kHz)")
    inp.add_argument("--weights", help="mixing weights per input, e.g. text=0.5,image=0.5 (default: equal)")
    gen = p.add_argument_group("generation")
    gen.add_argument("--outputs", help="comma-separated outputs among text,image,video,audio")
    gen.add_argument("--sampler", choices=sampling.SAMPLERS)
    gen.add_argument("--steps", help="denoising steps")
    gen.add_argument("--guidance", help="classifier-free guidance scale, or per output: image=7.5,audio=4")
    gen.add_argument("--seed", help="random seed (initial noise, text sampling, audio crop)")
    gen.add_argument("--independent", action="store_true",
                     help="generate each output alone from the same condition (no joint generation)")
    gen.add_argument("--batch", help="a JSONL file of requests, one per line, each with an 'id'")
    gen.add_argument("--batch-size", type=int, help="requests per compiled call (default: the config's)")
    out = p.add_argument_group("output")
    out.add_argument("--out", required=True, help="output folder")
    out.add_argument("--compilation-cache", help="persistent XLA cache folder ('none': leave JAX's own setting, off "
                                                 "unless JAX_COMPILATION_CACHE_DIR is set; default: the config's "
                                                 "compilation_cache_dir)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def load_config(spec: str):
    """`FILE[:variant]` -> the ConfigDict of FILE's get_config(variant); FILE relative to the cwd or the repo."""
    try:
        return config_files.load(spec)
    except ConfigError as err:
        raise UsageError(f"--config: {err}") from None
    except ValueError as err:
        raise UsageError(f"--config {spec}: {err}") from None


def load_sampling_config(spec: str):
    """load_config, refusing (one line) a config that is not a sampling one, e.g. a training stage's."""
    config = load_config(spec)
    if not all(key in config for key in ("models", "components", "defaults")):
        what = f"the training config of stage {config.stage}" if "stage" in config else "not a sampling config"
        raise UsageError(f"--config {spec}: {what}; sampling takes a configs/sample.py variant (or --checkpoint "
                         "WORKDIR alone, which reads the networks from the workdir's run)")
    return config


def _flag_fields(args) -> dict:
    fields = {name: getattr(args, name) for name in ("text", "image", "video", "audio", "weights", "outputs",
                                                     "sampler", "steps", "guidance", "seed")}
    if args.independent:
        fields["independent"] = True
    return {k: v for k, v in fields.items() if v is not None}


def requests_from_args(args, defaults) -> list[sampling.Request]:
    """The requests the command line asks for, validated (RequestError names the bad field)."""
    flags = _flag_fields(args)
    if not args.batch:
        return [sampling.Request.from_dict(flags, defaults)]
    per_request = sorted(set(flags) & {"text", "image", "video", "audio", "weights"})
    if per_request:
        raise sampling.RequestError(f"--{per_request[0]} cannot be combined with --batch; put inputs in the "
                                    "JSONL lines")
    requests = []
    for record in sampling.read_batch_file(args.batch):
        try:
            requests.append(sampling.Request.from_dict({**flags, **record}, defaults))
        except sampling.RequestError as err:
            raise sampling.RequestError(f"batch request {record['id']!r}: {err}") from None
    return requests


def _refuse_earlier_generation(folder: pathlib.Path) -> None:
    """A folder holding another generation's files would end up mixing two (a text.txt beside a new image.png)."""
    names = ["request.json"] + [n for files in media.OUTPUT_FILES.values() for n in files]
    held = [n for n in names if (folder / n).exists()]
    if held:
        raise UsageError(f"--out: {folder} already holds a generation ({', '.join(held)}); give another folder "
                         "or remove it")


def _setup(args):
    if args.checkpoint and args.random_init:
        raise UsageError("--checkpoint and --random-init exclude each other")
    if args.config:
        config = load_sampling_config(args.config)
    elif args.checkpoint:
        config = sampling.config_for_checkpoint(args.checkpoint)
    else:
        config = load_config(f"configs/sample.py:{'tiny' if args.random_init else 'full'}")
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise UsageError(f"--batch-size: expected a positive integer, got {args.batch_size}")
        config.batch_size = args.batch_size
    requests = requests_from_args(args, config.defaults)
    out = pathlib.Path(args.out)
    for folder in [out / r.id for r in requests] if args.batch else [out]:
        _refuse_earlier_generation(folder)
    loaded = [sampling.load_inputs(r) for r in requests]
    try:
        pathlib.Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out: cannot create {args.out} ({err.strerror})") from None
    return config, requests, loaded


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        config, requests, loaded = _setup(args)
        sampling.enable_compilation_cache(
            config.compilation_cache_dir if args.compilation_cache is None else args.compilation_cache)
        if args.checkpoint:
            pipe = sampling.CoDiPipeline.from_checkpoint(args.checkpoint, config)
        else:
            pipe = sampling.CoDiPipeline.from_config(config, random_init=args.random_init)
        out = pathlib.Path(args.out)

        def save(index, outputs):
            # As each request finishes, so an interrupted batch keeps what it made (request.json comes last).
            pipe.save(out / requests[index].id if args.batch else out, outputs, requests[index])

        pipe.generate_batch(loaded, progress=not args.no_progress, on_result=save)
    except (UsageError, sampling.RequestError, media.MediaError, sampling.ConfigError) as err:
        print(f"codi_jax.sample: error: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def run_batch(config_spec: str, requests_path, out_dir, *, progress: bool = False) -> None:
    """`python -m codi_jax.sample --config SPEC --batch REQUESTS --out OUT`, in this process (for the evaluations,
    which generate through the CLI's own checks and files)."""
    args = ["--config", config_spec, "--batch", str(requests_path), "--out", str(out_dir)]
    if not progress:
        args.append("--no-progress")
    status = main(args)
    if status != 0:
        raise RuntimeError(f"python -m codi_jax.sample {' '.join(args)} exited with status {status}")


if __name__ == "__main__":
    sys.exit(main())
