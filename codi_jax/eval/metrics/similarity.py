"""Embeddings in CoDi's shared space for the similarity metrics: CLIP text, image, per-frame and video
embeddings, CLAP audio embeddings (CoDi's CLAP is aligned to CLIP's text space, so any two of them
compare by cosine). CLIP score and CLIPSIM use the per-image / per-frame path (no temporal layers); the
joint-generation coherence (SIM-IT, SIM-AT, SIM-VT, SIM-VA) uses each modality's prompt encoder as CoDi
conditions on it. Every network call is sharded over the mesh through `extract.FeatureExtractor`.
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from codi_jax.data.preprocess import scale_to_unit_range
from codi_jax.eval.metrics.extract import FeatureExtractor
from codi_jax.models import clip_preprocess


class Embedder:
    """L2-normalised embeddings [N, D] of captions, images, frames, videos and 16 kHz audio."""

    def __init__(self, clip_model, clip_variables, tokenizer, mesh, batch_size: int, clap_model=None,
                 clap_variables=None):
        self.clip, self.tokenizer, self.batch_size = clip_model, tokenizer, int(batch_size)

        def method(model, name, **kwargs):
            return lambda variables, x: {"embedding": model.apply(variables, x, method=name, **kwargs)[:, 0]}

        self._text = FeatureExtractor(method(clip_model, "encode_text"), clip_variables, mesh, batch_size)
        self._image = FeatureExtractor(method(clip_model, "encode_image"), clip_variables, mesh, batch_size)
        self._video = FeatureExtractor(method(clip_model, "encode_video"), clip_variables, mesh, batch_size)
        self._audio = None
        if clap_model is not None:
            # A fixed key: clips longer than CLAP's 10 s are cropped at the same place in every run.
            self._audio = FeatureExtractor(method(clap_model, "encode_audio", rng=jax.random.key(0)),
                                           clap_variables, mesh, batch_size)

    def _run(self, extractor: FeatureExtractor, inputs: np.ndarray) -> np.ndarray:
        chunks = [inputs[i:i + extractor.per_host_batch] for i in range(0, len(inputs), extractor.per_host_batch)]
        return np.concatenate([out["embedding"] for out in extractor.stream(chunks)]).astype(np.float32)

    def text(self, captions: Sequence[str]) -> np.ndarray:
        # Truncated to CLIP's context, as CLIP-score tools do: generated captions have no length bound.
        ids = self.tokenizer.encode(list(captions), self.clip.max_positions, truncate=True)
        return self._run(self._text, np.asarray(ids))

    def images(self, images) -> np.ndarray:
        """uint8 [N, H, W, 3]."""
        pixels = clip_preprocess.preprocess_images(scale_to_unit_range(np.asarray(images)), self.clip.image_size)
        return self._run(self._image, pixels)

    def frames(self, videos) -> np.ndarray:
        """uint8 [N, F, H, W, 3] -> every frame's image embedding [N, F, D] (CLIPSIM's input)."""
        videos = np.asarray(videos)
        n, f = videos.shape[:2]
        return self.images(videos.reshape((n * f,) + videos.shape[2:])).reshape(n, f, -1)

    def videos(self, videos) -> np.ndarray:
        """uint8 [N, F, H, W, 3] through the video CLIP (temporal layers), as CoDi conditions on video."""
        pixels = clip_preprocess.preprocess_videos(scale_to_unit_range(np.asarray(videos)), self.clip.image_size)
        return self._run(self._video, pixels)

    def audio(self, waves) -> np.ndarray:
        """float32 [N, S] at 16 kHz."""
        if self._audio is None:
            raise ValueError("audio embeddings need a CLAP model")
        return self._run(self._audio, np.asarray(waves, np.float32))
