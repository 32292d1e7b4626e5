"""Golden runner for the AudioLDM mel front end (`TacotronSTFT` + `wav_to_fbank`).

The front end has no learned weights: its official buffers (STFT bases, mel basis) are constants
that `codi_jax.data.mel` recomputes, so this component has no converter or manifest prefix; the
runner checks our mel basis against the stored one as well as every fixture tensor.
"""
from __future__ import annotations

import numpy as np

from codi_jax.convert import registry
from codi_jax.data import mel

# TacotronSTFT constructor argument -> our fixed value.
_EXPECTED = {
    "filter_length": mel.N_FFT,
    "win_length": mel.WIN_LENGTH,
    "hop_length": mel.HOP_LENGTH,
    "n_mel_channels": mel.N_MELS,
    "sampling_rate": mel.SAMPLE_RATE,
    "mel_fmin": mel.FMIN,
    "mel_fmax": mel.FMAX,
}


def check_constructor(constructor: dict) -> None:
    """The released front end is fixed; refuse a fixture built with other STFT settings."""
    for name, ours in _EXPECTED.items():
        if name in constructor and float(constructor[name]) != float(ours):
            raise ValueError(f"TacotronSTFT {name}={constructor[name]} is not supported; expected {ours}")


def run_golden(fixture_dir, config, meta, params, io) -> dict:
    check_constructor(config["constructor"])
    target_length = int(config["call"]["target_length"])
    segment = int(config["call"].get("segment_samples", target_length * mel.HOP_LENGTH))
    results = {}
    if "mel_basis" in params:
        results["mel_basis"] = (mel.mel_filterbank(), params["mel_basis"])
    cases = sorted(k[len("wave_"):] for k in io if k.startswith("wave_"))
    for case in cases:
        wave = io[f"wave_{case}"]
        normalized = mel.normalize_wav(wave)
        seg = mel.pad_or_cut(normalized, segment)
        ours = {
            "normalized": normalized,
            "segment": seg,
            # Fixture layouts put frequency before time: [B, bins, frames].
            "magnitude": np.transpose(np.asarray(mel.stft_magnitude(seg)), (0, 2, 1)),
            "logmel": np.transpose(np.asarray(mel.log_mel(seg)), (0, 2, 1)),
            "fbank": np.asarray(mel.wav_to_fbank(wave, target_length))[:, None],
        }
        for name, value in ours.items():
            key = f"{case}_{name}"
            if key in io:
                results[key] = (np.asarray(value), io[key])
    return results


registry.register(registry.Component(name="mel_frontend", run_golden=run_golden))
