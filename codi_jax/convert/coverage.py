"""Key coverage of our converters against the full-size official state dict.

    python -m codi_jax.convert.coverage --manifest ../shared/goldens/manifest_full.json

Per component: our full-size parameter count, the manifest's count (unique learned
parameters), official keys the converter never reads (constants excepted), and our
parameters it leaves unfilled or fills with the wrong shape. Shapes only: nothing is
allocated. Exit status 1 on any mismatch.
"""
from __future__ import annotations

import argparse
import json
import sys

import jax
import numpy as np

from codi_jax.convert import registry


def _flat(tree) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): tuple(x.shape) for p, x in leaves}


def assign_keys(manifest_keys, components) -> dict[str, list[str]]:
    """Each official key goes to the registered component with the longest matching prefix."""
    owned: dict[str, list[str]] = {name: [] for name in components}
    for key in manifest_keys:
        best = max(
            ((name, c.manifest_prefix) for name, c in components.items() if key.startswith(c.manifest_prefix)),
            key=lambda item: len(item[1]), default=None)
        if best is not None:
            owned[best[0]].append(key)
    return owned


def component_report(component: registry.Component, keys: list[str], entries: dict) -> dict:
    prefix = component.manifest_prefix
    sd = {k[len(prefix):]: jax.ShapeDtypeStruct(tuple(entries[k]["shape"]), np.dtype(entries[k]["dtype"]))
          for k in keys}
    tracker: dict[str, registry.TrackingDict] = {}

    def run(d):
        tracker["sd"] = registry.TrackingDict(d)
        return component.convert(tracker["sd"])

    converted = _flat(jax.eval_shape(run, sd))
    ours = _flat(component.full_abstract())
    unused = sorted(k for k in sd if k not in tracker["sd"].read and not component.ignored_keys(k))
    missing = sorted(p for p in ours if p not in converted)
    wrong = sorted(f"{p}: converted {converted[p]} vs ours {ours[p]}"
                   for p in ours if p in converted and converted[p] != ours[p])
    extra = sorted(p for p in converted if p not in ours)
    # A tied group (GPT-2's wte / lm_head) is one parameter: count it at its first key only.
    reference = sum(int(np.prod(entries[k]["shape"])) for k in keys
                    if entries[k]["kind"] == "parameter" and k <= min(entries[k].get("tied_with", [k])))
    return {
        "ours": sum(int(np.prod(s)) for s in ours.values()),
        "reference": reference,
        "unused": unused,
        "missing": missing + [f"{p} (converter output not in our tree)" for p in extra],
        "wrong_shape": wrong,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="manifest_full.json from the goldens")
    parser.add_argument("--component", action="append", help="limit to these components")
    parser.add_argument("--verbose", action="store_true", help="list every unused / missing key")
    args = parser.parse_args(argv)
    try:
        manifest = json.load(open(args.manifest))
    except (OSError, json.JSONDecodeError) as e:
        print(f"coverage: cannot read manifest {args.manifest}: {e}", file=sys.stderr)
        return 2
    entries = {k: v for group in manifest["groups"].values() for k, v in group.items()}
    components = {n: c for n, c in registry.all_components().items()
                  if c.manifest_prefix and c.convert and c.full_abstract}
    if args.component:
        unknown = set(args.component) - set(components)
        if unknown:
            print(f"coverage: no coverage-capable component named {sorted(unknown)}", file=sys.stderr)
            return 2
    owned = assign_keys(entries, components)
    ok = True
    print(f"{'component':<22} {'ours':>14} {'reference':>14} {'unused':>7} {'missing':>8}  result")
    for name in sorted(components):
        if args.component and name not in args.component:
            continue
        r = component_report(components[name], owned[name], entries)
        bad = r["missing"] + r["wrong_shape"]
        good = r["ours"] == r["reference"] and not r["unused"] and not bad
        ok &= good
        print(f"{name:<22} {r['ours']:>14,} {r['reference']:>14,} {len(r['unused']):>7} {len(bad):>8}  "
              f"{'OK' if good else 'MISMATCH'}")
        limit = None if args.verbose else 5
        for label, items in (("unused", r["unused"]), ("missing", bad)):
            for item in items[:limit]:
                print(f"    {label}: {item}")
            if limit and len(items) > limit:
                print(f"    ... {len(items) - limit} more {label} (--verbose lists all)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
