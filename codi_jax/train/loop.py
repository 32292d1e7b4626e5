"""`train_and_evaluate(config, workdir)`: the one training loop every stage runs through.

Order of work: check the config (one-line ConfigError before anything heavy), start
jax.distributed if asked, build the mesh and the stage, lay out the state (shapes and
shardings only), then either resume from the workdir's latest checkpoint (onto the current
mesh) or initialise, overlaying pretrained components from earlier stages. The train step
is compiled once ahead of time with explicit shardings and a donated state.
"""
from __future__ import annotations

import contextlib
import functools
import json
import pathlib

import flax.linen as nn
import jax
import ml_collections
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from codi_jax.eval.probes import ProbeLog
from codi_jax.parallel import mesh as mesh_lib
from codi_jax.parallel.partitioning import DEFAULT_RULES
from codi_jax.train import freeze, handoff, prerequisites, reporting, showcase, stages, validation
from codi_jax.train.checkpoint import Checkpointer
from codi_jax.train.errors import ConfigError, NonFiniteError
from codi_jax.train.optimizer import make_optimizer
from codi_jax.train.preemption import PreemptionWatch
from codi_jax.train.state import make_layout
from codi_jax.train.step import make_train_step


def _start_distributed(dist) -> None:
    if not dist.initialize or jax.distributed.is_initialized():
        return
    mesh_lib.initialize_distributed(
        coordinator_address=dist.coordinator_address or None,
        num_processes=dist.num_processes if dist.num_processes > 0 else None,
        process_id=dist.process_id if dist.process_id >= 0 else None)


def setup(config: ml_collections.ConfigDict, devices=None):
    """Checks the config and builds (mesh, stage) on `devices` (default: all of them; compile_plan passes a
    TPU topology's compile-only devices); raises ConfigError on any bad value."""
    validation.check(config, stage_keys=stages.get(config.stage).config_keys)
    _start_distributed(config.distributed)
    try:
        mesh = mesh_lib.make_mesh(config.mesh.to_dict(), devices)
    except mesh_lib.MeshConfigError as e:
        raise ConfigError(f"config.mesh: {e}") from None
    validation.check_batch(config, mesh)
    try:
        return mesh, stages.build(config, mesh)
    except (AttributeError, KeyError) as e:  # a stage section lacks a key it reads (or misspells it)
        raise ConfigError(f"config for stage {config.stage!r}: {str(e).strip(chr(34) + chr(39))}") from None


def sharding_context(mesh, rules=DEFAULT_RULES):
    """Mesh and logical rules for tracing model code (activation constraints by logical name)."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(mesh))
    stack.enter_context(nn.logical_axis_rules(rules))
    return stack


def abstract_batch(batch) -> dict:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), batch)


class Trainer:
    """One run: the mesh, stage, state layout, optimizer, data and checkpoints of a config + workdir.

    Building it allocates nothing; `restore_or_init()` makes the state and `compile(batch)` the
    step. `run()` is the loop. Tests and benchmarks use the pieces directly.
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, devices=None):
        self.config, self.workdir = config, workdir
        self.mesh, self.stage = setup(config, devices)
        self.rules = tuple(tuple(rule) for rule in config.sharding_rules)
        self.optimizer, self.schedule = make_optimizer(config.optim, config.total_steps)
        self.init_key, self.step_key, self.sample_key = jax.random.split(jax.random.key(config.seed), 3)
        self.layout = make_layout(self.stage.init, self.stage.is_trainable, self.optimizer, self.mesh,
                                  use_ema=config.ema_decay > 0, rng=self.init_key, rules=self.rules)
        self.checkpoints = Checkpointer(workdir, max_to_keep=config.keep_checkpoints,
                                        async_save=config.async_checkpoints)
        self.history: list[tuple[int, dict]] = []  # (step, averaged metrics) of each report of `run`

    @functools.cached_property
    def data(self):
        """This host's batch iterator (built on first use: lowering and benchmarks need no data)."""
        c = self.config
        return self.stage.dataset(global_batch_size=c.batch_size, process_index=jax.process_index(),
                                  process_count=jax.process_count(), seed=c.seed)

    def restore_or_init(self):
        """The workdir's newest intact checkpoint restored onto this mesh (data iterator included;
        damaged ones are moved aside, one of another state-shaping config is a ConfigError), else a
        fresh state with the earlier stages' components (config.init_from) copied in."""
        restored = self.checkpoints.restore_latest(self.layout.abstract, self.config.to_json_best_effort())
        if restored is not None:
            step, state, data_state = restored
            self.data.set_state(data_state)
            logging.info("resumed from %s at step %d", self.checkpoints.directory, step)
            return state
        abstract = freeze.merge(self.layout.abstract.params, self.layout.abstract.frozen)
        overrides = handoff.load_overrides(self.stage.pretrained(), abstract, use_ema=self.config.init_from_ema)
        logging.info("initialising (%d tensors from earlier stages)", len(overrides))
        return self.layout.init(self.init_key, overrides)

    def next_batch(self) -> dict:
        return mesh_lib.shard_host_batch(next(self.data), self.mesh)

    def step_fn(self):
        c = self.config
        return make_train_step(self.stage.loss, self.optimizer, self.schedule, seed_key=self.step_key,
                               grad_accum_steps=c.grad_accum_steps, ema_decay=c.ema_decay)

    def sharding(self):
        """This run's mesh and `config.sharding_rules`, for tracing its model code."""
        return sharding_context(self.mesh, self.rules)

    def lower(self, batch_abstract: dict):
        """The train step lowered for this layout and a batch of ShapeDtypeStructs (nothing runs)."""
        batch_sh = jax.tree.map(lambda x: x.sharding, batch_abstract)
        with self.sharding():
            return jax.jit(
                self.step_fn(), in_shardings=(self.layout.shardings, batch_sh),
                out_shardings=(self.layout.shardings, NamedSharding(self.mesh, P())), donate_argnums=(0,),
            ).lower(self.layout.abstract, batch_abstract)

    def compile(self, batch: dict):
        return self.lower(abstract_batch(batch)).compile()

    def save(self, step: int, state) -> None:
        config = json.loads(self.config.to_json_best_effort())
        with self.sharding():
            measured = self.stage.measurements(state.full_params(use_ema=True))
        if measured:
            config["measured"] = measured
        self.checkpoints.save(step, state, self.data.get_state(), json.dumps(config))

    def run(self):
        """Trains to config.total_steps (or until SIGTERM). Returns the final state."""
        c, mesh = self.config, self.mesh
        self.checkpoints.prepare_to_write(self.layout.abstract)  # a read-only or full disk stops the run now
        state = self.restore_or_init()
        start = int(jax.device_get(state.step))
        logging.info("stage %s on mesh %s from step %d of %d", c.stage, dict(mesh.shape), start, c.total_steps)
        if start >= c.total_steps:
            self.checkpoints.close()
            return state
        programs: dict = {}  # one compiled step per batch layout (a mixture of objectives has several)

        def program(batch):
            key = tuple(sorted((k, v.shape, str(v.dtype)) for k, v in batch.items()))
            if key not in programs:
                compiled = self.compile(batch)
                programs[key] = (compiled, reporting.step_flops(compiled))
            return programs[key]

        batch = self.next_batch()
        with self.sharding():
            sampler = jax.jit(lambda s, b, r: self.stage.samples(s.full_params(use_ema=True), b, r))
        reporter = reporting.Reporter(self.workdir, total_steps=c.total_steps, global_batch=c.batch_size,
                                      tensorboard=c.tensorboard)
        probe, probe_every = self.stage.probe(), int(c.get("probe", {}).get("every_steps", 0))
        probe_log = ProbeLog(self.workdir)
        self.history = reporter.history
        if start == 0:
            reporter.writer.write_hparams(_flat_config(c))
        watch = PreemptionWatch()
        skipped_seen = int(jax.device_get(state.skipped))
        try:
            step = start
            while True:
                compiled, flops = program(batch)
                state, metrics = compiled(state, batch)
                step += 1
                reporter.add(metrics, flops)
                if step == start + 1:
                    jax.block_until_ready(metrics)
                    reporter.start(step)
                done = step >= c.total_steps
                if step % c.log_every_steps == 0 or done:
                    skipped_seen = _check_finite(c, state, skipped_seen, step)
                    reporter.report(step)
                if probe is not None and ((probe_every and step % probe_every == 0) or done):
                    with self.sharding():
                        scores = probe(state.full_params(use_ema=True), jax.random.fold_in(self.sample_key, step))
                    probe_log.add(step, scores)
                    reporter.write_probe(step, scores)
                if step % c.sample_every_steps == 0:
                    with self.sharding():
                        samples = sampler(state, batch, jax.random.fold_in(self.sample_key, step))
                    reporter.write_samples(step, samples)
                self.checkpoints.raise_if_failed()  # a failed background save stops the run here, not at exit
                preempted = watch.should_stop(step)
                if step % c.checkpoint_every_steps == 0 or done or preempted:
                    skipped_seen = _check_finite(c, state, skipped_seen, step)
                    self.save(step, state)
                if preempted:
                    logging.warning("SIGTERM: checkpoint at step %d written; stopping", step)
                    break
                if done:
                    break
                batch = self.next_batch()
        finally:
            watch.close()
            try:
                self.checkpoints.close()  # waits for the last save: CheckpointError if it failed
            finally:
                reporter.close()
        return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
    """Trains `config` in `workdir`, resuming there if a checkpoint exists, after building the earlier stages
    its `prerequisites` list; then shows what it made when `showcase` names captions. Returns the final state."""
    prerequisites.build(config, workdir, train_and_evaluate)
    state = Trainer(config, workdir).run()
    if config.showcase and jax.process_index() == 0:
        show(config, workdir, int(jax.device_get(state.step)))
    return state


def show(config: ml_collections.ConfigDict, workdir: str, step: int) -> None:
    """The showcase (train/showcase.py): samples of checkpoint `step` into WORKDIR/samples (kept when they are of
    that step already), and the joint probe's table on stdout."""
    probe = config.probe
    if showcase.written_for(workdir) == step:
        logging.info("showcase: the samples of step %d exist, kept", step)
        folder = pathlib.Path(workdir) / "samples"
    else:
        logging.info("showcase: generating %d captions' samples", len(config.showcase))
        folder = showcase.write_samples(workdir, step, config.showcase, sampler=probe.sampler, steps=probe.steps,
                                        guidance=probe.guidance)
    print(f"\nsamples: {folder.resolve()}")
    listed = (p for p in folder.rglob("*") if p.is_file() and p.name not in ("request.json", showcase.MARKER))
    for path in sorted(listed):
        print(f"  {path.relative_to(folder)}")
    scores = ProbeLog(workdir).latest()
    if scores:
        print("\n" + showcase.table(scores, probe.num_examples), flush=True)


def _flat_config(config) -> dict:
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v)
            for k, v in freeze.flatten(config.to_dict()).items()}


def _check_finite(config, state, seen: int, step: int) -> int:
    skipped = int(jax.device_get(state.skipped))
    if skipped > seen:
        if config.nonfinite == "stop":
            raise NonFiniteError(f"non-finite loss or gradient before step {step} ({skipped} updates dropped); "
                                 "stopping without saving (config.nonfinite='stop')")
        logging.warning("non-finite loss or gradient: %d update(s) skipped so far (step %d)", skipped, step)
    return skipped
