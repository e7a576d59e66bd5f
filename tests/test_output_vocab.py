"""loss.output_vocab='data': the loss over the kept head columns and the mean of the others equals
the full-vocabulary loss of the model whose other columns are tied (equal), with the full
model's gradients for every column, so the tie holds through optimizer steps."""

import jax
import jax.numpy as jnp
import numpy as np

from qwen_audio_jax.training import loss as loss_lib
from qwen_audio_jax.training import output_vocab

VOCAB, WIDTH, ROWS, LENGTH, TASKS = 64, 8, 3, 12, 2


def _batch(rng, kept):
  # Labels mostly among the kept tokens, a few outside them (logit exactly 0).
  ids = rng.choice(kept, size=(ROWS, LENGTH))
  ids[0, 5] = next(i for i in range(VOCAB) if i not in set(kept))
  mask = rng.random((ROWS, LENGTH)) < 0.7
  segments = np.ones((ROWS, LENGTH), np.int32)
  segments[2, 9:] = 0  # padding
  return {"input_ids": jnp.asarray(ids, jnp.int32), "target_mask": jnp.asarray(mask),
          "segment_ids": jnp.asarray(segments),
          "task_ids": jnp.asarray(rng.integers(0, TASKS, (ROWS, LENGTH)), jnp.int32)}


def test_kept_columns_loss_and_gradients_equal_the_full_vocabulary():
  rng = np.random.default_rng(0)
  kept = np.sort(rng.choice(VOCAB, 20, replace=False)).astype(np.int32)
  vocab = output_vocab.OutputVocab(ids=kept, vocab_size=VOCAB)
  outside = np.setdiff1d(np.arange(VOCAB), kept)
  hidden = jnp.asarray(rng.normal(size=(ROWS, LENGTH, WIDTH)), jnp.float32)
  # The other columns tied to one random vector, large enough that at some positions a tied
  # token has the best logit (the restricted count must not credit those argmaxes either).
  head = rng.normal(size=(WIDTH, VOCAB)) * 0.8
  head[:, outside] = rng.normal(size=(WIDTH, 1)) * 1.6
  head = jnp.asarray(head, jnp.float32)
  batch = _batch(rng, kept)
  # Every other label is the full-vocabulary argmax, so some predictions are right.
  best = np.asarray(jnp.argmax(jnp.einsum("btw,wv->btv", hidden, head), axis=-1))
  assert np.isin(best, outside).any() and np.isin(best, kept).any()
  ids = np.asarray(batch["input_ids"]).copy()
  ids[:, 1::2] = best[:, 0:-1:2]
  batch["input_ids"] = jnp.asarray(ids)

  def full(h):
    return loss_lib.chunked_loss_sums(hidden, h, batch, TASKS, chunk_length=5)

  def restricted(h):
    return loss_lib.chunked_loss_sums(hidden, output_vocab.kept_columns(h, vocab), batch, TASKS,
                                      chunk_length=5, vocab=vocab)

  want, got = full(head), restricted(head)
  assert float(want["target_tokens"]) > 10 and 0 < float(want["correct"])
  for key in want:
    np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]), rtol=1e-5,
                               atol=1e-5, err_msg=key)
  # Every column's gradient is the full model's, the tied ones included (and all equal).
  grad_full = jax.grad(lambda h: full(h)["objective"])(head)
  grad_kept = jax.grad(lambda h: restricted(h)["objective"])(head)
  np.testing.assert_allclose(np.asarray(grad_kept), np.asarray(grad_full), rtol=1e-4, atol=1e-6)
  tied = np.asarray(grad_kept)[:, outside]
  assert np.abs(tied).max() > 0 and np.all(tied == tied[:, :1])


def test_optimizer_steps_keep_the_tied_columns_equal():
  """AdamW with weight decay and global-norm clipping moves the tied columns, all alike."""
  import optax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  kept = np.sort(rng.choice(VOCAB, 20, replace=False)).astype(np.int32)
  vocab = output_vocab.OutputVocab(ids=kept, vocab_size=VOCAB)
  outside = np.setdiff1d(np.arange(VOCAB), kept)
  hidden = jnp.asarray(rng.normal(size=(ROWS, LENGTH, WIDTH)), jnp.float32)
  batch = _batch(rng, kept)
  head = jnp.asarray(rng.normal(size=(WIDTH, VOCAB)), jnp.float32)
  head = output_vocab.restrict_head({"llm": {"lm_head": head}}, _untied(), vocab)["llm"]["lm_head"]
  tx = optax.chain(optax.clip_by_global_norm(0.1), optax.adamw(1e-2, weight_decay=0.1))
  state = tx.init(head)
  loss = jax.jit(jax.value_and_grad(lambda h: loss_lib.chunked_loss_sums(
      hidden, output_vocab.kept_columns(h, vocab), batch, TASKS, 5, vocab)["objective"]))
  losses = []
  for _ in range(5):
    value, grad = loss(head)
    updates, state = tx.update(grad, state, head)
    head = optax.apply_updates(head, updates)
    losses.append(float(value))
  tied = np.asarray(head)[:, outside]
  assert np.abs(tied).max() > 0 and np.all(tied == tied[:, :1])  # moved, and still one column
  assert losses[-1] < losses[0]


def _untied():
  from qwen_audio_jax.config import get_preset  # pylint: disable=g-import-not-at-top
  return get_preset("tiny")


def test_restrict_head_ties_the_other_columns_at_zero():
  from qwen_audio_jax.config import get_preset
  config = get_preset("tiny")
  vocab = output_vocab.OutputVocab(ids=np.array([3, 151643], np.int32),
                                   vocab_size=config.llm.vocab_size)
  head = jnp.ones((config.llm.width, config.llm.vocab_size))
  params = {"llm": {"lm_head": head, "embed": head.T}, "audio_encoder": {}}
  out = output_vocab.restrict_head(params, config, vocab)
  assert float(out["llm"]["lm_head"].sum()) == 2 * config.llm.width
  assert float(out["llm"]["lm_head"][:, 151643].sum()) == config.llm.width
  assert out["llm"]["embed"] is params["llm"]["embed"]  # the input embeddings are untouched


def test_demo_targets_are_a_few_hundred_tokens():
  import ml_collections
  from qwen_audio_jax.config import get_preset
  from qwen_audio_jax.data.config import get_data_config
  config = ml_collections.ConfigDict({"loss": {"output_vocab": "data"},
                                      "data": get_data_config("pretrain", "train")})
  vocab = output_vocab.resolve(config, get_preset("tiny"))
  from qwen_audio_jax.data.transforms import load_tokenizer
  tokenizer = load_tokenizer(None)
  assert tokenizer.eot_id in vocab.ids
  for text in (" red", " boxes", "<|0.50|>"):  # a word of the grammar; an SRWT timestamp
    assert set(tokenizer.encode_text(text)) <= set(vocab.ids.tolist()), text
  assert 50 < len(vocab.ids) < 5000, len(vocab.ids)
  assert vocab.rest == vocab.vocab_size - len(vocab.ids)
  index = vocab.index_of()
  assert np.array_equal(index[vocab.ids], np.arange(len(vocab.ids)))
