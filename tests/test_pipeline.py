"""grain pipelines: paired and shaped batches per objective (checked by the oracle against the batch's own
attributes), weighted mixtures, disjoint hosts, exact resumption, records datasets and corrupt records."""
import json

import numpy as np
import pytest

from codi_jax.data import pipeline, records, tokenizers
from codi_jax.data import shapes_tones as st
from codi_jax.eval import oracle, scoring

R = 32
KINDS = ("clip", "bert", "gpt2")


def _config(objectives, **kwargs):
    config = pipeline.default_config(objectives, resolution=R, text_encoders=KINDS, **kwargs)
    config.read_threads = 1
    return config


def _check_paired(batch, modalities, batch_size):
    """Shapes and dtypes of the batch format, and every modality decoding to the batch's attributes."""
    expected_keys = {"index", *st.ATTRIBUTES}
    expected_keys |= {m for m in modalities if m != "text"}
    if "text" in modalities:
        expected_keys |= {f"text_ids/{k}" for k in KINDS}
    assert set(batch) == expected_keys
    truths = scoring.attributes_from_indices(batch["color"], batch["shape"], batch["motion"], batch["onset"])
    for name in st.ATTRIBUTES:
        assert batch[name].shape == (batch_size,) and batch[name].dtype == np.int32
    if "image" in modalities:
        assert batch["image"].shape == (batch_size, R, R, 3) and batch["image"].dtype == np.float32
        assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    if "video" in modalities:
        assert batch["video"].shape == (batch_size, 8, R, R, 3) and batch["video"].dtype == np.float32
    if "audio" in modalities:
        assert batch["audio"].shape == (batch_size, st.NUM_SAMPLES) and batch["audio"].dtype == np.float32
        assert np.abs(batch["audio"]).max() <= 0.5 + 1e-6
    if "text" in modalities:
        lengths = pipeline.DEFAULT_MAX_LENGTH
        for kind in KINDS:
            ids = batch[f"text_ids/{kind}"]
            assert ids.shape == (batch_size, lengths[kind]) and ids.dtype == np.int32
    for i, truth in enumerate(truths):
        for modality in modalities:
            if modality == "text":
                for kind in KINDS:
                    text = tokenizers.shapes_tones_tokenizer(kind).decode(batch[f"text_ids/{kind}"][i])
                    assert oracle.decode_text(text) == {k: truth[k] for k in oracle.CARRIED["text"]}
            else:
                decoded = oracle.decode(modality, batch[modality][i])
                assert decoded == {k: truth[k] for k in oracle.CARRIED[modality]}, (modality, i)


@pytest.mark.parametrize("objective", ["text_image", "text_audio", "text_video", "audio_video"])
def test_objective_batches_are_paired_and_shaped(objective):
    it = pipeline.make_dataset(_config((objective,)), global_batch_size=4, seed=1)
    for _ in range(2):
        _check_paired(next(it), objective.split("_"), 4)


def test_weighted_mixture_interleaves_objectives_by_weight():
    config = _config(("text_image", "audio_video"), weights=(3.0, 1.0))
    it = pipeline.make_dataset(config, global_batch_size=2, seed=0)
    kinds = []
    for _ in range(8):
        batch = next(it)
        kind = "audio_video" if "audio" in batch else "text_image"
        _check_paired(batch, kind.split("_"), 2)
        kinds.append(kind)
    assert kinds.count("text_image") == 6 and kinds.count("audio_video") == 2


def test_train_split_never_shows_held_out_combinations():
    config = _config(("image",))
    it = pipeline.make_dataset(config, global_batch_size=50, seed=3)
    for _ in range(4):
        batch = next(it)
        for a in scoring.attributes_from_indices(batch["color"], batch["shape"]):
            assert not st.is_held_out(a["color"], a["shape"])


def _one_epoch_indices(config, process_index, process_count, batch):
    it = pipeline.make_dataset(config, global_batch_size=batch, process_index=process_index,
                               process_count=process_count, seed=7)
    return [int(i) for b in it for i in b["index"]]


def test_two_hosts_see_disjoint_halves_of_a_global_shuffle():
    config = _config(("image",), split="test")
    config.shapes_tones.examples.test = 32
    config.num_epochs = 1
    host0 = _one_epoch_indices(config, 0, 2, 8)
    host1 = _one_epoch_indices(config, 1, 2, 8)
    assert len(host0) == len(host1) == 16
    assert not set(host0) & set(host1) and sorted(host0 + host1) == list(range(32))
    assert host0 != sorted(host0)  # shuffled
    single = _one_epoch_indices(config, 0, 1, 8)
    assert single[0::2] == host0 and single[1::2] == host1


def test_epochs_are_reshuffled():
    config = _config(("image",), split="test")
    config.shapes_tones.examples.test = 16
    config.num_epochs = 2
    indices = _one_epoch_indices(config, 0, 1, 4)
    assert sorted(indices[:16]) == sorted(indices[16:]) == list(range(16)) and indices[:16] != indices[16:]


def test_restoring_the_state_resumes_at_exactly_the_next_batch():
    config = _config(("text_image", "audio_video"), weights=(2.0, 1.0))
    it = pipeline.make_dataset(config, global_batch_size=2, seed=5)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # survives a JSON round trip, as orbax's grain handler writes it
    expected = [next(it) for _ in range(3)]
    resumed = pipeline.make_dataset(config, global_batch_size=2, seed=5)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)


def test_orbax_saves_and_restores_the_iterator(tmp_path):
    import grain
    import orbax.checkpoint as ocp

    config = _config(("text_audio",))
    it = pipeline.make_dataset(config, global_batch_size=2, seed=2)
    next(it)
    with ocp.CheckpointManager(tmp_path, item_names=("data",)) as manager:
        manager.save(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        manager.wait_until_finished()
    want = next(it)
    fresh = pipeline.make_dataset(config, global_batch_size=2, seed=2)
    with ocp.CheckpointManager(tmp_path, item_names=("data",)) as manager:
        manager.restore(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    np.testing.assert_array_equal(next(fresh)["index"], want["index"])


def _write_records(path, split, count, corrupt_at=None):
    from array_record.python import array_record_module

    path.mkdir(parents=True, exist_ok=True)
    writer = array_record_module.ArrayRecordWriter(str(path / f"st-{split}.array_record-00000-of-00001"),
                                                   "group_size:1")
    for i in range(count):
        record = records.shapes_tones_record(split, i, R)
        if i == corrupt_at:
            record["image"] = b"\x89PNG truncated"
        writer.write(records.serialize(record))
    writer.close()


def test_records_dataset_gives_the_same_batches_as_the_on_the_fly_source(tmp_path):
    _write_records(tmp_path / "st", "test", 12)
    generated = _config(("text_image",), split="test")
    generated.shapes_tones.examples.test = 12
    stored = _config(("text_image",), split="test")
    stored.objectives.text_image.dataset = "records"
    stored.objectives.text_image.path = str(tmp_path / "st")
    a = pipeline.make_dataset(generated, global_batch_size=4, seed=0)
    b = pipeline.make_dataset(stored, global_batch_size=4, seed=0)
    for _ in range(4):
        x, y = next(a), next(b)
        assert set(x) == set(y) and all(np.array_equal(x[k], y[k]) for k in x)


def test_corrupt_records_raise_by_default_and_are_skipped_on_request(tmp_path):
    _write_records(tmp_path / "st", "test", 8, corrupt_at=3)
    config = _config(("image",), split="test")
    config.objectives.image.dataset = "records"
    config.objectives.image.path = str(tmp_path / "st")
    config.num_epochs = 1
    config.shuffle = False
    with pytest.raises(records.CorruptRecordError, match="record 'test-3' image: unreadable image"):
        list(pipeline.make_dataset(config, global_batch_size=1))
    config.skip_corrupt = True
    seen = [int(b["index"][0]) for b in pipeline.make_dataset(config, global_batch_size=1)]
    assert seen == [0, 1, 2, 4, 5, 6, 7]


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="must be a positive multiple of process_count 3"):
        pipeline.make_dataset(_config(("image",)), global_batch_size=4, process_count=3)
    with pytest.raises(ValueError, match=r"process_index 2 must be in \[0, process_count=2\)"):
        pipeline.make_dataset(_config(("image",)), global_batch_size=4, process_index=2, process_count=2)
    with pytest.raises(ValueError, match=r"modalities \('text', 'smell'\) must be a non-empty subset"):
        pipeline.make_dataset(_config(("text_smell",)), global_batch_size=2)
    config = _config(("image",))
    config.objectives.image.dataset = "records"
    with pytest.raises(ValueError, match="dataset 'records' needs `path`"):
        pipeline.make_dataset(config, global_batch_size=2)
