"""Metrics to TensorBoard (clu metric writers) and a one-line progress report with ETA.

Per-step metrics stay on device until a report step, so logging never stalls dispatch;
at a report the interval's metrics are fetched together and averaged. Throughput is
examples/s over the interval and TFLOP/s per device from the compiled step's
`cost_analysis()` (whose FLOPs are per device).
"""
from __future__ import annotations

import time

import jax
import numpy as np
from absl import logging


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def step_flops(compiled) -> float:
    """FLOPs per device of one compiled step (0 where the backend gives no cost analysis)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


class Reporter:
    def __init__(self, workdir: str, *, total_steps: int, global_batch: int, tensorboard: bool):
        # Imported here: clu's writers pull in TensorFlow (seconds), which config checks should not wait for.
        from clu import metric_writers

        just_logging = jax.process_index() > 0 or not tensorboard
        self.writer = metric_writers.create_default_writer(workdir, just_logging=just_logging, asynchronous=True)
        self.total_steps, self.global_batch = total_steps, global_batch
        self.pending: list[dict] = []
        self.history: list[tuple[int, dict]] = []  # (step, scalars) of every report, for callers and tests
        self._mark(None)

    def _mark(self, step):
        self.last_time, self.last_step, self.flops = time.perf_counter(), step, 0.0

    def start(self, step: int) -> None:
        """Times the interval from here; call once the first step has compiled and run."""
        self._mark(step)

    def add(self, metrics: dict, flops: float) -> None:
        """One step's metrics (device arrays) and the FLOPs per device of the program that ran it."""
        self.pending.append(metrics)
        self.flops += flops

    def report(self, step: int) -> dict:
        """Write the averaged metrics of the steps since the last report; return them."""
        fetched = jax.device_get(self.pending)
        self.pending = []
        # Steps of different objectives log different keys: each key is averaged over the steps that have it.
        keys = sorted({k for m in fetched for k in m})
        scalars = {k: float(np.mean([m[k] for m in fetched if k in m])) for k in keys}
        now = time.perf_counter()
        steps = step - self.last_step if self.last_step is not None else 0
        if steps > 0:
            elapsed = now - self.last_time
            scalars["steps_per_sec"] = steps / elapsed
            scalars["examples_per_sec"] = steps * self.global_batch / elapsed
            if self.flops:
                scalars["tflops_per_sec_per_device"] = self.flops / elapsed / 1e12
        self.writer.write_scalars(step, scalars)
        self.history.append((step, scalars))
        self._progress_line(step, scalars)
        self._mark(step)
        return scalars

    def _progress_line(self, step: int, scalars: dict) -> None:
        parts = [f"step {step}/{self.total_steps} ({100.0 * step / self.total_steps:.0f}%)"]
        for key in ("loss", "grad_norm", "learning_rate"):
            if key in scalars:
                parts.append(f"{key} {scalars[key]:.4g}")
        if "steps_per_sec" in scalars:
            rate = scalars["steps_per_sec"]
            parts.append(f"{rate:.2f} steps/s")
            parts.append(f"ETA {format_duration((self.total_steps - step) / rate)}")
        logging.info(" | ".join(parts))

    def write_probe(self, step: int, scores: dict) -> None:
        """A stage probe's scores: TensorBoard under probe/..., and one progress line."""
        self.writer.write_scalars(step, {f"probe/{k}": v for k, v in scores.items()})
        logging.info("probe at step %d: %s", step, " | ".join(f"{k} {v:.3f}" for k, v in sorted(scores.items())))

    def write_samples(self, step: int, samples: dict, sample_rate: int = 16000) -> None:
        samples = jax.device_get(samples)
        if samples.get("images"):
            self.writer.write_images(step, {k: np.asarray(v) for k, v in samples["images"].items()})
        if samples.get("audio"):
            self.writer.write_audios(step, {k: np.asarray(v)[..., None] if np.ndim(v) == 2 else np.asarray(v)
                                            for k, v in samples["audio"].items()}, sample_rate=sample_rate)
        if samples.get("text"):
            self.writer.write_texts(step, {k: str(v) for k, v in samples["text"].items()})

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
