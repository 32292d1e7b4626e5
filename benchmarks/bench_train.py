"""Lower and compile the full-size latent_align train step on a simulated 8-device mesh, without running it.

    python benchmarks/bench_train.py [--objective text_image] [--batch 8] [--mesh fsdp=8] [--lower-only]

Builds configs/latent_align.py:full restricted to one objective (default text_image: the image+video
UNet and the text UNet with their frozen autoencoders and CLIP, everything at released size), lays
out the train state with jax.eval_shape (nothing is allocated), lowers the jitted step with the
real shardings and a batch of ShapeDtypeStructs, compiles it, and prints a table: parameters
(total / trainable), per-device argument and temp bytes from memory_analysis(), FLOPs per device
from cost_analysis(), and the lowering / compile times. On CPU the peak figure of memory_analysis
is not meaningful, so it is not printed.
"""
import argparse
import os
import sys
import tempfile
import time

_DEVICES = 8
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_force_host_platform_device_count={_DEVICES}").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402

from codi_jax.parallel.mesh import batch_spec  # noqa: E402
from codi_jax.train import loop, reporting  # noqa: E402
from codi_jax.train.defaults import load_config_file  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def batch_abstract(config, objective: str, batch: int, mesh) -> dict:
    """The batch the data pipeline would yield for `objective`, as sharded ShapeDtypeStructs."""
    p = config.data.preprocess
    shapes = {}
    for modality in objective.split("_"):
        if modality == "image":
            shapes["image"] = ((batch, p.image.size, p.image.size, 3), jnp.float32)
        elif modality == "video":
            shapes["video"] = ((batch, p.video.num_frames, p.video.size, p.video.size, 3), jnp.float32)
        elif modality == "audio":
            shapes["audio"] = ((batch, p.audio.num_samples), jnp.float32)
        elif modality == "text":
            for name, spec in p.text.tokenizers.items():
                shapes[f"text_ids/{name}"] = ((batch, spec.max_length), jnp.int32)
    return {k: jax.ShapeDtypeStruct(s, d, sharding=NamedSharding(mesh, batch_spec(len(s))))
            for k, (s, d) in shapes.items()}


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", default="text_image")
    parser.add_argument("--batch", type=int, default=_DEVICES, help="global batch of the lowered step")
    parser.add_argument("--mesh", default="fsdp=8", help="mesh sizes, e.g. fsdp=8 or fsdp=4,tensor=2")
    parser.add_argument("--lower-only", action="store_true", help="skip the (slow, memory-hungry) compile")
    args = parser.parse_args(argv)

    config = load_config_file(os.path.join(REPO, "configs", "latent_align.py") + ":full")
    config.model.objectives = (args.objective,)
    config.data.objectives = {args.objective: config.data.objectives[args.objective]}
    config.batch_size = args.batch
    config.tensorboard = False
    sizes = dict(kv.split("=") for kv in args.mesh.split(","))
    for axis in ("data", "fsdp", "tensor"):
        config.mesh[axis] = int(sizes.get(axis, 1))

    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        trainer = loop.Trainer(config, workdir)
        layout_s = time.perf_counter() - start
        abstract = trainer.layout.abstract
        batch = batch_abstract(config, args.objective, args.batch, trainer.mesh)
        start = time.perf_counter()
        lowered = trainer.lower(batch)
        lower_s = time.perf_counter() - start
        rows = [
            ("mesh", dict(trainer.mesh.shape)),
            ("objective / global batch", f"{args.objective} / {args.batch}"),
            ("networks", ", ".join(trainer.stage.networks.modules)),
            ("parameters total", f"{count(abstract.params) + count(abstract.frozen):,}"),
            ("parameters trainable (env + joint)", f"{count(abstract.params):,}"),
            ("optimizer state elements", f"{count(abstract.opt_state):,}"),
            ("layout (eval_shape) s", f"{layout_s:.1f}"),
            ("lowering s", f"{lower_s:.1f}"),
            ("StableHLO text MB", f"{len(lowered.as_text()) / 1e6:.1f}"),
        ]
        if not args.lower_only:
            start = time.perf_counter()
            compiled = lowered.compile()
            rows.append(("compile s", f"{time.perf_counter() - start:.1f}"))
            memory = compiled.memory_analysis()
            rows += [
                ("argument bytes per device", f"{memory.argument_size_in_bytes / 2**30:.2f} GiB"),
                ("output bytes per device", f"{memory.output_size_in_bytes / 2**30:.2f} GiB"),
                ("alias bytes per device", f"{memory.alias_size_in_bytes / 2**30:.2f} GiB"),
                ("temp bytes per device", f"{memory.temp_size_in_bytes / 2**30:.2f} GiB"),
                ("FLOPs per device per step", f"{reporting.step_flops(compiled):.3e}"),
            ]
        params_bytes = 4 * (count(abstract.params) + count(abstract.frozen))
        rows.append(("fp32 params + Adam moments / devices",
                     f"{(params_bytes + 8 * count(abstract.params)) / jax.device_count() / 2**30:.2f} GiB"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
