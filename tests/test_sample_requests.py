"""Generation requests: parsing the CLI / JSONL fields, and one clear error for every bad request."""
import json

import numpy as np
import pytest

from codi_jax.sampling import Request, RequestError, load_inputs, read_batch_file


def test_fields_from_strings_as_the_cli_gives_them():
    r = Request.from_dict({"text": "a red circle", "image": "x.png", "outputs": "video,audio",
                           "weights": "text=0.5, image=1.5", "guidance": "video=7.5,audio=4", "steps": "20",
                           "seed": "3", "sampler": "dpmpp_2m"})
    assert r.outputs == ("video", "audio") and r.input_modalities == ("text", "image")
    assert r.mix_weights() == {"text": 0.5, "image": 1.5}
    assert (r.steps, r.seed, r.sampler) == (20, 3, "dpmpp_2m")
    assert r.scales(7.5) == {"video": 7.5, "audio": 4.0}
    # Outputs the per-output guidance leaves out take the default; a plain number applies to all.
    assert Request(outputs=("video", "audio"), guidance={"audio": 4}).scales(7.5) == {"video": 7.5, "audio": 4.0}
    assert Request(outputs=("text",), guidance="2").scales(7.5) == {"text": 2.0}


def test_defaults_fill_only_what_a_request_leaves_out():
    defaults = {"sampler": "ddim", "steps": 50, "guidance": 7.5, "seed": 0}
    r = Request.from_dict({"outputs": ["image"], "steps": 10}, defaults)
    assert (r.sampler, r.steps, r.guidance, r.seed) == ("ddim", 10, 7.5, 0)


def test_equal_weights_by_default_and_signature_groups_compiled_calls():
    r = Request(outputs=("image",), text="x", audio="a.wav")
    assert r.mix_weights() == {"text": 1.0, "audio": 1.0}
    assert r.signature == Request(outputs=("image",), seed=9, guidance=3.0).signature
    assert r.signature != Request(outputs=("image",), steps=20).signature
    assert r.signature != Request(outputs=("image",), independent=True).signature


def test_to_json_replays_as_a_batch_line():
    r = Request(outputs=("image", "audio"), text="a red circle", image="in.png", weights={"text": 1, "image": 3},
                guidance={"image": 5}, seed=4, id="r1")
    record = json.loads(json.dumps(r.to_json()))
    assert Request.from_dict(record) == r
    arrays = Request(outputs=("text",), audio=np.zeros(16, np.float32)).to_json()
    assert arrays["audio"] == "<array float32 [16]>"


@pytest.mark.parametrize("fields,message", [
    ({"outputs": ""}, "outputs: the list is empty"),
    ({}, "outputs: missing"),
    ({"outputs": "image,smell"}, "outputs: unknown modality 'smell'"),
    ({"outputs": "image,image"}, "names a modality twice"),
    ({"outputs": "image", "text": "x", "weights": "text=1,image=1"}, r"weights: given for \['image', 'text'\] but "
                                                                     r"the inputs are \['text'\]"),
    ({"outputs": "image", "text": "x", "audio": "a.wav", "weights": "text=1"}, "give one weight per input"),
    ({"outputs": "image", "weights": "text=1"}, "the inputs are none"),
    ({"outputs": "image", "text": "x", "weights": "text=-1"}, "non-negative with a positive sum"),
    ({"outputs": "image", "text": "x", "weights": "text"}, "not of the form modality=number"),
    ({"outputs": "image", "text": "x", "weights": "text=abc"}, "weights text: expected a number"),
    ({"outputs": "image", "guidance": "audio=4"}, r"guidance: given for \['audio'\], which is not among the outputs"),
    ({"outputs": "image", "guidance": "nan"}, "guidance: expected a finite number"),
    ({"outputs": "image", "sampler": "euler"}, "sampler: unknown sampler 'euler'"),
    ({"outputs": "image", "steps": 0}, "steps: 0 is out of range"),
    ({"outputs": "image", "steps": "ten"}, "steps: expected an integer"),
    ({"outputs": "image", "steps": 1000}, "steps: DDIM with 1000 steps would reach timestep 1000"),
    ({"outputs": "image", "seed": -1}, "seed: -1 is out of range"),
    ({"outputs": "image", "text": ""}, "text: expected a non-empty caption"),
    ({"outputs": "image", "image": 3}, "image: expected a file path"),
    ({"outputs": "image", "colour": "red"}, "unknown request field 'colour'"),
    ({"outputs": "image", "id": "../x"}, "not usable as a folder name"),
    ({"outputs": "image", "independent": "yes"}, "independent: expected true or false"),
])
def test_bad_requests_raise_one_line(fields, message):
    with pytest.raises(RequestError, match=message) as info:
        Request.from_dict(fields)
    assert "\n" not in str(info.value)


def test_array_inputs_are_checked():
    ok = load_inputs(Request(outputs=("text",), image=np.zeros((8, 8, 3), np.uint8),
                             audio=np.zeros(10, np.float64)))
    assert ok.audio.dtype == np.float32
    with pytest.raises(RequestError, match=r"image: expected uint8 \[H, W, 3\], got float32 \[8, 8\]"):
        load_inputs(Request(outputs=("text",), image=np.zeros((8, 8), np.float32)))
    with pytest.raises(RequestError, match=r"video: expected uint8 \[F, H, W, 3\]"):
        load_inputs(Request(outputs=("text",), video=np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(RequestError, match=r"audio: expected float \[N\] at 16 kHz, got int16"):
        load_inputs(Request(outputs=("text",), audio=np.zeros(10, np.int16)))


def test_batch_file(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a", "outputs": ["image"]}\n\n{"id": "b", "outputs": "audio", "text": "x"}\n')
    assert [r["id"] for r in read_batch_file(path)] == ["a", "b"]


@pytest.mark.parametrize("content,message", [
    ('{"id": "a", "outputs": ["image"]}\n{"id": "a", "outputs": ["audio"]}\n', "line 2: id 'a' is used twice"),
    ('{"outputs": ["image"]}\n', "line 1: missing 'id'"),
    ('{"id": "a", "outputs": [}\n', "line 1: not valid JSON"),
    ('["a"]\n', "line 1: expected a JSON object"),
    ("\n\n", "holds no requests"),
])
def test_bad_batch_files(tmp_path, content, message):
    path = tmp_path / "r.jsonl"
    path.write_text(content)
    with pytest.raises(RequestError, match=message):
        read_batch_file(path)
