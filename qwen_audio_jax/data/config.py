"""The data section of a training config: one plain ConfigDict, every key documented here.

Trainer configs embed `get_data_config(...)` (one per stage) and override keys from the command
line, e.g. `--config.data.batch_size=64 --config.data.mixture.asr.weight=2`.
"""

import os
from typing import Dict, List, Tuple

import ml_collections

from qwen_audio_jax.audio import buckets as audio_buckets
from qwen_audio_jax.audio import lengths

SOURCES = ("jsonl", "array_record", "tfds")
FEATURES = ("mel", "waveform")
TEXT_OVERFLOW = ("truncate", "drop")
CLIP_OVERFLOW = ("drop", "error")
LONG_AUDIO = ("skip", "trim")
STAGES = ("pretrain", "chat")

# Most (text bucket, audio bucket) pairs a config may define: each is a compiled train step.
MAX_BATCH_SHAPES = 32

DEMO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo")
# The demo's pretrained audio encoder (its stand-in for Whisper), written from the demo corpus's
# training split by `python -m qwen_audio_jax.training.encoder_pretraining`.
DEMO_ENCODER_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_encoder")


def mixture_entry(*, weight: float = 1.0, source: str = "jsonl", paths: str = "",
                  tasks: str = "", tfds_name: str = "", tfds_split: str = "train",
                  tfds_data_dir: str = "", tfds_adapter: str = "librispeech"
                  ) -> ml_collections.ConfigDict:
  """One task dataset of a mixture.

  Keys:
    weight: relative share of this entry's examples in the training stream (> 0).
    source: 'jsonl' (manifests), 'array_record' (shards written by `data.prepare`) or 'tfds'.
    paths: comma-separated files or glob patterns (local paths or any etils.epath URI such as
      gs://...): the manifests of a 'jsonl' entry, the shards of an 'array_record' entry.
    tasks: comma-separated row task names to keep from the manifests ('' = every row). Only for
      'jsonl'; write one set of shards per task with `prepare --split_by_task` instead.
    tfds_name, tfds_split, tfds_data_dir: the TFDS dataset (prepared beforehand, array_record
      file format), read with `tfds.data_source`.
    tfds_adapter: maps a TFDS example onto a manifest row: a name in
      `qwen_audio_jax.data.tfds_source.ADAPTERS` or 'package.module:function'.
  """
  return ml_collections.ConfigDict(dict(
      weight=float(weight), source=source, paths=paths, tasks=tasks, tfds_name=tfds_name,
      tfds_split=tfds_split, tfds_data_dir=tfds_data_dir, tfds_adapter=tfds_adapter))


def get_data_config(stage: str = "pretrain", split: str = "train") -> ml_collections.ConfigDict:
  """Defaults (the bundled demo corpus); every key is documented inline.

  Args:
    stage: 'pretrain' (multitask rows of the demo corpus) or 'chat' (its dialogue rows).
    split: 'train' (shuffled, repeated forever) or 'eval' (one ordered pass).
  """
  if stage not in STAGES:
    raise ValueError(f"get_data_config: stage must be one of {STAGES}, got {stage!r}")
  if split not in ("train", "eval"):
    raise ValueError(f"get_data_config: split must be 'train' or 'eval', got {split!r}")
  c = ml_collections.ConfigDict()
  # Task datasets and their weights: name -> mixture_entry(...). The mixture's task list (the
  # values of the batch's `task_ids`) is the sorted list of these names.
  c.mixture = demo_mixture(stage, split)
  # Rows per step over all processes; each process builds batch_size / process_count of them.
  c.batch_size = 8
  # 'mel': the host computes the log-mel (batch key audio_mel [B, A, n_mels, F]);
  # 'waveform': the batch carries 16 kHz audio (audio_wave [B, A, N]) and the train step
  # computes the mel on the device.
  c.features = "mel"
  c.n_mels = 80  # 80 (Qwen-Audio, Whisper-large-v2) or 128 (Qwen2-Audio)
  # A: audio slots per row (several with packing or multi-clip chats)
  c.max_clips_per_row = DEMO_CHAT_MAX_CLIPS if stage == "chat" else 1
  # Text lengths a batch may have: a batch is padded to the smallest bucket that holds its
  # longest row, so the train step compiles once per bucket. With packing rows are filled up to
  # the largest bucket.
  c.text_buckets = (256, 512, 1024, 2048)
  # A row longer than the largest bucket: 'truncate' keeps the first tokens when every audio
  # span and at least one target token survive (otherwise it is dropped), 'drop' drops it.
  # Both are counted per task.
  c.text_overflow = "truncate"
  # Audio lengths (seconds) a batch may have: its clips are padded to the smallest bucket that
  # holds the longest one (N samples, F = N / 160 mel frames), so the encoder's cost follows the
  # audio (same numbers as 30 s: see qwen_audio_jax/audio/buckets.py). Multiples of 20 ms,
  # increasing, the last 30. (30.0,) pads every clip to 30 s.
  c.audio_buckets = audio_buckets.DEFAULT_SECONDS
  # Length-grouped batching: rows are read this many at a time (after the seeded shuffle),
  # sorted by (audio bucket, text length), cut into batches, and the batches of the window
  # emitted in a seeded random order; less padding, same examples. 0 = off (arrival order).
  # Rounded up to a multiple of the rows per batch; resumable (the window is replayed).
  c.length_group_window = 0
  # A row with more clips than max_clips_per_row: 'drop' (counted) or 'error' (stop the run).
  c.clip_overflow = "drop"
  # Clips longer than this are bad data ('skip', counted) or cut to it ('trim', counted as
  # truncated). At most 30 s: the encoder sees 30 s windows.
  c.max_audio_seconds = float(lengths.CHUNK_SECONDS)
  c.long_audio = "skip"
  c.packing = False  # pack several examples into one row (segment_ids / positions per example)
  c.pack_bins = 4  # rows filled at the same time by first-fit packing
  c.seed = 0  # global shuffle seed (the same on every process)
  c.shuffle = split == "train"  # seeded global shuffle, a new permutation every epoch
  # 0: repeat forever (training); k > 0: k passes over every task, one task after another
  # (evaluation; weights are not used, the last batch is filled with padding rows).
  c.num_epochs = 0 if split == "train" else 1
  # Grain worker processes per host (0 = transform in the main process) and the batches each
  # keeps ready. The order of examples depends on the seed and on worker_count only.
  c.worker_count = 0
  c.worker_buffer_size = 2
  # numpy / BLAS threads in each worker process (0 = the libraries' default): the workers already
  # use the cores, more threads per worker only oversubscribe them.
  c.worker_math_threads = 1
  # Per task and worker: threads reading and transforming examples (0 = in the worker's own
  # thread; more help when reads wait on remote storage) and the examples they keep ready.
  # Host memory grows with worker_count x tasks x read_buffer_size x one example (~1 MB).
  c.read_threads = 1
  c.read_buffer_size = 4
  # Host memory (MiB, per process and per worker) for the features of clips read from files,
  # reused when a clip is read again (feature_cache.py): a small corpus repeated for many epochs
  # decodes and featurises each clip once. 0 = off. Batches are identical either way.
  c.feature_cache_mb = 0
  c.tokenizer_path = ""  # qwen.tiktoken; '' = the copy shipped with dashscope
  # Bad data (unreadable, empty, NaN, truncated, over-long or too-short audio, malformed rows) is
  # skipped and counted per task; once a task has seen min_examples_before_abort examples and
  # more than max_bad_fraction of them were bad, the run stops with an error naming the first
  # ones. The same rule applies to the rows refused when the manifests are read (against the
  # rows read, once at least min_examples_before_abort were).
  c.max_bad_fraction = 0.05
  c.min_examples_before_abort = 100
  c.bad_examples_to_report = 10
  return c


def demo_mixture(stage: str = "pretrain", split: str = "train") -> ml_collections.ConfigDict:
  """The bundled demo corpus as a mixture: one entry per task of the stage."""
  manifest = os.path.join(DEMO_DIR, f"{split}.jsonl")
  mixture = ml_collections.ConfigDict()
  if stage == "chat":
    mixture.chat = mixture_entry(paths=manifest, tasks="chat")
    return mixture
  for task, weight in DEMO_PRETRAIN_TASKS:
    mixture[task] = mixture_entry(weight=weight, paths=manifest, tasks=task)
  return mixture


# Multitask rows of the demo corpus and their weights in the demo pretraining mixture. Speech
# recognition leads, as it does in Qwen-Audio's stage-1 data; the small AQA set (a third of the
# size of the others) gets half a share so that it does not repeat three times as often.
DEMO_PRETRAIN_TASKS: Tuple[Tuple[str, float], ...] = (
    ("asr", 2.0),
    ("srwt", 1.0),
    ("caption", 1.0),
    ("event", 1.0),
    ("aqa", 0.5),
)
# Clips per dialogue in the demo chat rows (at most).
DEMO_CHAT_MAX_CLIPS = 2


def task_names(config: ml_collections.ConfigDict) -> List[str]:
  """The mixture's task list (index = the batch's task id)."""
  return sorted(config.mixture.keys())


def validate_data_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the key when the data config cannot work."""

  def need(ok, message):
    if not ok:
      raise ValueError(f"data config: {message}")

  need(len(config.mixture) > 0, "mixture is empty: add at least one mixture_entry")
  for name in config.mixture.keys():
    entry = config.mixture[name]
    need(entry.weight > 0, f"mixture.{name}.weight must be > 0, got {entry.weight}")
    need(entry.source in SOURCES,
         f"mixture.{name}.source must be one of {SOURCES}, got {entry.source!r}")
    if entry.source == "tfds":
      need(bool(entry.tfds_name), f"mixture.{name}.tfds_name is empty")
    else:
      need(bool(entry.paths), f"mixture.{name}.paths is empty")
    need(not (entry.source == "array_record" and entry.tasks),
         f"mixture.{name}.tasks only filters 'jsonl' manifests; write shards per task with "
         "`python -m qwen_audio_jax.data.prepare --split_by_task`")
  need(config.batch_size > 0, f"batch_size must be > 0, got {config.batch_size}")
  need(config.features in FEATURES, f"features must be one of {FEATURES}, got "
       f"{config.features!r}")
  need(config.n_mels in (80, 128), f"n_mels must be 80 or 128, got {config.n_mels}")
  need(config.max_clips_per_row >= 1,
       f"max_clips_per_row must be >= 1, got {config.max_clips_per_row}")
  buckets = tuple(config.text_buckets)
  need(len(buckets) > 0 and all(int(b) > 0 for b in buckets) and list(buckets) == sorted(
      set(buckets)), f"text_buckets must be increasing positive lengths, got {buckets}")
  try:
    audio_buckets.bucket_samples(config.audio_buckets, "data config: audio_buckets")
  except (TypeError, ValueError) as e:
    raise ValueError(str(e)) from e
  shapes = len(tuple(config.text_buckets)) * len(tuple(config.audio_buckets))
  need(shapes <= MAX_BATCH_SHAPES,
       f"text_buckets x audio_buckets give {shapes} batch shapes, each its own compiled step; "
       f"at most {MAX_BATCH_SHAPES} are allowed (use fewer buckets)")
  need(config.length_group_window >= 0,
       f"length_group_window must be >= 0, got {config.length_group_window}")
  need(config.text_overflow in TEXT_OVERFLOW,
       f"text_overflow must be one of {TEXT_OVERFLOW}, got {config.text_overflow!r}")
  need(config.clip_overflow in CLIP_OVERFLOW,
       f"clip_overflow must be one of {CLIP_OVERFLOW}, got {config.clip_overflow!r}")
  need(config.long_audio in LONG_AUDIO,
       f"long_audio must be one of {LONG_AUDIO}, got {config.long_audio!r}")
  need(0 < config.max_audio_seconds <= lengths.CHUNK_SECONDS,
       f"max_audio_seconds must be in (0, {lengths.CHUNK_SECONDS}], got "
       f"{config.max_audio_seconds}")
  need(config.pack_bins >= 1, f"pack_bins must be >= 1, got {config.pack_bins}")
  need(config.num_epochs >= 0, f"num_epochs must be >= 0, got {config.num_epochs}")
  need(0 <= config.seed < 2**32, f"seed must be in [0, 2**32), got {config.seed}")
  need(config.worker_count >= 0, f"worker_count must be >= 0, got {config.worker_count}")
  need(config.feature_cache_mb >= 0,
       f"feature_cache_mb must be >= 0 (0 = off), got {config.feature_cache_mb}")
  need(config.worker_buffer_size >= 1,
       f"worker_buffer_size must be >= 1, got {config.worker_buffer_size}")
  need(config.worker_math_threads >= 0,
       f"worker_math_threads must be >= 0, got {config.worker_math_threads}")
  need(config.read_threads >= 0, f"read_threads must be >= 0, got {config.read_threads}")
  need(config.read_buffer_size >= 1,
       f"read_buffer_size must be >= 1, got {config.read_buffer_size}")
  need(0.0 <= config.max_bad_fraction <= 1.0,
       f"max_bad_fraction must be in [0, 1], got {config.max_bad_fraction}")
  need(config.min_examples_before_abort >= 1,
       f"min_examples_before_abort must be >= 1, got {config.min_examples_before_abort}")


def entry_summary(config: ml_collections.ConfigDict) -> Dict[str, str]:
  """name -> 'source: paths' (for logs)."""
  out = {}
  for name in task_names(config):
    entry = config.mixture[name]
    where = entry.tfds_name if entry.source == "tfds" else entry.paths
    out[name] = f"{entry.source}: {where}"
  return out
