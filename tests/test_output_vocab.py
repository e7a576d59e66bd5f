"""loss.output_vocab='data': the loss over the kept head columns equals the full-vocabulary loss of
the model whose other columns are zero, with the same gradients, and those columns stay zero."""

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
  hidden = jnp.asarray(rng.normal(size=(ROWS, LENGTH, WIDTH)), jnp.float32)
  zero_outside = np.zeros(VOCAB, np.float32)
  zero_outside[kept] = 1.0
  # Large enough that some positions' best kept logit is below 0 (a zero-logit token wins).
  head = jnp.asarray(rng.normal(size=(WIDTH, VOCAB)) * 0.8 * zero_outside, jnp.float32)
  batch = _batch(rng, kept)
  # Every other label is the full-vocabulary argmax, so some predictions are right (and a few of
  # those argmaxes are zero-logit tokens, which the restricted count must not credit either).
  best = np.asarray(jnp.argmax(jnp.einsum("btw,wv->btv", hidden, head), axis=-1))
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
  grad_full = jax.grad(lambda h: full(h)["loss_sum"])(head)
  grad_kept = jax.grad(lambda h: restricted(h)["loss_sum"])(head)
  np.testing.assert_allclose(np.asarray(grad_kept)[:, kept], np.asarray(grad_full)[:, kept],
                             rtol=1e-5, atol=1e-6)
  outside = np.setdiff1d(np.arange(VOCAB), kept)
  assert np.all(np.asarray(grad_kept)[:, outside] == 0)
  # (The full loss does push the zero columns; the restricted model keeps them at zero.)
  assert np.abs(np.asarray(grad_full)[:, outside]).max() > 0


def test_restrict_head_zeroes_the_other_columns():
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
