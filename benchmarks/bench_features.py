"""Feature-extraction throughput of the metric networks on the CPU: items/s through
`codi_jax.eval.metrics.extract.FeatureExtractor` on a mesh of 1 and of 8 simulated devices.

    python benchmarks/bench_features.py [--batch 16] [--batches 3] [--networks inception,panns,vggish]

InceptionV3 (FID / IS) reads 256x256 uint8 images (resized to 299 inside, as pytorch-fid), PANNs CNN14
(FD / IS / KL) and VGGish (FAD) read 10.24 s of 16 kHz audio. Weights are random (same cost as the
published ones). Each setting is compiled and warmed up with one batch, then `--batches` batches are
timed. The 8 devices are XLA's simulated host devices: on a machine with few cores they share those
cores, so the figure shows the sharding's overhead, not a speed-up; on a pod slice each device is a chip.
"""
from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from codi_jax.eval.metrics import inception, panns, torch_weights, vggish  # noqa: E402
from codi_jax.eval.metrics.extract import FeatureExtractor  # noqa: E402
from codi_jax.evaluate import random_params  # noqa: E402
from codi_jax.parallel.mesh import make_mesh  # noqa: E402

AUDIO_SAMPLES = 163_840


def _network(name: str):
    """(model, module, one input item) of a metric network."""
    rng = np.random.default_rng(0)
    if name == "inception":
        return inception.InceptionV3(), inception, rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    wave = (0.1 * rng.standard_normal(AUDIO_SAMPLES)).astype(np.float32)
    return (panns.Cnn14(), panns, wave) if name == "panns" else (vggish.VGGish(), vggish, wave)


def _rate(name: str, devices: int, batch: int, batches: int) -> float:
    model, module, item = _network(name)
    params = random_params(torch_weights.abstract(model, *module.init_inputs()), np.random.default_rng(0))
    mesh = make_mesh({"data": devices, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:devices])
    extractor = FeatureExtractor(lambda p, x: model.apply({"params": p}, x), params, mesh, batch)
    data = np.stack([item] * batch)
    list(extractor.stream([data]))
    start = time.perf_counter()
    list(extractor.stream([data] * batches))
    return batch * batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16, help="global batch (a multiple of 8)")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--networks", default="inception,panns,vggish")
    args = parser.parse_args()
    units = {"inception": "images/s", "panns": "clips/s", "vggish": "clips/s"}
    print("| network | input | devices | batch | throughput |")
    print("|---|---|---|---|---|")
    for name in args.networks.split(","):
        shape = "256x256 image" if name == "inception" else f"{AUDIO_SAMPLES / 16000:.2f} s audio"
        for devices in (1, 8):
            rate = _rate(name, devices, args.batch, args.batches)
            print(f"| {name} | {shape} | {devices} | {args.batch} | {rate:.2f} {units[name]} |", flush=True)


if __name__ == "__main__":
    main()
