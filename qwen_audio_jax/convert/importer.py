"""Released safetensors checkpoints -> our parameter tree (scanned layout).

Before any tensor data is read, the checkpoint's tensor names are checked against the layout's
rule table: a tensor the layout needs but the files lack, or a tensor the layout does not know
(and does not skip on purpose), is an error naming it. Tensors are then read one at a time,
shape-checked against what the configuration expects, transformed (transposes and reshapes only,
so float32 -> float32 is bit-exact) and written into preallocated leaves. Leaves larger in total
than `memory_limit_bytes` live in memory-mapped scratch files, so an 8B checkpoint converts on a
host with less memory than its float32 size.
"""

import dataclasses
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from qwen_audio_jax import config as C
from qwen_audio_jax.convert import hf_config, names
from qwen_audio_jax.convert.safetensors_io import (RAW_FLOAT_DTYPES, CheckpointError,
                                                   SafetensorsReader)
from qwen_audio_jax.convert.tree import Path, expected_shapes, path_str, unflatten
from qwen_audio_jax.model.encoder import sinusoids

DTYPES = ("float32", "bfloat16")
DEFAULT_MEMORY_LIMIT = 4 * 2**30

# Tensors the official Qwen-Audio code may leave out of a checkpoint because they are fixed
# buffers, and how to rebuild them.
_OPTIONAL = {
    "transformer.audio.positional_embedding":
        ("Whisper's fixed sinusoids", lambda shape: sinusoids(shape[0], shape[1])),
}


@dataclasses.dataclass
class ConversionReport:
  """What a conversion did; saved as conversion.json next to the checkpoint."""
  layout: str
  source: str
  dtype: str
  parts: List[str]
  tensors_read: int = 0
  skipped: Dict[str, str] = dataclasses.field(default_factory=dict)
  fresh: Dict[str, str] = dataclasses.field(default_factory=dict)
  token_ids: Dict[str, Any] = dataclasses.field(default_factory=dict)
  encoder_source: Optional[Dict[str, Any]] = None

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)

  def summary(self) -> str:
    lines = [f"converted {self.tensors_read} tensors from {self.source} (layout {self.layout}) "
             f"into parameter groups {self.parts} as {self.dtype}"]
    if self.encoder_source:
      lines.append(f"audio encoder from {self.encoder_source['source']} "
                   f"(layout {self.encoder_source['layout']}, "
                   f"{self.encoder_source['tensors_read']} tensors)")
    if self.skipped:
      lines.append(f"skipped {len(self.skipped)} tensors (all listed in conversion.json):")
      by_reason: Dict[str, List[str]] = {}
      for name, reason in sorted(self.skipped.items()):
        by_reason.setdefault(reason, []).append(name)
      for reason, skipped in sorted(by_reason.items()):
        examples = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        lines.append(f"  {len(skipped)} x {reason}: {examples}")
    if self.fresh:
      lines.append(f"freshly initialised {len(self.fresh)} parameters:")
      lines += [f"  {p}: {d}" for p, d in sorted(self.fresh.items())]
    return "\n".join(lines)


def numpy_dtype(dtype: str) -> np.dtype:
  if dtype not in DTYPES:
    raise ValueError(f"dtype {dtype!r} is not one of {DTYPES}")
  return np.dtype(jnp.dtype(dtype))


def _allocate(shapes: Dict[Path, Tuple[int, ...]], dtype: np.dtype, scratch_dir: Optional[str],
              memory_limit_bytes: int) -> Dict[Path, np.ndarray]:
  """Output leaves: in memory, or memory-mapped scratch files when larger than the limit.

  Scratch files are unlinked as soon as they are mapped: the mapping keeps them usable and the
  disk space returns when the arrays are garbage-collected, whatever happens in between.
  """
  total = sum(int(np.prod(s)) for s in shapes.values()) * dtype.itemsize
  if total <= memory_limit_bytes:
    return {path: np.empty(shape, dtype) for path, shape in shapes.items()}
  directory = tempfile.mkdtemp(prefix="qwen_audio_convert_", dir=scratch_dir)
  try:
    leaves = {}
    for i, (path, shape) in enumerate(sorted(shapes.items())):
      file = os.path.join(directory, f"{i:04d}.bin")
      leaves[path] = np.memmap(file, dtype=dtype, mode="w+", shape=shape)
      os.unlink(file)
    return leaves
  finally:
    shutil.rmtree(directory, ignore_errors=True)


def _source_names(rules, config) -> Dict[str, Tuple[names.Rule, Optional[int]]]:
  out = {}
  for rule in rules:
    layers = range(names.layer_count(config, rule.targets[0])) if rule.layered else [None]
    for i in layers:
      out[rule.source_name(i)] = (rule, i)
  return out


def _check_names(reader: SafetensorsReader, layout: str, wanted: Dict[str, Any],
                 unused: Dict[str, str], report: ConversionReport):
  present = set(reader.names())
  for name in sorted(present - set(wanted)):
    reason = unused.get(name) or names.skip_reason(layout, name)
    if reason is None:
      raise CheckpointError(
          f"unexpected tensor {name!r} in {reader.file_of(name)}: the {layout!r} layout has no "
          f"parameter for it (wrong --layout?)")
    report.skipped[name] = reason
  missing = sorted(n for n in set(wanted) - present if n not in _OPTIONAL)
  if missing:
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    raise CheckpointError(f"tensor {missing[0]!r} is missing from the checkpoint in "
                          f"{reader.directory!r}{more}; the {layout!r} layout needs it")


def read_parameters(source: str, layout: str, config: C.QwenAudioConfig, *,
                    dtype: str = "float32", progress: bool = True,
                    scratch_dir: Optional[str] = None,
                    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT,
                    partial: bool = False):
  """(flat {path: array}, report) of `layout`'s parameter groups read from `source`.

  With `partial`, parameters of those groups that the layout has no tensor for (a Whisper
  checkpoint has no projection) are left out instead of being an error.
  """
  if layout not in names.LAYOUTS:
    raise ValueError(f"unknown layout {layout!r}; expected one of {names.LAYOUTS}")
  out_dtype = numpy_dtype(dtype)
  parts = [p for p in names.LAYOUT_PARTS[layout]
           if p != "audio_bos_eos" or config.encoder.audio_bos_eos]
  expected = expected_shapes(config, parts)
  report = ConversionReport(layout=layout, source=os.path.abspath(source), dtype=dtype,
                            parts=parts)
  with SafetensorsReader(source) as reader:
    all_rules = names.rules_for_layout(layout, reader.__contains__)
    rules = names.rules_for_tree(all_rules, expected, allow_uncovered=partial)
    expected = {t: expected[t] for r in rules for t in r.targets}
    wanted = _source_names(rules, config)
    # Tensors of the layout that this configuration has no parameter for (a stored LM head when
    # the configuration ties it to the embedding).
    unused = {r.source: "LM head tied to the input embedding" for r in all_rules
              if r not in rules and r.targets == (("llm", "lm_head"),)
              and config.llm.tie_embeddings}
    _check_names(reader, layout, wanted, unused, report)
    leaves = _allocate(expected, out_dtype, scratch_dir, memory_limit_bytes)
    bar = tqdm(total=len(wanted), desc=f"converting {layout}", unit="tensor",
               disable=not progress)
    for name, (rule, layer) in wanted.items():
      target_shapes = [expected[t][1:] if rule.layered else expected[t] for t in rule.targets]
      want = rule.source_shape(target_shapes)
      if name not in reader and name in _OPTIONAL:
        description, build = _OPTIONAL[name]
        leaves[rule.targets[0]][...] = build(want).astype(out_dtype)
        report.fresh[path_str(rule.targets[0])] = f"{description} (not in the checkpoint)"
        bar.update(1)
        continue
      found = reader.shape(name)
      if found != want:
        raise CheckpointError(
            f"tensor {name!r} in {reader.file_of(name)} has shape {list(found)}, expected "
            f"{list(want)} (for parameter {', '.join(path_str(t) for t in rule.targets)})")
      array = reader.read(name)
      if array.dtype.kind != "f" and array.dtype not in RAW_FLOAT_DTYPES.values():
        raise CheckpointError(f"tensor {name!r} in {reader.file_of(name)} has dtype "
                              f"{array.dtype}, expected a floating-point type")
      for target, value in zip(rule.targets, rule.to_ours(array, target_shapes)):
        if rule.layered:
          leaves[target][layer] = value.astype(out_dtype)
        else:
          leaves[target][...] = value.astype(out_dtype)
      report.tensors_read += 1
      bar.update(1)
    bar.close()
  return leaves, report


def convert_checkpoint(source: str, layout: str, *, dtype: str = "float32",
                       config: Optional[C.QwenAudioConfig] = None, progress: bool = True,
                       scratch_dir: Optional[str] = None,
                       memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT):
  """(params, config, report): the scanned parameter tree of a released checkpoint.

  `config` defaults to `config_from_hf(source, layout)`. Leaves are numpy arrays, memory-mapped
  (unlinked scratch files under `scratch_dir`) when larger than `memory_limit_bytes` in total.
  """
  data = hf_config.read_config_json(source)
  if config is None:
    config = hf_config.config_from_hf_dict(data, layout, dtype=dtype,
                                           where=os.path.join(source, hf_config.CONFIG_FILE))
  flat, report = read_parameters(source, layout, config, dtype=dtype, progress=progress,
                                 scratch_dir=scratch_dir, memory_limit_bytes=memory_limit_bytes)
  report.token_ids = hf_config.token_ids_from_hf(data, layout)
  return unflatten(flat), config, report


def fresh_parameters(shapes: Dict[Path, Tuple[int, ...]], seed: int, dtype: str,
                     stddev: float = 0.02) -> Dict[Path, np.ndarray]:
  """The model's own initialisation for new parameters: biases zero, the rest normal(stddev)."""
  key = jax.random.key(seed)
  out = {}
  for i, (path, shape) in enumerate(sorted(shapes.items())):
    if path[-1] == "bias":
      value = jnp.zeros(shape, jnp.float32)
    else:
      value = stddev * jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)
    out[path] = np.asarray(value).astype(numpy_dtype(dtype))
  return out


def combined_config(llm_config: C.QwenAudioConfig, encoder_config: C.QwenAudioConfig,
                    llm_layout: str) -> C.QwenAudioConfig:
  """A whole model: the encoder of `encoder_config` joined to the LLM of `llm_config`."""
  family = {"qwen": "qwen", "qwen2": "qwen2"}.get(llm_layout)
  if family is None:
    raise ValueError(f"an encoder can only be combined with an LLM-only layout ('qwen' or "
                     f"'qwen2'), not {llm_layout!r}")
  encoder = hf_config.attach_encoder(encoder_config.encoder, llm_config.llm, family)
  return dataclasses.replace(llm_config, encoder=encoder)


def convert_to_orbax(source: str, layout: str, out_dir: str, *, dtype: str = "float32",
                     combine_encoder: Optional[str] = None, encoder_layout: str = "whisper",
                     seed: int = 0, progress: bool = True, overwrite: bool = False,
                     memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT) -> ConversionReport:
  """Converts `source` (plus optionally a Whisper encoder) into our checkpoint at `out_dir`.

  With `combine_encoder`, the result is a stage-1 initialisation of the whole model: Whisper's
  encoder, the LLM of `source`, and a freshly initialised projection (and Qwen-Audio's bos/eos
  embeddings for the 'qwen' layout), seeded by `seed`.
  """
  from qwen_audio_jax.convert import orbax_io  # orbax only when writing

  numpy_dtype(dtype)
  existing = os.path.join(out_dir, orbax_io.PARAMS_DIR)
  if os.path.exists(existing) and not overwrite:
    raise FileExistsError(f"{existing} already exists (pass overwrite=True / --overwrite)")
  os.makedirs(out_dir, exist_ok=True)
  data = hf_config.read_config_json(source)
  config = hf_config.config_from_hf_dict(data, layout, dtype=dtype,
                                         where=os.path.join(source, hf_config.CONFIG_FILE))
  scratch = os.path.abspath(out_dir)
  if combine_encoder is not None:
    if encoder_layout != "whisper":
      raise ValueError(f"encoder layout {encoder_layout!r} is not supported (expected 'whisper')")
    encoder_only = hf_config.config_from_hf(combine_encoder, encoder_layout, dtype=dtype)
    config = combined_config(config, encoder_only, layout)
  flat, report = read_parameters(source, layout, config, dtype=dtype, progress=progress,
                                 scratch_dir=scratch, memory_limit_bytes=memory_limit_bytes)
  report.token_ids = hf_config.token_ids_from_hf(data, layout)
  if combine_encoder is not None:
    enc_flat, enc_report = read_parameters(
        combine_encoder, encoder_layout, config, dtype=dtype, progress=progress,
        scratch_dir=scratch, memory_limit_bytes=memory_limit_bytes, partial=True)
    flat.update(enc_flat)
    report.skipped.update(enc_report.skipped)
    report.encoder_source = {"source": enc_report.source, "layout": encoder_layout,
                             "tensors_read": enc_report.tensors_read}
    new_parts = ["audio_encoder"] + (["audio_bos_eos"] if config.encoder.audio_bos_eos else [])
    new = {p: s for p, s in expected_shapes(config, new_parts).items() if p not in flat}
    flat.update(fresh_parameters(new, seed, dtype))
    for p in new:
      kind = "zeros" if p[-1] == "bias" else "normal(0.02)"
      report.fresh[path_str(p)] = f"{kind}, seed {seed}"
    report.parts = [p for p in ("audio_encoder", "audio_bos_eos", "llm")
                    if any(k[0] == p for k in flat)]
  orbax_io.save_checkpoint(out_dir, unflatten(flat), config, report.to_dict(),
                           overwrite=overwrite)
  return report
