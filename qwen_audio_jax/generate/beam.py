"""Beam search on device: K hypotheses per row, scored by log-probability / length ** penalty.

Each step extends every live beam by every token, keeps the K best continuations that do not
end in a stop token as the new beams, and moves continuations that do end in one (and, at the
last step, all of them) into a pool of K finished hypotheses per row, scored by
sum of log-probabilities / (length ** length_penalty), the length counting the stop token. The
search ends for a row when no live beam can still beat its K-th finished hypothesis, which leaves
the result unchanged (log-probabilities only fall as a hypothesis grows). The KV cache holds
B x K rows, reordered by parent beam at every step.
"""

import jax
import jax.numpy as jnp

from qwen_audio_jax.generate import decode
from qwen_audio_jax.generate import logits as logits_lib

NEG_INF = -jnp.inf


def _batch_axis(path, leaf, scanned: bool):
  names = [getattr(k, "key", str(k)) for k in path]
  if leaf.ndim == 0:
    return None
  if scanned and names[-1] in ("cached_key", "cached_value"):
    return 1  # [layers, batch, length, heads, head_dim]
  return 0


def map_cache_rows(cache, fn, scanned: bool):
  """Applies fn(leaf, batch_axis) to every cache leaf that has a batch axis."""
  def one(path, leaf):
    axis = _batch_axis(path, leaf, scanned)
    return leaf if axis is None else fn(leaf, axis)
  return jax.tree_util.tree_map_with_path(one, cache)


def beam_search(model, params, batch, spec: decode.LoopSpec, num_beams: int):
  """(best sequences [B, N], lengths [B], stopped [B], scores [B]) for every row."""
  k = num_beams
  scanned = model.config.scan_layers
  first_logits, cache = decode.prefill(model, params, batch,
                                       batch["input_ids"].shape[1] + spec.max_new_bucket)
  rows, vocab = first_logits.shape
  n = spec.max_new_bucket
  max_new = batch["max_new_tokens"]
  penalty = batch["length_penalty"]
  stop_ids = jnp.asarray(spec.stop_ids, jnp.int32)
  n_cand = min(k * (1 + len(spec.stop_ids)), k * vocab)
  positions = jnp.repeat(batch["prompt_lengths"], k)

  cache = map_cache_rows(cache, lambda x, axis: jnp.repeat(x, k, axis=axis), scanned)
  logits = jnp.repeat(first_logits, k, axis=0)
  use_seen = spec.repetition_penalty != 1.0
  seen = (jnp.repeat(decode.seen_tokens(batch["input_ids"], batch["segment_ids"], vocab), k, 0)
          if use_seen else jnp.zeros((rows * k, 1), bool))
  alive_seq = jnp.full((rows, k, n), spec.pad_id, jnp.int32)
  alive_logp = jnp.where(jnp.arange(k)[None, :] == 0, 0.0, NEG_INF) * jnp.ones((rows, 1))
  alive_logp = jnp.where(batch["row_valid"][:, None], alive_logp, NEG_INF)
  fin_seq = jnp.full((rows, k, n), spec.pad_id, jnp.int32)
  fin_score = jnp.full((rows, k), NEG_INF)
  fin_len = jnp.zeros((rows, k), jnp.int32)
  row_index = jnp.arange(rows)[:, None]

  def finished(t, alive_logp, fin_score):
    """Rows where no live beam can beat the K-th finished hypothesis any more."""
    best = jnp.max(alive_logp, axis=1)
    lengths = jnp.stack([t + 1.0, max_new.astype(jnp.float32)])
    bound = jnp.max(best[None, :] / lengths[:, None] ** penalty, axis=0)
    return (best == NEG_INF) | (fin_score[:, -1] >= bound)

  def cond(carry):
    t, _, _, alive_logp, _, fin_score, _, _, _ = carry
    return (t < max_new) & ~jnp.all(finished(t, alive_logp, fin_score))

  def body(carry):
    t, logits, cache, alive_logp, alive_seq, fin_score, fin_seq, fin_len, seen = carry
    processed = logits_lib.process(logits, seen, repetition=spec.repetition_penalty,
                                   temperature=1.0, top_k=0, top_p=1.0, sample=False,
                                   vocab_limit=spec.vocab_limit)
    logp = jax.nn.log_softmax(processed, axis=-1).reshape(rows, k, vocab)
    cand = (alive_logp[:, :, None] + logp).reshape(rows, k * vocab)
    top_logp, top_idx = jax.lax.top_k(cand, n_cand)
    parent, token = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
    is_stop = jnp.any(token[..., None] == stop_ids, axis=-1)
    length = (t + 1).astype(jnp.float32)
    ends = is_stop | (t + 1 >= max_new)
    new_score = jnp.where(ends, top_logp / length ** penalty, NEG_INF)
    new_seq = jnp.take_along_axis(alive_seq, parent[..., None], axis=1).at[:, :, t].set(token)

    pool_score = jnp.concatenate([fin_score, new_score], axis=1)
    pool_seq = jnp.concatenate([fin_seq, new_seq], axis=1)
    pool_len = jnp.concatenate([fin_len, jnp.full(new_score.shape, t + 1, jnp.int32)], axis=1)
    fin_score, keep = jax.lax.top_k(pool_score, k)
    fin_seq = pool_seq[row_index, keep]
    fin_len = pool_len[row_index, keep]

    live_logp, live = jax.lax.top_k(jnp.where(is_stop, NEG_INF, top_logp), k)
    alive_logp = live_logp
    alive_seq = new_seq[row_index, live]
    beam_parent = (row_index * k + parent[row_index, live]).reshape(-1)
    beam_token = token[row_index, live].reshape(-1)
    cache = map_cache_rows(cache, lambda x, axis: jnp.take(x, beam_parent, axis=axis), scanned)
    if use_seen:
      seen = seen[beam_parent].at[jnp.arange(rows * k), beam_token].set(True)
    more = (t + 1 < max_new) & ~jnp.all(finished(t + 1, alive_logp, fin_score))
    logits, cache = jax.lax.cond(
        more, lambda c: decode.step(model, params, c, beam_token, positions + t),
        lambda c: (logits, c), cache)
    return t + 1, logits, cache, alive_logp, alive_seq, fin_score, fin_seq, fin_len, seen

  carry = (jnp.zeros((), jnp.int32), logits, cache, alive_logp, alive_seq, fin_score, fin_seq,
           fin_len, seen)
  carry = jax.lax.while_loop(cond, body, carry)
  fin_score, fin_seq, fin_len = carry[5], carry[6], carry[7]
  best_seq, best_len = fin_seq[:, 0], fin_len[:, 0]
  last = jnp.take_along_axis(best_seq, jnp.maximum(best_len - 1, 0)[:, None], axis=1)[:, 0]
  stopped = (best_len > 0) & jnp.any(last[:, None] == stop_ids[None, :], axis=-1)
  best_seq = jnp.where(jnp.arange(n)[None, :] < best_len[:, None], best_seq, spec.pad_id)
  return best_seq, best_len, stopped, fin_score[:, 0]
