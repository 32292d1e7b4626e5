"""Any-to-any generation: `CoDiPipeline.from_config(config)` and `Request`s (`python -m codi_jax.sample` is the CLI).

requests   the request schema, its checks and batch files
weights    where each network's weights come from (random, a training workdir, released files)
compiled   the jitted calls: prompt encoders, the guided denoising loop, the decoders
pipeline   conditioning, batching, decoding and writing a generation's files
"""
from codi_jax.errors import ConfigError
from codi_jax.models.catalogue import MODALITIES, NAMES as COMPONENTS
from codi_jax.sampling import compiled
from codi_jax.sampling.pipeline import (GRIFFIN_LIM_ITERATIONS, MEL_INVERSIONS, CoDiPipeline, enable_compilation_cache,
                                        latent_shapes, output_shapes)
from codi_jax.sampling.requests import SAMPLERS, Request, RequestError, load_inputs, read_batch_file
from codi_jax.sampling.weights import (RELEASED_MARKER, CheckpointError, abstract_variables, build_networks,
                                       config_for_checkpoint, held_components, load_variables, random_variables,
                                       resolve_checkpoint)

__all__ = ["COMPONENTS", "GRIFFIN_LIM_ITERATIONS", "MEL_INVERSIONS", "MODALITIES", "RELEASED_MARKER", "SAMPLERS",
           "CheckpointError", "CoDiPipeline", "ConfigError", "Request", "RequestError", "abstract_variables",
           "build_networks", "compiled", "config_for_checkpoint", "enable_compilation_cache", "held_components",
           "latent_shapes", "load_inputs", "load_variables", "output_shapes", "random_variables", "read_batch_file",
           "resolve_checkpoint"]
