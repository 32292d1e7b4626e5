"""TFDS builder for Shapes & Tones, written as ArrayRecord in the shared record schema.

    python -m data_pipelines.shapes_tones --num 1000 --resolution 64 --data_dir ~/tensorflow_datasets

prepares `num` examples of each split (train / validation / test) and prints the dataset directory
(DATA_DIR/shapes_tones/r64_n1000/1.0.0) to name in a data config's objective `path`. The same examples
are generated on the fly by the pipeline's `shapes_tones` source, so preparing is optional.
"""
from __future__ import annotations

import argparse

from codi_jax.data import shapes_tones as st
from data_pipelines.shapes_tones.shapes_tones_dataset_builder import prepare


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.shapes_tones", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=1000, help="examples per split")
    parser.add_argument("--resolution", type=int, default=st.DEFAULT_RESOLUTION)
    parser.add_argument("--data_dir", required=True)
    args = parser.parse_args(argv)
    print(prepare(args.data_dir, args.num, args.resolution))


if __name__ == "__main__":
    main()
