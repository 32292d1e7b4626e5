"""The Colab TPU evaluation notebook: valid nbformat 4 JSON, generated from its script, every code cell parses
(after stripping IPython magics and shell lines) and imports only names that exist."""
import ast
import importlib
import importlib.util
import json
import pathlib
import re

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK = NOTEBOOKS / "colab_tpu_eval.ipynb"
_MAGIC = re.compile(r"^\s*[!%]")


def _cells():
    return json.loads(NOTEBOOK.read_text())["cells"]


def _code(cell) -> str:
    return "".join(line for line in cell["source"] if not _MAGIC.match(line))


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
    assert any("pip install" in s and "[tpu]" in s for s in sources)
    assert any("gsutil" in s for s in sources)
