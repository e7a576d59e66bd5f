"""Length-grouped batching on synthetic rows: order within a window, determinism, resume."""

import grain
import numpy as np

from qwen_audio_jax.data import datasets, length_grouping
from qwen_audio_jax.data.transforms import Example

BUCKETS = (80_000, 160_000, 480_000)


def example(index):
  rng = np.random.default_rng(index)
  tokens, samples = int(rng.integers(5, 60)), int(rng.integers(2_000, 400_000))
  return Example(task_id=0, input_ids=np.full(tokens, index, np.int32),
                 target_mask=np.ones(tokens, bool), clips=[np.zeros(1, np.float32)],
                 clip_lengths=np.asarray([samples], np.int32),
                 audio_starts=np.zeros(1, np.int32), origin=f"ex{index}")


class _Examples:
  def __len__(self):
    return 40

  def __getitem__(self, i):
    return example(i)


def grouped(window=12, rows_per_batch=4, seed=0):
  rows = grain.MapDataset.source(_Examples()).map(datasets.single_row).to_iter_dataset()
  return length_grouping.LengthGroupIterDataset(rows, window=window,
                                                rows_per_batch=rows_per_batch,
                                                buckets=BUCKETS, seed=seed)


def ids(rows):
  return [int(row[0].input_ids[0]) for row in rows]


def test_windows_are_sorted_into_batches_of_similar_length():
  out = list(grouped())
  assert sorted(ids(out)) == list(range(40))  # every row once
  for start in range(0, 36, 12):  # within each full window: the same rows as arrived
    assert sorted(ids(out[start:start + 12])) == list(range(start, start + 12))
  keys = [length_grouping.row_length_key(row, BUCKETS) for row in out]
  batches = [keys[i:i + 4] for i in range(0, 36, 4)]
  window_keys = sorted(keys[:12])
  # Each batch is a run of the sorted window: its rows are neighbours in length order.
  for batch in batches[:3]:
    first = window_keys.index(min(batch))
    assert sorted(batch) == window_keys[first:first + 4]
  # The last window (4 rows of a 40-row stream) is one full batch.
  assert sorted(ids(out[36:])) == [36, 37, 38, 39]


def test_batch_order_is_seeded_and_shuffled_within_windows():
  assert ids(grouped(seed=0)) == ids(grouped(seed=0))
  assert ids(grouped(seed=0)) != ids(grouped(seed=1))


def test_partial_last_batch_stays_last():
  out = list(grouped(window=8, rows_per_batch=3))  # window rounded up to 9; 40 = 4 x 9 + 4
  assert len(out) == 40
  assert len(set(ids(out[-4:]))) == 4 and set(ids(out[-4:])) == {36, 37, 38, 39}


def test_resume_anywhere_gives_the_same_rows():
  expected = ids(grouped())
  for stop in (0, 5, 12, 13, 39):
    it = iter(grouped())
    head = [next(it) for _ in range(stop)]
    state = it.get_state()
    resumed = iter(grouped())
    resumed.set_state(state)
    assert ids(head) + ids(resumed) == expected, stop
