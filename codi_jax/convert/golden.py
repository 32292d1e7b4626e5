"""Check our modules against golden fixtures of the original PyTorch modules.

    python -m codi_jax.convert.golden DIR [DIR ...]

Each DIR holds config.json, params.safetensors (absent for `unet_codi` fixtures, which name
their sources in config.json `params_from`), io.safetensors and meta.json. One line per output:
fixture, output, max abs error, max error relative to the output's scale, the tolerance it
was held to, PASS/FAIL. Exit status 1 if anything fails.
"""
from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

REL_TOL = 1e-4
# Where a fixture records the original code's own float32 noise for an output (meta.json
# `float32_noise_per_output[<output>]["rel"]`: its deviation from a float64 reference under a
# 1-ulp input perturbation), a float32 port is held to NOISE_MULTIPLE times that instead. The
# recorded figure is one draw of rounding error, not a bound: an exact port rounds differently
# and lands on another draw of the same size (up to 1.5x the recorded value on unet_codi_c).
# 4x leaves room for other CPUs / BLAS / XLA builds and is still far below a porting error
# (a missed quirk moves outputs by 1e-2 to 1).
NOISE_MULTIPLE = 4.0


def load_fixture(path: pathlib.Path):
    from safetensors.numpy import load_file

    config = json.loads((path / "config.json").read_text())
    meta = json.loads((path / "meta.json").read_text())
    params_file = path / "params.safetensors"
    params = load_file(str(params_file)) if params_file.exists() else {}
    io = load_file(str(path / "io.safetensors"))
    return config, meta, params, io


def compare(ours, ref) -> tuple[float, float]:
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        raise ValueError(f"shape mismatch: ours {ours.shape} vs reference {ref.shape}")
    err = float(np.max(np.abs(ours - ref))) if ref.size else 0.0
    scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
    return err, err / scale


def tolerance(meta: dict, output: str, rel_tol: float = REL_TOL) -> float:
    """The relative tolerance for `output`: NOISE_MULTIPLE x the recorded float32 noise, never below rel_tol."""
    noise = meta.get("float32_noise_per_output", {}).get(output)
    return rel_tol if noise is None else max(rel_tol, NOISE_MULTIPLE * float(noise["rel"]))


def check(path: pathlib.Path, rel_tol: float = REL_TOL) -> list[tuple[str, str, float, float, bool]]:
    """(fixture, output, max abs error, relative error, passed at `tolerance(meta, output, rel_tol)`) per output."""
    from codi_jax.convert import registry

    config, meta, params, io = load_fixture(path)
    name = meta.get("component") or config.get("component")
    component = registry.get(name)
    if component.run_golden is None:
        raise KeyError(f"component {name!r} has no golden runner")
    results = component.run_golden(path, config, meta, params, io)
    rows = []
    for out_name, (ours, ref) in results.items():
        err, rel = compare(ours, ref)
        rows.append((path.name, out_name, err, rel, rel <= tolerance(meta, out_name, rel_tol)))
    return rows


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m codi_jax.convert.golden DIR [DIR ...]", file=sys.stderr)
        return 2
    ok = True
    for arg in argv:
        path = pathlib.Path(arg)
        try:
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"{path}: not a fixture directory (no config.json)")
            rows = check(path)
            meta = json.loads((path / "meta.json").read_text())
        except Exception as e:  # one broken fixture must not hide the others' results
            print(f"{path.name:<14} {'-':<32} {'-':>10} {'-':>10} {'-':>10} FAIL  {type(e).__name__}: {e}")
            ok = False
            continue
        for fixture, out_name, err, rel, passed in rows:
            tol = tolerance(meta, out_name)
            print(f"{fixture:<14} {out_name:<32} {err:10.3e} {rel:10.3e} {tol:10.3e} {'PASS' if passed else 'FAIL'}")
            ok &= passed
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
