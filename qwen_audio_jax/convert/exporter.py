"""Our checkpoints and training runs -> the layouts users load, with their config.json.

    whisper       the audio encoder alone, as transformers' WhisperEncoder (conv1, layers.N.*,
                  layer_norm: the encoder body; Qwen-Audio's projection is left out)
    qwen2         the LLM as Qwen2ForCausalLM
    qwen_audio    the whole model in the official Qwen-Audio layout (transformer.audio.*,
                  transformer.h.N.*) with its config.json and qwen.tiktoken, for the release's
                  own code (its remote-code .py files are not ours to ship: copy them from the
                  release)
    qwen2_audio   transformers' Qwen2AudioForConditionalGeneration (tokenizer files too when the
                  model has a transformers tokenizer)

The source is a converted checkpoint (`python -m qwen_audio_jax.convert`: read one parameter at a
time, so an 8B model exports on a small host) or a training run's `<workdir>/checkpoints/<step>`
(read with `checkpoints.load_model`: the run's model config from its workdir, LoRA factors merged
into the kernels). A LoRA run exported to qwen2_audio may instead keep its factors apart:
`lora='adapters'` writes the base weights and a PEFT adapter (`adapter/adapter_model.safetensors`
+ `adapter_config.json`) that `peft.PeftModel.from_pretrained` applies.

The rule table of the import is inverted, so HF -> ours -> HF gives back identical tensors; at
most one output shard is held in memory.
"""

import json
import os
import re
import shutil
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from safetensors.numpy import save_file
from tqdm import tqdm

from qwen_audio_jax.convert import hf_config, names, orbax_io
from qwen_audio_jax.convert.importer import numpy_dtype
from qwen_audio_jax.convert.safetensors_io import (INDEX_FILE, CheckpointError, ShardedWriter,
                                                   parse_size)
from qwen_audio_jax.convert.tree import Path, expected_shapes, flatten, path_str

LORA_MODES = ("merge", "adapters")
ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
VOCAB_FILE = "qwen.tiktoken"


class _Source:
  """What an export reads: the model config, stored shapes, leaves by path, the tokenizer."""

  def __init__(self, config, shapes: Dict[Path, Any], leaves: Callable[[List[Path]], Dict],
               token_ids: Dict[str, Any], tokenizer: Callable[[], Any], lora=None,
               lora_config=None):
    self.config, self.shapes, self.leaves = config, shapes, leaves
    self.token_ids, self.tokenizer = token_ids, tokenizer
    self.lora, self.lora_config = lora, lora_config


def _converted_source(checkpoint: str, tokenizer_path: Optional[str]) -> _Source:
  root = orbax_io.checkpoint_root(checkpoint)
  config = orbax_io.load_model_config(root)
  info = orbax_io.read_conversion_info(checkpoint)

  def tokenizer():
    from qwen_audio_jax import checkpoints  # pylint: disable=g-import-not-at-top
    source = info.get("source")
    return checkpoints.tokenizer_for(config, tokenizer_path=tokenizer_path, checkpoint_dir=root,
                                     conversion_source=source if isinstance(source, str) else None)

  return _Source(config, orbax_io.checkpoint_shapes(checkpoint),
                 lambda paths: orbax_io.restore_leaves(checkpoint, paths),
                 dict(info.get("token_ids") or {}), tokenizer)


def _run_source(step_dir: str, tokenizer_path: Optional[str], lora: str) -> _Source:
  from qwen_audio_jax import checkpoints  # pylint: disable=g-import-not-at-top
  loaded = checkpoints.load_model(step_dir, tokenizer_path=tokenizer_path)
  params = loaded.params
  if lora == "adapters" and loaded.lora is not None:
    params, _ = checkpoints.restore_run_params(step_dir, loaded.model_config, loaded.run_config,
                                               checkpoints.single_device_mesh())
  flat = {p: np.asarray(x) for p, x in flatten(params).items()}
  factors = None if loaded.lora is None else {
      k: {n: np.asarray(v) for n, v in f.items()} for k, f in loaded.lora.items()}
  return _Source(loaded.model_config, flat, lambda paths: {p: flat[p] for p in paths}, {},
                 lambda: loaded.tokenizer, lora=factors, lora_config=loaded.lora_config)


def _open(checkpoint: str, tokenizer_path: Optional[str], lora: str) -> _Source:
  from qwen_audio_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
  if checkpointing.is_run_step_dir(checkpoint):
    return _run_source(checkpoint, tokenizer_path, lora)
  return _converted_source(checkpoint, tokenizer_path)


def _hf_dict(layout: str, config, dtype: str, ids: Dict[str, Any]) -> Dict[str, Any]:
  if layout == "whisper":
    return hf_config.whisper_hf_dict(config.encoder, dtype)
  if layout == "qwen2":
    return hf_config.qwen2_hf_dict(config.llm, dtype, ids)
  if layout == "qwen_audio":
    return hf_config.official_hf_dict(config, dtype, ids)
  return hf_config.qwen2_audio_hf_dict(config, dtype, ids)


def _expected(layout: str, config, stored: Dict[Path, Any], where: str) -> Dict[Path, Tuple]:
  """The (scanned) shapes the layout writes, checked against what `where` holds."""
  parts = names.LAYOUT_PARTS[layout]
  held = sorted({p[0] for p in stored})
  for part in parts:
    if part not in held:
      raise CheckpointError(f"{where} holds parameter groups {held}; the {layout!r} layout "
                            f"also needs {part!r}")
  expected = expected_shapes(config, parts)
  if layout == "whisper":  # the encoder body only: no projection to an LLM
    expected = {p: s for p, s in expected.items() if p[:2] != ("audio_encoder", "proj")}
  for p, shape in expected.items():
    if p not in stored:
      raise CheckpointError(f"{where} lacks parameter {path_str(p)}")
    if tuple(stored[p].shape) != shape:
      raise CheckpointError(f"{where}: parameter {path_str(p)} has shape "
                            f"{tuple(stored[p].shape)}, the configuration expects {shape}")
  return expected


def _tokenizer_of(source: _Source, layout: str):
  """The tokenizer shipped with the export: required for the official layout (qwen.tiktoken),
  copied when there is one for qwen2 / qwen2_audio, none for the encoder alone."""
  if layout == "whisper":
    return None
  from qwen_audio_jax import checkpoints  # pylint: disable=g-import-not-at-top
  try:
    return source.tokenizer()
  except checkpoints.CheckpointNotFound:
    if layout == "qwen_audio":
      raise
    return None


def _write_tokenizer(layout: str, tokenizer, out_dir: str) -> List[str]:
  """qwen.tiktoken for the official layout; a transformers tokenizer's own files otherwise."""
  vocab_file = getattr(tokenizer, "vocab_file", None)
  if layout == "qwen_audio":
    if not vocab_file:
      raise CheckpointError("the official Qwen-Audio layout needs the qwen.tiktoken vocabulary; "
                            "this model's tokenizer has none (pass tokenizer_path)")
    shutil.copyfile(vocab_file, os.path.join(out_dir, VOCAB_FILE))
    return [VOCAB_FILE]
  hf = getattr(tokenizer, "hf", None)
  if layout in ("qwen2", "qwen2_audio") and hf is not None:
    before = set(os.listdir(out_dir))
    hf.save_pretrained(out_dir)
    return sorted(set(os.listdir(out_dir)) - before)
  return []


def _peft_adapter(source: _Source, rules, out_dir: str) -> List[str]:
  """The LoRA factors as a PEFT adapter for the exported Qwen2-Audio model (lora_A [r, in],
  lora_B [out, r] per target module and layer; PEFT's scale alpha / r is ours)."""
  by_target = {r.targets[0]: r for r in rules if r.kind == "dense" and len(r.targets) == 1}
  tensors, modules = {}, set()
  for key in sorted(source.lora):
    path = tuple(key.split("/"))
    rule = by_target.get(path)
    if rule is None or path[0] != "llm":
      raise ValueError(f"LoRA factors of {key} have no module of the LLM in the qwen2_audio "
                       f"layout; export them merged (lora='merge')")
    a, b = source.lora[key]["a"], source.lora[key]["b"]
    layers = range(a.shape[0]) if rule.layered else [None]
    for i in layers:
      module = rule.source_name(i)[:-len(".weight")]
      modules.add(module.rsplit(".", 1)[-1])
      a_i, b_i = (a[i], b[i]) if rule.layered else (a, b)
      tensors[f"base_model.model.{module}.lora_A.weight"] = np.ascontiguousarray(a_i.T)
      tensors[f"base_model.model.{module}.lora_B.weight"] = np.ascontiguousarray(b_i.T)
  directory = os.path.join(out_dir, ADAPTER_DIR)
  os.makedirs(directory, exist_ok=True)
  save_file(tensors, os.path.join(directory, ADAPTER_WEIGHTS), metadata={"format": "pt"})
  adapter = {
      "peft_type": "LORA", "task_type": None, "r": int(source.lora_config.rank),
      "lora_alpha": float(source.lora_config.alpha), "lora_dropout": 0.0, "bias": "none",
      "target_modules": r".*language_model.*\.(" + "|".join(sorted(map(re.escape, modules)))
                        + ")",
      "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
      "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
      "base_model_name_or_path": os.path.abspath(out_dir),
  }
  with open(os.path.join(directory, ADAPTER_CONFIG), "w", encoding="utf-8") as f:
    json.dump(adapter, f, indent=2, sort_keys=True)
    f.write("\n")
  return [os.path.join(ADAPTER_DIR, ADAPTER_WEIGHTS), os.path.join(ADAPTER_DIR, ADAPTER_CONFIG)]


def export_checkpoint(checkpoint: str, layout: str, out_dir: str, *, dtype: Optional[str] = None,
                      max_shard_size="5GB", token_ids: Optional[Dict[str, Any]] = None,
                      lora: str = "merge", tokenizer_path: Optional[str] = None,
                      progress: bool = True) -> List[str]:
  """Writes the model of `checkpoint` (converted, or a run's step directory) as `layout`.

  dtype: 'float32' / 'bfloat16' (default: the stored dtype). token_ids: config.json token fields
  (e.g. {'audio_token_index': 151646}) overriding those recorded at import. lora: 'merge' (the
  factors of a LoRA run folded into the weights) or 'adapters' (qwen2_audio only: base weights
  plus a PEFT adapter). tokenizer_path: the vocabulary to ship, overriding the model's own.
  Returns the files written.
  """
  if layout not in names.EXPORT_LAYOUTS:
    raise ValueError(f"export supports layouts {names.EXPORT_LAYOUTS}, not {layout!r}")
  if lora not in LORA_MODES:
    raise ValueError(f"lora must be one of {LORA_MODES}, not {lora!r}")
  if lora == "adapters" and layout != "qwen2_audio":
    raise ValueError(f"LoRA adapters are exported in the PEFT layout of Qwen2-Audio only "
                     f"(layout 'qwen2_audio'), not {layout!r}; use lora='merge'")
  source = _open(os.fspath(checkpoint), tokenizer_path, lora)
  if lora == "adapters" and source.lora is None:
    raise ValueError(f"{checkpoint}: lora='adapters' needs a LoRA run's step directory; this "
                     f"checkpoint has no LoRA factors")
  config = source.config
  expected = _expected(layout, config, source.shapes, checkpoint)
  if dtype is None:
    dtypes = {np.dtype(source.shapes[p].dtype) for p in expected}
    if len(dtypes) != 1:
      raise ValueError(f"parameters have several dtypes {sorted(map(str, dtypes))}: pass dtype")
    out_dtype = dtypes.pop()
    dtype = out_dtype.name
  else:
    out_dtype = numpy_dtype(dtype)

  ids = dict(source.token_ids)
  ids.update(token_ids or {})
  tokenizer = _tokenizer_of(source, layout)
  if layout == "qwen_audio" and "audio_start_id" not in ids:
    ids["audio_start_id"] = tokenizer.audio_start_id
  hf_dict = _hf_dict(layout, config, dtype, ids)

  rules = names.rules_for_tree(names.export_rules(layout), expected)
  plan = []
  for rule in rules:
    shapes = [expected[t][1:] if rule.layered else expected[t] for t in rule.targets]
    nbytes = int(np.prod(rule.source_shape(shapes))) * out_dtype.itemsize
    layers = range(names.layer_count(config, rule.targets[0])) if rule.layered else [None]
    plan += [(rule.source_name(i), nbytes) for i in layers]

  writer = ShardedWriter(out_dir, plan, parse_size(max_shard_size))
  bar = tqdm(total=len(plan), desc=f"exporting {layout}", unit="tensor", disable=not progress)
  for rule in rules:
    leaves = source.leaves(list(rule.targets))
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
  if tokenizer is not None:
    files += _write_tokenizer(layout, tokenizer, out_dir)
  if lora == "adapters":
    files += _peft_adapter(source, rules, out_dir)
  return [os.path.join(out_dir, f) for f in files]
