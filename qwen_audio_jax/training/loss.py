"""Next-token cross-entropy on target tokens only, z-loss, and token accuracy, as sums.

Position t predicts input_ids[t + 1]; it counts when target_mask[t + 1] and t + 1 is in the same
non-padding segment as t (so packed examples never predict across their boundary). Everything is
returned as sums with the token counts, so micro-batches, devices and evaluation batches add up
exactly and the caller divides once by the total number of target tokens.

z-loss (PaLM, Chowdhery et al. 2022): z_loss_weight * log(Z)^2 per target token, which keeps the
softmax normaliser near 1 and the logits from drifting in bf16.
"""

from typing import Dict

import jax
import jax.numpy as jnp


def loss_sums(logits: jax.Array, batch: Dict[str, jax.Array], num_tasks: int
              ) -> Dict[str, jax.Array]:
  """Sums over the batch's target tokens: loss, log(Z)^2, correct predictions, per task too."""
  ids, segments = batch["input_ids"], batch["segment_ids"]
  labels = ids[:, 1:]
  valid = (batch["target_mask"][:, 1:] & (segments[:, 1:] == segments[:, :-1])
           & (segments[:, 1:] != 0))
  logits = logits[:, :-1].astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  label_logits = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  token_loss = log_z - label_logits
  correct = (jnp.argmax(logits, axis=-1) == labels) & valid
  weight = valid.astype(jnp.float32)
  tasks = jax.nn.one_hot(batch["task_ids"][:, 1:], num_tasks, dtype=jnp.float32)  # -1 -> zeros
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
