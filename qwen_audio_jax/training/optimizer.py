"""The optimizer of a stage: schedule, optax chain, and which parameters it trains.

Freezing is structural: the optimizer only ever sees the trainable subtree (frozen leaves are
`None` there), so frozen parameters get no gradient computation, no optimizer state and no
update — they stay bit-identical. What is trainable is read from the config by
`qwen_audio_jax.training.trainable` (`config.trainable` minus `config.frozen`, or the LoRA
factors).
"""

import dataclasses
import re
from typing import Any, Callable, Optional

import jax
import optax

from qwen_audio_jax.model.params import path_tree
from qwen_audio_jax.training.layer_decay import encoder_layer_decay
from qwen_audio_jax.training import vocab_rows as vocab_rows_lib
from qwen_audio_jax.training.trainable import trainable_mask

OPTIMIZERS = ("adamw", "adafactor", "sgd")
SCHEDULES = ("warmup_cosine", "warmup_linear", "constant")


def partition(mask, params):
  """(trainable, frozen) trees with `None` in place of the other part's leaves."""
  trainable = jax.tree.map(lambda m, p: p if m else None, mask, params)
  frozen = jax.tree.map(lambda m, p: None if m else p, mask, params)
  return trainable, frozen


def combine(mask, trainable, frozen):
  """Inverse of `partition`."""
  return jax.tree.map(lambda m, t, f: t if m else f, mask, trainable, frozen)


def make_schedule(optim, total_steps: int) -> Callable[[Any], Any]:
  """Learning rate by step: linear warmup to the peak, then cosine or linear decay, or constant."""
  peak = optim.learning_rate
  end = peak * optim.end_learning_rate_ratio
  if optim.schedule == "constant":
    return optax.constant_schedule(peak)
  warmup = int(optim.warmup_steps)
  decay_steps = max(int(total_steps), warmup + 1)
  if optim.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, decay_steps, end)
  if optim.schedule == "warmup_linear":
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup),
                                 optax.linear_schedule(peak, end, decay_steps - warmup)],
                                [warmup])
  raise ValueError(f"config.optim.schedule={optim.schedule!r}: expected one of {SCHEDULES}")


@dataclasses.dataclass
class Optimizer:
  """optax transformation over the trainable subtree, its schedule, and the trainable mask.

  With `vocab_rows` (config.optim.vocab_rows='data', training/vocab_rows.py) the subtree the
  transformation sees holds the compact embedding and head tables: `trained` and `write_back`
  convert.
  """
  tx: optax.GradientTransformation
  schedule: Callable[[Any], Any]
  trainable_mask: Any
  vocab_rows: Optional[vocab_rows_lib.VocabRows] = None

  def trained(self, params):
    """(the subtree the optimizer updates, the frozen rest) of a full parameter tree; with
    compact tables the frozen rest also carries the full tables, which the model reads."""
    trained, frozen = partition(self.trainable_mask, params)
    if self.vocab_rows is not None:
      trained = vocab_rows_lib.compress(self.vocab_rows, trained)
      frozen = vocab_rows_lib.with_tables(frozen, params)
    return trained, frozen

  def write_back(self, trained, params):
    """The full parameter tree with the optimizer's subtree `trained` in place."""
    full, frozen = partition(self.trainable_mask, params)
    if self.vocab_rows is not None:
      trained = vocab_rows_lib.expand(self.vocab_rows, trained, full)
    return combine(self.trainable_mask, trained, frozen)

  def global_norm(self, tree) -> jax.Array:
    """The global L2 norm of a gradient of the optimizer's subtree (that of the full tables)."""
    return vocab_rows_lib.global_norm(self.vocab_rows, tree)


def make_optimizer(config, params) -> Optimizer:
  """The stage's optimizer for `params` (arrays or ShapeDtypeStructs)."""
  optim = config.optim
  mask = trainable_mask(config, params)
  problem = vocab_rows_lib.refusal(config)
  if problem:
    raise ValueError(problem)
  rows = None
  if vocab_rows_lib.mode_of(config) == "data" and config.lora.rank == 0:  # LoRA: no table
    rows = vocab_rows_lib.resolve(config, int(params["llm"]["embed"].shape[0]))
  schedule = make_schedule(optim, config.total_steps)
  if optim.name == "adamw":
    def decay_mask(tree):
      # Leaves of the tree the optimizer sees (the trainable subtree, or the LoRA factors).
      excluded = re.compile(optim.weight_decay_exclude) if optim.weight_decay_exclude else None
      return jax.tree.map(lambda p: not (excluded and excluded.search(p)), path_tree(tree))
    core = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                       weight_decay=optim.weight_decay, mask=decay_mask)
  elif optim.name == "adafactor":
    core = optax.adafactor(schedule, weight_decay_rate=optim.weight_decay or None)
  elif optim.name == "sgd":
    core = optax.sgd(schedule, momentum=optim.b1 or None)
  else:
    raise ValueError(f"config.optim.name={optim.name!r}: expected one of {OPTIMIZERS}")
  parts = ([vocab_rows_lib.clip_by_global_norm(rows, optim.grad_clip_norm)]
           if optim.grad_clip_norm else [])
  parts.append(core)
  # After the core, so it scales each encoder layer's learning rate (weight decay included).
  layer_decay = encoder_layer_decay(optim.encoder_layer_decay, params)
  if layer_decay is not None:
    parts.append(layer_decay)
  return Optimizer(optax.chain(*parts), schedule, mask, rows)
