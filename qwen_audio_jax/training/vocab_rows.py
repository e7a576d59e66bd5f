"""Training only the vocabulary rows a run can use (`config.optim.vocab_rows = 'data'`).

The tiny model keeps Qwen's 155,947-token vocabulary, so 29.9M of its 30.3M parameters sit in
two tables, the token embedding [V, W] and the output head [W, V]. With
`loss.output_vocab = 'data'` (training/output_vocab.py) the head has only n + 1 distinct columns
(the kept tokens', and one that the other V - n tokens share, tied), and the embedding rows of
tokens that no training input holds get a zero gradient at every step. Training the full tables
still pays for them in full at every step: the embedding gradient's scatter into a [V, W] zero
table, the tied columns' [W, V] broadcast gradient, AdamW, the finiteness check and the skip's
select over 30M values, the global norm: about a fifth of the demo step.

With 'data' the optimizer sees compact tables instead:

  llm/embed    [m, W]: the rows of the m tokens the training manifests' encoded rows contain
               (tags, prompts, audio placeholders, targets; `output_vocab.data_ids`);
  llm/lm_head  [W, n + 1]: the kept columns, then one copy of the tied columns, whose gradient is
               the one every tied column gets in the full model (1 / (V - n) of the shared
               logit's, as `output_vocab.kept_columns` gives it).

The step reads the token embeddings from the compact rows, runs the same model and loss, updates
the compact tables and writes them back into the full tables, which stay the parameters of the
train state: checkpoints, evaluation, generation and export see the full model, always current.
A token outside the m rows (which the training manifests never hold: a corrupted or foreign id)
reads its row of the full table, gets no update, and is counted (`untrained_tokens` in the step
metrics).

Exact: the same parameters as training the full tables, up to float summation order, because
everything the optimizer does to a value depends on that value's own gradient and state and on
one global scale:
  * AdamW and SGD: a row whose gradient is always zero keeps zero moments and is never updated,
    unless weight decay shrinks it, so the embedding must be left out of the decay (or the decay
    be 0);
  * the tied columns have equal gradients, so equal moments: one copy stands for all of them;
  * the global gradient norm (clipping, and the `grad_norm` metric) counts that copy V - n times
    (`global_norm`).
Adafactor (second moments factored over a table's rows and columns) is refused. A stage that
trains neither table (a frozen LLM, or LoRA, which trains factors of the attention kernels
only) has nothing to compact: 'data' then changes nothing.
"""

import dataclasses
import functools
import re
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from qwen_audio_jax.training import output_vocab as output_vocab_lib

MODES = ("all", "data")
OPTIMIZERS = ("adamw", "sgd")  # elementwise: exact on compact tables
EMBED, HEAD = "embed", "lm_head"  # the two tables, under params['llm']


@dataclasses.dataclass(frozen=True)
class VocabRows:
  """The table rows a run trains: embedding rows `input_ids`, head columns of `output`."""
  input_ids: np.ndarray  # int32 [m], sorted
  output: output_vocab_lib.OutputVocab

  @property
  def vocab_size(self) -> int:
    return self.output.vocab_size

  def input_index(self) -> np.ndarray:
    """int32 [vocab_size]: a token's row in the compact embedding, -1 for the others."""
    index = np.full(self.vocab_size, -1, np.int32)
    index[self.input_ids] = np.arange(len(self.input_ids), dtype=np.int32)
    return index

  def head_multiplicity(self) -> np.ndarray:
    """float32 [n (+ 1)]: how many columns of the full head each compact column stands for."""
    count = np.ones(len(self.output.ids) + (1 if self.output.rest else 0), np.float32)
    if self.output.rest:
      count[-1] = self.output.rest
    return count


def mode_of(config) -> str:
  return config.optim.get("vocab_rows", "all")


def resolve(config, vocab_size: int) -> Optional[VocabRows]:
  """The run's compact tables (None with 'all'); the manifests are read once per process."""
  mode = mode_of(config)
  if mode == "all":
    return None
  if mode != "data":
    raise ValueError(f"config.optim.vocab_rows={mode!r}: expected one of {MODES}")
  if config.loss.get("output_vocab", "full") != "data":
    raise ValueError("config.optim.vocab_rows='data' trains the head's kept columns only: it "
                     "needs config.loss.output_vocab='data'")
  inputs, targets = output_vocab_lib.data_ids(output_vocab_lib.manifest_paths(config.data),
                                              config.data.tokenizer_path)
  for name, ids in (("inputs", inputs), ("targets", targets)):
    if ids.size and ids[-1] >= vocab_size:
      raise ValueError(f"config.optim.vocab_rows='data': the training {name} contain token "
                       f"{ids[-1]}, beyond the model's vocabulary of {vocab_size}")
  return VocabRows(input_ids=inputs,
                   output=output_vocab_lib.OutputVocab(ids=targets, vocab_size=vocab_size))


def refusal(config) -> Optional[str]:
  """Why `config` cannot train compact tables exactly (None: it can)."""
  if mode_of(config) not in MODES:
    return f"config.optim.vocab_rows={mode_of(config)!r}: expected one of {MODES}"
  if mode_of(config) == "all":
    return None
  o = config.optim
  if config.loss.get("output_vocab", "full") != "data":
    return ("config.optim.vocab_rows='data' needs config.loss.output_vocab='data' (the head's "
            "kept columns are the ones it trains)")
  if o.name not in OPTIMIZERS:
    return (f"config.optim.vocab_rows='data' is exact only for elementwise optimizers "
            f"{OPTIMIZERS}; config.optim.name={o.name!r} factors its statistics over whole "
            "tables: use vocab_rows='all'")
  try:
    excluded = re.compile(o.weight_decay_exclude) if o.weight_decay_exclude else None
  except re.error:
    return None  # reported by the config's validation of its regexes
  if o.name == "adamw" and o.weight_decay and not (excluded and excluded.search("llm/embed")):
    return (f"config.optim.vocab_rows='data' leaves the embedding rows of unused tokens alone, "
            f"but config.optim.weight_decay={o.weight_decay} would shrink them: set "
            "weight_decay=0 or add llm/embed to config.optim.weight_decay_exclude")
  return None


def compress(rows: VocabRows, trained):
  """The trained subtree with its full tables cut to their compact rows and columns (tables
  the stage does not train, `None` there, stay None)."""
  llm = dict(trained["llm"])
  if llm.get(EMBED) is not None:
    llm[EMBED] = jnp.take(llm[EMBED], jnp.asarray(rows.input_ids), axis=0)
  if llm.get(HEAD) is not None:
    llm[HEAD] = output_vocab_lib.kept_columns(llm[HEAD], rows.output)
  return dict(trained, llm=llm)


def expand(rows: VocabRows, compact, full):
  """`compact` (the optimizer's subtree) with full tables again: those of `full` (the trained
  subtree they were cut from) with the compact rows written into them, the head's kept columns,
  and the tied copy into every other column."""
  llm = dict(compact["llm"])
  if llm.get(EMBED) is not None:
    llm[EMBED] = full["llm"][EMBED].at[jnp.asarray(rows.input_ids)].set(llm[EMBED])
  if llm.get(HEAD) is not None:
    head = llm[HEAD]
    if rows.output.rest:
      base = jnp.broadcast_to(head[:, -1:], (head.shape[0], rows.vocab_size))
      head = head[:, :-1]
    else:
      base = full["llm"][HEAD]
    llm[HEAD] = base.at[:, jnp.asarray(rows.output.ids)].set(head)
  return dict(compact, llm=llm)


def with_tables(frozen, params):
  """`frozen` (the part `optimizer.partition` leaves out of the optimizer's subtree) with the
  full tables of `params` in it too: the constants the model reads while the compact tables
  are trained."""
  llm = dict(frozen["llm"])
  for name in (EMBED, HEAD):
    if name in params["llm"]:
      llm[name] = params["llm"][name]
  return dict(frozen, llm=llm)


def with_full_tables(params, frozen):
  """`params` with the tables of `frozen` (`with_tables`) in place of the compact ones."""
  llm = dict(params["llm"])
  for name in (EMBED, HEAD):
    if frozen["llm"].get(name) is not None:
      llm[name] = frozen["llm"][name]
  return dict(params, llm=llm)


def untrained_tokens(rows: VocabRows, batch) -> jax.Array:
  """float32: the batch's non-padding tokens that have no compact embedding row."""
  index = jnp.asarray(rows.input_index())[batch["input_ids"]]
  return jnp.sum(((index < 0) & (batch["segment_ids"] != 0)).astype(jnp.float32))


def token_embeddings(rows: VocabRows, compact_embed, full_embed, input_ids):
  """[B, S] ids -> [B, S, W]: compact rows for the tokens they hold (differentiable), the full
  table's fixed row for any other."""
  index = jnp.asarray(rows.input_index())[input_ids]
  known = index >= 0
  trained = jnp.take(compact_embed, jnp.maximum(index, 0), axis=0)
  fixed = jax.lax.stop_gradient(jnp.take(full_embed, input_ids, axis=0))
  return jnp.where(known[..., None], trained, fixed)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _scaled_gradient(x, scale: float):
  return x


def _scaled_gradient_fwd(x, scale):
  return x, None


def _scaled_gradient_bwd(scale, _, grad):
  return (grad * jnp.asarray(scale, grad.dtype),)


_scaled_gradient.defvjp(_scaled_gradient_fwd, _scaled_gradient_bwd)


def head_columns(rows: VocabRows, compact_head):
  """The [W, n (+ 1)] columns the loss projects onto (as `output_vocab.kept_columns` of the
  full head): the tied copy's gradient is 1 / (V - n) of the shared logit's, each tied column's
  share in the full model."""
  if not rows.output.rest:
    return compact_head
  tied = _scaled_gradient(compact_head[:, -1:], 1.0 / rows.output.rest)
  return jnp.concatenate([compact_head[:, :-1], tied], axis=1)


def global_norm(rows: Optional[VocabRows], tree: Any) -> jax.Array:
  """The global L2 norm of a (compact) gradient tree as the full tables' tree would have it:
  the tied column counted once per column it stands for."""
  if rows is None or tree.get("llm", {}).get(HEAD) is None:
    return optax.tree.norm(tree)
  head = tree["llm"][HEAD]
  others = dict(tree, llm={k: v for k, v in tree["llm"].items() if k != HEAD})
  weights = jnp.asarray(rows.head_multiplicity(), jnp.float32)
  squares = optax.tree.norm(others, squared=True) + jnp.sum(
      jnp.square(head.astype(jnp.float32)) * weights[None, :])
  return jnp.sqrt(squares)


def clip_by_global_norm(rows: Optional[VocabRows], max_norm: float
                        ) -> optax.GradientTransformation:
  """optax.clip_by_global_norm, with the norm of `global_norm` (the same formula otherwise)."""
  if rows is None:
    return optax.clip_by_global_norm(max_norm)

  def update(updates, state, params=None):
    del params
    norm = global_norm(rows, updates)
    below = norm < max_norm
    clipped = jax.tree.map(
        lambda t: jax.lax.select(below, t, (t / norm.astype(t.dtype)) * max_norm), updates)
    return clipped, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
