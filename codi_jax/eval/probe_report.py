"""The stage probes of a run in its report: each stage's last scores as a table, every probe as curves (PNG).

Reads WORKDIR/<stage>/probes.json (codi_jax.eval.probes.ProbeLog) of each stage that kept one.
"""
from __future__ import annotations

import json
import pathlib
from typing import Mapping

# The scores a stage's curves and table show: one per cell, pair or generation (their per-attribute
# breakdowns stay in probes.json).
_HEADLINE = ("/accuracy", "/top1", "/onset_agreement", "/agreement")


def load(workdirs: Mapping[str, pathlib.Path]) -> dict[str, list[dict]]:
    """{stage: [{"step", "scores"}, ...]} for the stages whose workdir holds a probes.json."""
    out = {}
    for stage, workdir in workdirs.items():
        path = pathlib.Path(workdir) / "probes.json"
        if path.is_file():
            out[stage] = json.loads(path.read_text())
    return out


def headline(scores: Mapping[str, float]) -> dict[str, float]:
    return {k: v for k, v in scores.items() if k.endswith(_HEADLINE)}


def _attributes(scores: Mapping[str, float], cell: str) -> str:
    parts = [f"{k.rsplit('/', 1)[1]} {100 * v:.0f}" for k, v in scores.items()
             if k.startswith(cell + "/") and not k.endswith(_HEADLINE)]
    return f" ({', '.join(parts)})" if parts else ""


def table(probes: Mapping[str, list[dict]]) -> list[str]:
    """Markdown rows: stage, probe step, each headline score in % with its attributes."""
    lines = ["| stage | step | probe scores (%) |", "|---|---|---|"]
    for stage, entries in probes.items():
        if not entries:
            continue
        last = entries[-1]
        cells = [f"{k} {100 * v:.1f}{_attributes(last['scores'], k.rsplit('/', 1)[0])}"
                 for k, v in sorted(headline(last["scores"]).items())]
        # What each environment encoder carries (the joint probe): attributes only, no headline of its own.
        cells += [f"{p}{_attributes(last['scores'], p)}"
                  for p in sorted({k.rsplit("/", 1)[0] for k in last["scores"] if k.startswith("env/")})]
        lines.append(f"| {stage} | {last['step']} | {'; '.join(cells)} |")
    return lines


def plot(probes: Mapping[str, list[dict]], path) -> pathlib.Path:
    """One panel per stage: its headline probe scores against training step."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    stages = [s for s, entries in probes.items() if entries]
    columns = min(3, max(len(stages), 1))
    rows = max(1, -(-len(stages) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for ax in axes.flat[len(stages):]:
        ax.axis("off")
    for ax, stage in zip(axes.flat, stages):
        entries = probes[stage]
        keys = sorted({k for e in entries for k in headline(e["scores"])})
        for key in keys:
            points = [(e["step"], e["scores"][key]) for e in entries if key in e["scores"]]
            ax.plot([p[0] for p in points], [100 * p[1] for p in points], marker="o", markersize=3, label=key)
        ax.set_title(stage, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylim(0, 102)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="lower right")
        ax.grid(alpha=0.3)
    figure.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
