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
a time inside a scan whose chunks past the batch's longest run of targets are skipped
(`lax.cond`). Each chunk's gradient is formed right there, in the forward pass, from its logits
(`_fused_loss`), so only one chunk's logits ever exist, only chunks that hold a target are
computed, and none is computed twice. The sums and gradients are the same as from full logits
(up to float summation order).
"""

import functools
from typing import Dict

import jax
from jax.custom_derivatives import SymbolicZero
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


def objective(sums: Dict[str, jax.Array], z_loss_weight: float) -> jax.Array:
  """What training minimises (before dividing by the target tokens): loss + z-loss sums."""
  return sums["loss_sum"] + z_loss_weight * sums["z_loss_sum"]


def loss_sums(logits: jax.Array, batch: Dict[str, jax.Array], num_tasks: int
              ) -> Dict[str, jax.Array]:
  """Sums over the batch's target tokens: loss, log(Z)^2, correct predictions, per task too."""
  labels, valid, task_ids = _predictions(batch)
  return _sums(logits[:, :-1], labels, valid, task_ids, num_tasks)


def chunked_loss_sums(hidden: jax.Array, head: jax.Array, batch: Dict[str, jax.Array],
                      num_tasks: int, chunk_length: int, vocab=None,
                      z_loss_weight: float = 0.0) -> Dict[str, jax.Array]:
  """`loss_sums` from final-normed hidden states [B, T, W] and the output head [W, V], computing
  the logits of the target positions only, `chunk_length` per row at a time (see the module
  docstring). Rows stay where they are (a batch sharded over devices keeps its sharding). With
  `vocab` (an OutputVocab), `head` is `output_vocab.kept_columns`: [W, n (+ 1)].

  The sums also hold 'objective' = loss_sum + z_loss_weight * z_loss_sum, the one output with a
  gradient: differentiating any other sum raises (its gradient would silently be zero)."""
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

  inputs = tuple(split(x) for x in (hidden, labels, valid, task_ids))
  scan = functools.partial(_chunk_scan, num_tasks=num_tasks, chunk_length=chunk_length,
                           vocab=vocab, z_loss_weight=float(z_loss_weight))
  return _fused_loss(scan)(inputs[0], head, *inputs[1:], longest)


def _chunk_scan(hidden, head, labels, valid, task_ids, longest, *, num_tasks, chunk_length,
                vocab, z_loss_weight, grad_hidden: bool, grad_head: bool):
  """Sums over the chunks [chunks, B, chunk_length, ...], and when asked the objective's
  gradients: per chunk of hidden states (stacked like `hidden`) and summed over the chunks for
  the head (float32). Chunks past every row's targets hold none: skipped, their sums and
  gradients are zero."""
  def objective_and_sums(logits, y, v, t):
    sums = _sums(logits, y, v, t, num_tasks, vocab)
    return objective(sums, z_loss_weight), sums

  def compute(args):
    (h, y, v, t), head_grad = args
    logits = project_to_vocab(h, head)
    if not (grad_hidden or grad_head):
      return objective_and_sums(logits, y, v, t)[1], None, head_grad
    _, pullback, sums = jax.vjp(lambda x: objective_and_sums(x, y, v, t), logits, has_aux=True)
    dlogits = pullback(jnp.ones((), jnp.float32))[0].astype(h.dtype)
    hidden_grad = None
    if grad_hidden:
      hidden_grad = jnp.einsum("bcv,ev->bce", dlogits, head.astype(h.dtype),
                               preferred_element_type=jnp.float32).astype(h.dtype)
    if grad_head:
      head_grad = head_grad + jnp.einsum("bce,bcv->ev", h, dlogits,
                                         preferred_element_type=jnp.float32)
    return sums, hidden_grad, head_grad

  head_grad = jnp.zeros(head.shape, jnp.float32) if grad_head else None
  shapes = jax.eval_shape(compute, (tuple(jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
                                          for x in (hidden, labels, valid, task_ids)), head_grad))
  zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[:2])

  def body(carry, chunk):
    totals, head_grad = carry
    index, args = chunk
    sums, hidden_grad, head_grad = jax.lax.cond(
        index * chunk_length < longest, compute, lambda a: zero + (a[1],), (args, head_grad))
    return (jax.tree.map(jnp.add, totals, sums), head_grad), hidden_grad

  (totals, head_grad), hidden_grad = jax.lax.scan(
      body, (zero[0], head_grad),
      (jnp.arange(hidden.shape[0]), (hidden, labels, valid, task_ids)))
  totals["objective"] = objective(totals, z_loss_weight)
  return totals, hidden_grad, head_grad


def _fused_loss(scan):
  """The chunked loss with its gradient formed in the forward pass, chunk by chunk, from the
  chunk's logits while they exist (as fused linear cross-entropy kernels do): the backward pass
  only scales the stored gradients by the objective's cotangent. Against rematerialising each
  chunk this saves the recomputation of its logits and softmax (a quarter of the loss's matrix
  products), and only the gradients of differentiated inputs are formed (`perturbed`): a frozen
  head costs no [W, V] product at all. The logits' gradient enters both products in the compute
  dtype (bf16 in mixed precision, accumulated in float32), like every other backward product of
  the model."""
  @jax.custom_vjp
  def fused(hidden, head, labels, valid, task_ids, longest):
    return scan(hidden, head, labels, valid, task_ids, longest, grad_hidden=False,
                grad_head=False)[0]

  def forward(hidden, head, labels, valid, task_ids, longest):
    totals, hidden_grad, head_grad = scan(
        hidden.value, head.value, labels.value, valid.value, task_ids.value, longest.value,
        grad_hidden=hidden.perturbed, grad_head=head.perturbed)
    if head_grad is not None:
      head_grad = head_grad.astype(head.value.dtype)
    return totals, (hidden_grad, head_grad)

  def backward(residuals, cotangents):
    hidden_grad, head_grad = residuals
    for key, cotangent in cotangents.items():
      if key != "objective" and not isinstance(cotangent, SymbolicZero):
        raise ValueError(f"chunked_loss_sums: only 'objective' has a gradient, got one for "
                         f"{key!r} (use objective = loss_sum + z_loss_weight * z_loss_sum)")
    scale = cotangents["objective"]
    if isinstance(scale, SymbolicZero):
      return (None,) * 6
    hidden_grad = None if hidden_grad is None else (scale * hidden_grad).astype(hidden_grad.dtype)
    head_grad = None if head_grad is None else (scale * head_grad).astype(head_grad.dtype)
    return hidden_grad, head_grad, None, None, None, None

  fused.defvjp(forward, backward, symbolic_zeros=True)
  return fused
