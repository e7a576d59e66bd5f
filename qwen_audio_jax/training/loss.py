"""Next-token cross-entropy on target tokens only, z-loss, and token accuracy, as sums.

Position t predicts input_ids[t + 1]; it counts when target_mask[t + 1] and t + 1 is in the same
non-padding segment as t (so packed examples never predict across their boundary). Everything is
returned as sums with the token counts, so micro-batches, devices and evaluation batches add up
exactly and the caller divides once by the total number of target tokens.

z-loss (PaLM, Chowdhery et al. 2022): z_loss_weight * log(Z)^2 per target token, which keeps the
softmax normaliser near 1 and the logits from drifting in bf16.

Chunked form (`chunked_loss_sums`): with Qwen's 152k-156k vocabulary the float32 logits of one
2048-token row take 1.2 GiB, and their gradient as much again, and projecting every position
costs 2 x width x vocab FLOPs each although the loss reads only the target positions (a third of
a demo step went to the logits of prompts, audio spans and padding). Given the final hidden
states and the output head, each row's target positions are first gathered to the front of the
row (a stable sort, static shapes), then projected to the vocabulary `chunk_length` positions at
a time inside a rematerialised scan whose chunks past the batch's longest run of targets are
skipped (`lax.cond`, in the forward and the backward pass). Only one chunk's logits ever exist,
and only chunks that hold a target are computed. The sums are the same as from full logits (up
to float summation order).
"""

from typing import Dict

import jax
import jax.numpy as jnp

from qwen_audio_jax.model.llm import project_to_vocab


def _predictions(batch: Dict[str, jax.Array]):
  """(labels, valid, task ids) of the positions 0 .. T-2, each predicting the next token."""
  ids, segments = batch["input_ids"], batch["segment_ids"]
  valid = (batch["target_mask"][:, 1:] & (segments[:, 1:] == segments[:, :-1])
           & (segments[:, 1:] != 0))
  return ids[:, 1:], valid, batch["task_ids"][:, 1:]


def _sums(logits, labels, valid, task_ids, num_tasks: int, vocab=None) -> Dict[str, jax.Array]:
  """Sums from logits over the whole vocabulary, or (with `vocab`, an OutputVocab of
  training.output_vocab) over its kept tokens followed by the one logit the other (tied) tokens
  share."""
  logits = logits.astype(jnp.float32)
  if vocab is None:
    log_z = jax.nn.logsumexp(logits, axis=-1)
    label_logits = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    predicted = jnp.argmax(logits, axis=-1) == labels
  else:
    # (V - n) tokens sharing logit r add (V - n) * e^r to the normaliser; a label among them
    # has logit r; a kept token is the prediction only when it beats them.
    index = jnp.asarray(vocab.index_of())[labels]
    kept = index >= 0
    if vocab.rest:
      logits, rest_logit = logits[..., :-1], logits[..., -1]
    else:
      rest_logit = jnp.full(logits.shape[:-1], -jnp.inf)
    log_z = jnp.logaddexp(jax.nn.logsumexp(logits, axis=-1),
                          rest_logit + jnp.log(float(max(vocab.rest, 1))))
    label_logits = jnp.where(
        kept, jnp.take_along_axis(logits, jnp.maximum(index, 0)[..., None], axis=-1)[..., 0],
        rest_logit)
    beats_rest = jnp.max(logits, axis=-1) > rest_logit
    predicted = kept & (jnp.argmax(logits, axis=-1) == index) & beats_rest
  token_loss = log_z - label_logits
  correct = predicted & valid
  weight = valid.astype(jnp.float32)
  tasks = jax.nn.one_hot(task_ids, num_tasks, dtype=jnp.float32)  # -1 -> zeros
  per_task = lambda x: jnp.einsum("bs,bst->t", x * weight, tasks)  # noqa: E731
  return {
      "loss_sum": jnp.sum(token_loss * weight),
      "z_loss_sum": jnp.sum(jnp.square(log_z) * weight),
      "correct": jnp.sum(correct.astype(jnp.float32)),
      "target_tokens": jnp.sum(weight),
      "task_loss_sum": per_task(token_loss),
      "task_correct": per_task(correct.astype(jnp.float32)),
      "task_target_tokens": per_task(jnp.ones_like(weight)),
  }


def loss_sums(logits: jax.Array, batch: Dict[str, jax.Array], num_tasks: int
              ) -> Dict[str, jax.Array]:
  """Sums over the batch's target tokens: loss, log(Z)^2, correct predictions, per task too."""
  labels, valid, task_ids = _predictions(batch)
  return _sums(logits[:, :-1], labels, valid, task_ids, num_tasks)


def chunked_loss_sums(hidden: jax.Array, head: jax.Array, batch: Dict[str, jax.Array],
                      num_tasks: int, chunk_length: int, vocab=None) -> Dict[str, jax.Array]:
  """`loss_sums` from final-normed hidden states [B, T, W] and the output head [W, V], computing
  the logits of the target positions only, `chunk_length` per row at a time (see the module
  docstring). Rows stay where they are (a batch sharded over devices keeps its sharding). With
  `vocab` (an OutputVocab), `head` is `output_vocab.kept_columns`: [W, n (+ 1)]."""
  labels, valid, task_ids = _predictions(batch)
  hidden = hidden[:, :-1]
  rows, positions = labels.shape
  chunk_length = min(chunk_length, positions)
  chunks = -(-positions // chunk_length)
  pad = chunks * chunk_length - positions
  # Each row's targets first, in order; the rest (never read: weight 0) after them.
  order = jnp.argsort(jnp.logical_not(valid).astype(jnp.int32), axis=1, stable=True)
  longest = jnp.max(jnp.sum(valid.astype(jnp.int32), axis=1))

  def split(x):  # [B, P, ...] -> targets first -> [chunks, B, chunk_length, ...]
    x = jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1)
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    x = x.reshape((rows, chunks, chunk_length) + x.shape[2:])
    return jnp.swapaxes(x, 0, 1)

  @jax.checkpoint  # keep only the chunk's inputs; its logits are recomputed for the backward
  def chunk_sums(h, y, v, t):
    return _sums(project_to_vocab(h, head), y, v, t, num_tasks, vocab)

  inputs = tuple(split(x) for x in (hidden, labels, valid, task_ids))
  shapes = jax.eval_shape(chunk_sums, *(jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
                                        for x in inputs))
  zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def body(totals, chunk):
    index, args = chunk
    # A chunk past every row's targets holds none: skipped, its sums are zero.
    sums = jax.lax.cond(index * chunk_length < longest, lambda a: chunk_sums(*a),
                        lambda a: zero, args)
    return jax.tree.map(jnp.add, totals, sums), None

  totals, _ = jax.lax.scan(body, zero, (jnp.arange(chunks), inputs))
  return totals
