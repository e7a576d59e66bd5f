"""The jitted programs: prefill with the audio splice, then a decode loop on device.

    prefill   the left-padded prompts (audio spliced as in training) run once through the model
              in decode mode, filling a KV cache of `prompt bucket + new-token bucket` positions;
              only the last position is projected to the vocabulary
    loop      `lax.while_loop`: choose the next token of every row (greedy or a seeded draw),
              stop rows that produced a stop token, run the model on the new tokens; it ends
              when every row has stopped or `max_new_tokens` is reached

Everything between the host's arrays and the generated ids runs in one compiled program per
shape bucket (`Generator` keeps and counts them). Beam search is in `beam.py`.
"""

import dataclasses
from typing import Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
from jax.experimental import io_callback

from qwen_audio_jax.audio import lengths
from qwen_audio_jax.generate import logits as logits_lib
from qwen_audio_jax.model.llm import output_head, project_to_vocab
from qwen_audio_jax.model.qwen_audio import QwenAudio


@dataclasses.dataclass(frozen=True)
class LoopSpec:
  """What the compiled loop depends on statically (part of the program's cache key)."""
  max_new_bucket: int  # length of the output buffer; the loop bound itself is dynamic
  sample: bool
  top_k: int
  use_top_p: bool
  use_temperature: bool
  repetition_penalty: float
  stop_ids: Tuple[int, ...]
  pad_id: int
  stream: bool = False
  # Ids >= this are never chosen: the released embedding tables are padded past the tokenizer's
  # vocabulary (155,947 rows for 155,165 tokens), and those rows decode to nothing.
  vocab_limit: Optional[int] = None


def prefill(model: QwenAudio, params, batch: Dict[str, jax.Array], cache_length: int):
  """(last-position logits [B, V] float32, filled cache) for a left-padded prompt batch."""
  ids = batch["input_ids"]
  cache = model.init_cache(ids.shape[0], cache_length)
  audio = {}
  if "audio_mel" in batch:
    audio = dict(audio_mel=batch["audio_mel"], audio_lengths=batch["audio_lengths"],
                 audio_starts=batch["audio_starts"])
  hidden, state = model.apply(
      {"params": params, "cache": cache}, ids, positions=batch["positions"],
      segment_ids=batch["segment_ids"], decode=True, return_hidden=True, mutable=["cache"],
      **audio)
  head = output_head(params["llm"], model.config)
  last = at_least_two_rows(hidden[:, -1:])  # one row would take another matmul kernel
  logits = project_to_vocab(last, head)[:ids.shape[0], 0]
  return logits, state["cache"]


def at_least_two_rows(x):
  """`x` with its first row repeated when it has one row.

  XLA:CPU multiplies a single row by a matrix with a matrix-vector kernel whose sums round
  differently from its matrix-matrix kernel (measured: ~3e-7 on the logits). Running a lone row
  as two keeps its numbers equal to the same row's in a batch.
  """
  return jnp.concatenate([x, x], axis=0) if x.shape[0] == 1 else x


def step(model: QwenAudio, params, cache, tokens, positions):
  """Logits [B, V] of one new token per row ([B] ids at [B] positions), and the cache."""
  ones = jnp.ones_like(tokens)[:, None]
  logits, state = model.apply({"params": params, "cache": cache}, tokens[:, None],
                              positions=positions[:, None], segment_ids=ones, decode=True,
                              mutable=["cache"])
  return logits[:, 0], state["cache"]


def seen_tokens(ids, segment_ids, vocab_size: int):
  """[B, V] bool: which ids occur among each row's (non-padding) prompt tokens."""
  batch = ids.shape[0]
  seen = jnp.zeros((batch, vocab_size), bool)
  return seen.at[jnp.arange(batch)[:, None], ids].max(segment_ids > 0)


def decode_loop(model: QwenAudio, params, batch, spec: LoopSpec,
                on_tokens: Optional[Callable] = None):
  """Generated ids [B, max_new_bucket] (pad after a row's end), lengths [B] (stop token
  included), whether each row stopped on a stop token [B], and each generated token's
  log-probability under the distribution it was chosen from [B, max_new_bucket]."""
  first_logits, cache = prefill(model, params, batch,
                                batch["input_ids"].shape[1] + spec.max_new_bucket)
  rows = first_logits.shape[0]
  if rows == 1:  # decode a lone row as two (see `at_least_two_rows`)
    from qwen_audio_jax.generate.beam import map_cache_rows  # pylint: disable=g-import-not-at-top
    cache = map_cache_rows(cache, lambda x, axis: jnp.repeat(x, 2, axis=axis),
                           model.config.scan_layers)
    first_logits = at_least_two_rows(first_logits)
    batch = {k: (at_least_two_rows(v) if v.ndim and v.shape[0] == 1 else v)
             for k, v in batch.items()}
    batch["row_valid"] = batch["row_valid"].at[1].set(False)
  batch_size = first_logits.shape[0]
  vocab = first_logits.shape[-1]
  max_new = batch["max_new_tokens"]
  stop_ids = jnp.asarray(spec.stop_ids, jnp.int32)
  seen = (seen_tokens(batch["input_ids"], batch["segment_ids"], vocab)
          if spec.repetition_penalty != 1.0 else jnp.zeros((batch_size, 1), bool))

  def pick(logits, seen, t):
    processed = logits_lib.process(
        logits, seen, repetition=spec.repetition_penalty,
        temperature=batch["temperature"] if spec.use_temperature else 1.0, top_k=spec.top_k,
        top_p=batch["top_p"] if spec.use_top_p else 1.0, sample=spec.sample,
        vocab_limit=spec.vocab_limit)
    token = logits_lib.choose(processed, batch["keys"], t, sample=spec.sample)
    logp = jnp.take_along_axis(jax.nn.log_softmax(processed, axis=-1), token[:, None], axis=1)
    return token, logp[:, 0]

  def cond(carry):
    t, _, _, _, _, done, _, _ = carry
    return (t < max_new) & ~jnp.all(done)

  def body(carry):
    t, logits, cache, out, out_logp, done, lengths, seen = carry
    token, logp = pick(logits, seen, t)
    token = jnp.where(done, spec.pad_id, token)
    out = out.at[:, t].set(token)
    out_logp = out_logp.at[:, t].set(jnp.where(done, 0.0, logp))
    lengths = lengths + (~done).astype(jnp.int32)
    if spec.stream and on_tokens is not None:
      io_callback(on_tokens, None, t, token, done, ordered=True)
    done = done | jnp.any(token[:, None] == stop_ids[None, :], axis=-1)
    if spec.repetition_penalty != 1.0:
      seen = seen.at[jnp.arange(batch_size), token].set(True)
    more = (t + 1 < max_new) & ~jnp.all(done)
    logits, cache = jax.lax.cond(
        more, lambda c: step(model, params, c, token, batch["prompt_lengths"] + t),
        lambda c: (logits, c), cache)
    return t + 1, logits, cache, out, out_logp, done, lengths, seen

  out = jnp.full((batch_size, spec.max_new_bucket), spec.pad_id, jnp.int32)
  out_logp = jnp.zeros((batch_size, spec.max_new_bucket), jnp.float32)
  carry = (jnp.zeros((), jnp.int32), first_logits, cache, out, out_logp,
           ~batch["row_valid"], jnp.zeros((batch_size,), jnp.int32), seen)
  _, _, _, out, out_logp, _, lengths, _ = jax.lax.while_loop(cond, body, carry)
  last = jnp.take_along_axis(out, jnp.maximum(lengths - 1, 0)[:, None], axis=1)[:, 0]
  stopped = (lengths > 0) & jnp.any(last[:, None] == stop_ids[None, :], axis=-1)
  return out[:rows], lengths[:rows], stopped[:rows], out_logp[:rows]


def encoder_mel_frames(num_samples: int, cut_to_clip: bool) -> int:
  """Mel frames a clip needs in the encoder's input so that its valid frames see exactly what
  they see in a full 30 s window: 2T frames (T: frames after the convs) when the model cuts the
  mel at the clip's end (Qwen-Audio), else 2T + 1 (conv1 at the last valid frame reads one
  padding frame)."""
  frames = 2 * int(lengths.encoder_frames(num_samples))
  return min(lengths.N_FRAMES, frames if cut_to_clip else frames + 1)
