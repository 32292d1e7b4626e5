"""The four released CoDi files, converted once into one training workdir per stage.

    python -m codi_jax.convert.released --checkpoints checkpoints --out converted

reads CoDi_encoders.pth, CoDi_text_diffuser.pth, CoDi_audio_diffuser_m.pth and
CoDi_video_diffuser_8frames.pth (the fp32 files or the fp16 copies) from --checkpoints and writes

    converted/<stage>/checkpoints/0/{state,data,config}   one per stage in STAGES
    converted/coverage.txt, converted/coverage.json       the coverage report (also printed)

so that `--config.init_from.<stage>=converted/<stage>` starts a training stage from the released weights
and `python -m codi_jax.sample --checkpoint converted/latent_align` generates with them: latent_align
holds every network, and the `released.json` in each stage folder makes the sampler use the released
code's joint wiring, as it does for `released:` sources.

Every key of every file is accounted for before anything is written: mapped (read by the converter of a
network that file supplies), constant (a buffer our networks recompute or never need, e.g. GPT-2's
causal masks), extra (a tensor outside those networks, named with why it exists, e.g. the DDPM schedule
buffers, checked against ours) or unexplained (listed; not converted). Converted shapes are checked
against the networks of --config (a sampling config, default configs/sample.py:full). A missing, truncated
or corrupt file, a file of the wrong kind, a key a network needs and the file lacks, a weight with no
place in our network or a shape that does not fit is one line on stderr and exit status 2, with nothing
written: the workdirs are written into a temporary folder beside --out and renamed at the end.

Tensors stream: the files are memory-mapped and a tensor's pages are let go once it is converted
(convert/state_dict.py), each converter is traced once on shapes and then run one output array at a
time (convert/lazy.py), and the arrays are written in small batches (convert/workdir.py), so memory
stays at a few arrays beyond the fixed cost of the libraries, whatever the size of the files
(benchmarks/bench_convert.py measures it).
Arrays keep the files' dtype unless --dtype says otherwise; with --mesh (e.g. data=1,fsdp=-1,tensor=1)
each lands sharded as the training stages lay it out (the networks' logical axes, parallel/partitioning.py).

    python -m codi_jax.convert.released --manifest ../shared/goldens/manifest_full.json

checks the released layout on shapes alone (the full-size key manifest; nothing read or written).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import os
import pathlib
import re
import shutil
import sys
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import ml_dtypes
import numpy as np
from flax import traverse_util

from codi_jax import sampling
from codi_jax.convert import registry, state_dict
from codi_jax.convert.lazy import LazyConversion
from codi_jax.convert.workdir import LazyArray, write
from codi_jax.diffusion.schedule import BUFFER_NAMES, make_schedule
from codi_jax.models import catalogue, networks
from codi_jax.parallel import mesh as mesh_lib
from codi_jax.parallel.partitioning import tree_shardings

EXIT_BAD_INPUT = 2
# The released files and the networks each supplies.
FILES = {
    "CoDi_encoders.pth": ("clip", "clap", "optimus", "image_vae", "audio_vae", "vocoder"),
    "CoDi_text_diffuser.pth": ("unet_text",),
    "CoDi_audio_diffuser_m.pth": ("unet_audio",),
    "CoDi_video_diffuser_8frames.pth": ("unet_image",),
}
# What each stage's checkpoint holds: the networks of configs/<stage>.py:full, which
# later stages copy by name; latent_align also carries clap and the vocoder, so one workdir holds every
# network the sampler needs.
STAGES = {
    "autoencoders": ("image_vae", "audio_vae", "vocoder", "optimus"),
    "bridging_align": ("clip", "clap"),
    "image_ldm": ("unet_image", "image_vae", "clip"),
    "video_ldm": ("unet_image", "image_vae", "clip"),
    "audio_ldm": ("unet_audio", "audio_vae", "clip"),
    "text_ldm": ("unet_text", "optimus", "clip"),
    "latent_align": catalogue.NAMES,
}
DTYPES = ("keep", "float32", "bfloat16", "float16")
# Why the official buffers our converters leave unread exist (their `ignored_keys`).
_CONSTANTS = (
    (r"^optimus\.decoder\.transformer\.h\.\d+\.attn\.(bias|masked_bias)$", "GPT-2 causal-mask buffer"),
    (r"^optimus\.decoder\.lm_head\.weight$", "tied to optimus.decoder.transformer.wte.weight (saved twice)"),
    (r"position_ids$", "position-id buffer (0, 1, 2, ...)"),
    (r"^audioldm\.fn_STFT\.", "STFT and mel bases, recomputed by codi_jax.data.mel"),
    (r"(relative_position_index|attn_mask)$", "Swin window index or shifted-window mask, recomputed"),
    (r"num_batches_tracked$", "BatchNorm update counter, unused in eval mode"),
    (r"\.(spectrogram_extractor|logmel_extractor)\.", "torchlibrosa STFT / mel constants, recomputed"),
)
# Tensors outside every network that the original's classes are known to hold.
_SCHEDULE = re.compile(rf"^({'|'.join(BUFFER_NAMES)})$")
_EXTRAS = (
    (_SCHEDULE, "DDPM schedule buffer (the original's top-level CoDi buffers), recomputed by "
                "codi_jax.diffusion.schedule"),
    (re.compile(r"^model_ema\."), "LitEma shadow copy: codi.yaml sets use_ema false, so the original never "
                                  "reads it"),
)


class ConversionError(ValueError):
    """Input that cannot be converted, with a one-line reason."""


@dataclasses.dataclass
class Plan:
    """Everything known before a byte is written: key classes, per-network conversions, problems."""
    files: dict          # file -> {"bytes", "dtype", "keys": {key: {"shape", "dtype", "status", ...}}}
    conversions: dict    # network -> (file, prefix, LazyConversion)
    targets: dict        # network -> boxed abstract variables of the configured model
    errors: list


def _why(table, key: str) -> str | None:
    for pattern, reason in table:
        if re.search(pattern, key):
            return reason
    return None


def _converter(name: str) -> Callable[[Mapping], dict]:
    """Official state dict (prefix stripped) -> the network's flax variables."""
    if name == "clap":  # bn0's running statistics are a second collection
        from codi_jax.convert.clap import convert_variables

        return convert_variables
    component = registry.get(catalogue.NETWORKS[name].converter)
    return lambda sd: {"params": component.convert(sd)}


def _prefixes() -> dict[str, str]:
    return {name: registry.get(net.converter).manifest_prefix for name, net in catalogue.NETWORKS.items()}


def _owner(key: str, prefixes: Mapping[str, str]) -> str | None:
    """The network whose prefix is the longest that starts `key` (audioldm.vocoder. beats audioldm.)."""
    matches = [(len(p), name) for name, p in prefixes.items() if key.startswith(p)]
    return max(matches)[1] if matches else None


def _file_of(name: str) -> str:
    return next(f for f, names in FILES.items() if name in names)


def target_variables(config) -> dict:
    """{network: boxed abstract variables} of the configured networks (nothing allocated)."""
    nets = sampling.build_networks(config)
    return {name: jax.eval_shape(lambda rng, n=name: networks.init_variables(
        n, nets.modules[n], rng), jax.random.key(0)) for name in catalogue.NAMES}


def _flat_shapes(tree) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(nn.meta.unbox(tree), sep="/").items()}


def plan(metas: Mapping[str, Mapping[str, tuple]], targets: Mapping[str, Any], sizes: Mapping[str, int],
         read: Callable[[str, str], np.ndarray] | None = None) -> Plan:
    """Classify every key of every file and trace every network's conversion.

    `metas`: {file: {key: (shape, dtype name)}}; files not in FILES (the manifest's unassigned keys) only
    have their keys classified. `read(file, key)`, when the data is at hand, lets the schedule buffers be
    compared with ours.
    """
    prefixes, errors, files, conversions = _prefixes(), [], {}, {}
    for file, meta in metas.items():
        keys = {key: {"shape": list(shape), "dtype": dtype} for key, (shape, dtype) in meta.items()}
        owners = {key: _owner(key, prefixes) for key in keys}
        for name in FILES.get(file, ()):
            prefix = prefixes[name]
            own = sorted(k for k, o in owners.items() if o == name)
            if not own:
                errors.append(_wrong_kind(file, name, prefix, owners))
                continue
            try:
                conversion = _trace(name, {k[len(prefix):]: meta[k] for k in own})
            except (KeyError, ValueError, TypeError) as err:
                message = err.args[0] if err.args else type(err).__name__
                errors.append(f"{file}: {name} (keys under {prefix}) cannot be converted: {message}")
                continue
            conversions[name] = (file, prefix, conversion)
            errors += _shape_errors(file, name, prefix, conversion, targets[name])
            feeds = collections.defaultdict(list)
            for leaf, sources in conversion.sources.items():
                for source in sources:
                    feeds[prefix + source].append(leaf)
            ignored = registry.get(catalogue.NETWORKS[name].converter).ignored_keys
            unused = []
            for key in own:
                if key[len(prefix):] in conversion.read:
                    keys[key].update(status="mapped", network=name, to=sorted(feeds[key]))
                elif ignored(key[len(prefix):]):
                    keys[key].update(status="constant", network=name,
                                     why=_why(_CONSTANTS, key) or "constant buffer, not a learned weight")
                else:
                    unused.append(key)
            if unused:
                errors.append(f"{file}: {len(unused)} {name} key(s) have no place in the configured network, "
                              f"first {unused[0]}: not the released architecture, or --config does not match it")
        for key, entry in keys.items():
            if "status" not in entry:
                entry.update(_extra(key, owners[key], file, read))
        files[file] = {"bytes": sizes.get(file, 0), "dtype": _main_dtype(meta), "keys": keys}
    return Plan(files=files, conversions=conversions, targets=dict(targets), errors=errors)


def _trace(name: str, meta: Mapping[str, tuple]) -> LazyConversion:
    abstract = {k: jax.ShapeDtypeStruct(tuple(shape), jax.dtypes.canonicalize_dtype(np.dtype(_numpy_dtype(dtype))))
                for k, (shape, dtype) in meta.items()}
    return LazyConversion(_converter(name), abstract)


def _numpy_dtype(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _main_dtype(meta: Mapping[str, tuple]) -> str:
    counts = collections.Counter(dtype for _, dtype in meta.values() if dtype.startswith(("float", "bfloat")))
    return counts.most_common(1)[0][0] if counts else "-"


def _wrong_kind(file: str, name: str, prefix: str, owners: Mapping[str, str | None]) -> str:
    held = collections.Counter(_file_of(o) for o in owners.values() if o)
    if held:
        other = held.most_common(1)[0][0]
        what = ", ".join(sorted({_prefix_glob(o) for o in owners.values() if o and _file_of(o) == other}))
        return (f"{file}: holds {what} (the content of {other}), not {prefix}* ({name}); "
                f"check which file is which")
    return f"{file}: holds no CoDi weights (no key under {prefix}); is it one of the released files?"


def _prefix_glob(name: str) -> str:
    return _prefixes()[name] + "*"


def _extra(key: str, owner: str | None, file: str, read) -> dict:
    if owner is not None:
        return {"status": "extra", "why": f"belongs to {owner}, which is converted from {_file_of(owner)}"}
    for pattern, reason in _EXTRAS:
        if pattern.search(key):
            if pattern is _SCHEDULE and read is not None:
                theirs = read(file, key)
                # Compared in the file's precision: the fp16 copies hold ours rounded to float16.
                ours = make_schedule().buffers()[key].astype(theirs.dtype)
                if theirs.shape != ours.shape:
                    reason += f"; shape {list(theirs.shape)} differs from ours {list(ours.shape)} (ours is used)"
                else:
                    diff = float(np.max(np.abs(theirs.astype(np.float64) - ours.astype(np.float64))))
                    reason += (f"; equal to ours in {theirs.dtype}" if diff == 0
                               else f"; differs from ours by up to {diff:.3g} (ours is used)")
            return {"status": "extra", "why": reason}
    return {"status": "unexplained", "why": "not part of any network CoDi defines; not converted"}


def _shape_errors(file, name, prefix, conversion: LazyConversion, target) -> list[str]:
    got = {k: tuple(v.shape) for k, v in conversion.shapes.items()}
    want = _flat_shapes(target)
    errors = []
    for path, shape in want.items():
        if path not in got:
            errors.append(f"{file}: the configured {name} needs {path}, which no key of the file provides")
        elif got[path] != shape:
            source = ", ".join(prefix + s for s in conversion.sources[path])
            errors.append(f"{file}: {source} converts to {name} {path} {list(got[path])}, but the configured "
                          f"network has {list(shape)} (does --config describe these weights?)")
    for path in sorted(set(got) - set(want)):
        errors.append(f"{file}: {name} {path} (from {', '.join(prefix + s for s in conversion.sources[path])}) "
                      "does not exist in the configured network")
    return errors[:1]  # one per network: a config of other sizes mismatches nearly every array


# ----------------------------------------------------------------------------------------------------
# The report


def _keys_text(keys: list[str]) -> str:
    """One key, N keys of one pattern (layer numbers as <n>), or the first few patterns or keys."""
    if len(keys) == 1:
        return keys[0]
    patterns = {re.sub(r"\.\d+\.", ".<n>.", k) for k in keys}
    if len(patterns) == 1:
        return f"{len(keys)} x {patterns.pop()}"
    shown = sorted(patterns) if len(patterns) < len(keys) else sorted(keys)
    return f"{len(keys)} keys ({', '.join(shown[:3])}{', ...' if len(shown) > 3 else ''})"


def render(plan_: Plan, header: str) -> str:
    lines = [header, "",
             f"{'file':<34} {'dtype':<9} {'bytes':>15} {'keys':>6} {'mapped':>7} {'constant':>9} {'extra':>6} "
             f"{'unexplained':>12}"]
    for file, info in plan_.files.items():
        counts = collections.Counter(e.get("status") for e in info["keys"].values())
        lines.append(f"{file:<34} {info['dtype']:<9} {info['bytes']:>15,} {len(info['keys']):>6} "
                     f"{counts['mapped']:>7} {counts['constant']:>9} {counts['extra']:>6} {counts['unexplained']:>12}")
    lines += ["", f"{'network':<12} {'from':<34} {'official keys':>13} {'arrays':>7} {'values':>15}"]
    for name in catalogue.NAMES:
        if name in plan_.conversions:
            file, _, conversion = plan_.conversions[name]
            values = sum(math.prod(s.shape) for s in conversion.shapes.values())
            lines.append(f"{name:<12} {file:<34} {len(conversion.read):>13} {len(conversion.shapes):>7} {values:>15,}")
    for status, title in (("constant", "constants (official buffers our networks recompute or never read):"),
                          ("extra", "extra tensors (outside the networks converted from their file):"),
                          ("unexplained", "unexplained tensors (not converted):")):
        groups = collections.defaultdict(list)
        for file, info in plan_.files.items():
            for key, entry in info["keys"].items():
                if entry.get("status") == status:
                    groups[(file, entry["why"])].append(key)
        lines += ["", title]
        if not groups:
            lines.append("  none")
        for (file, why), keys in sorted(groups.items()):
            lines.append(f"  {file}  {_keys_text(keys)}: {why}")
    return "\n".join(lines) + "\n"


def report_json(plan_: Plan, stages: Mapping[str, tuple]) -> dict:
    return {"files": plan_.files, "stages": {s: list(names) for s, names in stages.items()},
            "networks": {name: {"file": file, "official_keys": sorted(prefix + k for k in c.read),
                                "arrays": {p: list(s.shape) for p, s in c.shapes.items()}}
                         for name, (file, prefix, c) in plan_.conversions.items()}}


# ----------------------------------------------------------------------------------------------------
# Writing


def _parse_mesh(text: str):
    sizes = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        axis, sep, value = item.partition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise ConversionError(f"--mesh: {item!r} is not axis=size (axes {', '.join(mesh_lib.AXES)})")
        sizes[axis.strip()] = int(value)
    try:
        return mesh_lib.make_mesh(sizes)
    except mesh_lib.MeshConfigError as err:
        raise ConversionError(f"--mesh: {err}") from None


def _stage_state(stage: str, plan_: Plan, read, release, dtype: str, mesh) -> dict:
    """The stage's TrainState-shaped tree of LazyArrays: every network under `params` (a converted
    checkpoint has no optimizer state; which parts train is the fine-tuning run's choice)."""
    params = {}
    for name in STAGES[stage]:
        file, prefix, conversion = plan_.conversions[name]
        target = plan_.targets[name]
        shardings = (traverse_util.flatten_dict(tree_shardings(target, mesh), sep="/")
                     if mesh is not None else {})
        leaves = {}
        for path, aval in conversion.shapes.items():
            out_dtype = aval.dtype if dtype == "keep" or not np.issubdtype(aval.dtype, np.floating) \
                else _numpy_dtype(dtype)
            leaves[path] = LazyArray(tuple(aval.shape), np.dtype(out_dtype), _maker(
                conversion, path, lambda key, f=file, p=prefix: read(f, p + key),
                lambda key, f=file, p=prefix: release(f, p + key), out_dtype, shardings.get(path)))
        params[name] = traverse_util.unflatten_dict(leaves, sep="/")
    return {"step": 0, "params": params, "frozen": {}, "opt_state": {}, "ema": {}, "skipped": 0}


def _maker(conversion: LazyConversion, path: str, read, release, dtype, sharding):
    def make():
        # A copy, so that the file pages it came from can be let go now (an unconverted leaf, a bias say,
        # would otherwise be a view of them until it is written).
        value = np.array(conversion.leaf(path, read), dtype=dtype)
        for key in conversion.sources[path]:
            release(key)
        if sharding is None:
            return value
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
    return make


def _clear_stale(out: pathlib.Path) -> None:
    """Remove temporary folders that killed conversions into `out` left behind."""
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def convert(args, config) -> None:
    """Plan and print the report, then (unless a dry run) write the stages and the report beside them."""
    mesh = _parse_mesh(args.mesh) if args.mesh else None
    targets = target_variables(config)
    if args.manifest:
        metas, sizes = _manifest_metas(args.manifest)
        opened = {}
    else:
        folder = pathlib.Path(args.checkpoints)
        missing = [f for f in FILES if not (folder / f).is_file()]
        if missing:
            raise ConversionError(f"--checkpoints {folder}: no {', '.join(missing)} (expected the four released "
                                  f"files: {', '.join(FILES)})")
        opened = {}
        for file in FILES:
            try:
                opened[file] = state_dict.open_state_dict(folder / file)
            except state_dict.ReleasedFileError as err:
                raise ConversionError(f"{folder / file}: {err}") from None
        metas = {f: {k: (tuple(t.shape), state_dict.dtype_name(t)) for k, t in sd.items()} for f, sd in opened.items()}
        sizes = {f: (folder / f).stat().st_size for f in FILES}
    read = (lambda file, key: state_dict.to_numpy(opened[file][key])) if opened else None
    plan_ = plan(metas, targets, sizes, read)
    if plan_.errors:
        more = len(plan_.errors) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise ConversionError(plan_.errors[0] + suffix)
    stages = {s: STAGES[s] for s in (args.stages or STAGES)}
    source = args.manifest or args.checkpoints
    header = (f"CoDi released weights from {source}: networks of {args.config}, dtype "
              f"{'as in the files' if args.dtype == 'keep' else args.dtype}")
    text = render(plan_, header)
    print(text, end="", flush=True)
    if args.manifest or args.dry_run:
        return
    out = pathlib.Path(args.out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        tmp.mkdir(parents=True)
        (tmp / "coverage.txt").write_text(text)
        (tmp / "coverage.json").write_text(json.dumps(report_json(plan_, stages), indent=1) + "\n")
        record = {"files": {f: {"bytes": sizes[f], "dtype": plan_.files[f]["dtype"]} for f in FILES},
                  "converted_by": "codi_jax.convert.released", "config": args.config, "dtype": args.dtype}
        for stage, names in stages.items():
            state = _stage_state(stage, plan_, read, lambda file, key: state_dict.release(opened[file][key]),
                                 args.dtype, mesh)
            models = {n: config.models[n].to_dict() for n in catalogue.NAMES}
            write(tmp / stage, state, {"stage": stage, "released": record,
                                       "model": {n: models[n] for n in names}}, sharded=mesh is not None)
            (tmp / stage / sampling.RELEASED_MARKER).write_text(json.dumps({**record, "stage": stage,
                                                                            "networks": list(names)}, indent=1) + "\n")
            print(f"wrote {out / stage} ({', '.join(names)})", flush=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _manifest_metas(path) -> tuple[dict, dict]:
    try:
        manifest = json.loads(pathlib.Path(path).read_text())
        groups = manifest["groups"]
    except (OSError, ValueError, KeyError) as err:
        raise ConversionError(f"--manifest {path}: cannot read a key manifest ({err})") from None
    metas = {file: {k: (tuple(v["shape"]), v["dtype"]) for k, v in keys.items()} for file, keys in groups.items()}
    sizes = {file: sum(math.prod(s) * np.dtype(d).itemsize for s, d in meta.values()) for file, meta in metas.items()}
    return metas, sizes


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ConversionError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m codi_jax.convert.released",
                description="Convert the released CoDi weights into training workdirs, once.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoints", help="folder holding the four released .pth files (fp32 or fp16)")
    source.add_argument("--manifest", help="a full-size key manifest (goldens/manifest_full.json): check the "
                                           "released layout on shapes alone, write nothing")
    p.add_argument("--out", help="output folder (must not exist): one training workdir per stage")
    p.add_argument("--config", default="configs/sample.py:full",
                   help="sampling config FILE[:variant] whose networks the weights must fit (default: %(default)s)")
    p.add_argument("--dtype", choices=DTYPES, default="keep", help="dtype of the floating arrays (default: keep)")
    p.add_argument("--mesh", help="lay the arrays out on this mesh, e.g. data=1,fsdp=-1,tensor=1 (default: host "
                                  "numpy arrays)")
    p.add_argument("--stages", nargs="+", choices=tuple(STAGES), help="write only these stages (default: all)")
    p.add_argument("--dry-run", action="store_true", help="check and report, write nothing")
    return p


def main(argv=None) -> int:
    from codi_jax import sample

    try:
        args = build_parser().parse_args(argv)
        if args.checkpoints and not args.dry_run:
            if not args.out:
                raise ConversionError("--out is required (or --dry-run)")
            _clear_stale(pathlib.Path(args.out))
            if pathlib.Path(args.out).exists():
                raise ConversionError(f"--out {args.out} already exists; converted weights are written once, into a "
                                      "new folder")
        try:
            config = sample.load_config(args.config)
        except sample.UsageError as err:
            raise ConversionError(str(err)) from None
        convert(args, config)
    except (ConversionError, sampling.ConfigError) as err:
        print(f"codi_jax.convert.released: error: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:  # the output cannot be written (disk full, permissions); nothing is left there
        print(f"codi_jax.convert.released: error: cannot write {args.out}: {err.strerror or err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
