"""Our checkpoint -> HF safetensors (Qwen2 / Qwen2-Audio layouts) with a config.json.

The rule table of the import is inverted, so HF -> ours -> HF gives back identical tensors. One
parameter leaf is restored at a time and at most one output shard is held in memory; tensor names
are those `transformers.save_pretrained` writes, so `from_pretrained` loads the result.
"""

import json
import os
from typing import Any, Dict, List, Optional

import numpy as np
from tqdm import tqdm

from qwen_audio_jax.convert import hf_config, names, orbax_io
from qwen_audio_jax.convert.importer import numpy_dtype
from qwen_audio_jax.convert.safetensors_io import (INDEX_FILE, CheckpointError, ShardedWriter,
                                                   parse_size)
from qwen_audio_jax.convert.tree import expected_shapes, path_str


def export_checkpoint(checkpoint: str, layout: str, out_dir: str, *, dtype: Optional[str] = None,
                      max_shard_size="5GB", token_ids: Optional[Dict[str, Any]] = None,
                      progress: bool = True) -> List[str]:
  """Writes the parameters of `checkpoint` as an HF `layout` checkpoint into `out_dir`.

  dtype: 'float32' / 'bfloat16' (default: the stored dtype). token_ids: config.json token fields
  (e.g. {'audio_token_index': 151646}) overriding those recorded at import. Returns the files
  written (shards, index, config.json).
  """
  if layout not in names.EXPORT_LAYOUTS:
    raise ValueError(f"export supports layouts {names.EXPORT_LAYOUTS}, not {layout!r}")
  config = orbax_io.load_model_config(orbax_io.checkpoint_root(checkpoint))
  info = orbax_io.read_conversion_info(checkpoint)
  stored = orbax_io.checkpoint_shapes(checkpoint)
  parts = names.LAYOUT_PARTS[layout]
  held = sorted({p[0] for p in stored})
  for part in parts:
    if part not in held:
      raise CheckpointError(f"{checkpoint} holds parameter groups {held}; the {layout!r} layout "
                            f"also needs {part!r}")
  expected = expected_shapes(config, parts)
  for p, shape in expected.items():
    if p not in stored:
      raise CheckpointError(f"{checkpoint} lacks parameter {path_str(p)}")
    if tuple(stored[p].shape) != shape:
      raise CheckpointError(f"{checkpoint}: parameter {path_str(p)} has shape "
                            f"{tuple(stored[p].shape)}, the configuration expects {shape}")
  if dtype is None:
    dtypes = {np.dtype(stored[p].dtype) for p in expected}
    if len(dtypes) != 1:
      raise ValueError(f"parameters have several dtypes {sorted(map(str, dtypes))}: pass dtype")
    out_dtype = dtypes.pop()
    dtype = out_dtype.name
  else:
    out_dtype = numpy_dtype(dtype)

  ids = dict(info.get("token_ids") or {})
  ids.update(token_ids or {})
  if layout == "qwen2":
    hf_dict = hf_config.qwen2_hf_dict(config.llm, dtype, ids)
  else:
    hf_dict = hf_config.qwen2_audio_hf_dict(config, dtype, ids)

  rules = names.rules_for_tree(names.rules_for_layout(layout), expected)
  plan = []
  for rule in rules:
    shapes = [expected[t][1:] if rule.layered else expected[t] for t in rule.targets]
    nbytes = int(np.prod(rule.source_shape(shapes))) * out_dtype.itemsize
    layers = range(names.layer_count(config, rule.targets[0])) if rule.layered else [None]
    plan += [(rule.source_name(i), nbytes) for i in layers]

  writer = ShardedWriter(out_dir, plan, parse_size(max_shard_size))
  bar = tqdm(total=len(plan), desc=f"exporting {layout}", unit="tensor", disable=not progress)
  for rule in rules:
    leaves = orbax_io.restore_leaves(checkpoint, rule.targets)
    layers = range(names.layer_count(config, rule.targets[0])) if rule.layered else [None]
    for i in layers:
      ours = [leaves[t][i] if rule.layered else leaves[t] for t in rule.targets]
      writer.add(rule.source_name(i), rule.to_source(ours).astype(out_dtype))
      bar.update(1)
  bar.close()
  files = writer.close()
  if len(files) > 1:
    files.append(INDEX_FILE)
  with open(os.path.join(out_dir, hf_config.CONFIG_FILE), "w", encoding="utf-8") as f:
    json.dump(hf_dict, f, indent=2, sort_keys=True)
    f.write("\n")
  files.append(hf_config.CONFIG_FILE)
  return [os.path.join(out_dir, f) for f in files]
