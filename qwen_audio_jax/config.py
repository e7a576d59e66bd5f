"""Model configurations: one implementation, several released shapes.

`QwenAudioConfig` describes the whole model (audio encoder + LLM + how they meet); the presets
below reproduce the released checkpoints' config.json values. Training configs (ml_collections, in
configs/) pick a preset by name and may override fields.
"""

import dataclasses
from typing import Optional

REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims", "save_qkv_proj", "minimal")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "plain", "flash", "tpu_flash")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Whisper-style audio encoder as Qwen-Audio / Qwen2-Audio use it."""
  n_mels: int = 80
  n_ctx: int = 1500  # positions after conv2 (30 s of audio)
  width: int = 1280
  depth: int = 32
  heads: int = 20
  mlp_dim: int = 5120
  layer_norm_eps: float = 1e-5
  # Output side. Plain Whisper: no pool, ln_post is the encoder's final layer norm, no projection.
  avg_pool: bool = True  # AvgPool1d(2, 2) after the blocks (one frame per 40 ms)
  output_dim: Optional[int] = 4096  # projection to the LLM width; None = no projection
  audio_bos_eos: bool = True  # Qwen-Audio's Embedding(2, output_dim) framing each clip
  # Qwen-Audio cuts the batch's mel input to 2 * T_max frames before the convs (T_max: frames
  # after the convs of the longest clip), so one padding frame can enter the convs; with static
  # shapes the same numbers come from zeroing the frames beyond 2 * T_max. Qwen2-Audio (as in
  # transformers) feeds the full 3000 frames.
  cut_mel_to_batch_max: bool = True

  @property
  def head_dim(self) -> int:
    return self.width // self.heads


@dataclasses.dataclass(frozen=True)
class LLMConfig:
  """Qwen-7B / Qwen2 decoder."""
  vocab_size: int = 151936
  width: int = 4096
  depth: int = 32
  heads: int = 32
  kv_heads: int = 32
  head_dim: int = 128
  mlp_dim: int = 11008
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  qkv_bias: bool = True
  tie_embeddings: bool = False
  # Qwen-7B's long-context options (active only past `seq_length` tokens, as in the reference).
  seq_length: int = 2048
  use_dynamic_ntk: bool = False
  use_logn_attn: bool = False


@dataclasses.dataclass(frozen=True)
class QwenAudioConfig:
  """The whole model plus the execution choices that do not change its numbers."""
  encoder: EncoderConfig = EncoderConfig()
  llm: LLMConfig = LLMConfig()
  scan_layers: bool = True  # nn.scan over identical blocks: compile time flat in depth
  remat_policy: str = "none"  # one of REMAT_POLICIES
  param_dtype: str = "float32"
  dtype: str = "float32"  # compute dtype (bfloat16 for training on accelerators)
  attention_impl: str = "auto"  # one of ATTENTION_IMPLS: jax.nn.dot_product_attention 'xla' /
  # 'cudnn' (flash attention on GPUs), 'plain' (explicit einsum + softmax in float32), 'flash'
  # (blockwise online softmax in pure JAX, O(T) memory) or 'auto' (the fastest measured on the
  # platform: flash on CPU, cudnn on GPU, xla on TPU; model/attention.py); 'tpu_flash': the
  # Pallas splash-attention kernel on TPUs (model/tpu_attention.py)

  def __post_init__(self):
    validate(self)

  @property
  def family(self) -> str:
    """'qwen_audio' (clips framed by the audio bos/eos embeddings, Qwen-Audio's tokenizer and
    chat format) or 'qwen2_audio' (no bos/eos rows: Qwen2-Audio's)."""
    return "qwen_audio" if self.encoder.audio_bos_eos else "qwen2_audio"


def validate(cfg: QwenAudioConfig) -> None:
  """Raises ValueError naming the field when a configuration cannot work."""
  e, l = cfg.encoder, cfg.llm
  checks = [
      (e.width % e.heads == 0, f"encoder.width ({e.width}) must be divisible by encoder.heads "
       f"({e.heads})"),
      (e.n_mels > 0 and e.depth > 0 and e.n_ctx > 0, "encoder.n_mels, depth and n_ctx must be > 0"),
      (l.heads % l.kv_heads == 0, f"llm.heads ({l.heads}) must be a multiple of llm.kv_heads "
       f"({l.kv_heads})"),
      (l.head_dim % 2 == 0, f"llm.head_dim ({l.head_dim}) must be even for rotary embeddings"),
      (not e.audio_bos_eos or e.output_dim is not None,
       "encoder.audio_bos_eos needs encoder.output_dim (the bos/eos rows live in the LLM width)"),
      (e.output_dim is None or e.output_dim == l.width,
       f"encoder.output_dim ({e.output_dim}) must equal llm.width ({l.width})"),
      (cfg.remat_policy in REMAT_POLICIES,
       f"remat_policy {cfg.remat_policy!r} is not one of {REMAT_POLICIES}"),
      (cfg.attention_impl in ATTENTION_IMPLS,
       f"attention_impl {cfg.attention_impl!r} is not one of {ATTENTION_IMPLS}"),
      (cfg.dtype in DTYPES, f"dtype {cfg.dtype!r} is not one of {DTYPES}"),
      (cfg.param_dtype in DTYPES, f"param_dtype {cfg.param_dtype!r} is not one of {DTYPES}"),
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(f"QwenAudioConfig: {message}")


# Qwen-Audio / Qwen-Audio-Chat (config.json of the release: vocab 155947, seq_length 2048,
# dynamic NTK and log-n attention on, audio: n_mels 80, n_ctx 1500, n_state 1280, n_head 20,
# n_layer 32, output_dim 4096, avg_pool, audio bos/eos).
QWEN_AUDIO_7B = QwenAudioConfig(
    encoder=EncoderConfig(),
    llm=LLMConfig(vocab_size=155947, seq_length=2048, use_dynamic_ntk=True, use_logn_attn=True),
    dtype="bfloat16",
)

# Qwen2-Audio-7B as released: its config.json gives the text model only vocab_size 156032,
# intermediate_size 11008 and rms_norm_eps 1e-5, so transformers fills the rest with Qwen2Config's
# defaults: 32 layers, width 4096, 32 heads, 32 KV heads (no grouping) -- the Qwen-7B shape the
# Qwen2-Audio report names as its LLM. The checkpoint's tensors have these shapes
# (multi_modal_projector 1280 -> 4096); the preset follows the checkpoint.
QWEN2_AUDIO_7B = QwenAudioConfig(
    encoder=EncoderConfig(n_mels=128, output_dim=4096, audio_bos_eos=False,
                          cut_mel_to_batch_max=False),
    llm=LLMConfig(vocab_size=156032, width=4096, depth=32, heads=32, kv_heads=32, head_dim=128,
                  mlp_dim=11008, rms_norm_eps=1e-5, rope_theta=10000.0, seq_length=8192),
    dtype="bfloat16",
)

# Tests and the CPU demo: the Qwen-Audio layout at toy size, vocabulary large enough for every
# special token of the real tokenizer (ids up to 155164).
TINY = QwenAudioConfig(
    encoder=EncoderConfig(n_mels=80, width=64, depth=2, heads=4, mlp_dim=128, output_dim=96),
    llm=LLMConfig(vocab_size=155947, width=96, depth=2, heads=4, kv_heads=2, head_dim=24,
                  mlp_dim=192, seq_length=2048),
    scan_layers=True,
)

PRESETS = {
    "tiny": TINY,
    "qwen_audio_7b": QWEN_AUDIO_7B,
    "qwen2_audio_7b": QWEN2_AUDIO_7B,
}


def get_preset(name: str, **overrides) -> QwenAudioConfig:
  """A preset by name, with top-level field overrides (e.g. dtype='bfloat16')."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}")
  return dataclasses.replace(PRESETS[name], **overrides)
