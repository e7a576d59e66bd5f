"""Name and layout mappings between released checkpoints and our parameter tree.

Every parameter of ours comes from exactly one source tensor through one of a few exact
transforms (`Rule.kind`), each with its inverse so the same table serves import and export:

- 'copy':    same array (norm scales, embeddings, positions, audio bos/eos);
- 'reshape': flat bias [H*D] <-> per-head bias [H, D];
- 'dense':   torch Linear weight [out, in] <-> our kernel [*in_dims, *out_dims] (`n_in` leading
             axes of ours are the input: 1 for most, 2 for attention outputs [H, D, W]);
- 'conv':    torch Conv1d weight [out, in, k] <-> our kernel [k, in, out];
- 'qkv_weight' / 'qkv_bias': Qwen-7B's fused c_attn (rows q | k | v) <-> our three projections.

Rules whose source holds '{i}' are per layer; their targets are our stacked ('scan') leaves with
a leading layer axis. Paths are tuples of keys in the parameter dict.
"""

import dataclasses
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from qwen_audio_jax.config import QwenAudioConfig

Path = Tuple[str, ...]

LAYOUTS = ("whisper", "qwen2", "qwen", "qwen_audio", "qwen2_audio")
# Parameter groups each layout provides (the top-level keys of our tree).
LAYOUT_PARTS = {
    "whisper": ("audio_encoder",),
    "qwen2": ("llm",),
    "qwen": ("llm",),
    "qwen_audio": ("audio_encoder", "audio_bos_eos", "llm"),
    "qwen2_audio": ("audio_encoder", "llm"),
}
# Layouts a checkpoint or a run can be exported to: the Whisper encoder alone, the LLM as Qwen2,
# the whole model in the official Qwen-Audio layout or as transformers' Qwen2-Audio.
EXPORT_LAYOUTS = ("whisper", "qwen2", "qwen_audio", "qwen2_audio")

_ENCODER_BLOCK = ("audio_encoder", "blocks", "block")
_LLM_BLOCK = ("llm", "layers", "block")


@dataclasses.dataclass(frozen=True)
class Rule:
  """One source tensor <-> one or more of our leaves (several only for fused projections)."""
  source: str
  targets: Tuple[Path, ...]
  kind: str = "copy"
  n_in: int = 1

  @property
  def layered(self) -> bool:
    return "{i}" in self.source

  def source_name(self, layer: Optional[int] = None) -> str:
    return self.source.format(i=layer) if self.layered else self.source

  def source_shape(self, target_shapes: Sequence[Tuple[int, ...]]) -> Tuple[int, ...]:
    """Shape the source tensor must have, from our (per-layer) target shapes."""
    shape = tuple(target_shapes[0])
    if self.kind == "copy":
      return shape
    if self.kind == "reshape":
      return (int(np.prod(shape)),)
    if self.kind == "dense":
      return (int(np.prod(shape[self.n_in:])), int(np.prod(shape[:self.n_in])))
    if self.kind == "conv":
      return shape[::-1]
    if self.kind == "qkv_weight":
      width = shape[0]
      return (sum(int(np.prod(s[1:])) for s in target_shapes), width)
    if self.kind == "qkv_bias":
      return (sum(int(np.prod(s)) for s in target_shapes),)
    raise ValueError(f"unknown rule kind {self.kind!r}")

  def to_ours(self, source: np.ndarray,
              target_shapes: Sequence[Tuple[int, ...]]) -> List[np.ndarray]:
    """Our (per-layer) arrays from one source tensor; exact (only transposes and reshapes)."""
    shape = tuple(target_shapes[0])
    if self.kind == "copy":
      return [source]
    if self.kind == "reshape":
      return [source.reshape(shape)]
    if self.kind == "dense":
      return [source.T.reshape(shape)]
    if self.kind == "conv":
      return [source.transpose(2, 1, 0)]
    if self.kind in ("qkv_weight", "qkv_bias"):
      sizes = [int(np.prod(s[1:] if self.kind == "qkv_weight" else s)) for s in target_shapes]
      parts = np.split(source, np.cumsum(sizes)[:-1], axis=0)
      if self.kind == "qkv_weight":
        return [p.T.reshape(s) for p, s in zip(parts, target_shapes)]
      return [p.reshape(s) for p, s in zip(parts, target_shapes)]
    raise ValueError(f"unknown rule kind {self.kind!r}")

  def to_source(self, ours: Sequence[np.ndarray]) -> np.ndarray:
    """Inverse of `to_ours`."""
    first = ours[0]
    if self.kind == "copy":
      return first
    if self.kind == "reshape":
      return first.reshape(-1)
    if self.kind == "dense":
      n_in = int(np.prod(first.shape[:self.n_in]))
      return first.reshape(n_in, -1).T
    if self.kind == "conv":
      return first.transpose(2, 1, 0)
    if self.kind == "qkv_weight":
      return np.concatenate([o.reshape(o.shape[0], -1).T for o in ours], axis=0)
    if self.kind == "qkv_bias":
      return np.concatenate([o.reshape(-1) for o in ours], axis=0)
    raise ValueError(f"unknown rule kind {self.kind!r}")


def _enc(*keys) -> Path:
  return ("audio_encoder",) + keys


def _enc_block(*keys) -> Path:
  return _ENCODER_BLOCK + keys


def _llm(*keys) -> Path:
  return ("llm",) + keys


def _llm_block(*keys) -> Path:
  return _LLM_BLOCK + keys


def _layer_norm(source: str, target: Path) -> List[Rule]:
  return [Rule(f"{source}.weight", (target + ("scale",),)),
          Rule(f"{source}.bias", (target + ("bias",),))]


def _linear(source: str, target: Path, bias: bool = True, n_in: int = 1,
            bias_kind: str = "reshape") -> List[Rule]:
  rules = [Rule(f"{source}.weight", (target + ("kernel",),), "dense", n_in)]
  if bias:
    rules.append(Rule(f"{source}.bias", (target + ("bias",),), bias_kind))
  return rules


def whisper_encoder_rules(prefix: str) -> List[Rule]:
  """HF Whisper encoder names (also Qwen2-Audio's audio tower) under `prefix`."""
  p, b = prefix, f"{prefix}layers.{{i}}."
  rules = [
      Rule(f"{p}conv1.weight", (_enc("conv1", "kernel"),), "conv"),
      Rule(f"{p}conv1.bias", (_enc("conv1", "bias"),)),
      Rule(f"{p}conv2.weight", (_enc("conv2", "kernel"),), "conv"),
      Rule(f"{p}conv2.bias", (_enc("conv2", "bias"),)),
      Rule(f"{p}embed_positions.weight", (_enc("positional_embedding"),)),
  ]
  rules += _layer_norm(f"{b}self_attn_layer_norm", _enc_block("attn_ln"))
  rules += _linear(f"{b}self_attn.q_proj", _enc_block("query"))
  rules += _linear(f"{b}self_attn.k_proj", _enc_block("key"), bias=False)
  rules += _linear(f"{b}self_attn.v_proj", _enc_block("value"))
  rules += _linear(f"{b}self_attn.out_proj", _enc_block("out"), n_in=2, bias_kind="copy")
  rules += _layer_norm(f"{b}final_layer_norm", _enc_block("mlp_ln"))
  rules += _linear(f"{b}fc1", _enc_block("fc1"), bias_kind="copy")
  rules += _linear(f"{b}fc2", _enc_block("fc2"), bias_kind="copy")
  rules += _layer_norm(f"{p}layer_norm", _enc("ln_post"))
  return rules


def official_audio_rules(prefix: str = "transformer.audio.") -> List[Rule]:
  """Qwen-Audio's audio encoder (openai-whisper names) plus its projection and bos/eos."""
  p, b = prefix, f"{prefix}blocks.{{i}}."
  rules = [
      Rule(f"{p}conv1.weight", (_enc("conv1", "kernel"),), "conv"),
      Rule(f"{p}conv1.bias", (_enc("conv1", "bias"),)),
      Rule(f"{p}conv2.weight", (_enc("conv2", "kernel"),), "conv"),
      Rule(f"{p}conv2.bias", (_enc("conv2", "bias"),)),
      Rule(f"{p}positional_embedding", (_enc("positional_embedding"),)),
  ]
  rules += _layer_norm(f"{b}attn_ln", _enc_block("attn_ln"))
  rules += _linear(f"{b}attn.query", _enc_block("query"))
  rules += _linear(f"{b}attn.key", _enc_block("key"), bias=False)
  rules += _linear(f"{b}attn.value", _enc_block("value"))
  rules += _linear(f"{b}attn.out", _enc_block("out"), n_in=2, bias_kind="copy")
  rules += _layer_norm(f"{b}mlp_ln", _enc_block("mlp_ln"))
  rules += _linear(f"{b}mlp.0", _enc_block("fc1"), bias_kind="copy")
  rules += _linear(f"{b}mlp.2", _enc_block("fc2"), bias_kind="copy")
  rules += _layer_norm(f"{p}ln_post", _enc("ln_post"))
  rules += _linear(f"{p}proj", _enc("proj"), bias_kind="copy")
  rules.append(Rule(f"{p}audio_bos_eos_token.weight", (("audio_bos_eos",),)))
  return rules


def qwen2_rules(prefix: str = "model.", head: str = "lm_head.weight") -> List[Rule]:
  """HF Qwen2 decoder names under `prefix`, with the LM head tensor `head`."""
  p, b = prefix, f"{prefix}layers.{{i}}."
  rules = [Rule(f"{p}embed_tokens.weight", (_llm("embed"),)),
           Rule(f"{b}input_layernorm.weight", (_llm_block("attn_norm", "scale"),))]
  rules += _linear(f"{b}self_attn.q_proj", _llm_block("query"))
  rules += _linear(f"{b}self_attn.k_proj", _llm_block("key"))
  rules += _linear(f"{b}self_attn.v_proj", _llm_block("value"))
  rules += _linear(f"{b}self_attn.o_proj", _llm_block("out"), bias=False, n_in=2)
  rules.append(Rule(f"{b}post_attention_layernorm.weight", (_llm_block("mlp_norm", "scale"),)))
  rules += _linear(f"{b}mlp.gate_proj", _llm_block("gate"), bias=False)
  rules += _linear(f"{b}mlp.up_proj", _llm_block("up"), bias=False)
  rules += _linear(f"{b}mlp.down_proj", _llm_block("down"), bias=False)
  rules.append(Rule(f"{p}norm.weight", (_llm("final_norm", "scale"),)))
  rules.append(Rule(head, (_llm("lm_head"),), "dense"))
  return rules


def official_llm_rules(prefix: str = "transformer.") -> List[Rule]:
  """Qwen-7B names: fused c_attn, w2 = silu (gate) branch, w1 = linear (up) branch."""
  p, b = prefix, f"{prefix}h.{{i}}."
  qkv = (_llm_block("query", "kernel"), _llm_block("key", "kernel"),
         _llm_block("value", "kernel"))
  qkv_bias = tuple(t[:-1] + ("bias",) for t in qkv)
  rules = [
      Rule(f"{p}wte.weight", (_llm("embed"),)),
      Rule(f"{b}ln_1.weight", (_llm_block("attn_norm", "scale"),)),
      Rule(f"{b}attn.c_attn.weight", qkv, "qkv_weight"),
      Rule(f"{b}attn.c_attn.bias", qkv_bias, "qkv_bias"),
      Rule(f"{b}attn.c_proj.weight", (_llm_block("out", "kernel"),), "dense", 2),
      Rule(f"{b}ln_2.weight", (_llm_block("mlp_norm", "scale"),)),
      Rule(f"{b}mlp.w1.weight", (_llm_block("up", "kernel"),), "dense"),
      Rule(f"{b}mlp.w2.weight", (_llm_block("gate", "kernel"),), "dense"),
      Rule(f"{b}mlp.c_proj.weight", (_llm_block("down", "kernel"),), "dense"),
      Rule(f"{p}ln_f.weight", (_llm("final_norm", "scale"),)),
      Rule("lm_head.weight", (_llm("lm_head"),), "dense"),
  ]
  return rules


# Tensors that are buffers of the reference code, or parts of a checkpoint that a layout leaves
# out on purpose; they are skipped and reported, never an error.
_ALWAYS_SKIPPED = (r".*rotary_emb\.inv_freq$",)
_SKIPPED = {
    "whisper": (r"^(model\.)?decoder\.", r"^proj_out\.weight$"),
    "qwen": (r"^transformer\.audio\.",),
    "qwen2": (),
    "qwen_audio": (),
    "qwen2_audio": (),
}
_SKIP_REASONS = {
    "whisper": "Whisper decoder / output head (only the encoder is used)",
    "qwen": "audio encoder of a Qwen-Audio checkpoint (layout 'qwen' converts the LLM only)",
}


def skip_reason(layout: str, name: str) -> Optional[str]:
  """Why `name` is deliberately not converted in `layout`, or None if it must be used."""
  for pattern in _ALWAYS_SKIPPED:
    if re.match(pattern, name):
      return "rotary-embedding buffer (recomputed)"
  for pattern in _SKIPPED[layout]:
    if re.match(pattern, name):
      return _SKIP_REASONS[layout]
  return None


def _first_present(candidates: Sequence[str], has: Callable[[str], bool]) -> Optional[str]:
  for c in candidates:
    if has(c):
      return c
  return None


def rules_for_layout(layout: str, has: Optional[Callable[[str], bool]] = None) -> List[Rule]:
  """The rule table of `layout`. `has(name)` tells which tensors a checkpoint holds, to pick
  between the naming variants of a layout (e.g. WhisperModel 'encoder.*' vs
  WhisperForConditionalGeneration 'model.encoder.*'); without it the canonical names (those
  `transformers.save_pretrained` writes) are used."""
  has = has or (lambda name: False)
  if layout == "whisper":
    prefix = _first_present(["model.encoder.", "encoder.", ""], lambda p: has(f"{p}conv1.weight"))
    return whisper_encoder_rules("model.encoder." if prefix is None else prefix)
  if layout == "qwen2":
    prefix = _first_present(["model.", ""], lambda p: has(f"{p}embed_tokens.weight"))
    return qwen2_rules("model." if prefix is None else prefix)
  if layout == "qwen":
    return official_llm_rules()
  if layout == "qwen_audio":
    return official_audio_rules() + official_llm_rules()
  if layout == "qwen2_audio":
    audio = _first_present(["audio_tower.", "model.audio_tower."],
                           lambda p: has(f"{p}conv1.weight")) or "audio_tower."
    projector = _first_present(
        ["multi_modal_projector.linear", "model.multi_modal_projector.linear"],
        lambda p: has(f"{p}.weight")) or "multi_modal_projector.linear"
    llm = _first_present(["language_model.model.", "model.language_model."],
                         lambda p: has(f"{p}embed_tokens.weight")) or "language_model.model."
    head = _first_present(["language_model.lm_head.weight", "lm_head.weight"], has)
    head = head or "language_model.lm_head.weight"
    return (whisper_encoder_rules(audio) + _linear(projector, _enc("proj"), bias_kind="copy")
            + qwen2_rules(llm, head))
  raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def export_rules(layout: str) -> List[Rule]:
  """The names an export writes: those `transformers.save_pretrained` writes, and for 'whisper'
  the names of transformers' `WhisperEncoder` itself (no prefix), which
  `WhisperEncoder.from_pretrained` loads and the 'whisper' import reads back."""
  if layout not in EXPORT_LAYOUTS:
    raise ValueError(f"export supports layouts {EXPORT_LAYOUTS}, not {layout!r}")
  if layout == "whisper":
    return whisper_encoder_rules("")
  return rules_for_layout(layout)


def rules_for_tree(rules: Sequence[Rule], expected: Dict[Path, Tuple[int, ...]],
                   allow_uncovered: bool = False) -> List[Rule]:
  """The rules whose targets are all leaves of `expected` (e.g. no lm_head when tied). Unless
  `allow_uncovered`, raises if a leaf of `expected` is covered by no rule (the layout cannot
  provide it)."""
  kept = [r for r in rules if all(t in expected for t in r.targets)]
  covered = {t for r in kept for t in r.targets}
  uncovered = sorted("/".join(p) for p in expected if p not in covered)
  if uncovered and not allow_uncovered:
    raise ValueError(f"no source tensor maps to parameter(s) {uncovered}")
  return kept


def layer_count(config: QwenAudioConfig, path: Path) -> int:
  """Layers stacked in the leaf at `path` (encoder or LLM depth)."""
  if path[:len(_ENCODER_BLOCK)] == _ENCODER_BLOCK:
    return config.encoder.depth
  if path[:len(_LLM_BLOCK)] == _LLM_BLOCK:
    return config.llm.depth
  raise ValueError(f"{'/'.join(path)} is not a stacked layer parameter")
