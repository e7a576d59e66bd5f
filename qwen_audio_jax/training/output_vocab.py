"""An output vocabulary restricted to the tokens the training targets contain (`loss.output_vocab`).

A tiny model with Qwen's 155,947-entry vocabulary spends nearly all of its step on the output
head: projecting every position onto 155,947 rows and back costs 20 times the rest of a
2-layer, 96-wide LLM. A closed-vocabulary corpus (the bundled demo) only ever targets a few
hundred of those tokens. With `loss.output_vocab = 'data'` the model keeps the real tokenizer,
the real ids and the full-size embedding and head, but the head's columns of every token that no
training target contains are *tied*: they start equal (zero) and stay equal, so the model is
the full-vocabulary model whose V - n other tokens share one logit r = h . w_rest:

  * the full softmax normaliser is the sum over the kept tokens' exp(logit) plus
    (V - n) * exp(r), so the loss computed from the n kept columns and one of the others (which
    is w_rest, their mean) equals the full-vocabulary loss of the model;
  * each other column gets the gradient of their mean, 1 / (V - n) of the shared logit's, which
    is exactly the full model's gradient of that column; identical gradients and
    identical optimizer state keep the columns identical under AdamW, clipping and weight decay
    (all elementwise or a common scale), so the tie holds for the whole run;
  * the shared logit is trained, so the model learns to push the tokens it never writes down
    (with the columns frozen at zero instead, every kept logit would first have to outgrow
    155,000 logits of 0 before any generated token is right: hundreds of demo steps);
  * generation over the full vocabulary (`qwen_audio_jax.infer`, the decoding evaluations,
    exports) sees the same model: its other columns are the tied ones.

The projection then costs (n + 1) / V of the full one (n ~ 700 of 155,947 on the demo corpus).
'full' (the default, and the only choice for the paper's recipe) changes nothing.
"""

import dataclasses
import functools
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

MODES = ("full", "data")


@dataclasses.dataclass(frozen=True)
class OutputVocab:
  """The kept output tokens of a model with `vocab_size` rows."""
  ids: np.ndarray  # int32 [n], sorted: the head columns the loss projects onto
  vocab_size: int

  @property
  def rest(self) -> int:
    """How many tokens share the tied head column (and so one logit)."""
    return self.vocab_size - len(self.ids)

  def index_of(self) -> np.ndarray:
    """int32 [vocab_size]: a token's position in `ids`, -1 for the tokens left out."""
    index = np.full(self.vocab_size, -1, np.int32)
    index[self.ids] = np.arange(len(self.ids), dtype=np.int32)
    return index


def manifest_paths(data_config: ml_collections.ConfigDict) -> Tuple[Tuple[str, str], ...]:
  """(paths, tasks) of every mixture entry; 'data' needs JSONL manifests to read targets from."""
  from qwen_audio_jax.data.sources import expand_paths  # pylint: disable=g-import-not-at-top
  entries = []
  for name in sorted(data_config.mixture.keys()):
    entry = data_config.mixture[name]
    if entry.source != "jsonl":
      raise ValueError(f"config.loss.output_vocab='data' reads the training targets from JSONL "
                       f"manifests, but config.data.mixture.{name}.source={entry.source!r}; use "
                       "output_vocab='full'")
    for path in expand_paths(entry.paths, f"config.data.mixture.{name}.paths"):
      entries.append((path, entry.tasks))
  return tuple(entries)


@functools.lru_cache(maxsize=8)
def data_ids(entries: Tuple[Tuple[str, str], ...], tokenizer_path: str
             ) -> Tuple[np.ndarray, np.ndarray]:
  """(input ids, target ids): the sorted distinct tokens of the manifests' encoded rows (every
  position: prompts, tags, audio spans, targets) and of their targets alone (with the end of
  text). Rows are encoded as the pipeline encodes them, with every clip at its full 30 s span so
  that no SRWT time is clamped."""
  from qwen_audio_jax.audio import lengths  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.data import manifest as manifest_lib  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.data.transforms import load_tokenizer  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.text import chat, tasks  # pylint: disable=g-import-not-at-top
  tokenizer = load_tokenizer(tokenizer_path or None)
  full_clip = lengths.CHUNK_SECONDS * lengths.SAMPLE_RATE
  inputs, targets = set(), {tokenizer.eot_id}
  for path, task_filter in entries:
    wanted = [t for t in task_filter.split(",") if t] or None
    for _, row in manifest_lib.iter_rows(path, strict=False, tasks=wanted):
      num_samples = [full_clip] * len(manifest_lib.clip_refs(row))
      if row["task"] == manifest_lib.CHAT_TASK:
        encoded = chat.encode_dialogue(row, tokenizer, num_samples)
      else:
        encoded = tasks.encode_example(row, tokenizer, num_samples)
      ids = np.asarray(encoded.input_ids)
      inputs.update(int(i) for i in np.unique(ids))
      targets.update(int(i) for i in np.unique(ids[encoded.target_mask]))
  as_array = lambda s: np.asarray(sorted(s), np.int32)  # noqa: E731
  return as_array(inputs), as_array(targets)


def resolve(config: ml_collections.ConfigDict, model_config) -> Optional[OutputVocab]:
  """The run's kept output tokens (None: the full vocabulary); computed once per process."""
  mode = config.loss.get("output_vocab", "full")
  if mode == "full":
    return None
  if mode != "data":
    raise ValueError(f"config.loss.output_vocab={mode!r}: expected one of {MODES}")
  _, ids = data_ids(manifest_paths(config.data), config.data.tokenizer_path)
  vocab_size = model_config.llm.vocab_size
  if ids.size and ids[-1] >= vocab_size:
    raise ValueError(f"config.loss.output_vocab='data': the targets contain token {ids[-1]}, "
                     f"beyond the model's vocabulary of {vocab_size}")
  return OutputVocab(ids=ids, vocab_size=vocab_size)


def restrict_head(params, model_config, vocab: Optional[OutputVocab]):
  """`params` with the output head's columns outside `vocab` tied: all set to zero (see the
  docstring: they stay equal from then on)."""
  if vocab is None:
    return params
  if model_config.llm.tie_embeddings:
    raise ValueError("config.loss.output_vocab='data' needs an untied output head "
                     "(llm.tie_embeddings=False): tying rows would erase input embeddings")
  keep = np.zeros(vocab.vocab_size, bool)
  keep[vocab.ids] = True
  head = params["llm"]["lm_head"]
  mask = jnp.asarray(keep, head.dtype)
  llm = dict(params["llm"], lm_head=jax.jit(lambda h: h * mask[None, :])(head))
  return dict(params, llm=llm)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _tied_column(head: jax.Array, first: int, vocab: OutputVocab) -> jax.Array:
  """Column `first` of the tied ones (all equal: it is their mean, exactly, with no sum)."""
  return head[:, first]


def _tied_column_fwd(head, first, vocab):
  return head[:, first], None


def _tied_column_bwd(first, vocab, _, grad):
  # The gradient of their mean: 1 / (V - n) of the shared logit's to every tied column.
  other = np.ones(vocab.vocab_size, np.float32)
  other[vocab.ids] = 0.0
  return (grad[:, None] * jnp.asarray(other / vocab.rest, grad.dtype)[None, :],)


_tied_column.defvjp(_tied_column_fwd, _tied_column_bwd)


def kept_columns(head: jax.Array, vocab: OutputVocab) -> jax.Array:
  """[W, V] head -> [W, n + 1]: the kept tokens' columns, then the tied columns' shared one,
  whose logit every other token shares (only [W, n] when no token is left out). The tied
  column is read as one of them, exact, with the gradient of their mean."""
  kept = jnp.take(head, jnp.asarray(vocab.ids), axis=1)
  if not vocab.rest:
    return kept
  other = np.ones(vocab.vocab_size, bool)
  other[vocab.ids] = False
  first = int(np.argmax(other))
  return jnp.concatenate([kept, _tied_column(head, first, vocab)[:, None]], axis=1)
