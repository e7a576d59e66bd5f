"""Next-token choice from logits: repetition penalty, temperature, top-k, top-p, draw or argmax.

Small pure functions over float32 logits [B, V], applied in transformers' order (penalty, then
temperature, top-k, top-p), so a user of `generate` gets the distribution they expect.
"""

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def repetition_penalty(logits, seen, penalty: float):
  """CTRL's penalty (Keskar et al. 2019) as transformers applies it: logits of tokens already in
  the sequence (`seen` [B, V] bool) are divided by `penalty` when positive, multiplied when
  negative."""
  penalised = jnp.where(logits > 0, logits / penalty, logits * penalty)
  return jnp.where(seen, penalised, logits)


def top_k_filter(logits, k: int):
  """Keeps the k largest logits of each row (ties at the k-th value kept), the rest -inf."""
  kth = jax.lax.top_k(logits, k)[0][:, -1:]
  return jnp.where(logits < kth, NEG_INF, logits)


def top_p_filter(logits, p: float):
  """Nucleus filter (Holtzman et al. 2019): keeps the most likely tokens whose probabilities,
  summed in decreasing order, first reach `p` (always at least the most likely one)."""
  order = jnp.argsort(-logits, axis=-1)
  sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more likely tokens
  keep_sorted = before < p
  keep_sorted = keep_sorted.at[:, 0].set(True)
  keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(
      keep_sorted)
  return jnp.where(keep, logits, NEG_INF)


def process(logits, seen, *, repetition: float, temperature: float, top_k: int, top_p: float,
            sample: bool, vocab_limit=None):
  """The logits the next token is drawn from (or the argmax taken of). Static settings, except
  temperature and top_p, which may be traced scalars. Ids >= vocab_limit are excluded."""
  logits = logits.astype(jnp.float32)
  if vocab_limit is not None and vocab_limit < logits.shape[-1]:
    logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, NEG_INF)
  if repetition != 1.0:
    logits = repetition_penalty(logits, seen, repetition)
  if not sample:
    return logits
  if not (isinstance(temperature, float) and temperature == 1.0):
    logits = logits / temperature
  if top_k > 0:
    logits = top_k_filter(logits, min(top_k, logits.shape[-1]))
  if not (isinstance(top_p, float) and top_p == 1.0):
    logits = top_p_filter(logits, top_p)
  return logits


def choose(logits, keys, step, *, sample: bool):
  """argmax, or one draw per row from its own key folded with the step: [B] int32."""
  if not sample:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
  return jax.vmap(jax.random.categorical)(step_keys, logits).astype(jnp.int32)
