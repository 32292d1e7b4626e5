"""An evaluation's report (`python -m codi_jax.evaluate`): results.json, a markdown table of every cell's
metrics, and the same figures as TensorBoard scalars."""
from __future__ import annotations

import json
import pathlib
import re
from typing import Mapping


def render_markdown(report: Mapping) -> str:
    names = []
    for cell in report["cells"]:
        names += [m for m in cell["metrics"] if m not in names]
    lines = [f"# {report['task']}", "", (f"checkpoint: `{report['checkpoint']}`, {report['n']} examples of "
                                         f"{report['data']}; generation {report['generation']}"), "",
             "| cell | n | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for cell in report["cells"]:
        values = [f"{cell['metrics'][m]:.4f}" if m in cell["metrics"] else "–" for m in names]
        lines.append(f"| {cell['cell']} | {cell['n']} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def write_reports(report: Mapping, out: pathlib.Path, step: int) -> None:
    from clu import metric_writers

    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "results.md").write_text(render_markdown(report))
    writer = metric_writers.create_default_writer(str(out), just_logging=False)
    # TensorBoard tags: "text -> image (independent)" becomes "text_to_image_independent".
    tag = lambda text: re.sub(r"[^A-Za-z0-9_.+-]+", "_", text.replace(" -> ", "_to_")).strip("_")  # noqa: E731
    writer.write_scalars(step, {f"{report['task']}/{tag(c['cell'])}/{m}": v for c in report["cells"]
                                for m, v in c["metrics"].items()})
    writer.flush()
    writer.close()
