"""Which differences between a checkpoint's config and the run's config a resume accepts.

Keys that shape the train state must match: the stage, its networks and trainable groups
(`model.*`), the optimiser (`optim.*` but its learning-rate schedule and clipping threshold),
and whether EMA and gradient clipping are on at all. Orbax would fail on other shapes, or
worse, restore a state the run then misreads (an EMA checkpoint resumed without EMA drops
the EMA). Everything else (how long to train, how often to log, sample or checkpoint, the
schedule, data, mesh, compute precision) may change between runs and is only reported. A key
present on one side only comes from a code change, not from the user; the layout comparison
of the checkpoint (checkpoint.py) decides whether such a change matters.
"""
from __future__ import annotations

import dataclasses
from typing import Any

SCHEDULE = ("optim.learning_rate", "optim.warmup_steps", "optim.schedule", "optim.end_learning_rate_factor")
SWITCHES = ("ema_decay", "optim.grad_clip_norm")  # 0 turns the part off: on/off shapes the state, the value not
_ABSENT = object()


@dataclasses.dataclass(frozen=True)
class Difference:
    key: str
    saved: Any
    current: Any

    def __str__(self) -> str:
        show = lambda v: "absent" if v is _ABSENT else repr(v)
        return f"{self.key} {show(self.saved)} in the checkpoint, {show(self.current)} now"


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _shapes_state(d: Difference) -> bool:
    if d.saved is _ABSENT or d.current is _ABSENT:
        return False
    if d.key in SWITCHES:
        return ((d.saved or 0) > 0) != ((d.current or 0) > 0)
    return d.key == "stage" or d.key.startswith("model.") or (d.key.startswith("optim.") and d.key not in SCHEDULE)


def compare(saved: dict, current: dict) -> tuple[list[Difference], list[Difference]]:
    """(differences that shape the state, the others) between two configs as JSON dicts, by key."""
    a, b = _flatten(saved), _flatten(current)
    differences = [Difference(k, a.get(k, _ABSENT), b.get(k, _ABSENT))
                   for k in sorted(a.keys() | b.keys()) if a.get(k, _ABSENT) != b.get(k, _ABSENT)]
    shaping = [d for d in differences if _shapes_state(d)]
    return shaping, [d for d in differences if not _shapes_state(d)]
