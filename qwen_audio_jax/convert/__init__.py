"""Checkpoint conversion: released safetensors checkpoints <-> our Orbax checkpoints.

Import (layouts 'whisper', 'qwen2', 'qwen', 'qwen_audio', 'qwen2_audio'):
    params, config, report = convert_checkpoint(source_dir, 'qwen2_audio')
    convert_to_orbax(source_dir, 'qwen2_audio', out_dir)        # what the CLI runs
Restore:
    params = load_params(out_dir, config=None, shardings=None)
Export (layouts 'whisper', 'qwen2', 'qwen_audio', 'qwen2_audio'; a converted checkpoint or a
training run's checkpoints/<step>):
    export_checkpoint(out_dir, 'qwen2_audio', hf_dir)
Command line: `python -m qwen_audio_jax.convert --help`.
"""

from qwen_audio_jax.convert.exporter import export_checkpoint
from qwen_audio_jax.convert.hf_config import config_from_hf, config_from_hf_dict
from qwen_audio_jax.convert.importer import (ConversionReport, combined_config, convert_checkpoint,
                                             convert_to_orbax)
from qwen_audio_jax.convert.names import EXPORT_LAYOUTS, LAYOUTS
from qwen_audio_jax.convert.orbax_io import (load_model_config, load_params, save_checkpoint,
                                             save_model_config)
from qwen_audio_jax.convert.safetensors_io import CheckpointError, SafetensorsReader
from qwen_audio_jax.convert.stacking import stack_layers, unstack_layers

__all__ = [
    "CheckpointError", "ConversionReport", "EXPORT_LAYOUTS", "LAYOUTS", "SafetensorsReader",
    "combined_config", "config_from_hf", "config_from_hf_dict", "convert_checkpoint",
    "convert_to_orbax", "export_checkpoint", "load_model_config", "load_params",
    "save_checkpoint", "save_model_config", "stack_layers", "unstack_layers",
]
