"""Packed rows through the model: each example's logits equal those of the example alone.

This is the contract between the pipeline's packing (segment_ids, positions restarting per
segment, audio slots with row-level starts) and the model (attention causal within a segment,
audio spliced at audio_starts). Tiny model, real pipeline batches (host log-mel).
"""

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from qwen_audio_jax.config import get_preset
from qwen_audio_jax.data.config import mixture_entry
from qwen_audio_jax.data.pipeline import DataPipeline
from qwen_audio_jax.model.params import init_params
from qwen_audio_jax.model.qwen_audio import QwenAudio
from test_data_pipeline import data_config, write_corpus

MODEL = get_preset("tiny")


def batches(manifest, **overrides):
  mixture = ml_collections.ConfigDict({"asr": mixture_entry(paths=manifest, tasks="asr")})
  config = data_config(manifest, mixture=mixture, features="mel", num_epochs=1, shuffle=False,
                       **overrides)
  return list(DataPipeline(config, process_index=0, process_count=1).iterator())


def segments(batch):
  """(row, segment id, token positions in the row) of every example in the batch."""
  out = []
  for r in range(batch["segment_ids"].shape[0]):
    for s in range(1, int(batch["segment_ids"][r].max()) + 1):
      out.append((r, s, np.flatnonzero(batch["segment_ids"][r] == s)))
  return out


def test_packed_rows_give_each_example_its_unpacked_logits(tmp_path):
  manifest = write_corpus(tmp_path, n_asr=5, n_event=0)
  (packed,) = batches(manifest, packing=True, max_clips_per_row=3, pack_bins=2, batch_size=2)
  alone = batches(manifest, batch_size=5)
  # 5 examples of 28-36 tokens: 3 share the first row (3 clips), 2 the second.
  assert [int(packed["segment_ids"][r].max()) for r in range(2)] == [3, 2]
  assert (packed["audio_lengths"][1] > 0).tolist() == [True, True, False]

  params = nn.unbox(jax.jit(init_params, static_argnums=0)(MODEL, jax.random.key(0)))
  apply = jax.jit(lambda p, b: QwenAudio(MODEL).apply(
      {"params": p}, b["input_ids"], positions=b["positions"], segment_ids=b["segment_ids"],
      audio_mel=b["audio_mel"], audio_lengths=b["audio_lengths"],
      audio_starts=b["audio_starts"]))
  model_keys = ("input_ids", "positions", "segment_ids", "audio_mel", "audio_lengths",
                "audio_starts")
  run = lambda b: np.asarray(apply(params, {k: b[k] for k in model_keys}))
  packed_logits = run(packed)
  reference = {}
  for batch in alone:
    logits = run(batch)
    for r, _, where in segments(batch):
      reference[tuple(batch["input_ids"][r, where])] = logits[r, where]
  matched = 0
  for r, _, where in segments(packed):
    expected = reference[tuple(packed["input_ids"][r, where])]
    np.testing.assert_allclose(packed_logits[r, where], expected, rtol=0, atol=2e-4)
    matched += 1
  assert matched == len(reference) == 5
  # The check can fail: the same tokens seen as one segment (attending across examples) differ.
  joined = dict(packed, segment_ids=(packed["segment_ids"] > 0).astype(np.int32))
  r, _, where = segments(packed)[1]
  assert np.abs(run(joined)[r, where] - packed_logits[r, where]).max() > 1e-3
