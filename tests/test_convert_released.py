"""The released CoDi weights end to end, on tiny stand-ins of the four files (codi_jax.convert.standins: the golden
fixtures' state dicts under the official keys, saved as the originals are, fp32 and fp16).

The README's "From the released weights" commands run as written, in a folder laid out as they expect
(checkpoints/, tokenizers/, data/), with only the full-size configs swapped for configs/released_standin.py:
conversion writes every stage and its coverage report; sampling from the converted workdir is bit-identical to
sampling through `released:` sources; a fine-tuning step of latent alignment changes the environment encoders
and joint cross-attention only. Also: fp16 files keep their dtype, a mesh lays the arrays out as training does,
every bad-file case is one line and exit status 2 with nothing left behind, and the real files' full-size layout
converts with nothing unused or missing (on shapes alone, from manifest_full.json).
"""
import contextlib
import filecmp
import io
import json
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from codi_jax import sample, sampling
from codi_jax.convert import released
from codi_jax.checkpoints import restore_params
from codi_jax.train.stages.components import param_group
import released_world

REPO = pathlib.Path(__file__).resolve().parents[1]
STANDIN = REPO / "configs" / "released_standin.py"
OUTPUTS = ("image.png", "audio.wav", "text.txt")


def readme_commands() -> dict[str, list[str]]:
    """{module: argv} of the commands in README's "From the released weights" block."""
    text = (REPO / "README.md").read_text()
    section = text.split("## From the released weights", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    commands = {}
    for line in block.replace("\\\n", " ").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            argv = shlex.split(line)
            commands[argv[2]] = argv
    return commands


def at_tiny_size(argv: list[str]) -> list[str]:
    """A README command with the stand-in networks in place of the full-size configs."""
    if argv[2] == "codi_jax.train":
        return [f"{STANDIN}:latent_align" if a == "configs/latent_align.py:full" else a for a in argv]
    return argv + ["--config", f"{STANDIN}:sample"]


def run_in(folder, main, argv) -> tuple[int, str, str]:
    """`main(argv)` with `folder` as the working directory: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(folder), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


MAINS = {"codi_jax.convert.released": released.main, "codi_jax.sample": sample.main}


def from_files(argv: list[str]) -> list[str]:
    """A sample command reading every network from the stand-in files (`released:` sources) instead."""
    return [a.replace(":sample", ":sample_released") for a in argv
            if a not in ("--checkpoint", "converted/latent_align")]


def run_readme(folder, module: str, edit=lambda argv: argv) -> tuple[int, str, str]:
    argv = edit(at_tiny_size(readme_commands()[module]))
    assert argv[:3] == ["python", "-m", module]
    return run_in(folder, MAINS[module], argv[3:])


@pytest.fixture(scope="module")
def world(tmp_path_factory, goldens_dir):
    """The README's folder layout on the stand-ins, with records for the three pairs (tests/released_world.py)."""
    return released_world.make(tmp_path_factory.mktemp("released"), goldens_dir)


@pytest.fixture(scope="module")
def converted(world):
    status, out, err = run_readme(world, "codi_jax.convert.released")
    assert status == 0, err
    return world / "converted", out


def _keys(path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def test_readme_convert_writes_every_stage_and_its_coverage_report(converted, world):
    folder, printed = converted
    assert sorted(p.name for p in folder.iterdir()) == sorted([*released.STAGES, "coverage.json", "coverage.txt"])
    assert (folder / "coverage.txt").read_text() == printed.split("\nwrote ", 1)[0] + "\n"
    report = json.loads((folder / "coverage.json").read_text())
    for file in released.FILES:
        keys = _keys(world / "checkpoints" / file)
        entries = report["files"][file]["keys"]
        assert set(entries) == set(keys)  # every key of every file is accounted for
        assert {e["status"] for e in entries.values()} <= {"mapped", "constant", "extra"}
        for key, entry in entries.items():
            assert entry["shape"] == list(keys[key].shape)
    video = report["files"]["CoDi_video_diffuser_8frames.pth"]["keys"]
    assert video["betas"]["status"] == "extra" and video["betas"]["why"].endswith("equal to ours in float32")
    encoders = report["files"]["CoDi_encoders.pth"]["keys"]
    assert encoders["optimus.decoder.transformer.h.0.attn.bias"]["why"] == "GPT-2 causal-mask buffer"
    assert encoders["clap.model.audio_transform.sequential.0.weight"]["status"] == "mapped"
    assert "unexplained tensors (not converted):\n  none" in printed
    for stage, names in released.STAGES.items():
        step, flat = restore_params(str(folder / stage), True)
        assert step == 0 and {p.split("/", 1)[0] for p in flat} == set(names)
        assert json.loads((folder / stage / sampling.RELEASED_MARKER).read_text())["networks"] == list(names)


def test_stages_hold_the_networks_of_their_training_configs():
    from codi_jax.train.defaults import load_config_file
    from codi_jax.models.catalogue import NAMES as COMPONENTS

    for stage, names in released.STAGES.items():
        model = load_config_file(f"{REPO / 'configs' / stage}.py:full").model
        networks = {k for k in model if k in COMPONENTS}
        extra = {"clap", "vocoder"} if stage == "latent_align" else set()
        assert set(names) == networks | extra, stage


def test_readme_sample_is_bit_identical_to_released_sources(converted, world):
    status, _, err = run_readme(world, "codi_jax.sample")
    assert status == 0, err
    ours = world / "out" / "released"
    record = json.loads((ours / "request.json").read_text())
    assert record["run"]["components"]["unet_text"].startswith("workdir:")
    assert (record["run"]["wiring"], record["run"]["aliased_skip"]) == ("own", True)
    status, _, err = run_readme(world, "codi_jax.sample", lambda argv: [
        a.replace("out/released", "out/from_files") for a in from_files(argv)])
    assert status == 0, err
    assert json.loads((world / "out" / "from_files" / "request.json").read_text())["run"]["components"][
        "unet_text"].startswith("released:")
    assert filecmp.cmpfiles(ours, world / "out" / "from_files", OUTPUTS, shallow=False)[0] == list(OUTPUTS)


def test_fp16_files_keep_their_dtype_and_sample_like_their_released_sources(converted, world):
    fp16 = world / "fp16"
    fp16.mkdir()
    (fp16 / "checkpoints").symlink_to(world / "checkpoints_fp16")
    status, out, err = run_readme(fp16, "codi_jax.convert.released")
    assert status == 0, err
    assert "equal to ours in float16" in out
    _, flat = restore_params(str(fp16 / "converted" / "latent_align"), True)
    assert {str(a.dtype) for a in flat.values()} == {"float16"}
    _, flat32 = restore_params(str(converted[0] / "latent_align"), True)
    assert all(np.array_equal(flat[p], flat32[p].astype(np.float16)) for p in flat)
    runs = {}
    for name, edit in (("converted", lambda argv: argv), ("files", from_files)):
        status, _, err = run_readme(fp16, "codi_jax.sample", lambda argv, e=edit, n=name: [
            a.replace("out/released", f"out/{n}") for a in e(argv)])
        assert status == 0, err
        runs[name] = fp16 / "out" / name
    assert filecmp.cmpfiles(runs["converted"], runs["files"], OUTPUTS, shallow=False)[0] == list(OUTPUTS)


def test_a_mesh_lays_the_arrays_out_as_training_does(converted, world, tmp_path):
    import orbax.checkpoint as ocp
    from etils import epath

    from codi_jax.parallel.partitioning import tree_shardings

    argv = ["--checkpoints", world / "checkpoints_fp16", "--out", tmp_path / "sharded", "--config",
            f"{STANDIN}:sample", "--stages", "latent_align", "--dtype", "float32", "--mesh", "data=1,fsdp=-1,tensor=1"]
    status, _, err = run_in(tmp_path, released.main, argv)
    assert status == 0, err
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == ["coverage.json", "coverage.txt", "latent_align"]
    directory = epath.Path(tmp_path / "sharded" / "latent_align" / "checkpoints")
    with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                               item_handlers={"state": ocp.PyTreeCheckpointHandler()}) as manager:
        meta = manager.item_metadata(0).state["params"]
    config = sample.load_config(f"{STANDIN}:sample")
    mesh = released._parse_mesh("data=1,fsdp=-1,tensor=1")
    targets = released.target_variables(config)
    sharded = 0
    for name in sampling.COMPONENTS:
        want = jax.tree_util.tree_flatten_with_path(tree_shardings(targets[name], mesh))[0]
        got = dict(jax.tree_util.tree_flatten_with_path(meta[name])[0])
        for path, sharding in want:
            spec = tuple(sharding.spec)
            assert tuple(got[path].sharding.partition_spec) == spec, (name, path)
            sharded += any(spec)
    assert sharded > 100
    _, flat = restore_params(str(tmp_path / "sharded" / "latent_align"), True)
    _, fp32 = restore_params(str(converted[0] / "latent_align"), True)
    halved = {p: a.astype(np.float16).astype(np.float32) for p, a in fp32.items()}
    assert all(flat[p].dtype == np.float32 and np.array_equal(flat[p], halved[p]) for p in flat)


def test_readme_finetune_trains_only_the_environment_encoders_and_joint_attention(converted, world):
    argv = at_tiny_size(readme_commands()["codi_jax.train"])
    proc = subprocess.run([sys.executable, *argv[1:]], cwd=world, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    workdir = world / "workdirs" / "latent_align_finetuned"
    step, tuned = restore_params(str(workdir), False)
    _, start = restore_params(str(converted[0] / "latent_align"), False)
    assert step == 1
    changed = {p for p in tuned if not np.array_equal(tuned[p], start[p])}
    assert changed and {param_group(p).split(":")[1] for p in changed} <= {"env", "joint"}
    # Every pair has two UNets, so two UNets' env and joint groups moved.
    assert len({param_group(p).split(":")[0] for p in changed}) >= 2


# ----------------------------------------------------------------------------------------------------
# Bad input


def _truncate(folder):
    path = folder / "CoDi_text_diffuser.pth"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _flip(folder):
    path = folder / "CoDi_audio_diffuser_m.pth"
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 16] = bytes(16)
    path.write_bytes(bytes(data))


def _swap(folder):
    shutil.copy(folder / "CoDi_audio_diffuser_m.pth", folder / "CoDi_text_diffuser.pth")


def _not_a_checkpoint(folder):
    (folder / "CoDi_encoders.pth").write_bytes(b"<html>404 Not Found</html>")


def _drop_key(folder):
    import torch

    sd = torch.load(folder / "CoDi_encoders.pth", weights_only=True)
    del sd["clip.model.text_projection.weight"]
    torch.save(sd, folder / "CoDi_encoders.pth")


def _foreign_weight(file: str, key: str):
    def add(folder):
        import torch

        sd = torch.load(folder / file, weights_only=True)
        sd[key] = torch.zeros(4, 4)
        torch.save(sd, folder / file)
    return add


@pytest.mark.parametrize("damage,argv,message", [
    (lambda f: (f / "CoDi_video_diffuser_8frames.pth").unlink(), [], "no CoDi_video_diffuser_8frames.pth"),
    (_truncate, [], "CoDi_text_diffuser.pth: not a readable PyTorch zip checkpoint: truncated"),
    (_flip, [], "CoDi_audio_diffuser_m.pth: record .* fails its CRC check"),
    (_not_a_checkpoint, [], "CoDi_encoders.pth: not a readable PyTorch zip checkpoint"),
    (_swap, [], r"CoDi_text_diffuser.pth: holds model.diffusion_model.unet_audio.\* \(the content of "
                r"CoDi_audio_diffuser_m.pth\), not model.diffusion_model.unet_text.\*"),
    (_drop_key, [],
     r"clip \(keys under clip.model.\) cannot be converted: official key 'text_projection.weight' is missing"),
    (_foreign_weight("CoDi_encoders.pth", "autokl.lora_A.weight"), [],
     "CoDi_encoders.pth: 1 image_vae key.* have no place in the configured network, first autokl.lora_A.weight"),
    (_foreign_weight("CoDi_text_diffuser.pth", "model.diffusion_model.unet_text.time_embed.0.lora_A"), [],
     "CoDi_text_diffuser.pth: unet_text .* cannot be converted: unknown UNetModel0D_MultiDim key "
     "'time_embed.0.lora_A'"),
    (lambda f: None, ["--config", "configs/sample.py:tiny"],
     r"but the configured network has .*\(does --config describe these weights\?\) \(and \d+ more problems\)"),
    (lambda f: None, ["--mesh", "fsdp=3"], "--mesh: "),
])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(world, tmp_path, damage, argv, message):
    folder = tmp_path / "checkpoints"
    shutil.copytree(world / "checkpoints", folder)
    damage(folder)
    status, out, err = run_in(REPO, released.main, ["--checkpoints", folder, "--out", tmp_path / "converted",
                                                     "--config", f"{STANDIN}:sample", *argv])
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]


def test_an_existing_output_or_a_failed_write_leaves_nothing_new(world, tmp_path, monkeypatch):
    (tmp_path / "taken").mkdir()
    argv = ["--checkpoints", world / "checkpoints", "--config", f"{STANDIN}:sample"]
    status, _, err = run_in(tmp_path, released.main, argv + ["--out", "taken"])
    assert status == 2 and "already exists" in err and not any((tmp_path / "taken").iterdir())
    calls = []

    def disk_full(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return write(*args, **kwargs)

    write = released.write
    monkeypatch.setattr(released, "write", disk_full)
    status, _, err = run_in(tmp_path, released.main, argv + ["--out", "new"])
    assert status == 2 and err.strip() == "codi_jax.convert.released: error: cannot write new: No space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_the_full_size_layout_converts_with_nothing_unused_or_missing(goldens_dir):
    """The real files' keys and shapes (manifest_full.json) against the full-size networks: no data."""
    metas, sizes = released._manifest_metas(goldens_dir / "manifest_full.json")
    plan = released.plan(metas, released.target_variables(sample.load_config("configs/sample.py:full")), sizes)
    assert plan.errors == []
    for file in released.FILES:
        statuses = {e["status"] for e in plan.files[file]["keys"].values()}
        assert statuses <= {"mapped", "constant"}, file
    assert {e["status"] for e in plan.files["unassigned_top_level"]["keys"].values()} == {"extra"}
    # Parameter counts of codi-reference.md section 1 (CLAP's count includes bn0's two 64-wide statistics).
    counts = {name: sum(int(np.prod(s.shape)) for s in c.shapes.values())
              for name, (_, _, c) in plan.conversions.items()}
    assert counts["unet_image"] == 1_772_784_247 and counts["unet_text"] == 2_048_385_408
    assert counts["unet_audio"] == 431_309_032 and counts["clap"] == 280_951_959 + 128
    assert counts["clip"] == 737_647_217 and counts["image_vae"] == 83_653_863
