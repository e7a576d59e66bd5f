"""config.json of released checkpoints <-> our QwenAudioConfig.

The checkpoint's values win over presets. transformers writes sparse configs for composite models
(the released Qwen2-Audio config.json lists only a few text_config fields), so missing fields take
the defaults of the transformers config classes, which are tabulated here so that conversion does
not need transformers installed. The official Qwen-Audio config (remote code) must carry every
field we read.
"""

import dataclasses
import json
import os
from typing import Any, Dict, Optional

from qwen_audio_jax import config as C
from qwen_audio_jax.convert.safetensors_io import CheckpointError

CONFIG_FILE = "config.json"

# transformers 5.x config-class defaults for the fields we read.
WHISPER_DEFAULTS = dict(num_mel_bins=80, d_model=384, encoder_layers=4,
                        encoder_attention_heads=6, encoder_ffn_dim=1536,
                        max_source_positions=1500, activation_function="gelu",
                        scale_embedding=False)
QWEN2_AUDIO_ENCODER_DEFAULTS = dict(num_mel_bins=128, d_model=1280, encoder_layers=32,
                                    encoder_attention_heads=20, encoder_ffn_dim=5120,
                                    max_source_positions=1500, activation_function="gelu",
                                    scale_embedding=False)
QWEN2_DEFAULTS = dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=None,
                      head_dim=None, hidden_act="silu", max_position_embeddings=32768,
                      rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10000.0,
                      use_sliding_window=False)
QWEN2_AUDIO_TOKEN_ID = 151646  # Qwen2AudioConfig's default audio_token_index (<|AUDIO|>)

OFFICIAL_LLM_FIELDS = ("vocab_size", "hidden_size", "kv_channels", "intermediate_size",
                       "num_hidden_layers", "num_attention_heads", "seq_length",
                       "rotary_emb_base", "layer_norm_epsilon", "use_dynamic_ntk",
                       "use_logn_attn")
OFFICIAL_AUDIO_FIELDS = ("n_mels", "n_ctx", "n_state", "n_head", "n_layer", "output_dim",
                         "avg_pool", "add_audio_bos_eos_token")


def read_config_json(directory: str) -> Dict[str, Any]:
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.exists(path):
    raise CheckpointError(f"{path} is missing: the checkpoint's config.json is needed to build "
                          f"the model configuration")
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except ValueError as e:
    raise CheckpointError(f"{path}: invalid JSON ({e})") from e
  if not isinstance(data, dict):
    raise CheckpointError(f"{path}: expected a JSON object")
  return data


def _with_defaults(fields: Optional[Dict[str, Any]], defaults: Dict[str, Any]) -> Dict[str, Any]:
  merged = dict(defaults)
  merged.update({k: v for k, v in (fields or {}).items()})
  return merged


def _rope_theta(text: Dict[str, Any], where: str) -> float:
  rope = text.get("rope_parameters") or {}
  scaling = text.get("rope_scaling")
  for params in (rope, scaling or {}):
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ("default", None):
      raise CheckpointError(f"{where}: rope scaling {kind!r} is not supported (only the default "
                            f"rotary embedding)")
  if "rope_theta" in rope:
    return float(rope["rope_theta"])
  return float(text.get("rope_theta", QWEN2_DEFAULTS["rope_theta"]))


def whisper_encoder_config(fields: Dict[str, Any], where: str,
                           defaults=WHISPER_DEFAULTS) -> C.EncoderConfig:
  """Plain Whisper encoder: no pool, ln_post = encoder.layer_norm, no projection."""
  f = _with_defaults(fields, defaults)
  if f["activation_function"] != "gelu":
    raise CheckpointError(f"{where}: activation_function {f['activation_function']!r} is not "
                          f"supported (expected 'gelu')")
  if f["scale_embedding"]:
    raise CheckpointError(f"{where}: scale_embedding=true is not supported")
  return C.EncoderConfig(
      n_mels=int(f["num_mel_bins"]), n_ctx=int(f["max_source_positions"]),
      width=int(f["d_model"]), depth=int(f["encoder_layers"]),
      heads=int(f["encoder_attention_heads"]), mlp_dim=int(f["encoder_ffn_dim"]),
      avg_pool=False, output_dim=None, audio_bos_eos=False, cut_mel_to_batch_max=False)


def qwen2_llm_config(fields: Dict[str, Any], where: str) -> C.LLMConfig:
  f = _with_defaults(fields, QWEN2_DEFAULTS)
  if f["hidden_act"] != "silu":
    raise CheckpointError(f"{where}: hidden_act {f['hidden_act']!r} is not supported "
                          f"(expected 'silu')")
  if f["use_sliding_window"]:
    raise CheckpointError(f"{where}: use_sliding_window=true is not supported")
  heads = int(f["num_attention_heads"])
  width = int(f["hidden_size"])
  return C.LLMConfig(
      vocab_size=int(f["vocab_size"]), width=width, depth=int(f["num_hidden_layers"]),
      heads=heads, kv_heads=int(f["num_key_value_heads"] or heads),
      head_dim=int(f["head_dim"] or width // heads), mlp_dim=int(f["intermediate_size"]),
      rms_norm_eps=float(f["rms_norm_eps"]), rope_theta=_rope_theta(f, where), qkv_bias=True,
      tie_embeddings=bool(f["tie_word_embeddings"]),
      seq_length=int(f["max_position_embeddings"]), use_dynamic_ntk=False, use_logn_attn=False)


def _require(fields: Dict[str, Any], names, where: str):
  missing = [n for n in names if n not in fields]
  if missing:
    raise CheckpointError(f"{where}: field {missing[0]!r} is missing (the official Qwen config "
                          f"must define {', '.join(names)})")


def official_llm_config(data: Dict[str, Any], where: str) -> C.LLMConfig:
  _require(data, OFFICIAL_LLM_FIELDS, where)
  if float(data.get("rotary_pct", 1.0)) != 1.0:
    raise CheckpointError(f"{where}: rotary_pct {data['rotary_pct']} is not supported "
                          f"(rotary embeddings on the full head dim only)")
  if data["intermediate_size"] % 2:
    raise CheckpointError(f"{where}: intermediate_size {data['intermediate_size']} must be even "
                          f"(it is twice the MLP width)")
  heads = int(data["num_attention_heads"])
  return C.LLMConfig(
      vocab_size=int(data["vocab_size"]), width=int(data["hidden_size"]),
      depth=int(data["num_hidden_layers"]), heads=heads, kv_heads=heads,
      head_dim=int(data["kv_channels"]), mlp_dim=int(data["intermediate_size"]) // 2,
      rms_norm_eps=float(data["layer_norm_epsilon"]),
      rope_theta=float(data["rotary_emb_base"]), qkv_bias=True,
      tie_embeddings=bool(data.get("tie_word_embeddings", False)),
      seq_length=int(data["seq_length"]), use_dynamic_ntk=bool(data["use_dynamic_ntk"]),
      use_logn_attn=bool(data["use_logn_attn"]))


def official_encoder_config(audio: Dict[str, Any], where: str) -> C.EncoderConfig:
  _require(audio, OFFICIAL_AUDIO_FIELDS, where + " ('audio')")
  return C.EncoderConfig(
      n_mels=int(audio["n_mels"]), n_ctx=int(audio["n_ctx"]), width=int(audio["n_state"]),
      depth=int(audio["n_layer"]), heads=int(audio["n_head"]), mlp_dim=4 * int(audio["n_state"]),
      avg_pool=bool(audio["avg_pool"]), output_dim=int(audio["output_dim"]),
      audio_bos_eos=bool(audio["add_audio_bos_eos_token"]), cut_mel_to_batch_max=True)


def attach_encoder(encoder: C.EncoderConfig, llm: C.LLMConfig, family: str) -> C.EncoderConfig:
  """The encoder's output side for joining `llm`: Qwen-Audio ('qwen': pool, projection, bos/eos,
  batch-max mel cut) or Qwen2-Audio ('qwen2': pool, projection, full 3000 mel frames)."""
  qwen = family == "qwen"
  return dataclasses.replace(encoder, avg_pool=True, output_dim=llm.width, audio_bos_eos=qwen,
                             cut_mel_to_batch_max=qwen)


def _finish(encoder, llm, dtype: str) -> C.QwenAudioConfig:
  return C.QwenAudioConfig(encoder=encoder, llm=llm, param_dtype=dtype, dtype=dtype)


def config_from_hf_dict(data: Dict[str, Any], layout: str, *, dtype: str = "float32",
                        where: str = CONFIG_FILE) -> C.QwenAudioConfig:
  """Our config from a parsed config.json of `layout`.

  LLM-only layouts ('qwen2', 'qwen') get the released model's audio encoder (Qwen2-Audio's /
  Qwen-Audio's) joined to their width; 'whisper' gets the Qwen-Audio 7B LLM. Those parts are
  placeholders: the conversion holds only the layout's own parameters.
  """
  if layout == "whisper":
    encoder = whisper_encoder_config(data, where)
    return _finish(encoder, C.QWEN_AUDIO_7B.llm, dtype)
  if layout == "qwen2":
    llm = qwen2_llm_config(data, where)
    return _finish(attach_encoder(C.QWEN2_AUDIO_7B.encoder, llm, "qwen2"), llm, dtype)
  if layout == "qwen":
    llm = official_llm_config(data, where)
    return _finish(attach_encoder(C.QWEN_AUDIO_7B.encoder, llm, "qwen"), llm, dtype)
  if layout == "qwen_audio":
    llm = official_llm_config(data, where)
    if not isinstance(data.get("audio"), dict):
      raise CheckpointError(f"{where}: field 'audio' (the audio encoder's settings) is missing")
    encoder = official_encoder_config(data["audio"], where)
    if encoder.output_dim != llm.width:
      raise CheckpointError(f"{where}: audio.output_dim ({encoder.output_dim}) must equal "
                            f"hidden_size ({llm.width})")
    return _finish(encoder, llm, dtype)
  if layout == "qwen2_audio":
    llm = qwen2_llm_config(data.get("text_config"), where + " (text_config)")
    encoder = whisper_encoder_config(data.get("audio_config"), where + " (audio_config)",
                                     QWEN2_AUDIO_ENCODER_DEFAULTS)
    return _finish(attach_encoder(encoder, llm, "qwen2"), llm, dtype)
  raise ValueError(f"unknown layout {layout!r}")


def config_from_hf(directory: str, layout: str, *, dtype: str = "float32") -> C.QwenAudioConfig:
  """Our QwenAudioConfig from the config.json in `directory` (values of the checkpoint win)."""
  where = os.path.join(directory, CONFIG_FILE)
  return config_from_hf_dict(read_config_json(directory), layout, dtype=dtype, where=where)


def token_ids_from_hf(data: Dict[str, Any], layout: str) -> Dict[str, Any]:
  """Token-id fields of config.json that our model config does not hold (kept for export)."""
  keys = ("bos_token_id", "eos_token_id", "pad_token_id")
  if layout == "qwen2_audio":
    text = data.get("text_config") or {}
    out = {k: text[k] for k in keys if text.get(k) is not None}
    token = data.get("audio_token_index", data.get("audio_token_id"))
    out["audio_token_index"] = QWEN2_AUDIO_TOKEN_ID if token is None else int(token)
    return out
  if layout == "qwen2":
    return {k: data[k] for k in keys if data.get(k) is not None}
  if layout == "qwen_audio":
    audio = data.get("audio") or {}
    return {"audio_start_id": audio["audio_start_id"]} if "audio_start_id" in audio else {}
  return {}


_TORCH_DTYPE = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def qwen2_hf_dict(llm: C.LLMConfig, dtype: str, token_ids: Optional[Dict[str, Any]] = None,
                  architectures=("Qwen2ForCausalLM",)) -> Dict[str, Any]:
  """A full Qwen2Config dict (readable by transformers 4.x and 5.x)."""
  if llm.use_dynamic_ntk or llm.use_logn_attn:
    raise ValueError("Qwen2 has no dynamic-NTK / log-n attention: this LLM cannot be exported to "
                     "the Qwen2 layout")
  if not llm.qkv_bias:
    raise ValueError("Qwen2 always has q/k/v biases: this LLM (qkv_bias=False) cannot be exported")
  out = {
      "model_type": "qwen2",
      "vocab_size": llm.vocab_size, "hidden_size": llm.width,
      "intermediate_size": llm.mlp_dim, "num_hidden_layers": llm.depth,
      "num_attention_heads": llm.heads, "num_key_value_heads": llm.kv_heads,
      "hidden_act": "silu", "max_position_embeddings": llm.seq_length,
      "rms_norm_eps": llm.rms_norm_eps, "rope_theta": llm.rope_theta,
      "tie_word_embeddings": llm.tie_embeddings, "use_sliding_window": False,
      "torch_dtype": _TORCH_DTYPE[dtype],
  }
  if llm.head_dim * llm.heads != llm.width:
    out["head_dim"] = llm.head_dim
  if architectures:
    out["architectures"] = list(architectures)
  for k, v in (token_ids or {}).items():
    if k in ("bos_token_id", "eos_token_id", "pad_token_id"):
      out[k] = v
  return out


def qwen2_audio_hf_dict(config: C.QwenAudioConfig, dtype: str,
                        token_ids: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """A Qwen2AudioConfig dict for `config` (which must have Qwen2-Audio's shape)."""
  enc = config.encoder
  if not enc.avg_pool or enc.output_dim is None or enc.audio_bos_eos or enc.cut_mel_to_batch_max:
    raise ValueError(
        "the Qwen2-Audio layout needs encoder.avg_pool=True, an output projection, "
        "audio_bos_eos=False and cut_mel_to_batch_max=False; this configuration differs: "
        f"{enc}")
  token_ids = dict(token_ids or {})
  text = qwen2_hf_dict(config.llm, dtype, token_ids, architectures=None)
  return {
      "architectures": ["Qwen2AudioForConditionalGeneration"],
      "model_type": "qwen2_audio",
      "audio_token_index": int(token_ids.get("audio_token_index", QWEN2_AUDIO_TOKEN_ID)),
      "audio_config": {
          "model_type": "qwen2_audio_encoder", "num_mel_bins": enc.n_mels, "d_model": enc.width,
          "encoder_layers": enc.depth, "encoder_attention_heads": enc.heads,
          "encoder_ffn_dim": enc.mlp_dim, "max_source_positions": enc.n_ctx,
          "activation_function": "gelu", "scale_embedding": False,
      },
      "text_config": text,
      "torch_dtype": _TORCH_DTYPE[dtype],
  }


QWEN_AUDIO_START_ID = 155163  # <audio> in Qwen-Audio's vocabulary (the official audio_start_id)


def official_hf_dict(config: C.QwenAudioConfig, dtype: str,
                     token_ids: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """config.json of the official Qwen-Audio release (QWenConfig of its remote code, with the
  `audio` block): every field `config_from_hf_dict(..., 'qwen_audio')` reads, plus the execution
  fields QWenConfig defines, so that the release's code (trust_remote_code) builds the model."""
  enc, llm = config.encoder, config.llm
  needs = [
      (enc.avg_pool and enc.audio_bos_eos and enc.output_dim == llm.width,
       "encoder.avg_pool, encoder.audio_bos_eos and a projection to llm.width"),
      (enc.cut_mel_to_batch_max, "encoder.cut_mel_to_batch_max (the release cuts the mel input)"),
      (enc.mlp_dim == 4 * enc.width, "encoder.mlp_dim == 4 * encoder.width (openai-whisper MLP)"),
      (enc.layer_norm_eps == 1e-5, "encoder.layer_norm_eps == 1e-5 (torch LayerNorm default)"),
      (llm.kv_heads == llm.heads, "llm.kv_heads == llm.heads (Qwen-7B has no grouped KV heads)"),
      (llm.heads * llm.head_dim == llm.width, "llm.heads * llm.head_dim == llm.width"),
      (llm.qkv_bias and not llm.tie_embeddings, "llm.qkv_bias and untied embeddings"),
  ]
  for ok, what in needs:
    if not ok:
      raise ValueError(f"the official Qwen-Audio layout needs {what}; this configuration "
                       f"differs: {config}")
  ids = dict(token_ids or {})
  return {
      "architectures": ["QWenLMHeadModel"],
      "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig",
                   "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
      "model_type": "qwen", "tokenizer_class": "QWenTokenizer",
      "vocab_size": llm.vocab_size, "hidden_size": llm.width, "kv_channels": llm.head_dim,
      "intermediate_size": 2 * llm.mlp_dim, "num_hidden_layers": llm.depth,
      "num_attention_heads": llm.heads, "seq_length": llm.seq_length,
      "max_position_embeddings": llm.seq_length, "rotary_emb_base": llm.rope_theta,
      "rotary_pct": 1.0, "layer_norm_epsilon": llm.rms_norm_eps,
      "use_dynamic_ntk": llm.use_dynamic_ntk, "use_logn_attn": llm.use_logn_attn,
      "no_bias": True, "tie_word_embeddings": False, "scale_attn_weights": True,
      "emb_dropout_prob": 0.0, "attn_dropout_prob": 0.0, "initializer_range": 0.02,
      "use_cache": True, "use_flash_attn": "auto",
      "bf16": dtype == "bfloat16", "fp16": dtype == "float16", "fp32": dtype == "float32",
      "torch_dtype": _TORCH_DTYPE[dtype],
      "audio": {
          "n_mels": enc.n_mels, "n_ctx": enc.n_ctx, "n_state": enc.width, "n_head": enc.heads,
          "n_layer": enc.depth, "output_dim": enc.output_dim, "avg_pool": True,
          "add_audio_bos_eos_token": True,
          "audio_start_id": int(ids.get("audio_start_id", QWEN_AUDIO_START_ID)),
      },
  }


def whisper_hf_dict(encoder: C.EncoderConfig, dtype: str) -> Dict[str, Any]:
  """A WhisperConfig for the encoder alone (`WhisperEncoder.from_pretrained` loads it; the
  decoder fields mirror the encoder's, as no decoder is exported)."""
  if encoder.layer_norm_eps != 1e-5:
    raise ValueError(f"Whisper's layer norms use eps 1e-5; this encoder has "
                     f"{encoder.layer_norm_eps}")
  return {
      "architectures": ["WhisperEncoder"], "model_type": "whisper",
      "num_mel_bins": encoder.n_mels, "d_model": encoder.width,
      "encoder_layers": encoder.depth, "encoder_attention_heads": encoder.heads,
      "encoder_ffn_dim": encoder.mlp_dim, "max_source_positions": encoder.n_ctx,
      "decoder_layers": encoder.depth, "decoder_attention_heads": encoder.heads,
      "decoder_ffn_dim": encoder.mlp_dim, "activation_function": "gelu",
      "scale_embedding": False, "torch_dtype": _TORCH_DTYPE[dtype],
  }
