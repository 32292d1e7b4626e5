r"""Writes the metric parity fixtures of this folder from the reference implementations.

Run beside the reference packages, not ours (they need torchvision / torchlibrosa, which our pinned
torch build cannot import):

  python3 -m venv /tmp/refenv && . /tmp/refenv/bin/activate
  pip install torch==2.14.1 torchvision==0.29.1 pytorch-fid torch-fidelity torchlibrosa resampy soundfile scipy
  python tests/metric_goldens/make_goldens.py --out tests/metric_goldens \
      --audioldm-eval PATH/audioldm_eval --torchvggish PATH/torchvggish --pytorch-i3d PATH/pytorch_i3d.py \
      [--only inception ...]

`--audioldm-eval` is a checkout of github.com/haoheliu/audioldm_eval at commit 48873a9 (June 2023,
CNN14 at 16 kHz; later versions default to MERT). Its package __init__ pulls in torchaudio and more, so
its metric and PANNs files are loaded one by one. `--torchvggish` is a checkout of
github.com/harritaylor/torchvggish (the torch hub model FAD loads, not the older PyPI package),
`--pytorch-i3d` the pytorch_i3d.py of github.com/piergiaj/pytorch-i3d (FVD's I3D). Networks get random weights from random_state.py (keys and
shapes stored in the fixture, so the tests regenerate the same weights); no published weights are needed.
"""
import argparse
import contextlib
import importlib.util
import json
import pathlib
import sys

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from random_state import random_state_dict  # noqa: E402

SEED = 1234


def _load_file(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def random_weights(keep=()):
    """Every `load_state_dict` inside loads random weights drawn for the module's own keys and shapes
    (tensors named in `keep`, e.g. fixed STFT kernels, stay as built)."""
    original = torch.nn.Module.load_state_dict
    record = {}

    def load(self, state_dict, strict=True, **kwargs):
        own = self.state_dict()
        shapes = {k: tuple(v.shape) for k, v in own.items()
                  if not k.endswith("num_batches_tracked") and not any(k.startswith(p) for p in keep)}
        drawn = {k: torch.from_numpy(v) for k, v in random_state_dict(shapes, SEED).items()}
        record.update(shapes=shapes)
        return original(self, {**own, **drawn}, strict=True)

    torch.nn.Module.load_state_dict = load
    try:
        yield record
    finally:
        torch.nn.Module.load_state_dict = original


def save(out, name, **arrays):
    path = pathlib.Path(out) / f"{name}.npz"
    np.savez_compressed(path, **arrays)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def make_frechet(out, args):
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 24)) @ rng.standard_normal((24, 24)) + 1.0
    b = rng.standard_normal((200, 24)) @ rng.standard_normal((24, 24)) * 0.5 - 0.3
    few = rng.standard_normal((12, 32))  # fewer samples than dimensions: a singular covariance product
    few2 = rng.standard_normal((12, 32)) + 0.1
    stats = lambda x: (np.mean(x, axis=0), np.cov(x, rowvar=False))  # noqa: E731 (pytorch-fid's statistics)
    save(out, "frechet", a=a, b=b, few=few, few2=few2,
         distance_ab=calculate_frechet_distance(*stats(a), *stats(b)),
         distance_few=calculate_frechet_distance(*stats(few), *stats(few2)))


def make_scores(out, args):
    from torch_fidelity.metric_isc import isc_features_to_metric

    root = pathlib.Path(args.audioldm_eval) / "audioldm_eval" / "metrics"
    kl = _load_file(root / "kl.py", "ref_kl")
    isc = _load_file(root / "isc.py", "ref_isc")
    fid = _load_file(root / "fid.py", "ref_fid")
    rng = np.random.default_rng(1)
    logits = (3 * rng.standard_normal((103, 17))).astype(np.float32)
    logits_ref = (logits + rng.standard_normal((103, 17))).astype(np.float32)
    fidelity = isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=True, rng_seed=2020)
    audioldm_isc = isc.calculate_isc({"logits": torch.from_numpy(logits)}, "logits", 2020, True, 10)
    names = [f"{i}.wav" for i in range(len(logits))]
    kls = kl.calculate_kl({"logits": torch.from_numpy(logits), "file_path_": names},
                          {"logits": torch.from_numpy(logits_ref), "file_path_": names}, "logits", True)[0]
    feats = rng.standard_normal((80, 12)).astype(np.float32)
    feats2 = (rng.standard_normal((90, 12)) * 1.5).astype(np.float32)
    audioldm_fd = fid.calculate_fid({"2048": torch.from_numpy(feats)}, {"2048": torch.from_numpy(feats2)}, "2048")
    save(out, "scores", logits=logits, logits_ref=logits_ref,
         fidelity_is_mean=fidelity["inception_score_mean"], fidelity_is_std=fidelity["inception_score_std"],
         audioldm_is_mean=audioldm_isc["inception_score_mean"], audioldm_is_std=audioldm_isc["inception_score_std"],
         kl_softmax=kls["kullback_leibler_divergence_softmax"], kl_sigmoid=kls["kullback_leibler_divergence_sigmoid"],
         fd_features=feats, fd_features2=feats2, audioldm_fd=audioldm_fd["frechet_distance"])


def make_inception(out, args):
    from pytorch_fid import inception

    inception.load_state_dict_from_url = lambda *a, **k: {}
    with random_weights() as record:
        model = inception.InceptionV3([0, 1, 2, 3]).eval()
    shapes = record["shapes"]
    weights = random_state_dict(shapes, SEED)
    rng = np.random.default_rng(2)
    inputs = {"small": rng.integers(0, 256, (2, 72, 96, 3), dtype=np.uint8),
              "large": rng.integers(0, 256, (2, 320, 330, 3), dtype=np.uint8)}
    arrays = {}
    for name, images in inputs.items():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # pytorch-fid's ToTensor
        with torch.no_grad():
            blocks = model(x)
        # pytorch-fid's get_activations: blocks read at --dims 64 / 192 / 768 are averaged spatially.
        for block, dims in zip(blocks, inception.InceptionV3.BLOCK_INDEX_BY_DIM):
            arrays[f"{name}_pool{dims}"] = block.mean(dim=(2, 3)).double().numpy()
        pool = arrays[f"{name}_pool2048"]
        arrays[f"{name}_images"] = images
        # torch-fidelity's logits_unbiased: the classifier without its bias.
        arrays[f"{name}_logits"] = pool @ weights["fc.weight"].astype(np.float64).T
    save(out, "inception", shapes=json.dumps(shapes), seed=SEED, **arrays)


def make_panns(out, args):
    root = pathlib.Path(args.audioldm_eval) / "audioldm_eval" / "feature_extractors" / "panns"
    _load_file(root / "pytorch_utils.py", "audioldm_eval.feature_extractors.panns.pytorch_utils")
    models = _load_file(root / "models.py", "ref_panns_models")
    import os
    import tempfile

    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        # The reference constructor loads ckpt/Cnn14_16k_mAP=0.438.pth (fetching it when absent): an empty
        # stand-in is read through load_state_dict, which random_weights replaces.
        os.chdir(tmp)
        os.makedirs("ckpt")
        for name in ("Cnn14_mAP=0.431.pth", "Cnn14_16k_mAP=0.438.pth"):
            torch.save({"model": {}}, f"ckpt/{name}")
        try:
            with random_weights(keep=("spectrogram_extractor.", "logmel_extractor.")) as record:
                model = models.Cnn14(features_list=["2048", "logits"], sample_rate=16000, window_size=512,
                                     hop_size=160, mel_bins=64, fmin=50, fmax=8000, classes_num=527).eval()
        finally:
            os.chdir(cwd)
    shapes = {k: v for k, v in record["shapes"].items()}
    fixed = {k: v.numpy() for k, v in model.state_dict().items() if k.startswith("logmel_extractor.")}
    rng = np.random.default_rng(3)
    t = np.arange(40000) / 16000
    waves = np.stack([0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size) + 0.1,
                      0.2 * rng.standard_normal(t.size)]).astype(np.float32)
    # AudioLDM's loader: mean removed per clip (both clips are over 2 s, so no padding).
    x = torch.from_numpy(waves - waves.mean(axis=1, keepdims=True))
    with torch.no_grad():
        outputs = model(x)
    save(out, "panns", shapes=json.dumps(shapes), seed=SEED, waves=waves, melW=fixed["logmel_extractor.melW"],
         embedding=outputs["2048"].double().numpy(), logits=outputs["logits"].double().numpy())


def make_vggish(out, args):
    sys.path.insert(0, str(pathlib.Path(args.torchvggish)))
    from torchvggish.vggish import VGGish

    with random_weights(keep=("pproc.",)) as record:
        model = VGGish(urls=None, pretrained=False, preprocess=True, postprocess=False,
                       device=torch.device("cpu"))
        model.load_state_dict({})
    model.eval()
    # FAD's model: the last ReLU removed (use_activation=False).
    model.embeddings = torch.nn.Sequential(*list(model.embeddings.children())[:-1])
    rng = np.random.default_rng(4)
    t = np.arange(33000) / 16000
    waves = np.stack([0.5 * np.sin(2 * np.pi * 1000 * t) * np.exp(-t), 0.3 * rng.standard_normal(t.size)])
    with torch.no_grad():
        embeddings = np.stack([model.forward(w, 16000).double().numpy() for w in waves])
    save(out, "vggish", shapes=json.dumps(record["shapes"]), seed=SEED, waves=waves.astype(np.float32),
         embedding=embeddings)


def make_i3d(out, args):
    i3d = _load_file(args.pytorch_i3d, "ref_pytorch_i3d")
    with random_weights() as record:
        model = i3d.InceptionI3d(400, in_channels=3)
        model.load_state_dict({})
    model.eval()
    # 2 clips of 16 frames at 64x56 (kept small), resized to 224 as the PyTorch FVD code does:
    # bilinear, align_corners=False, then scaled to [-1, 1].
    videos = np.random.default_rng(5).integers(0, 256, (2, 16, 64, 56, 3), dtype=np.uint8)
    frames = torch.from_numpy(videos).float().reshape(32, 64, 56, 3).permute(0, 3, 1, 2)
    frames = torch.nn.functional.interpolate(frames, size=(224, 224), mode="bilinear", align_corners=False)
    inputs = (frames / 127.5 - 1.0).reshape(2, 16, 3, 224, 224).permute(0, 2, 1, 3, 4)  # [B, 3, T, H, W]
    with torch.no_grad():
        logits = model(inputs)  # [B, 400, T']
    save(out, "i3d", shapes=json.dumps(record["shapes"]), seed=SEED, videos=videos,
         logits=logits.mean(dim=2).double().numpy())


MAKERS = {"i3d": make_i3d, "panns": make_panns, "vggish": make_vggish, "frechet": make_frechet,
          "scores": make_scores, "inception": make_inception}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent))
    parser.add_argument("--audioldm-eval")
    parser.add_argument("--pytorch-i3d")
    parser.add_argument("--torchvggish", help="a checkout of github.com/harritaylor/torchvggish (torch hub's)")
    parser.add_argument("--only", nargs="*", default=sorted(MAKERS))
    args = parser.parse_args()
    torch.manual_seed(0)
    for name in args.only:
        MAKERS[name](args.out, args)


if __name__ == "__main__":
    main()
