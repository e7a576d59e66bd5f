"""Tiny reference models for the conversion and parity tests, built offline.

- transformers models (Whisper, Qwen2, Qwen2-Audio) from their config classes, seeded with
  `torch.manual_seed`, eager attention, saved with `save_pretrained(..., safe_serialization=True)`;
- an official-layout (Qwen-Audio remote code) checkpoint written by renaming a tiny Qwen2 (with
  q/k/v bias, no GQA) and a tiny Whisper encoder into the official names;
- `save_qwen2_audio_tokenizer`: a Qwen2-Audio-style transformers tokenizer over the same BPE
  ranks (qwen.tiktoken of the dashscope package) with Qwen2-Audio's first special tokens;
- `qwen_audio_encoder_reference`: the official Qwen-Audio audio encoder forward in plain torch,
  written from the official `audio.py` of QwenLM/Qwen-Audio (batch-max mel cut, key masking,
  pool -> ln_post -> proj, bos/eos).
"""

import json
import math
import os
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import (Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2Config,
                          Qwen2ForCausalLM, WhisperConfig, WhisperModel)

HOP = 160


def _eager(config):
  config._attn_implementation = "eager"
  for name in ("text_config", "audio_config", "encoder_config"):
    sub = getattr(config, name, None)
    if sub is not None:
      sub._attn_implementation = "eager"
  return config


def tiny_whisper(seed: int = 0, n_mels: int = 80, d_model: int = 64, layers: int = 2,
                 heads: int = 4, ffn: int = 256) -> WhisperModel:
  torch.manual_seed(seed)
  config = WhisperConfig(
      num_mel_bins=n_mels, d_model=d_model, encoder_layers=layers, decoder_layers=1,
      encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn,
      decoder_ffn_dim=ffn, max_source_positions=1500, max_target_positions=32, vocab_size=64,
      pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
  return WhisperModel(_eager(config)).eval()


def tiny_qwen2(seed: int = 0, vocab: int = 512, hidden: int = 64, layers: int = 2,
               heads: int = 4, kv_heads: int = 2, intermediate: int = 128,
               tie: bool = False) -> Qwen2ForCausalLM:
  torch.manual_seed(seed)
  config = Qwen2Config(
      vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
      num_key_value_heads=kv_heads, intermediate_size=intermediate, rms_norm_eps=1e-6,
      max_position_embeddings=512, tie_word_embeddings=tie)
  return Qwen2ForCausalLM(_eager(config)).eval()


QWEN2_AUDIO_TOKENS = dict(audio=500, bos=501, eos=502)
# Qwen2-Audio's first special tokens, in id order from 151643 (<|AUDIO|> 151646, <|audio_bos|>
# 151647, <|audio_eos|> 151648).
QWEN2_AUDIO_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>",
                        "<|audio_bos|>", "<|audio_eos|>"]


def save_qwen2_audio_tokenizer(directory: str, pattern: str) -> str:
  """transformers' Qwen2Tokenizer converted offline from qwen.tiktoken (split `pattern`), with
  Qwen2-Audio's first special tokens, saved into `directory`."""
  # pylint: disable=g-import-not-at-top
  from transformers import Qwen2Tokenizer
  from transformers.convert_slow_tokenizer import TikTokenConverter

  from qwen_audio_jax.text import tokenizer as tokenizer_lib
  core = TikTokenConverter(vocab_file=tokenizer_lib.dashscope_vocab_file(), pattern=pattern,
                           extra_special_tokens=QWEN2_AUDIO_SPECIALS).converted()
  Qwen2Tokenizer(tokenizer_object=core).save_pretrained(directory)
  return directory


def tiny_qwen2_audio(seed: int = 0, n_mels: int = 128) -> Qwen2AudioForConditionalGeneration:
  torch.manual_seed(seed)
  config = Qwen2AudioConfig(
      audio_config=dict(num_mel_bins=n_mels, d_model=64, encoder_layers=2,
                        encoder_attention_heads=4, encoder_ffn_dim=128, max_source_positions=1500),
      text_config=dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=128, rms_norm_eps=1e-6,
                       max_position_embeddings=512),
      audio_token_id=QWEN2_AUDIO_TOKENS["audio"])
  return Qwen2AudioForConditionalGeneration(_eager(config)).eval()


def state_dict_numpy(module: torch.nn.Module) -> Dict[str, np.ndarray]:
  return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------ official Qwen-Audio layout


def official_state_dict(qwen2: Qwen2ForCausalLM, whisper: WhisperModel, proj_weight: torch.Tensor,
                        proj_bias: torch.Tensor, bos_eos: torch.Tensor) -> Dict[str, torch.Tensor]:
  """Official Qwen-Audio names: Qwen2's LLM as Qwen-7B (fused c_attn), Whisper's encoder with
  openai-whisper names under transformer.audio, plus the projection and audio bos/eos."""
  if qwen2.config.num_key_value_heads != qwen2.config.num_attention_heads:
    raise ValueError("the official Qwen-7B layout has no grouped KV heads")
  llm = {k: v.detach().clone() for k, v in qwen2.state_dict().items()}
  out = {"transformer.wte.weight": llm["model.embed_tokens.weight"],
         "transformer.ln_f.weight": llm["model.norm.weight"],
         "lm_head.weight": llm["lm_head.weight"]}
  for i in range(qwen2.config.num_hidden_layers):
    src, dst = f"model.layers.{i}.", f"transformer.h.{i}."
    attn = src + "self_attn."
    out[dst + "ln_1.weight"] = llm[src + "input_layernorm.weight"]
    out[dst + "attn.c_attn.weight"] = torch.cat(
        [llm[attn + f"{p}_proj.weight"] for p in "qkv"], dim=0)
    out[dst + "attn.c_attn.bias"] = torch.cat([llm[attn + f"{p}_proj.bias"] for p in "qkv"])
    out[dst + "attn.c_proj.weight"] = llm[attn + "o_proj.weight"]
    out[dst + "ln_2.weight"] = llm[src + "post_attention_layernorm.weight"]
    out[dst + "mlp.w1.weight"] = llm[src + "mlp.up_proj.weight"]
    out[dst + "mlp.w2.weight"] = llm[src + "mlp.gate_proj.weight"]
    out[dst + "mlp.c_proj.weight"] = llm[src + "mlp.down_proj.weight"]

  enc = {k: v.detach().clone() for k, v in whisper.encoder.state_dict().items()}
  a = "transformer.audio."
  for conv in ("conv1", "conv2"):
    for p in ("weight", "bias"):
      out[f"{a}{conv}.{p}"] = enc[f"{conv}.{p}"]
  out[a + "positional_embedding"] = enc["embed_positions.weight"]
  renames = {"self_attn.q_proj": "attn.query", "self_attn.k_proj": "attn.key",
             "self_attn.v_proj": "attn.value", "self_attn.out_proj": "attn.out",
             "self_attn_layer_norm": "attn_ln", "fc1": "mlp.0", "fc2": "mlp.2",
             "final_layer_norm": "mlp_ln"}
  for i in range(whisper.config.encoder_layers):
    for hf, official in renames.items():
      for p in ("weight", "bias"):
        key = f"layers.{i}.{hf}.{p}"
        if key in enc:
          out[f"{a}blocks.{i}.{official}.{p}"] = enc[key]
  out[a + "ln_post.weight"] = enc["layer_norm.weight"]
  out[a + "ln_post.bias"] = enc["layer_norm.bias"]
  out[a + "proj.weight"] = proj_weight
  out[a + "proj.bias"] = proj_bias
  out[a + "audio_bos_eos_token.weight"] = bos_eos
  return {k: v.contiguous() for k, v in out.items()}


def official_config(qwen2: Qwen2ForCausalLM, whisper: WhisperModel) -> dict:
  t, w = qwen2.config, whisper.config
  return {
      "architectures": ["QWenLMHeadModel"], "model_type": "qwen",
      "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
      "kv_channels": t.hidden_size // t.num_attention_heads,
      "intermediate_size": 2 * t.intermediate_size, "num_hidden_layers": t.num_hidden_layers,
      "num_attention_heads": t.num_attention_heads, "seq_length": 2048,
      "rotary_emb_base": 10000, "rotary_pct": 1.0, "layer_norm_epsilon": t.rms_norm_eps,
      "use_dynamic_ntk": True, "use_logn_attn": True, "no_bias": True,
      "tie_word_embeddings": False,
      "audio": {"n_mels": w.num_mel_bins, "n_ctx": w.max_source_positions, "n_state": w.d_model,
                "n_head": w.encoder_attention_heads, "n_layer": w.encoder_layers,
                "output_dim": t.hidden_size, "avg_pool": True, "add_audio_bos_eos_token": True,
                "audio_start_id": 155163},
  }


def save_official(directory: str, tensors: Dict[str, torch.Tensor], config: dict):
  os.makedirs(directory, exist_ok=True)
  save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2)


def qwen_audio_encoder_reference(sd: Dict[str, torch.Tensor], mel: torch.Tensor,
                                 num_samples: Sequence[int], n_head: int,
                                 eps: float = 1e-5) -> List[torch.Tensor]:
  """Official Qwen-Audio audio encoder (QwenLM/Qwen-Audio `audio.py`), one [n_audio + 2, D] tensor per clip.

  sd: tensors under transformer.audio. with that prefix removed; mel: [N, n_mels, 3000].
  """
  mel_len = [n // HOP for n in num_samples]
  frames = [(m - 1) // 2 + 1 for m in mel_len]  # after conv2
  n_audio = [(t - 2) // 2 + 1 for t in frames]  # after the pool
  t_max = max(frames)
  x = mel[:, :, :2 * t_max]  # cut the batch to 2 * T_max mel frames
  x = F.gelu(F.conv1d(x, sd["conv1.weight"], sd["conv1.bias"], padding=1))
  x = F.gelu(F.conv1d(x, sd["conv2.weight"], sd["conv2.bias"], stride=2, padding=1))
  x = x.permute(0, 2, 1)
  length, width = x.shape[1], x.shape[2]
  x = x + sd["positional_embedding"][:length]
  valid = torch.arange(length)[None, :] < torch.tensor(frames)[:, None]  # [N, T]
  x = x.masked_fill(~valid[..., None], 0.0)
  key_bias = torch.zeros(valid.shape).masked_fill(~valid, float("-inf"))[:, None, None, :]
  head_dim = width // n_head
  layer = 0
  while f"blocks.{layer}.attn_ln.weight" in sd:
    p = f"blocks.{layer}."
    h = F.layer_norm(x, (width,), sd[p + "attn_ln.weight"], sd[p + "attn_ln.bias"], eps)
    split = lambda t: t.view(t.shape[0], length, n_head, head_dim).transpose(1, 2)  # noqa: E731
    q = split(F.linear(h, sd[p + "attn.query.weight"], sd[p + "attn.query.bias"]))
    k = split(F.linear(h, sd[p + "attn.key.weight"]))
    v = split(F.linear(h, sd[p + "attn.value.weight"], sd[p + "attn.value.bias"]))
    scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim) + key_bias
    o = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
    x = x + F.linear(o, sd[p + "attn.out.weight"], sd[p + "attn.out.bias"])
    h = F.layer_norm(x, (width,), sd[p + "mlp_ln.weight"], sd[p + "mlp_ln.bias"], eps)
    h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"])),
                 sd[p + "mlp.2.weight"], sd[p + "mlp.2.bias"])
    x = x + h
    layer += 1
  x = F.avg_pool1d(x.permute(0, 2, 1), kernel_size=2, stride=2).permute(0, 2, 1)
  x = F.layer_norm(x, (width,), sd["ln_post.weight"], sd["ln_post.bias"], eps)
  x = F.linear(x, sd["proj.weight"], sd["proj.bias"])
  bos, eos = sd["audio_bos_eos_token.weight"][0:1], sd["audio_bos_eos_token.weight"][1:2]
  return [torch.cat([bos, x[i, :n_audio[i]], eos]) for i in range(len(num_samples))]


# ------------------------------------------------------------------ inputs


def padded_rows(rows: Sequence[Sequence[int]], pad_id: int = 0):
  """(ids [B, S], attention mask [B, S]) with right padding."""
  length = max(len(r) for r in rows)
  ids = np.full((len(rows), length), pad_id, np.int64)
  mask = np.zeros((len(rows), length), np.int64)
  for b, r in enumerate(rows):
    ids[b, :len(r)] = r
    mask[b, :len(r)] = 1
  return ids, mask


def max_errors(ours: np.ndarray, ref: np.ndarray, valid: np.ndarray = None):
  """(max abs diff, max abs diff / max |ref|) over the positions where `valid` is true."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  if valid is not None:
    ours, ref = ours[valid], ref[valid]
  abs_err = float(np.max(np.abs(ours - ref)))
  return abs_err, abs_err / float(np.max(np.abs(ref)))


def from_list_format(items):
  """Qwen-Audio-Chat's tokenizer.from_list_format (official release), written out: one query's
  clips numbered from 1 as `Audio {n}:` + `<audio>PATH</audio>` + newline, text items as they
  are."""
  text, n = "", 0
  for item in items:
    if "audio" in item:
      n += 1
      text += f"Audio {n}:<audio>{item['audio']}</audio>\n"
    else:
      text += item["text"]
  return text
