"""Generation: token-for-token against transformers and the cache-free forward, batch invariance,
stop tokens, sampling, beam search against exhaustive search, sharded against one device.

All models are tiny random ones built offline; every comparison is of exact token ids.
"""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

import _reference_models as ref
from qwen_audio_jax import sharding
from qwen_audio_jax.audio import lengths
from qwen_audio_jax.audio import mel as mel_lib
from qwen_audio_jax.config import EncoderConfig, LLMConfig, QwenAudioConfig
from qwen_audio_jax.convert import convert_checkpoint
from qwen_audio_jax.generate import (Buckets, GenerationConfig, Generator, PreparedRequest,
                                     get_generation_config)
from qwen_audio_jax.model import params as params_lib
from qwen_audio_jax.model.qwen_audio import QwenAudio

SR = lengths.SAMPLE_RATE
AUDIO_START, AUDIO_END, AUDIO_PAD = 480, 481, 482  # ids of the toy Qwen-Audio layout


def _toy_config(vocab=512, **llm):
  """The Qwen-Audio layout (audio bos/eos, the release's mel cut) at toy size."""
  return QwenAudioConfig(
      encoder=EncoderConfig(n_mels=80, width=32, depth=1, heads=2, mlp_dim=64, output_dim=64),
      llm=LLMConfig(**dict(dict(vocab_size=vocab, width=64, depth=2, heads=4, kv_heads=2,
                                head_dim=16, mlp_dim=128), **llm)))


def _init(config, seed=0):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  return nn.unbox(params_lib.init_params(config, jax.random.key(seed)))


@pytest.fixture(scope="module")
def toy():
  config = _toy_config()
  return config, _init(config)


def _row(prefix, clip_samples, suffix, seed):
  """A prompt of the toy layout: prefix ids, clips (<audio> pads </audio>), suffix ids."""
  rng = np.random.default_rng(seed)
  ids, starts, waves = list(prefix), [], []
  for n in clip_samples:
    starts.append(len(ids))
    ids += [AUDIO_START] + [AUDIO_PAD] * int(lengths.audio_tokens(n)) + [AUDIO_END]
    waves.append(rng.uniform(-0.5, 0.5, n).astype(np.float32))
  ids += list(suffix)
  return PreparedRequest(np.asarray(ids, np.int32), np.asarray(starts, np.int32), waves, 0, None)


def _mixed_rows():
  """Rows of different prompt lengths, clip counts and clip lengths (some odd mel lengths)."""
  return [
      _row([5, 6, 7], [SR * 2], [40, 41], seed=1),
      _row([9], [160 * 301], [50, 51, 52, 53, 54, 55], seed=2),
      _row([11, 12, 13, 14, 15], [160 * 120, SR], [60], seed=3),
      _row([17, 18], [int(SR * 0.5)], [70, 71, 72], seed=4),
  ]


def _pair():
  """Two rows of different prompt and clip lengths that share their shape buckets, so they run
  as one batch (left padding under test) and each decoding setting compiles one program."""
  rows = _mixed_rows()
  return [rows[0], rows[3]]


@pytest.fixture(scope="module")
def toy_generator(toy):
  """One Generator on the toy model for the tests that only decode (its programs are reused
  across them: greedy on `_pair()` compiles once for the whole module)."""
  config, params = toy
  return Generator(config, params)


def _cache_free_greedy(config, params, rows, steps):
  """Greedy decoding by re-running the full forward (no cache) on each row's growing sequence.

  The sequence sits right-padded in a buffer of one fixed length (causal attention: the padding
  after a position never reaches it), so the forward compiles once, not once per length."""
  model = QwenAudio(config)
  apply = jax.jit(model.apply)
  width = max(len(row.ids) for row in rows) + steps
  outs = []
  for row in rows:
    mels = np.stack([mel_lib.log_mel_spectrogram(w, config.encoder.n_mels) for w in row.waves])
    ids = np.zeros((1, width), np.int32)
    n = len(row.ids)
    ids[0, :n] = row.ids
    out = []
    for _ in range(steps):
      logits = apply({"params": params}, jnp.asarray(ids), audio_mel=jnp.asarray(mels)[None],
                     audio_lengths=jnp.asarray([row.num_samples]),
                     audio_starts=jnp.asarray([row.audio_starts]))
      out.append(int(jnp.argmax(logits[0, n - 1])))
      ids[0, n] = out[-1]
      n += 1
    outs.append(out)
  return outs


def _greedy(steps, **kw):
  return GenerationConfig(max_new_tokens=steps, stop_tokens=(), **kw)


# ----------------------------------------------------------------------------- references


def test_greedy_matches_transformers_generate_qwen2_audio(tmp_path):
  hf = ref.tiny_qwen2_audio(seed=3)
  hf.save_pretrained(str(tmp_path), safe_serialization=True)
  params, config, _ = convert_checkpoint(str(tmp_path), "qwen2_audio", progress=False)
  tok = ref.QWEN2_AUDIO_TOKENS
  rng = np.random.default_rng(3)
  num_samples = [2 * SR, 160 * 501]  # multiples of the hop: the extractor counts frames so
  waves = [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in num_samples]
  prefixes, suffixes = [[7, 8, 9], [11, 12]], [[20, 21, 22, 23], [30, 31, 32, 33, 34, 35, 36]]
  rows = [p + [tok["bos"]] + [tok["audio"]] * int(lengths.audio_tokens(n)) + [tok["eos"]] + s
          for p, n, s in zip(prefixes, num_samples, suffixes)]
  steps = 12

  # transformers: left padding, as the release's batched evaluation.
  width = max(len(r) for r in rows)
  ids = np.zeros((2, width), np.int64)
  mask = np.zeros((2, width), np.int64)
  for b, r in enumerate(rows):
    ids[b, width - len(r):], mask[b, width - len(r):] = r, 1
  features = WhisperFeatureExtractor(feature_size=128)(
      waves, sampling_rate=SR, return_tensors="np", padding="max_length",
      return_attention_mask=True)
  with torch.no_grad():
    expected = hf.generate(
        input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
        input_features=torch.from_numpy(features["input_features"].astype(np.float32)),
        feature_attention_mask=torch.from_numpy(features["attention_mask"]),
        max_new_tokens=steps, min_new_tokens=steps, do_sample=False, num_beams=1,
        pad_token_id=0, eos_token_id=None)[:, width:].numpy()

  prepared = [PreparedRequest(np.asarray(r, np.int32), np.asarray([len(p)], np.int32), [w], 0,
                              None) for r, p, w in zip(rows, prefixes, waves)]
  results = Generator(config, params).generate_prepared(prepared, _greedy(steps))
  for b, result in enumerate(results):
    np.testing.assert_array_equal(result.tokens, expected[b], err_msg=f"row {b}")
    assert result.finish_reason == "length" and result.prompt_tokens == len(rows[b])


def test_greedy_matches_cache_free_decoding_qwen_audio_layout(toy, toy_generator):
  config, params = toy
  rows = _pair()
  steps = 10
  results = toy_generator.generate_prepared(rows, _greedy(steps))
  for b, (expected, result) in enumerate(zip(_cache_free_greedy(config, params, rows, steps),
                                             results)):
    np.testing.assert_array_equal(result.tokens, expected, err_msg=f"row {b}")


# ----------------------------------------------------------------------------- batching


def test_every_row_of_a_batch_decodes_its_solo_tokens():
  # A 32k vocabulary: XLA:CPU picks another matmul kernel for one row than for several here.
  config = _toy_config(vocab=32768)
  params = _init(config, seed=1)
  rows = _mixed_rows()
  generator = Generator(config, params)
  settings = _greedy(10)
  batched = generator.generate_prepared(rows, settings)
  assert generator.num_compiled >= 1
  for b, row in enumerate(rows):
    [solo] = generator.generate_prepared([row], settings)
    np.testing.assert_array_equal(batched[b].tokens, solo.tokens, err_msg=f"row {b}")
    # The log-probabilities agree to float32 rounding (XLA:CPU's log-softmax over the vocabulary
    # may round one ulp differently for a different number of rows).
    np.testing.assert_allclose(batched[b].logprobs, solo.logprobs, rtol=1e-6, atol=0,
                               err_msg=f"row {b}")
  # Reordered batches too.
  for b, result in zip([3, 1, 0, 2], generator.generate_prepared([rows[i] for i in (3, 1, 0, 2)],
                                                                 settings)):
    np.testing.assert_array_equal(result.tokens, batched[b].tokens)


def test_shapes_are_bucketed(toy):
  config, params = toy
  generator = Generator(config, params, buckets=Buckets(batch=(2, 4)))
  rows = _mixed_rows()
  generator.generate_prepared(rows, _greedy(5))
  compiled = generator.num_compiled
  generator.generate_prepared(rows[:3], _greedy(7))  # same buckets: nothing new to compile
  generator.generate_prepared(rows[::-1], _greedy(9))
  assert generator.num_compiled == compiled


# ----------------------------------------------------------------------------- stopping


def test_stop_tokens_end_each_row_on_its_own(toy_generator):
  rows = _pair()
  generator = toy_generator
  free = generator.generate_prepared(rows, _greedy(10))
  stop = int(free[0].tokens[3])
  assert stop not in free[0].tokens[:3]
  stopped = generator.generate_prepared(rows, _greedy(10).replace(stop_tokens=(stop, 1)))
  np.testing.assert_array_equal(stopped[0].tokens, free[0].tokens[:3])
  assert stopped[0].finish_reason == "stop" and stopped[0].stop_token == stop
  first = next((i for i, t in enumerate(free[1].tokens) if t in (stop, 1)), None)
  expected = free[1].tokens if first is None else free[1].tokens[:first]
  np.testing.assert_array_equal(stopped[1].tokens, expected)
  assert stopped[1].finish_reason == ("length" if first is None else "stop")


# ----------------------------------------------------------------------------- sampling


def test_sampling_is_deterministic_per_seed_and_filters_work(toy_generator):
  rows = _pair()  # batched together: row 1's draws alone below are checked against its batch's
  generator = toy_generator
  sampling = GenerationConfig(max_new_tokens=10, do_sample=True, top_k=50, top_p=0.9,
                              temperature=1.5, stop_tokens=())
  a = generator.generate_prepared(rows, sampling)
  b = generator.generate_prepared(rows, sampling)
  c = generator.generate_prepared(rows, sampling.replace(seed=1))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x.tokens, y.tokens)
  assert any(not np.array_equal(x.tokens, z.tokens) for x, z in zip(a, c))
  [solo] = generator.generate_prepared(rows[1:], sampling)  # a row's draws ignore its batch
  np.testing.assert_array_equal(solo.tokens, a[1].tokens)
  # Draws differ from greedy, but top_k=1 and a tiny top_p leave only the argmax.
  greedy = generator.generate_prepared(rows, _greedy(10))
  assert any(not np.array_equal(x.tokens, g.tokens) for x, g in zip(a, greedy))
  for narrow in (sampling.replace(top_k=1), sampling.replace(top_k=0, top_p=1e-6)):
    for x, g in zip(generator.generate_prepared(rows, narrow), greedy):
      np.testing.assert_array_equal(x.tokens, g.tokens)


def test_presets_follow_the_release():
  base, chat = get_generation_config("qwen_audio_base"), get_generation_config("qwen_audio_chat")
  assert (base.do_sample, base.top_k, base.top_p, base.max_new_tokens) == (True, 0, 0.8, 512)
  assert (chat.do_sample, chat.top_k, chat.top_p, chat.max_new_tokens, chat.max_window_size) == (
      True, 0, 0.5, 512, 6144)
  assert set(chat.stop_tokens) == {"<|endoftext|>", "<|im_end|>", "<|im_start|>"}
  assert get_generation_config("greedy").greedy
  with pytest.raises(ValueError, match="unknown generation preset"):
    get_generation_config("nucleus")
  with pytest.raises(ValueError, match="top_p"):
    GenerationConfig(top_p=0.0)
  with pytest.raises(ValueError, match="unknown GenerationConfig field"):
    get_generation_config("greedy", top_q=0.5)


# ----------------------------------------------------------------------------- beam search


def _exhaustive(config, params, prompt, max_new, stop, penalties):
  """Per length penalty, the best (tokens, score) over every sequence of up to max_new tokens
  (stop token only last). Every candidate is scored by the full forward in one batch: each sits
  right-padded to len(prompt) + max_new (causal attention: padding never reaches a position)."""
  vocab = config.llm.vocab_size
  candidates = [seq for n in range(1, max_new + 1)
                for seq in itertools.product(range(vocab), repeat=n)
                if stop not in seq[:-1] and (n == max_new or seq[-1] == stop)]
  ids = np.zeros((len(candidates), len(prompt) + max_new), np.int32)
  for i, seq in enumerate(candidates):
    ids[i, :len(prompt) + len(seq)] = list(prompt) + list(seq)
  logp = np.asarray(jax.nn.log_softmax(
      jax.jit(QwenAudio(config).apply)({"params": params}, jnp.asarray(ids)), axis=-1))
  totals = [sum(float(logp[i, len(prompt) - 1 + j, t]) for j, t in enumerate(seq))
            for i, seq in enumerate(candidates)]
  best = {}
  for penalty in penalties:
    scores = [total / len(seq) ** penalty for seq, total in zip(candidates, totals)]
    i = int(np.argmax(scores))
    best[penalty] = (list(candidates[i]), scores[i])
  return best


def test_beam_search_finds_the_exhaustive_optimum_on_a_toy_vocabulary():
  config = _toy_config(vocab=4)
  params = _init(config, seed=5)
  stop, max_new = 3, 3
  prompts = [[0, 1, 2, 1], [2, 2]]
  rows = [PreparedRequest(np.asarray(p, np.int32), np.zeros((0,), np.int32), [], 0, None)
          for p in prompts]
  generator = Generator(config, params)
  penalties = (0.0, 1.0, 3.0)
  optima = [_exhaustive(config, params, prompt, max_new, stop, penalties) for prompt in prompts]
  for penalty in penalties:
    settings = GenerationConfig(max_new_tokens=max_new, num_beams=9, length_penalty=penalty,
                                stop_tokens=(stop,))
    for prompt, optimum, result in zip(prompts, optima,
                                       generator.generate_prepared(rows, settings)):
      tokens, score = optimum[penalty]
      got = list(result.tokens) + ([result.stop_token] if result.stop_token is not None else [])
      assert got == tokens, (penalty, prompt)
      np.testing.assert_allclose(result.score, score, rtol=1e-5)


# ----------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("layout", [(8, 1, 1), (2, 2, 2), (1, 2, 4)])
def test_sharded_generation_equals_one_device(toy, toy_generator, layout):
  config, params = toy
  rows = _mixed_rows()
  settings = _greedy(8)
  expected = toy_generator.generate_prepared(rows, settings)
  mesh = sharding.make_mesh(layout)
  got = Generator(config, params, mesh=mesh).generate_prepared(rows, settings)
  for b, (x, y) in enumerate(zip(got, expected)):
    np.testing.assert_array_equal(x.tokens, y.tokens, err_msg=f"row {b}, mesh {layout}")
