"""Qwen-Audio: audio encoder + LLM, joined by splicing audio frames into the token embeddings.

    logits = LLM(splice(embed(input_ids), AudioEncoder(mel)))

A batch row holds up to A clips (static shapes: empty slots have length 0). Clip a of row b
occupies the n_audio + 2 token positions starting at `audio_starts[b, a]` (the `<audio>` token):
- Qwen-Audio (`encoder.audio_bos_eos`): those positions become [bos, frame_1 .. frame_n, eos],
  bos/eos being the encoder's two learned embeddings (they replace `<audio>` and `</audio>`);
- Qwen2-Audio: the frames replace the n positions between the `<|audio_bos|>` and
  `<|audio_eos|>` tokens, which keep their own text embeddings.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from qwen_audio_jax import sharding
from qwen_audio_jax.config import QwenAudioConfig
from qwen_audio_jax.model.encoder import AudioEncoder
from qwen_audio_jax.model.layers import dtype_of, normal_init
from qwen_audio_jax.model.llm import QwenLM, init_cache


def splice_audio(text_embeds, audio_frames, audio_counts, audio_starts, bos=None, eos=None):
  """Replaces each clip's span of `text_embeds` [B, S, W] with its audio embeddings.

  audio_frames: [B, A, N, W] encoder outputs; audio_counts: [B, A] valid frames (0 = empty slot);
  audio_starts: [B, A] index of each clip's opening token. With bos/eos ([W] each) the opening and
  closing positions take them; without, those positions keep their text embeddings.
  """
  batch, length, width = text_embeds.shape
  n_slots, n_frames = audio_frames.shape[1], audio_frames.shape[2]
  token_index = jnp.arange(length)[None, :, None]
  offset = token_index - audio_starts[:, None, :]  # [B, S, A]: position inside each span
  counts = audio_counts[:, None, :]
  in_span = (offset >= 0) & (offset <= counts + 1) & (counts > 0)
  slot = jnp.argmax(in_span, axis=-1)  # spans never overlap: at most one slot per position
  covered = jnp.any(in_span, axis=-1)
  offset = jnp.take_along_axis(offset, slot[..., None], axis=-1)[..., 0]
  count = jnp.take_along_axis(audio_counts, slot, axis=-1)
  frame = jnp.clip(offset - 1, 0, n_frames - 1)
  flat = audio_frames.reshape(batch, n_slots * n_frames, width)
  gathered = jnp.take_along_axis(flat, (slot * n_frames + frame)[..., None], axis=1)
  is_frame = covered & (offset >= 1) & (offset <= count)
  out = jnp.where(is_frame[..., None], gathered.astype(text_embeds.dtype), text_embeds)
  if bos is not None:
    out = jnp.where((covered & (offset == 0))[..., None], bos.astype(out.dtype), out)
    out = jnp.where((covered & (offset == count + 1))[..., None], eos.astype(out.dtype), out)
  return out


class QwenAudio(nn.Module):
  """The audio-language model of Qwen-Audio / Qwen2-Audio (one implementation, two configs)."""
  config: QwenAudioConfig

  def setup(self):
    enc = self.config.encoder
    self.audio_encoder = AudioEncoder(self.config)
    if enc.audio_bos_eos:
      self.audio_bos_eos = self.param(
          "audio_bos_eos", normal_init(0.02, ("bos_eos", "embed")), (2, enc.output_dim),
          dtype_of(self.config.param_dtype))
    self.llm = QwenLM(self.config)

  def encode_audio(self, audio_mel, audio_lengths):
    """Encodes every slot: mel [B, A, n_mels, F], lengths [B, A] -> ([B, A, N, W], [B, A])."""
    batch, slots = audio_lengths.shape
    mel = audio_mel.reshape((batch * slots,) + audio_mel.shape[2:])
    frames, counts = self.audio_encoder(mel, audio_lengths.reshape(-1))
    frames = frames.reshape((batch, slots) + frames.shape[1:])
    counts = jnp.where(audio_lengths > 0, counts.reshape(batch, slots), 0)
    return frames, counts

  def __call__(self, input_ids, *, positions=None, segment_ids=None, audio_mel=None,
               audio_lengths=None, audio_starts=None, train: bool = False,
               decode: bool = False, return_hidden: bool = False, token_embeds=None):
    """Logits [B, S, vocab] (float32).

    input_ids / positions / segment_ids: [B, S] (defaults: 0..S-1 and all ones).
    audio_mel: [B, A, n_mels, 3000] log-mel of each slot; audio_lengths: [B, A] valid samples
    (0 = empty slot); audio_starts: [B, A] index of each clip's opening token. Without audio the
    model is the plain LLM (also used for decoding steps after the prompt).
    return_hidden: the LLM's final-normed hidden states [B, S, W] instead of logits.
    token_embeds: [B, S, W] embeddings of `input_ids` to use instead of the embedding table's
      rows (training/vocab_rows.py reads them from its compact table).
    """
    batch, length = input_ids.shape
    if segment_ids is None:
      segment_ids = jnp.ones((batch, length), jnp.int32)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32)[None], (batch, length))
    if token_embeds is None:
      embeds = self.llm.embed(input_ids)
    else:
      embeds = sharding.constrain(token_embeds, ("act_batch", "act_length", "act_embed"))
    if audio_mel is not None:
      if audio_lengths is None or audio_starts is None:
        raise ValueError("audio_mel needs audio_lengths and audio_starts ([batch, slots] each)")
      frames, counts = self.encode_audio(audio_mel, audio_lengths)
      bos = eos = None
      if self.config.encoder.audio_bos_eos:
        bos, eos = self.audio_bos_eos[0], self.audio_bos_eos[1]
      embeds = splice_audio(embeds, frames, counts, audio_starts, bos, eos)
      embeds = sharding.constrain(embeds, ("act_batch", "act_length", "act_embed"))
    return self.llm(embeds, positions, segment_ids, train=train, decode=decode,
                    return_hidden=return_hidden)

  def init_cache(self, batch_size: int, max_length: int):
    """Zero KV cache: `model.apply(..., decode=True, mutable=['cache'])` takes {'cache': this}."""
    return {"llm": init_cache(self.config, batch_size, max_length)}
