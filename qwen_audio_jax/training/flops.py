"""Model FLOPs of one train step (audio encoder + LLM) and model FLOPs utilisation (MFU).

Counting (dense matmuls only; norms, softmax, RoPE, losses and the embedding lookup are ignored,
as is rematerialisation: this is *model* FLOPs, as in the PaLM paper's MFU):

  A matmul with a weight of N entries applied to T vectors costs 2 N T in the forward pass,
  2 N T more to send gradients back to its input, and 2 N T more for the weight's gradient. So a
  part of the model costs  (1 + g + t) x 2 N T  where g = 1 when gradients flow through the part
  (something before it, or the part itself, is trained) and t = 1 when its weights are trained:
  the classic 6 N D when everything is trained, 4 N T for the frozen LLM of stage 1 (gradients
  still pass through it to the audio encoder), 2 N T for the frozen encoder of stage 2.

  Attention's two activation-activation matmuls (Q K^T and P V) cost 4 S^2 H D per sequence and
  layer forward (the causal mask is not discounted), and twice that backward when gradients flow.

  LLM (per row of S tokens, L layers, width W, H query / K key-value heads of size D, MLP width M,
  vocabulary V):  N = L (W H D + 2 W K D + H D W + 3 W M) + W V.
  Audio encoder (per clip slot, every slot computes the full 30 s window: 3000 mel frames,
  F = 1500 positions after the stride-2 conv, L_e layers of width W_e and MLP width M_e):
    conv1 2*3*n_mels*W_e*3000 + conv2 2*3*W_e^2*1500 + L_e (2 (4 W_e^2 + 2 W_e M_e) F + 4 F^2 W_e)
    + the projection 2 W_e W 750 (after the average pool), all times (1 + g + t) resp.
    (1 + 2g) for the attention term.
Padding tokens and empty audio slots are counted: the step computes them.
"""

import dataclasses
from typing import Dict, Optional

from qwen_audio_jax.audio import lengths
from qwen_audio_jax.config import QwenAudioConfig

# Dense bf16 peak FLOP/s per device (vendor data sheets). Matched by substring of
# jax.Device.device_kind, most specific first.
PEAK_FLOPS = (
    ("TPU v6", 918e12),  # Trillium (v6e)
    ("TPU v5p", 459e12),
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5e", 197e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
    ("TPU v3", 123e12),
    ("TPU v2", 45e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("V100", 125e12),
)


@dataclasses.dataclass(frozen=True)
class TrainedParts:
  """Which parts of the model the step trains (decides the backward-pass terms)."""
  audio: bool  # any audio-side parameter (encoder, projection, audio bos/eos)
  encoder_body: bool  # the encoder's convs / blocks (not only its projection)
  llm: bool  # LLM weights, or LoRA factors on it


def peak_flops(device_kind: str) -> Optional[float]:
  """Peak bf16 FLOP/s of one device, None when unknown (CPUs and unlisted accelerators)."""
  for name, peak in PEAK_FLOPS:
    if name.lower() in device_kind.lower():
      return peak
  return None


def llm_weight_entries(config: QwenAudioConfig) -> int:
  l = config.llm
  per_layer = (l.width * l.heads * l.head_dim + 2 * l.width * l.kv_heads * l.head_dim
               + l.heads * l.head_dim * l.width + 3 * l.width * l.mlp_dim)
  return l.depth * per_layer + l.width * l.vocab_size


def step_flops(config: QwenAudioConfig, *, rows: int, text_length: int, audio_slots: int,
               trained: TrainedParts, audio_frames: int = lengths.N_FRAMES) -> Dict[str, float]:
  """Model FLOPs of one step on a [rows, text_length] batch with `audio_slots` clips per row of
  `audio_frames` mel frames (the batch's audio bucket)."""
  l, e = config.llm, config.encoder
  llm_grads = trained.llm or trained.audio
  llm_weight = (1 + int(llm_grads) + int(trained.llm)) * 2 * llm_weight_entries(config)
  llm = rows * text_length * llm_weight
  llm += rows * l.depth * (1 + 2 * int(llm_grads)) * 4 * text_length**2 * l.heads * l.head_dim

  frames = audio_frames
  positions = lengths.encoder_frames_from_mel(frames)
  pooled = positions // 2 if e.avg_pool else positions
  body_factor = 1 + int(trained.encoder_body) * 2
  body = (2 * 3 * e.n_mels * e.width * frames + 2 * 3 * e.width**2 * positions
          + e.depth * 2 * (4 * e.width**2 + 2 * e.width * e.mlp_dim) * positions) * body_factor
  body += e.depth * 4 * positions**2 * e.width * (1 + 2 * int(trained.encoder_body))
  projection = 0
  if e.output_dim is not None:
    projection = 2 * e.width * e.output_dim * pooled * (1 + 2 * int(trained.audio))
  encoder = rows * audio_slots * (body + projection)
  return {"encoder": float(encoder), "llm": float(llm), "total": float(encoder + llm)}


def mfu(flops_per_step: float, step_seconds: float, device_count: int,
        device_kind: str) -> Optional[float]:
  """Model FLOPs utilisation in [0, 1]; None when the device's peak is unknown (CPU: 'n/a')."""
  peak = peak_flops(device_kind)
  if peak is None or step_seconds <= 0:
    return None
  return flops_per_step / (step_seconds * device_count * peak)
