"""Input pipeline: manifests and shards -> fixed-shape, globally sharded batches (see README.md).

Names are imported on first use: grain's worker processes import the transform modules of this
package and should not pay for jax or orbax at start-up.
"""

import importlib

_EXPORTS = {
    "DataPipeline": "qwen_audio_jax.data.pipeline",
    "DataIterator": "qwen_audio_jax.data.pipeline",
    "get_data_config": "qwen_audio_jax.data.config",
    "mixture_entry": "qwen_audio_jax.data.config",
    "validate_data_config": "qwen_audio_jax.data.config",
    "make_global_batch": "qwen_audio_jax.data.global_batch",
    "global_batches": "qwen_audio_jax.data.global_batch",
    "DataStats": "qwen_audio_jax.data.stats",
    "DataQualityError": "qwen_audio_jax.data.stats",
    "task_counts": "qwen_audio_jax.data.batching",
    "batch_spec": "qwen_audio_jax.data.batching",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'qwen_audio_jax.data' has no attribute {name!r}")
