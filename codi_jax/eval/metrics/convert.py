"""Published metric-network weights (.pth, read with torch) -> our .npz, checked against the network, so
evaluation runs without torch: `python -m codi_jax.eval.metrics.convert --network inception --src
pt_inception-2015-12-05-6726825d.pth --out weights/inception.npz`. A file that is missing or does not fit
prints one line and exits with status 2."""
from __future__ import annotations

import argparse
import sys

from codi_jax.eval.metrics import i3d, inception, panns, torch_weights, vggish

NETWORKS = {"inception": (inception.InceptionV3, inception), "panns": (panns.Cnn14, panns),
            "vggish": (vggish.VGGish, vggish), "i3d": (i3d.InceptionI3d, i3d)}


def convert(network: str, src, out) -> None:
    model_class, module = NETWORKS[network]
    abstract = torch_weights.abstract(model_class(), *module.init_inputs())
    params = torch_weights.load_params(src, abstract, module.convert_state_dict, network)
    torch_weights.save_npz(out, params)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m codi_jax.eval.metrics.convert", description=__doc__)
    parser.add_argument("--network", required=True, choices=sorted(NETWORKS))
    parser.add_argument("--src", required=True, help=f"the published file, e.g. {inception.WEIGHTS_FILE}, "
                                                     f"{panns.WEIGHTS_FILE}, {vggish.WEIGHTS_FILE}, "
                                                     f"{i3d.WEIGHTS_FILE}")
    parser.add_argument("--out", required=True, help="the .npz to write")
    args = parser.parse_args(argv)
    try:
        convert(args.network, args.src, args.out)
    except torch_weights.WeightsError as err:
        print(f"codi_jax.eval.metrics.convert: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
