"""Peak host memory of `python -m codi_jax.convert.released` against the size N of the files it converts.

    python benchmarks/bench_convert.py                                   # the audio diffuser at full size
    python benchmarks/bench_convert.py --full unet_audio unet_image --dtypes float16

Stand-ins of the four released files: the golden fixtures' tiny networks (codi_jax.convert.standins), except
the networks named by --full, which get their full-size keys and shapes from manifest_full.json and random
values (fp32, or halved for the fp16 copies). Each conversion runs in a child process (all seven stages
written); its peak resident set (getrusage of that child: mapped file pages included) is compared with N and
with the same command's `--dry-run` (imports, the plan: everything but the arrays), so
the table shows both the whole process and what converting N bytes adds on top of that fixed cost.
"""
from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from codi_jax.convert import standins

REPO = pathlib.Path(__file__).resolve().parents[1]
# Network -> (released file, key prefix); the manifest groups keys by file.
FULL = {"unet_audio": ("CoDi_audio_diffuser_m.pth", "model.diffusion_model.unet_audio.", "full_audio"),
        "unet_image": ("CoDi_video_diffuser_8frames.pth", "model.diffusion_model.unet_image.", "full"),
        "unet_text": ("CoDi_text_diffuser.pth", "model.diffusion_model.unet_text.", "full")}
CONFIG = '''from ml_collections import ConfigDict
from codi_jax.train.defaults import load_config_file


def get_config():
    c = load_config_file("{standin}:sample")
    for name, variant in {variants!r}.items():
        c.models[name] = ConfigDict(dict(variant=variant, overrides={{}}))
    return c
'''


def make_standins(folder: pathlib.Path, full: list[str], manifest: dict, half: bool) -> None:
    """The four files in `folder` (the `full` networks at full size)."""
    sds = standins.state_dicts()
    rng = np.random.default_rng(0)
    for name in full:
        file, prefix, _ = FULL[name]
        sds[file] = {k: v for k, v in sds[file].items() if not k.startswith(prefix)}
        dtype = np.float16 if half else np.float32  # drawn in the files' dtype: half the memory for fp16
        for key, entry in manifest["groups"][file].items():
            sds[file][key] = (rng.standard_normal(entry["shape"], np.float32) * np.float32(0.02)).astype(dtype)
    standins.save(folder, sds, half=half)


def child_peak(argv: list[str]) -> tuple[int, float]:
    """(peak RSS in bytes, seconds) of `python -m codi_jax.convert.released ARGV` in a child process."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: orbax's warnings would fill a pipe and block
        proc = subprocess.Popen([sys.executable, "-m", "codi_jax.convert.released", *argv], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not the maximum over all children
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            log.seek(0)
            raise SystemExit(f"conversion failed: {log.read().decode()[-2000:]}")
    return usage.ru_maxrss * 1024, time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", nargs="+", choices=tuple(FULL), default=["unet_audio"],
                        help="networks at full size (default: unet_audio, 1.7 GB in fp32)")
    parser.add_argument("--dtypes", nargs="+", choices=("float32", "float16"), default=["float32", "float16"])
    parser.add_argument("--manifest", default=str(standins.goldens_dir() / "manifest_full.json"))
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    manifest = json.loads(pathlib.Path(args.manifest).read_text())
    scratch = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="bench_convert_"))
    config = scratch / "bench_config.py"
    config.write_text(CONFIG.format(standin=REPO / "configs" / "released_standin.py",
                                    variants={name: FULL[name][2] for name in args.full}))
    rows = collections.OrderedDict()
    try:
        for dtype in args.dtypes:
            files = scratch / f"checkpoints_{dtype}"
            # In a process of its own: a child's peak RSS counts its parent's at the fork, and making the
            # stand-ins holds all of them in memory.
            maker = multiprocessing.get_context("spawn").Process(
                target=make_standins, args=(files, args.full, manifest, dtype == "float16"))
            maker.start()
            maker.join()
            n = sum(p.stat().st_size for p in files.iterdir())
            common = ["--checkpoints", str(files), "--config", str(config)]
            fixed, _ = child_peak(common + ["--dry-run"])
            peak, seconds = child_peak(common + ["--out", str(scratch / f"converted_{dtype}")])
            written = sum(p.stat().st_size for p in (scratch / f"converted_{dtype}").rglob("*") if p.is_file())
            rows[dtype] = (n, fixed, peak, seconds, written)
            shutil.rmtree(scratch / f"converted_{dtype}")
            shutil.rmtree(files)
    finally:
        if args.workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    gb = 1e9
    print(f"stand-ins: {', '.join(args.full)} at full size, the other networks tiny; all seven stages written")
    print(f"{'files':<8} {'N (GB)':>7} {'dry run (GB)':>13} {'peak (GB)':>10} {'peak / N':>9} "
          f"{'(peak - dry run) / N':>21} {'written (GB)':>13} {'time (s)':>9}")
    for dtype, (n, fixed, peak, seconds, written) in rows.items():
        print(f"{dtype:<8} {n / gb:>7.2f} {fixed / gb:>13.2f} {peak / gb:>10.2f} {peak / n:>9.2f} "
              f"{(peak - fixed) / n:>21.2f} {written / gb:>13.2f} {seconds:>9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
