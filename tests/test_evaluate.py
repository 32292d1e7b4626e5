"""`python -m codi_jax.evaluate` end to end on tiny random networks and a tiny prepared records dataset,
and its one-line failures."""
import json
import math

import numpy as np
import pytest

from codi_jax import evaluate
from codi_jax.data import records

TINY = ["--random-init", "--no-progress", "--config.sample_config=configs/sample.py:tiny",
        "--config.random_metric_weights=True", "--config.feature_batch_size=8", "--config.generation.steps=2",
        "--config.generation.chunk=4", "--config.data.image_size=32"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("records")
    with records.RecordWriter(path, "tiny_eval", "test") as writer:
        for index in range(4):
            writer.write(records.shapes_tones_record("test", index))
    return path


def test_text_image_end_to_end(dataset, tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["--config", "configs/evaluate.py:text_image", "--out", str(out), *TINY, f"--config.data.path={dataset}",
            "--config.data.num_examples=4", "--config.is_splits=2", f"--config.cache_dir={cache}",
            # pytorch-fid's --dims 64: a 64x64 covariance square root instead of 2048x2048 (minutes on 2 cores)
            "--config.fid_dims=64"]
    assert evaluate.main(argv) == 0
    report = json.loads((out / "results.json").read_text())
    (cell,) = report["cells"]
    assert cell["cell"] == "text -> image" and cell["n"] == 4 and report["n"] == 4
    assert set(cell["metrics"]) == {"fid", "is", "clip_score"}
    assert all(math.isfinite(v) for v in cell["metrics"].values())
    assert cell["metrics"]["fid"] > 0  # random networks draw nothing like the real shapes
    assert 1.0 <= cell["metrics"]["is"] <= 2.0  # 2 splits of 2 samples: IS lies between 1 and 2
    assert 0.0 <= cell["metrics"]["clip_score"] <= 100.0
    table = (out / "results.md").read_text()
    assert "| text -> image | 4 |" in table and "fid" in table
    assert table in capsys.readouterr().out
    assert list(out.glob("events.out.tfevents.*"))
    (cached,) = cache.glob("inception-*.npz")
    with np.load(cached) as saved:
        assert int(saved["count"]) == 4 and saved["sigma"].shape == (64, 64)


def _fails(argv, capsys) -> str:
    assert evaluate.main(argv) == evaluate.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("codi_jax.evaluate: error:")
    return err


def test_bad_input_is_one_line_and_exit_2(dataset, tmp_path, capsys):
    base = ["--random-init", "--out", str(tmp_path)]
    assert "unknown evaluation task 'nope'" in _fails(["--config", "configs/evaluate.py:nope", *base], capsys)
    err = _fails(["--config", "configs/evaluate.py:text_image", *base, f"--config.data.path={dataset}",
                  f"--config.weights.inception={tmp_path}/pt_inception-2015-12-05-6726825d.pth"], capsys)
    assert "pt_inception-2015-12-05-6726825d.pth" in err and "does not exist" in err
    err = _fails(["--config", "configs/evaluate.py:text_image", *TINY, "--out", str(tmp_path),
                  f"--config.data.path={tmp_path}/absent"], capsys)
    assert "is not a records directory" in err
    assert "no such key 'bogus'" in _fails(["--config", "configs/evaluate.py:text_image", *base,
                                            "--config.bogus=1"], capsys)
    assert "unknown metric 'fidd'" in _fails(["--config", "configs/evaluate.py:text_image", *base,
                                              "--config.metrics=fidd"], capsys)
    assert "--checkpoint" in _fails(["--config", "configs/evaluate.py:text_image", "--out", str(tmp_path)], capsys)


def test_records_sharing_a_key_are_one_example_with_all_captions(tmp_path):
    from ml_collections import ConfigDict

    with records.RecordWriter(tmp_path, "caps", "test") as writer:
        for record_id, caption in (("clip7-0", "a dog barks"), ("clip7-1", "barking dog"), ("clip9-0", "rain")):
            writer.write(records.make_record(record_id, caption=caption))
    data = ConfigDict(dict(dataset="records", path=str(tmp_path), split="test", num_examples=10,
                           group_pattern=r"^(.*)-[0-9]+$", image_size=32, video_frames=8, audio_seconds=1.0,
                           shapes_tones_resolution=32))
    examples = evaluate.Examples(data)
    assert len(examples) == 2
    assert examples.get(0, ["text"])["captions"] == ["a dog barks", "barking dog"]
    assert examples.get(1, ["text"])["text"] == "rain"
    data.group_pattern = ""
    assert len(evaluate.Examples(data)) == 3


def test_oracle_scores_the_real_examples_as_right(tmp_path):
    """The Shapes & Tones cells read generated media back with the oracle: the real media score 100 %."""
    config = evaluate.load_config("configs/evaluate.py:shapes_tones", [])
    config.data.num_examples = 3
    examples = evaluate.Examples(config.data)
    batch = [examples.get(i, ["image", "audio", "video"]) for i in range(3)]
    cell = evaluate.Cell(("text",), ("image", "audio", "video"))
    scores = evaluate.CellScores(cell, ["oracle"], nets=None, config=config)
    scores.add([{m: e[m] for m in cell.outputs} for e in batch], batch)
    result = scores.result(real={})
    assert result == {"oracle_image": 1.0, "oracle_audio": 1.0, "oracle_video": 1.0}
    # Outputs of another example's attributes are read as wrong.
    shuffled = evaluate.CellScores(evaluate.Cell(("text",), ("image",)), ["oracle"], nets=None, config=config)
    shuffled.add([{"image": batch[(i + 1) % 3]["image"]} for i in range(3)], batch)
    assert shuffled.result(real={})["oracle_image"] < 1.0
