"""The input pipeline of one process: config -> grain dataset -> checkpointable batch iterator.

Per task of the mixture (all inside grain, so worker processes run everything but the last step):

    source (JSONL / ArrayRecord / TFDS) -> global shuffle (seeded, new permutation per epoch)
    -> repeat -> this process's slice (every process_count-th example, starting at
    process_index) -> ExampleBuilder (read, decode, resample, features, tokenise, truncation
    rules) -> rejection accounting

then: weighted mixture of the tasks (grain's deterministic interleave by weight; evaluation
chains the tasks instead) -> packing or one example per row -> length grouping (optional:
similar lengths share a batch, `length_grouping.py`) -> fixed-shape batches (padded to a text
and an audio bucket) ->
worker processes with prefetch (they die with the process that started them: workers.py).
The main process sums the counts that ride along the batches
(`DataStats`) and stops the run past the bad-data limit. The order of batches depends only on
the config (seed included), the worker count and the process index / count.
"""

import os
from typing import Any, Dict, List, Optional, Tuple

import grain
import ml_collections
import numpy as np

from qwen_audio_jax.audio import buckets as audio_buckets
from qwen_audio_jax.audio import lengths
from qwen_audio_jax.data import config as config_lib
from qwen_audio_jax.data import batching, datasets, workers
from qwen_audio_jax.data.length_grouping import LengthGroupIterDataset
from qwen_audio_jax.data.sources import ArrayRecordSource, JsonlSource, expand_paths
from qwen_audio_jax.data.stats import DataStats, StatsDelta
from qwen_audio_jax.data.feature_cache import FeatureCache
from qwen_audio_jax.data.transforms import ExampleBuilder, load_tokenizer


def make_source(entry: ml_collections.ConfigDict, *, name: str, task_id: int,
                known_tasks=None, counted_files=None):
  """The random-access source of one mixture entry (`counted_files`: see JsonlSource)."""
  if entry.source == "jsonl":
    tasks = [t.strip() for t in entry.tasks.split(",") if t.strip()] or None
    return JsonlSource(expand_paths(entry.paths, f"mixture.{name}.paths"), tasks=tasks,
                       known_tasks=known_tasks, task_id=task_id, counted_files=counted_files)
  if entry.source == "array_record":
    return ArrayRecordSource(expand_paths(entry.paths, f"mixture.{name}.paths"))
  from qwen_audio_jax.data.tfds_source import TfdsSource  # pylint: disable=g-import-not-at-top
  return TfdsSource(entry.tfds_name, split=entry.tfds_split, data_dir=entry.tfds_data_dir,
                    adapter=entry.tfds_adapter)


def task_seed(seed: int, task_id: int) -> int:
  """Independent shuffle seeds per task, derived from the global seed."""
  return int(np.random.SeedSequence([seed, task_id]).generate_state(1)[0])


class DataIterator(grain.DatasetIterator):
  """Per-process numpy batches (see batching.py for the format) with running `stats`.

  A grain DatasetIterator: save and restore it with Orbax through
  `grain.checkpoint.CheckpointSave(it)` / `grain.checkpoint.CheckpointRestore(it)` (handler
  `grain.checkpoint.CheckpointHandler`); the state holds the pipeline's position and the counts.
  """

  def __init__(self, parent: grain.DatasetIterator, stats: DataStats):
    super().__init__(parent)
    self.stats = stats

  def __next__(self) -> Dict[str, np.ndarray]:
    batch, delta = next(self._parent)
    if not isinstance(delta, StatsDelta):
      raise TypeError(f"pipeline produced {type(delta).__name__} instead of its counts")
    self.stats.merge(delta)
    self.stats.check()
    return batch

  def get_state(self) -> Dict[str, Any]:
    return {"pipeline": self._parent.get_state(), "stats": self.stats.to_state()}

  def set_state(self, state: Dict[str, Any]) -> None:
    self._parent.set_state(state["pipeline"])
    self.stats.set_state(state["stats"])

  def __str__(self):
    return "DataIterator"


class DataPipeline:
  """Builds the grain pipeline of one process from a data config (see config.py)."""

  def __init__(self, config: ml_collections.ConfigDict, *, process_index: Optional[int] = None,
               process_count: Optional[int] = None, tokenizer=None, known_tasks=None):
    """Reads and validates the sources (manifests are scanned here).

    Args:
      config: the data config (`get_data_config()` and overrides).
      process_index, process_count: this process's place among the hosts (default: jax's).
      tokenizer: a ready QwenAudioTokenizer (default: loaded from config.tokenizer_path in each
        process that transforms examples).
      known_tasks: task names accepted in manifests (default: those of qwen_audio_jax.text).
    """
    config_lib.validate_data_config(config)
    if process_index is None or process_count is None:
      import jax  # pylint: disable=g-import-not-at-top
      process_index = jax.process_index() if process_index is None else process_index
      process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    if config.batch_size % process_count:
      raise ValueError(f"data config: batch_size {config.batch_size} is not divisible by the "
                       f"{process_count} processes")
    self.config = config
    self.process_index, self.process_count = process_index, process_count
    self.rows_per_batch = config.batch_size // process_count
    self.task_names: List[str] = config_lib.task_names(config)
    if tokenizer is None:
      # Loaded here once so that a missing vocabulary stops the run at start with its own
      # message, instead of failing every example later (each worker loads its own copy).
      try:
        load_tokenizer(config.tokenizer_path or None)
      except (OSError, ValueError) as e:
        raise type(e)(f"data config tokenizer_path={config.tokenizer_path!r}: {e}") from e
    self._tokenizer = tokenizer
    # One cache for every task's builder (ASR and SRWT rows share their clips).
    self.feature_cache = (FeatureCache(int(config.feature_cache_mb * 2**20))
                          if config.feature_cache_mb > 0 else None)
    self._load_stats = self._new_stats()
    self.sources = []
    counted_files = set()  # each unowned manifest row is counted by one entry only
    for task_id, name in enumerate(self.task_names):
      source = make_source(config.mixture[name], name=name, task_id=task_id,
                           known_tasks=known_tasks, counted_files=counted_files)
      if hasattr(source, "rejections"):
        self._load_stats.record_load_rejections(name, source.rejections, source.total_rows)
      if len(source) == 0:
        raise ValueError(f"mixture.{name}: the source has no usable example "
                         f"({config_lib.entry_summary(config)[name]})")
      self.sources.append(source)

  def _new_stats(self) -> DataStats:
    return DataStats(self.task_names, max_bad_fraction=self.config.max_bad_fraction,
                     min_examples=self.config.min_examples_before_abort,
                     keep_first=self.config.bad_examples_to_report)

  @property
  def audio_buckets(self) -> tuple:
    """The audio buckets in samples."""
    return audio_buckets.bucket_samples(self.config.audio_buckets)

  @property
  def shapes(self) -> List[Tuple[int, int]]:
    """Every (text length, audio samples) a batch can have, smallest first: the executables a
    train step compiles (at most, one per pair that occurs)."""
    return [(int(t), a) for t in self.config.text_buckets for a in self.audio_buckets]

  @property
  def max_tokens(self) -> int:
    return int(max(self.config.text_buckets))

  def example_builder(self, task_id: int) -> ExampleBuilder:
    c = self.config
    return ExampleBuilder(
        task_id=task_id, features=c.features, n_mels=c.n_mels, max_clips=c.max_clips_per_row,
        max_tokens=self.max_tokens, text_overflow=c.text_overflow,
        clip_overflow=c.clip_overflow,
        max_audio_samples=int(round(c.max_audio_seconds * lengths.SAMPLE_RATE)),
        long_audio=c.long_audio, tokenizer=self._tokenizer,
        tokenizer_path=c.tokenizer_path or None, feature_cache=self.feature_cache)

  def task_dataset(self, task_id: int) -> grain.IterDataset:
    """One task's examples for this process (before mixing)."""
    c = self.config
    ds = grain.MapDataset.source(self.sources[task_id])
    if c.shuffle:
      ds = ds.shuffle(seed=task_seed(c.seed, task_id))
    ds = ds.repeat(c.num_epochs or None)
    ds = ds[self.process_index::self.process_count]
    ds = ds.map(self.example_builder(task_id))
    it = ds.to_iter_dataset(grain.ReadOptions(
        num_threads=c.read_threads, prefetch_buffer_size=c.read_buffer_size if c.read_threads
        else 0))
    return datasets.AccountRejectionsIterDataset(
        it, task_name=self.task_names[task_id], max_bad_fraction=c.max_bad_fraction,
        min_examples=c.min_examples_before_abort, keep_first=c.bad_examples_to_report)

  def dataset(self) -> grain.IterDataset:
    """The whole pipeline: (numpy batch, StatsDelta) elements."""
    c = self.config
    tasks = [self.task_dataset(t) for t in range(len(self.task_names))]
    if c.num_epochs:
      examples = datasets.ChainIterDataset(tasks)
    elif len(tasks) == 1:
      examples = tasks[0]
    else:
      examples = grain.IterDataset.mix(tasks, [c.mixture[n].weight for n in self.task_names])
    if c.packing:
      rows = datasets.PackIterDataset(examples, max_tokens=self.max_tokens,
                                      max_clips=c.max_clips_per_row, num_bins=c.pack_bins)
    else:
      rows = examples.map(datasets.single_row)
    if c.length_group_window:
      rows = LengthGroupIterDataset(rows, window=c.length_group_window,
                                    rows_per_batch=self.rows_per_batch,
                                    buckets=self.audio_buckets, seed=c.seed)
    batch_fn = batching.BatchBuilder(
        rows_per_batch=self.rows_per_batch, buckets=c.text_buckets,
        max_clips=c.max_clips_per_row, features=c.features, n_mels=c.n_mels,
        keep_first=c.bad_examples_to_report, audio_buckets=self.audio_buckets)
    batches = rows.batch(self.rows_per_batch, drop_remainder=False, batch_fn=batch_fn)
    if c.worker_count > 0:
      _allow_unparsed_absl_flags()
      if c.worker_math_threads:
        _limit_math_threads_of_new_processes(c.worker_math_threads)
      batches = batches.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=c.worker_count, per_worker_buffer_size=c.worker_buffer_size),
          worker_init_fn=workers.die_with_parent())
    return batches

  def padding_batch(self) -> Dict[str, np.ndarray]:
    """A batch of padding rows only (segment ids 0) in this pipeline's shapes."""
    c = self.config
    return batching.empty_batch(self.rows_per_batch, int(min(c.text_buckets)),
                                max_clips=c.max_clips_per_row, features=c.features,
                                n_mels=c.n_mels, audio_samples=self.audio_buckets[0])

  def iterator(self) -> DataIterator:
    """A fresh iterator over this process's batches."""
    stats = self._new_stats()
    stats.set_state(self._load_stats.to_state())
    return DataIterator(self.dataset().__iter__(), stats)


_MATH_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _limit_math_threads_of_new_processes(threads: int) -> None:
  """Caps numpy's BLAS threads in processes started from now on (grain's workers).

  The workers are the parallelism: BLAS threads on top of them oversubscribe the cores (the mel's
  matmul ran 3x slower per clip on 2 busy cores). Variables already set by the user win; this
  process's own BLAS, loaded already, is not affected.
  """
  for name in _MATH_THREAD_VARIABLES:
    os.environ.setdefault(name, str(threads))


def _allow_unparsed_absl_flags() -> None:
  """Lets grain's worker processes start outside absl.app (scripts, notebooks, pytest).

  With jax imported, grain 0.2.18 reads one of its absl flags when starting workers and fails
  if the flags were never parsed (google/grain#1355); their defaults are what is wanted here.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
