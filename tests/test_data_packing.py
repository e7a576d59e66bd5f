"""Packing, rejection accounting, chaining and batch assembly (synthetic examples, no audio)."""

import grain
import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from qwen_audio_jax.audio import lengths
from qwen_audio_jax.data import batching, datasets
from qwen_audio_jax.data.stats import DataQualityError, DataStats, Rejection
from qwen_audio_jax.data.transforms import Example


def make_example(index, num_tokens, num_clips=1, task_id=0, features="waveform"):
  rng = np.random.default_rng(index)
  clip_lengths = rng.integers(2000, 5000, size=num_clips).astype(np.int32)
  if features == "waveform":
    clips = [np.full(n, index + 1, np.float32) for n in clip_lengths]
  else:
    clips = [np.full((8, lengths.N_FRAMES), index + 1, np.float32) for _ in clip_lengths]
  starts = np.arange(num_clips, dtype=np.int32) * 2
  return Example(task_id=task_id, input_ids=np.arange(num_tokens, dtype=np.int32) + 1000 * index,
                 target_mask=np.arange(num_tokens) >= num_tokens // 2, clips=clips,
                 clip_lengths=clip_lengths, audio_starts=starts, origin=f"ex{index}")


class _Items:
  """Random-access items: Examples (by `sizes`) and Rejections where size is 0."""

  def __init__(self, sizes, clips=None):
    self.sizes, self.clips = list(sizes), clips

  def __len__(self):
    return len(self.sizes)

  def __getitem__(self, i):
    if self.sizes[i] == 0:
      return Rejection(0, "unreadable", f"bad{i}")
    return make_example(i, self.sizes[i], 1 if self.clips is None else self.clips[i])


def example_ids(row):
  return [int(x.origin[2:]) for x in row if isinstance(x, Example)]


def pack_dataset(sizes, clips=None, max_tokens=10, max_clips=3, num_bins=2):
  ds = grain.MapDataset.source(_Items(sizes, clips)).to_iter_dataset()
  ds = datasets.AccountRejectionsIterDataset(ds, task_name="t", max_bad_fraction=1.0,
                                             min_examples=1, keep_first=5)
  return datasets.PackIterDataset(ds, max_tokens=max_tokens, max_clips=max_clips,
                                  num_bins=num_bins)


def test_packing_respects_limits_and_keeps_every_example_once():
  sizes = [3, 7, 2, 9, 1, 4, 4, 6, 2, 8, 5, 1]
  clips = [1, 2, 1, 1, 3, 1, 1, 2, 1, 1, 2, 1]
  rows = list(pack_dataset(sizes, clips))
  seen = []
  for row in rows:
    examples = [x for x in row if isinstance(x, Example)]
    assert sum(x.num_tokens for x in examples) <= 10
    assert sum(x.num_clips for x in examples) <= 3
    seen += example_ids(row)
  assert sorted(seen) == list(range(len(sizes)))
  # First fit over 2 open rows: 3 and 7 fill row 0, 2 opens row 1, 9 fits neither: both emitted.
  assert example_ids(rows[0]) == [0, 1] and example_ids(rows[1]) == [2]


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(sizes=st.lists(st.integers(0, 10), min_size=1, max_size=30),
                  num_bins=st.integers(1, 4), data=st.data())
def test_packing_resumes_exactly_from_any_state(sizes, num_bins, data):
  ds = pack_dataset(sizes, num_bins=num_bins)
  expected = [(example_ids(r), sum(len(x.rejections) for x in r)) for r in ds]
  it = ds.__iter__()
  stop = data.draw(st.integers(0, len(expected)))
  for _ in range(stop):
    next(it)
  state = it.get_state()
  resumed = ds.__iter__()
  resumed.set_state(state)
  rest = [(example_ids(r), sum(len(x.rejections) for x in r)) for r in resumed]
  assert rest == expected[stop:]
  # Every rejection is delivered exactly once, attached to some row.
  assert sum(n for _, n in expected) == sizes.count(0)


def test_rejections_ride_on_the_next_example_and_trailing_ones_are_not_lost():
  ds = grain.MapDataset.source(_Items([0, 0, 4, 0, 5, 0, 0])).to_iter_dataset()
  ds = datasets.AccountRejectionsIterDataset(ds, task_name="t", max_bad_fraction=1.0,
                                             min_examples=1, keep_first=5)
  items = list(ds)
  assert [type(x).__name__ for x in items] == ["Example", "Example", "RejectionsOnly"]
  assert [r.origin for r in items[0].rejections] == ["bad0", "bad1"]
  assert [r.origin for r in items[1].rejections] == ["bad3"]
  assert [r.origin for r in items[2].rejections] == ["bad5", "bad6"]


def test_worker_side_abort_names_the_first_bad_examples():
  ds = grain.MapDataset.source(_Items([0] * 50)).repeat(None).to_iter_dataset()
  ds = datasets.AccountRejectionsIterDataset(ds, task_name="asr", max_bad_fraction=0.5,
                                             min_examples=10, keep_first=3)
  with pytest.raises(DataQualityError, match=r"task 'asr': 10 of 10 .*bad0 \(unreadable\)"):
    next(iter(ds))


def test_chain_reads_tasks_in_order_and_resumes():
  a = grain.MapDataset.range(3).to_iter_dataset()
  b = grain.MapDataset.range(10, 12).to_iter_dataset()
  chain = datasets.ChainIterDataset([a, b])
  assert list(chain) == [0, 1, 2, 10, 11]
  it = chain.__iter__()
  for _ in range(4):
    next(it)
  resumed = chain.__iter__()
  resumed.set_state(it.get_state())
  assert list(resumed) == [11]


@pytest.mark.parametrize("features", ["waveform", "mel"])
def test_batch_matches_the_format(features):
  builder = batching.BatchBuilder(rows_per_batch=3, buckets=(8, 16, 32), max_clips=3,
                                  features=features, n_mels=8)
  a = make_example(1, 5, 1, task_id=0, features=features)
  b = make_example(2, 7, 2, task_id=2, features=features)
  c = make_example(3, 4, 1, task_id=1, features=features)
  c.truncated = True
  c.rejections = (Rejection(1, "too_long", "long.wav"),)
  batch, delta = builder([[a, b], [c]])  # 2 rows of 3: the last is padding
  spec = batching.batch_spec(3, 16, max_clips=3, features=features, n_mels=8)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == spec
  np.testing.assert_array_equal(batch["segment_ids"][0], [1] * 5 + [2] * 7 + [0] * 4)
  np.testing.assert_array_equal(batch["positions"][0], list(range(5)) + list(range(7)) + [0] * 4)
  np.testing.assert_array_equal(batch["task_ids"][0], [0] * 5 + [2] * 7 + [-1] * 4)
  np.testing.assert_array_equal(batch["input_ids"][0, 5:12], b.input_ids)
  np.testing.assert_array_equal(batch["task_ids"][2], [-1] * 16)
  assert not batch["segment_ids"][2].any() and not batch["target_mask"][2].any()
  # Targets as given, except the first token of every segment.
  expected = np.concatenate([a.target_mask, b.target_mask, np.zeros(4, bool)])
  expected[[0, 5]] = False
  np.testing.assert_array_equal(batch["target_mask"][0], expected)
  # Clips fill the slots in order; starts are row positions; empty slots are zero.
  np.testing.assert_array_equal(batch["audio_lengths"][0],
                                np.concatenate([a.clip_lengths, b.clip_lengths]))
  np.testing.assert_array_equal(batch["audio_starts"][0], [0, 5 + 0, 5 + 2])
  np.testing.assert_array_equal(batch["audio_lengths"][1], [c.clip_lengths[0], 0, 0])
  np.testing.assert_array_equal(batch["audio_starts"][1], [0, 0, 0])
  audio = batch["audio_wave" if features == "waveform" else "audio_mel"]
  if features == "waveform":
    n = b.clip_lengths[1]
    assert (audio[0, 2, :n] == 3).all() and not audio[0, 2, n:].any()
  else:
    assert (audio[0, 2] == 3).all()
  assert not audio[1, 1:].any() and not audio[2].any()
  # Counts travel with the batch.
  stats = DataStats(["a", "b", "c"], max_bad_fraction=1.0)
  stats.merge(delta)
  assert [stats.tasks[n].examples for n in "abc"] == [1, 1, 1]
  assert stats.tasks["b"].truncated == 1 and stats.tasks["b"].rejected == {"too_long": 1}
  assert stats.tasks["c"].target_tokens == int(b.target_mask[1:].sum())
  np.testing.assert_array_equal(batching.task_counts(batch, 3), [1, 1, 1])


def test_batch_text_length_is_the_smallest_bucket_that_fits():
  builder = batching.BatchBuilder(rows_per_batch=2, buckets=(8, 16, 32), max_clips=1,
                                  features="waveform", n_mels=80)
  assert builder([[make_example(0, 8)]])[0]["input_ids"].shape == (2, 8)
  assert builder([[make_example(0, 9)]])[0]["input_ids"].shape == (2, 16)
  assert builder([[make_example(0, 17)], [make_example(1, 3)]])[0]["input_ids"].shape == (2, 32)
  with pytest.raises(ValueError, match="exceeds the largest text bucket 32"):
    builder([[make_example(0, 33)]])


def test_stats_abort_rule_and_state_round_trip():
  stats = DataStats(["asr", "caption"], max_bad_fraction=0.1, min_examples=20, keep_first=2)
  delta = batching.StatsDelta(keep_first=2)
  for i in range(17):
    delta.add_example(0, 10, 4, False)
  for i in range(3):
    delta.add_rejection(Rejection(0, "non_finite", f"m.jsonl:{i + 1}"))
  delta.add_rejection(Rejection(1, "text_too_long", "m.jsonl:99"))
  stats.merge(delta)
  with pytest.raises(DataQualityError, match=r"'asr': 3 of 20 .*m.jsonl:1 \(non_finite\); "
                     r"m.jsonl:2"):
    stats.check()
  restored = DataStats(["asr", "caption"], max_bad_fraction=0.1, min_examples=20)
  restored.set_state(stats.to_state())
  assert restored.to_state() == stats.to_state()
  assert restored.tasks["caption"].dropped == {"text_too_long": 1}
  assert stats.metrics()["data/asr/examples"] == 17
