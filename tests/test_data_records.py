"""The shared ArrayRecord schema: the Shapes & Tones TFDS builder, the writer, real-data converters, and
clear errors or counted skips for corrupt records and unreadable media."""
import csv
import io
import json
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from codi_jax.data import media, records
from codi_jax.data import shapes_tones as st
from codi_jax.eval import oracle
from data_pipelines import ingest, media_folder, webdataset
from data_pipelines.shapes_tones import prepare

ALL = ("image", "video", "audio", "text")


def test_shapes_tones_builder_prepares_every_split_as_array_record(tmp_path):
    path = prepare(str(tmp_path), examples_per_split=6, resolution=32)
    builder = tfds.builder_from_directory(path)
    assert builder.info.file_format.value == "array_record"
    assert {name: info.num_examples for name, info in builder.info.splits.items()} == {
        "train": 6, "validation": 6, "test": 6}
    source = records.RecordSource(path, "test")
    seen = set()
    for i in range(len(source)):
        raw = records.decode_record(source[i], ALL)
        split, index = raw["id"].split("-")
        expected = st.generate(split, int(index), 32)
        np.testing.assert_array_equal(raw["image"], expected["image"])
        np.testing.assert_array_equal(raw["video"], expected["video"])
        np.testing.assert_array_equal(raw["audio"], expected["audio"])
        assert raw["text"] == expected["text"] and raw["audio_sample_rate"] == 16000
        assert raw["attributes"] == st.attribute_indices(expected["attributes"])
        seen.add(int(index))
    assert seen == set(range(6))


def test_writer_output_reads_back_with_tfds_and_keeps_other_splits(tmp_path):
    for split, count in (("train", 5), ("test", 2)):
        with records.RecordWriter(tmp_path, "toy", split, examples_per_shard=2) as writer:
            for i in range(count):
                writer.write(records.shapes_tones_record(split, i, 16))
    source = tfds.builder_from_directory(str(tmp_path)).as_data_source("train")
    assert len(source) == 5 and source[4]["id"] == b"train-4"
    assert len(records.split_files(tmp_path, "train")) == 3
    assert len(records.RecordSource(tmp_path, "test")) == 2


def test_records_without_a_modality_or_attributes():
    record = records.make_record("x", caption="a dog barks", audio=np.zeros(160, np.float32), audio_sample_rate=16000)
    raw = records.decode_record(records.deserialize(records.serialize(record)), ("audio", "text"))
    assert raw["text"] == "a dog barks" and raw["attributes"] == {a: -1 for a in st.ATTRIBUTES}
    with pytest.raises(records.CorruptRecordError, match="record 'x' image: empty"):
        records.decode_record(records.deserialize(records.serialize(record)), ("image",))
    with pytest.raises(ValueError, match="audio_sample_rate must be positive"):
        records.make_record("y", audio=np.zeros(4, np.float32))


def test_corrupt_record_and_truncated_file_give_clear_errors(tmp_path):
    from array_record.python import array_record_module

    bad = tmp_path / "bad"
    bad.mkdir()
    writer = array_record_module.ArrayRecordWriter(str(bad / "bad-train.array_record-00000-of-00001"), "group_size:1")
    writer.write(records.serialize(records.shapes_tones_record("train", 0, 16)))
    writer.write(b"\xff\x00 this is not a proto")
    writer.close()
    source = records.RecordSource(bad, "train")
    assert source[0]["id"] == b"train-0"
    with pytest.raises(records.CorruptRecordError, match=r"split 'train' index 1: corrupt record"):
        source[1]

    good = records.shapes_tones_record("train", 0, 16)
    with records.RecordWriter(tmp_path / "cut", "cut", "train") as writer:
        writer.write(good)
    shard = records.split_files(tmp_path / "cut", "train")[0]
    data = open(shard, "rb").read()
    open(shard, "wb").write(data[:len(data) // 2])
    with pytest.raises(records.CorruptRecordError, match="unreadable ArrayRecord file"):
        records.RecordSource(tmp_path / "cut", "train")
    with pytest.raises(ValueError, match="no ArrayRecord files for split 'validation'"):
        records.RecordSource(tmp_path / "cut", "validation")

    broken = dict(good, image=b"\x89PNG broken")
    with pytest.raises(records.CorruptRecordError, match="unreadable image"):
        records.decode_record(records.deserialize(records.serialize(broken)), ("image",))


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    """Shapes & Tones test examples 0..3 as PNG / MP4 / WAV files, plus a broken PNG."""
    folder = tmp_path_factory.mktemp("media")
    for i in range(4):
        example = st.generate("test", i, 32)
        media.write_image(folder / f"{i}.png", example["image"])
        media.write_video(folder / f"{i}.mp4", example["video"], st.VIDEO_FPS)
        media.write_audio(folder / f"{i}.wav", example["audio"], 16000)
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def _rows(extra=()):
    rows = [{"key": f"ex{i}", "img": f"{i}.png", "vid": f"{i}.mp4", "snd": f"{i}.wav",
             "caption": st.generate("test", i, 32)["text"]} for i in range(4)]
    return rows + list(extra)


def _write_csv(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_folder_with_captions_csv_converts_and_counts_skips(tmp_path, media_dir):
    broken = [{"key": "broken", "img": "broken.png", "vid": "0.mp4", "snd": "0.wav", "caption": "x"},
              {"key": "missing", "img": "none.png", "vid": "0.mp4", "snd": "0.wav", "caption": "x"}]
    _write_csv(tmp_path / "captions.csv", _rows(broken))
    options = ingest.ConvertOptions(image_size=0, video_size=0, max_skip_fraction=0.5)
    result = media_folder.convert_folder(tmp_path / "captions.csv", media_dir, tmp_path / "out", name="folder",
                                         image_column="img", video_column="vid", audio_column="snd",
                                         id_column="key", options=options)
    assert (result["written"], result["skipped"]) == (4, 2)
    assert "broken: " in result["errors"][0] and "unreadable image" in result["errors"][0]
    assert "missing: " in result["errors"][1] and "cannot read" in result["errors"][1]
    source = records.RecordSource(tmp_path / "out", "train")
    for i in range(len(source)):
        raw = records.decode_record(source[i], ALL)
        truth = st.generate("test", int(raw["id"][2:]), 32)["attributes"]
        assert oracle.decode_image(raw["image"]) == {k: truth[k] for k in ("color", "shape")}
        assert oracle.decode_video(raw["video"]) == {k: truth[k] for k in oracle.CARRIED["video"]}
        assert oracle.decode_audio(raw["audio"]) == {k: truth[k] for k in oracle.CARRIED["audio"]}
        assert oracle.decode_text(raw["text"]) == {k: truth[k] for k in oracle.CARRIED["text"]}


def test_too_many_unreadable_files_abort_with_a_clear_message(tmp_path, media_dir):
    broken = [{"key": "broken", "img": "broken.png", "vid": "", "snd": "", "caption": "x"}]
    with open(tmp_path / "captions.jsonl", "w") as handle:
        for row in _rows(broken):
            handle.write(json.dumps(row) + "\n")
    options = ingest.ConvertOptions(max_skip_fraction=0.1)
    message = r"aborting, 1 of 5 samples unreadable \(20.0% > 10.0% allowed\)"
    with pytest.raises(ingest.ConversionAborted, match=message):
        media_folder.convert_folder(tmp_path / "captions.jsonl", media_dir, tmp_path / "out", name="folder",
                                    image_column="img", options=options)
    assert not list((tmp_path / "out").glob("*array_record*"))  # partial shards removed


def _add(archive, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def test_webdataset_shards_convert_and_truncated_shards_are_counted(tmp_path, media_dir):
    with tarfile.open(tmp_path / "shard-00000.tar", "w") as archive:
        for i in range(3):
            _add(archive, f"sample{i}.jpg", (media_dir / f"{i}.png").read_bytes())
            _add(archive, f"sample{i}.txt", st.generate("test", i, 32)["text"].encode())
        _add(archive, "clip3.mp4", (media_dir / "3.mp4").read_bytes())
        _add(archive, "clip3.flac", (media_dir / "3.wav").read_bytes())
        _add(archive, "clip3.json", json.dumps({"caption": st.generate("test", 3, 32)["text"]}).encode())
        _add(archive, "junk.jpg", b"broken")
    data = (tmp_path / "shard-00000.tar").read_bytes()
    (tmp_path / "shard-00001.tar").write_bytes(data[:len(data) // 3])
    result = webdataset.convert_webdataset(str(tmp_path / "shard-{00000..00001}.tar"), tmp_path / "out",
                                           name="wds", options=ingest.ConvertOptions(max_skip_fraction=0.5))
    assert result["skipped"] == 2 and any("truncated or unreadable shard" in e for e in result["errors"])
    source = records.RecordSource(tmp_path / "out", "train")
    ids = [source[i]["id"].decode().rsplit(":", 1)[1] for i in range(len(source))]
    assert ids[:4] == ["sample0", "sample1", "sample2", "clip3"] and result["written"] == len(ids)
    clip = records.decode_record(source[3], ("video", "audio", "text"))
    truth = st.generate("test", 3, 32)["attributes"]
    assert clip["video"].shape[0] == 8 and clip["audio_sample_rate"] == 16000
    assert oracle.decode_video(clip["video"])["motion"] == truth["motion"]
    assert oracle.decode_audio(clip["audio"])["color"] == truth["color"]
    assert oracle.decode_text(clip["text"])["shape"] == truth["shape"]
    with pytest.raises(ValueError, match="no shard matches"):
        webdataset.convert_webdataset(str(tmp_path / "nothing-*.tar"), tmp_path / "x", name="x")
