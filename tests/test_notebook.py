"""The Colab TPU evaluation notebook: valid nbformat 4 JSON, generated from its script, every code cell parses and
imports only names that exist, and it executes top to bottom (nbclient, a real IPython kernel) on the tiny
stand-ins of the released files: conversion, any-to-any generation shown inline, the joint-coherence evaluation."""
import ast
import importlib
import importlib.util
import json
import pathlib
import re

import nbclient
import nbformat

import released_world

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK = NOTEBOOKS / "colab_tpu_eval.ipynb"


def _cells():
    return json.loads(NOTEBOOK.read_text())["cells"]


def _code(cell) -> str:
    return "".join(cell["source"])


def test_notebook_is_nbformat_4():
    notebook = json.loads(NOTEBOOK.read_text())
    assert notebook["nbformat"] == 4 and notebook["nbformat_minor"] >= 4
    assert notebook["metadata"]["kernelspec"]["language"] == "python"
    assert notebook["metadata"]["accelerator"] == "TPU"
    ids = [cell["id"] for cell in notebook["cells"]]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", i) for i in ids)
    for cell in notebook["cells"]:
        assert cell["cell_type"] in ("markdown", "code")
        assert isinstance(cell["source"], list) and all(isinstance(line, str) for line in cell["source"])
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


def test_notebook_is_what_its_script_writes():
    spec = importlib.util.spec_from_file_location("make_colab_tpu_eval", NOTEBOOKS / "make_colab_tpu_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert NOTEBOOK.read_text() == module.render(), "run python notebooks/make_colab_tpu_eval.py"


def test_code_cells_parse_and_import_existing_names():
    code = [_code(c) for c in _cells() if c["cell_type"] == "code"]
    assert len(code) >= 6
    for source in code:
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module.startswith("codi_jax"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name) or importlib.util.find_spec(
                        f"{node.module}.{alias.name}"), f"{node.module}.{alias.name}"
    text = "\n".join(code)
    for needed in ("jax.devices()", "CoDiPipeline.from_config", "generate_batch", "ste.evaluate", "Audio("):
        assert needed in text


def test_notebook_runs_the_steps_it_promises():
    sources = ["".join(c["source"]) for c in _cells()]
    assert any('"pip", "install"' in s and "[tpu]" in s for s in sources)
    assert any('"gsutil"' in s for s in sources)
    assert any('"codi_jax.convert.released"' in s for s in sources)


def _with_parameters(notebook, **values):
    """The notebook with the `NAME = ...  # @param` lines of `values` set (what Colab's form fields do)."""
    seen = set()
    for cell in notebook.cells:
        lines = cell.source.split("\n")
        for i, line in enumerate(lines):
            match = re.match(r"^(\w+) = .*# @param", line)
            if match and match.group(1) in values:
                lines[i] = f"{match.group(1)} = {values[match.group(1)]!r}"
                seen.add(match.group(1))
        cell.source = "\n".join(lines)
    assert seen == set(values), f"no form field for {set(values) - seen}"
    return notebook


def test_notebook_executes_on_the_released_standins(tmp_path, goldens_dir):
    world = released_world.make(tmp_path / "codi", goldens_dir, records=False)
    notebook = _with_parameters(
        nbformat.read(NOTEBOOK, as_version=4), SOURCE="released", WORK_DIR=str(world), STEPS=2, N=2,
        SAMPLE_CONFIG=str(NOTEBOOKS.parent / "configs" / "released_standin.py") + ":sample")
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "latent_align" in text and f"workdir:{world / 'converted' / 'latent_align'}" in text
    html = [o.data["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("data:image/gif;base64," in h for h in html) and any("<audio" in h for h in html)
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2
    assert (world / "converted" / "latent_align" / "checkpoints").is_dir()
    results = json.loads((tmp_path / "codi" / "eval" / "joint" / "results.json").read_text())
    assert results["n"] == 2
