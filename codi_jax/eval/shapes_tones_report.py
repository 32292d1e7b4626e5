"""The Shapes & Tones results as markdown: the report's run facts, stage probes and one table per kind of cell
(single, multi, joint, zero-shot, wiring ablation, unseen combinations), from `shapes_tones_eval`'s results."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from codi_jax.data import shapes_tones as st
from codi_jax.eval import scoring
from codi_jax.eval.shapes_tones_eval import MAIN, OWN, WIRING_CELL
from codi_jax.models.catalogue import MODALITIES


def _pct(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _find(results: Sequence[Mapping], **match) -> dict | None:
    for r in results:
        if all(r[k] == v for k, v in match.items()):
            return r
    return None


def _attribute_cells(summary: Mapping) -> list[str]:
    return [_pct(summary["per_attribute"].get(a)) for a in st.ATTRIBUTES]


def _single_matrix(results) -> list[str]:
    lines = ["| input \\ output | " + " | ".join(MODALITIES) + " |", "|---" * (len(MODALITIES) + 1) + "|"]
    for a in MODALITIES:
        row = []
        for b in MODALITIES:
            r = _find(results, group="single", inputs=[a], outputs=[b])
            row.append("" if r is None else _pct(r["conditional"][b]["accuracy"]))
        lines.append(f"| **{a}** | " + " | ".join(row) + " |")
    return lines


def _conditional_table(rows: Sequence[Mapping]) -> list[str]:
    lines = ["| cell | output | n | accuracy | " + " | ".join(st.ATTRIBUTES) + " |",
             "|---|---|---|---|" + "---|" * len(st.ATTRIBUTES)]
    for r in rows:
        for m in r["outputs"]:
            c = r["conditional"][m]
            lines.append(f"| {r['title']} | {m} | {r['n']} | {_pct(c['accuracy'])} | "
                         + " | ".join(_attribute_cells(c)) + " |")
    return lines


def _joint_table(rows: Sequence[Mapping]) -> list[str]:
    lines = ["| cell | trained together | generation | agreement | onset agreement | "
             "conditional accuracy per output |", "|---|---|---|---|---|---|"]
    for r in rows:
        j = r["joint"]
        generation = "independent" if r["independent"] else ("joint, wiring own" if r["pipeline"] == OWN
                                                           else "joint, wiring others")
        per_output = ", ".join(f"{m} {_pct(r['conditional'][m]['accuracy'])}" for m in r["outputs"])
        together = {True: "yes", False: "no (zero-shot)", None: "–"}[r["trained_together"]]
        title = " + ".join(r["inputs"]) + " -> " + " + ".join(r["outputs"])
        lines.append(f"| {title} | {together} | {generation} | {_pct(j['agreement'])} | "
                     f"{_pct(j.get('onset_sync'))} | {per_output} |")
    return lines


def _unseen_table(results: Sequence[Mapping]) -> list[str]:
    lines = ["| cell | output | seen: n | seen: accuracy | unseen: n | unseen: accuracy |",
             "|---|---|---|---|---|---|"]
    for r in results:
        for m in r["outputs"]:
            c = r["conditional"][m]
            seen, unseen = c.get("seen"), c.get("unseen")
            if seen is None and unseen is None:
                continue
            lines.append(f"| {r['title']} | {m} | {seen['scored'] if seen else 0} | "
                         f"{_pct(seen['accuracy']) if seen else '–'} | {unseen['scored'] if unseen else 0} | "
                         f"{_pct(unseen['accuracy']) if unseen else '–'} |")
    return lines


def _pooled(results: Sequence[Mapping]) -> dict[str, tuple[float, int]]:
    """{"seen" | "unseen": (accuracy, attribute slots)} pooled over every conditional score, leaving out the
    independent baselines and the wiring ablation (they repeat the joint cells' examples)."""
    totals = {"seen": [0.0, 0], "unseen": [0.0, 0]}
    for r in results:
        if r["independent"] or r["pipeline"] != MAIN:
            continue
        for c in r["conditional"].values():
            for part, total in totals.items():
                if part in c:
                    total[0] += c[part]["accuracy"] * c[part]["scored"]
                    total[1] += c[part]["scored"]
    return {part: (hits / n if n else float("nan"), n) for part, (hits, n) in totals.items()}


def render_markdown(results: Sequence[Mapping], info: Mapping, grid_name: str | None = None) -> str:
    """The results report: run facts from `info` (command, variant, wall times, seed, versions, ...), then
    every table."""
    chance = ", ".join(f"{a} {_pct(p)} %" for a, p in scoring.CHANCE.items())
    out = [f"# {info.get('title', 'Shapes & Tones results')}", ""]
    if info.get("summary"):
        out += [info["summary"], ""]
    out += ["## Run", "", "| | |", "|---|---|"]
    for key, value in info.get("run", {}).items():
        out.append(f"| {key} | {value} |")
    if info.get("stages"):
        out += ["", "Wall time per stage:", "", "| stage | config | steps | wall time |", "|---|---|---|---|"]
        for stage in info["stages"]:
            out.append(f"| {stage['name']} | `{stage['config']}` | {stage.get('steps', '–')} | "
                       f"{stage['wall_time']} |")
    if info.get("probes"):
        out += ["", "## Stage probes", "",
                "What each stage exists for, measured while it trained on fixed validation examples "
                "(codi_jax.eval.probes; every stage's probes.json): autoencoders read back through encode -> "
                "decode, prompt-encoder retrieval top-1 (correct when the retrieved example shares the attributes "
                "both modalities carry), each diffuser's generations from each condition, and latent alignment's "
                "joint against independent text -> video + audio. Last probe of each stage:", ""]
        out += list(info["probes"])
        if info.get("probe_plot"):
            out += ["", f"![probe curves]({info['probe_plot']})"]
    n = results[0]["n"] if results else 0
    out += ["", "## How it is scored", "",
            f"Every cell is {n} examples of the Shapes & Tones test split (the same examples in every cell), "
            "generated through `python -m codi_jax.sample --batch` and read back from the written files by the "
            "signal-analysis oracle (codi_jax.eval.oracle). Accuracy: the fraction of the attributes that the "
            "output can carry and an input carries which the output reproduces; a decoded 'none' is wrong. "
            "Agreement: the fraction of attributes two outputs generated together share and agree on; onset "
            "agreement: video and audio decode to the same onset frame (no caption states it). "
            f"All numbers in %. Chance: {chance}.", ""]
    single = [r for r in results if r["group"] == "single"]
    out += ["## Single input -> single output", "", "Accuracy (rows: input, columns: output):", ""]
    out += _single_matrix(results) + ["", "Per attribute:", ""] + _conditional_table(single)
    out += ["", "## Multi-condition", "",
            "Two inputs of the same example, mixed with equal weights. Attributes only one input carries "
            "(motion: text; onset: audio) show whether the mix keeps both.", ""]
    out += _conditional_table([r for r in results if r["group"] == "multi"])
    joint = [r for r in results if r["group"] in ("joint", "zero_shot", "wiring")]
    out += ["", "## Joint generation", "",
            "Two outputs from one input, generated together; 'independent' rows generate each output alone "
            "from the same condition and initial noise (the baseline joint generation must beat). "
            "Zero-shot: a pair latent alignment never trained together.", ""]
    out += _joint_table(joint) + ["", "Per attribute:", ""] + _conditional_table(joint)
    wiring = [r for r in results if r["group"] == "wiring"]
    if wiring:
        inputs, outputs = WIRING_CELL
        rows = [_find(results, group="joint", inputs=list(inputs), outputs=list(outputs), independent=False),
                wiring[0],
                _find(results, group="joint", inputs=list(inputs), outputs=list(outputs), independent=True)]
        names = ("paper (`others`: each UNet reads the other modality's environment encoding)",
                 "released code (`own`: each UNet reads its own, trained the same way)",
                 "independent generation (no joint layers)")
        out += ["", "## Context-wiring ablation", "", "text -> video + audio:", "",
                "| wiring | onset agreement | attribute agreement |", "|---|---|---|"]
        for name, r in zip(names, rows):
            if r is not None:
                out.append(f"| {name} | {_pct(r['joint'].get('onset_sync'))} | {_pct(r['joint']['agreement'])} |")
    pooled = _pooled(results)
    out += ["", "## Unseen combinations", "",
            "Yellow triangles and green squares never appear in training. Pooled over the cells above "
            f"(independent baselines and the wiring ablation left out): seen {_pct(pooled['seen'][0])} % of "
            f"{pooled['seen'][1]} attribute slots, unseen {_pct(pooled['unseen'][0])} % of "
            f"{pooled['unseen'][1]}. Per cell (n counts attribute slots):", ""]
    out += _unseen_table([r for r in results if not r["independent"]])
    if grid_name:
        out += ["", "## Samples", "",
                "One row per request (the first example of each cell shown): generated image, video frames and "
                "the log-mel spectrogram of the generated audio; the label gives the condition and any "
                "generated text.", "", f"![samples]({grid_name})"]
    return "\n".join(out) + "\n"
