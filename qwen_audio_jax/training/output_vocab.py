"""An output vocabulary restricted to the tokens the training targets contain (`loss.output_vocab`).

A tiny model with Qwen's 155,947-entry vocabulary spends nearly all of its step on the output
head: projecting every position onto 155,947 rows and back costs 20 times the rest of a
2-layer, 96-wide LLM. A closed-vocabulary corpus (the bundled demo) only ever targets a few
hundred of those tokens. With `loss.output_vocab = 'data'` the model keeps the real tokenizer,
the real ids and the full-size embedding and head, but the head's columns of every token that no
training target contains are set to zero and stay zero:

  * their logits are exactly 0, so the full softmax normaliser is the sum over the kept tokens'
    exp(logit) plus (V - n) * exp(0), and the loss computed from the n kept columns and that
    constant equals the full-vocabulary loss of the model, exactly;
  * their gradient is exactly zero (the loss does not read them), so AdamW (no weight decay on a
    zero parameter) never moves them;
  * generation over the full vocabulary (`qwen_audio_jax.infer`, the decoding evaluations) sees
    the same model: a kept token wins only when its logit beats 0, which training ensures.

The projection then costs n / V of the full one (n ~ 700 of 155,947 on the demo corpus).
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
    """How many tokens have a zero head column (logit exactly 0)."""
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
def _target_ids(entries: Tuple[Tuple[str, str], ...], tokenizer_path: str) -> np.ndarray:
  from qwen_audio_jax.audio import lengths  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.data import manifest as manifest_lib  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.data.transforms import load_tokenizer  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.text import chat, tasks  # pylint: disable=g-import-not-at-top
  tokenizer = load_tokenizer(tokenizer_path or None)
  full_clip = lengths.CHUNK_SECONDS * lengths.SAMPLE_RATE  # no SRWT time is clamped
  ids = {tokenizer.eot_id}
  for path, task_filter in entries:
    wanted = [t for t in task_filter.split(",") if t] or None
    for _, row in manifest_lib.iter_rows(path, strict=False, tasks=wanted):
      num_samples = [full_clip] * len(manifest_lib.clip_refs(row))
      if row["task"] == manifest_lib.CHAT_TASK:
        encoded = chat.encode_dialogue(row, tokenizer, num_samples)
      else:
        encoded = tasks.encode_example(row, tokenizer, num_samples)
      ids.update(int(i) for i in encoded.input_ids[encoded.target_mask])
  return np.asarray(sorted(ids), np.int32)


def resolve(config: ml_collections.ConfigDict, model_config) -> Optional[OutputVocab]:
  """The run's kept output tokens (None: the full vocabulary); computed once per process."""
  mode = config.loss.get("output_vocab", "full")
  if mode == "full":
    return None
  if mode != "data":
    raise ValueError(f"config.loss.output_vocab={mode!r}: expected one of {MODES}")
  ids = _target_ids(manifest_paths(config.data), config.data.tokenizer_path)
  vocab_size = model_config.llm.vocab_size
  if ids.size and ids[-1] >= vocab_size:
    raise ValueError(f"config.loss.output_vocab='data': the targets contain token {ids[-1]}, "
                     f"beyond the model's vocabulary of {vocab_size}")
  return OutputVocab(ids=ids, vocab_size=vocab_size)


def restrict_head(params, model_config, vocab: Optional[OutputVocab]):
  """`params` with the output head's columns outside `vocab` set to zero (see the docstring)."""
  if vocab is None:
    return params
  if model_config.llm.tie_embeddings:
    raise ValueError("config.loss.output_vocab='data' needs an untied output head "
                     "(llm.tie_embeddings=False): zeroing tied rows would erase input embeddings")
  keep = np.zeros(vocab.vocab_size, bool)
  keep[vocab.ids] = True
  head = params["llm"]["lm_head"]
  mask = jnp.asarray(keep, head.dtype)
  llm = dict(params["llm"], lm_head=jax.jit(lambda h: h * mask[None, :])(head))
  return dict(params, llm=llm)


def kept_columns(head: jax.Array, vocab: OutputVocab) -> jax.Array:
  """[W, V] head -> [W, n] columns of the kept tokens (the loss projects onto these only)."""
  return jnp.take(head, jnp.asarray(vocab.ids), axis=1)
