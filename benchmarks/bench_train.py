"""Lower and compile the full-size latent_align train step on a simulated 8-device mesh, without running it.

    python benchmarks/bench_train.py [--objective text_image] [--batch 8] [--mesh fsdp=8] [--lower-only]
                                     [--fast-compile] [--until-buffer-assignment] [--variant full]

Builds configs/latent_align.py:full (or --variant) restricted to one objective (default text_image: the image+video
UNet and the text UNet with their frozen autoencoders and CLIP, everything at released size), lays
out the train state with jax.eval_shape (nothing is allocated), lowers the jitted step with the
real shardings and a batch of ShapeDtypeStructs, compiles it, and prints a table: parameters
(total / trainable), per-device argument and temp bytes from memory_analysis(), FLOPs per device
from cost_analysis(), and the lowering / compile times. On CPU the peak figure of memory_analysis
is not meaningful, so it is not printed.

--fast-compile passes XLA compile options (FAST_COMPILE_OPTIONS) that cut the CPU compiler's own
work. The full step is ~57k thunks after fusion and the CPU backend spends most of its compile
time in passes whose cost grows faster than the graph:
  xla_disable_hlo_passes=cpu-all-reduce-combiner  the combiner rebuilds a reachability map of the
      whole graph for each group of all-reduces it merges (most of the HLO-pass time in a
      profile of this step).
      Left unmerged, each all-reduce keeps its own buffer; no other pass changes, so the
      argument and output bytes are identical and temp bytes move only by the combiner's
      grouping (-0.3 % on the tiny variant of this step; FLOPs equal to 1e-6).
  xla_backend_optimization_level=0, xla_llvm_disable_expensive_passes=true  LLVM code
      generation of the fused kernels at -O0: runs after buffer assignment, so it changes no
      memory figure (and no FLOP count: cost analysis reads the optimised HLO), only how fast
      the never-executed kernels would run.
What remains is the CPU runtime's execution-graph build (XLA's ExecutionGraph::Create), quadratic
in the number of thunks and controlled by no option: of the full step's 35 CPU-minutes of compile
with these options, about 30 go there, after every figure of the table is fixed.

--until-buffer-assignment gets the same figures without that last part: a child process compiles
with XLA's dump on and is stopped once the optimised module and its buffer assignment are
written; the table's bytes are added up from the dumped allocations the way memory_analysis()
does, and FLOPs come from XLA's cost analysis of the dumped module (dumped_stats; on the toy and
tiny steps these equal the compiled executable's memory_analysis() and cost_analysis() exactly).
Use it where the machine cannot give the full compile its 35 minutes of CPU.
"""
import argparse
import json
import os
import pathlib
import re
import subprocess
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

# XLA options of --fast-compile (see the module docstring for what each changes).
FAST_COMPILE_OPTIONS = {
    "xla_disable_hlo_passes": "cpu-all-reduce-combiner",
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
}


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


def memory_rows(argument: int, output: int, alias: int, temp: int, flops: float) -> list:
    def size(n: int) -> str:
        return f"{n / 2**30:.2f} GiB ({n:,} B)"

    return [
        ("argument bytes per device", size(argument)),
        ("output bytes per device", size(output)),
        ("alias bytes per device", size(alias)),
        ("temp bytes per device", size(temp)),
        ("FLOPs per device per step", f"{flops:.6e}"),
    ]


def _dumped_files(dump_dir: str) -> tuple[pathlib.Path, pathlib.Path] | None:
    """The optimised step's HLO text and buffer assignment in XLA's dump, once completely written."""
    dump = pathlib.Path(dump_dir)
    found = [sorted(dump.glob(f"*cpu_after_optimizations{kind}.txt"))
             for kind in ("", "-buffer-assignment", "-memory-usage-report")]
    if not all(found):
        return None
    files = (found[0][0], found[1][0])
    sizes = [f.stat().st_size for f in files]
    time.sleep(10)  # XLA writes each file in one go: sizes unchanged 10 s later mean it is done
    return files if sizes == [f.stat().st_size for f in files] else None


def dumped_stats(module: pathlib.Path, assignment: pathlib.Path) -> tuple[int, int, int, int, float]:
    """(argument, output, alias, temp bytes, FLOPs) per device of the optimised step from XLA's dump.

    The byte counts add up the buffer allocations as memory_analysis() does (parameter
    allocations; of those, the live-out ones are the aliased ones; live-out allocations; the
    preallocated temp buffer), and FLOPs come from XLA's cost analysis of the same optimised
    module, which is what cost_analysis() returns: on the toy stage's step both equal the
    compiled executable's figures exactly.
    """
    argument = output = alias = temp = 0
    for line in assignment.read_text().splitlines():
        match = re.match(r"allocation \d+: size (\d+), (.*)$", line)
        if not match:
            continue
        size, kinds = int(match.group(1)), match.group(2)
        live_out = kinds.rstrip(":").endswith("maybe-live-out")
        if kinds.startswith("parameter "):
            argument += size
            alias += size if live_out else 0
        output += size if live_out else 0
        temp += size if "preallocated-temp" in kinds else 0
    # No public API runs XLA's cost analysis on an HLO module without compiling it.
    from jax._src.lib import _jax
    from jaxlib import _hlo

    hlo = _hlo.hlo_module_from_text(module.read_text())
    cost = _jax.hlo_module_cost_analysis(jax.devices()[0].client, hlo)
    return argument, output, alias, temp, float(cost.get("flops", 0.0))


def until_buffer_assignment(argv: list[str], options: dict) -> list:
    """Runs this script in a child that compiles with XLA dumps on, stops it once the buffer
    assignment is written, and returns the child's rows plus the figures read from the dump."""
    with tempfile.TemporaryDirectory() as dump:
        child = subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv, "--dump-to", dump],
                                 stdout=subprocess.PIPE, text=True)
        try:
            line = child.stdout.readline()
            if not line:
                raise SystemExit(f"the compiling child exited with {child.wait()} before lowering finished")
            rows = [tuple(row) for row in json.loads(line)]
            start = time.perf_counter()
            files = None
            while files is None:
                time.sleep(5)
                exited = child.poll() is not None
                files = _dumped_files(dump)
                if files is None and exited:
                    raise SystemExit(f"the compiling child exited with {child.returncode} and left no dump")
            elapsed = time.perf_counter() - start
        finally:
            child.kill()  # the rest of the compile (code generation, runtime graph) adds no figure
            child.wait()
        stats = dumped_stats(*files)
    return rows + [("compile options", _options_text(options)),
                   ("compile s, up to buffer assignment (wall)", f"{elapsed:.1f}"),
                   *memory_rows(*stats)]


def _options_text(options: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "default"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", default="text_image")
    parser.add_argument("--variant", default="full", help="variant of configs/latent_align.py (tiny: a quick check)")
    parser.add_argument("--batch", type=int, default=_DEVICES, help="global batch of the lowered step")
    parser.add_argument("--mesh", default="fsdp=8", help="mesh sizes, e.g. fsdp=8 or fsdp=4,tensor=2")
    parser.add_argument("--lower-only", action="store_true", help="skip the (slow, memory-hungry) compile")
    parser.add_argument("--fast-compile", action="store_true",
                        help="compile with FAST_COMPILE_OPTIONS (less CPU compile work, same memory figures)")
    parser.add_argument("--until-buffer-assignment", action="store_true",
                        help="stop the compile once buffers are assigned; read the figures from XLA's dump")
    parser.add_argument("--dump-to", help=argparse.SUPPRESS)  # the child of --until-buffer-assignment
    args = parser.parse_args(argv)
    options = FAST_COMPILE_OPTIONS if args.fast_compile else {}
    if args.until_buffer_assignment and not args.dump_to:
        rows = until_buffer_assignment(argv, options)
        _print_table(rows)
        return 0

    config = load_config_file(os.path.join(REPO, "configs", "latent_align.py") + f":{args.variant}")
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
        params_bytes = 4 * (count(abstract.params) + count(abstract.frozen))
        rows = [
            ("mesh", str(dict(trainer.mesh.shape))),
            ("objective / global batch", f"{args.objective} / {args.batch}"),
            ("networks", ", ".join(trainer.stage.networks.modules)),
            ("parameters total", f"{count(abstract.params) + count(abstract.frozen):,}"),
            ("parameters trainable (env + joint)", f"{count(abstract.params):,}"),
            ("optimizer state elements", f"{count(abstract.opt_state):,}"),
            ("fp32 params + Adam moments / devices",
             f"{(params_bytes + 8 * count(abstract.params)) / jax.device_count() / 2**30:.2f} GiB"),
            ("layout (eval_shape) s", f"{layout_s:.1f}"),
            ("lowering s", f"{lower_s:.1f}"),
            ("StableHLO text MB", f"{len(lowered.as_text()) / 1e6:.1f}"),
        ]
        if args.lower_only:
            _print_table(rows)
            return 0
        print(f"lowered in {lower_s:.0f} s; compiling (options: {_options_text(options)})",
              file=sys.stderr, flush=True)
        if args.dump_to:
            print(json.dumps(rows), flush=True)
            options = {**options, "xla_dump_to": args.dump_to, "xla_dump_hlo_as_text": True}
        start, start_cpu = time.perf_counter(), time.process_time()
        compiled = lowered.compile(compiler_options=options or None)
        if args.dump_to:
            return 0
        memory = compiled.memory_analysis()
        rows += [("compile options", _options_text(options)),
                 ("compile s (wall)", f"{time.perf_counter() - start:.1f}"),
                 ("compile s (CPU, all threads)", f"{time.process_time() - start_cpu:.1f}"),
                 *memory_rows(memory.argument_size_in_bytes, memory.output_size_in_bytes,
                              memory.alias_size_in_bytes, memory.temp_size_in_bytes,
                              reporting.step_flops(compiled))]
    _print_table(rows)
    return 0


def _print_table(rows) -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    sys.exit(main())
