"""Throughput of the input pipeline against a plain Python loop, in examples per second per core.

    python benchmarks/pipeline.py [--manifest qwen_audio_jax/data/demo/train.jsonl]
                                  [--examples 512] [--workers 0,2]

Both sides do the same work per example: read and decode the clip, resample to 16 kHz, tag and
tokenise the row. The baseline then computes the log-mel with transformers'
WhisperFeatureExtractor (numpy) and keeps a list of examples; the pipeline computes the host
log-mel (mode 'mel') or hands over the raw waveform for the on-device mel (mode 'waveform') and
assembles fixed-shape batches (in worker processes when workers > 0).

"Per core" is examples per CPU-second: the CPU time of every process taking part (the main
process and the grain workers, all their threads) over the timed window, so that background
threads or idle workers neither inflate nor deflate a figure. BLAS runs one thread per process
(set before numpy loads), as the pipeline's workers do. Start-up (worker processes, tokenizer
load, the first batches) is not timed. Every side runs --examples examples per round, the sides
interleaved round by round, and the medians over --rounds rounds are printed, so a slower
stretch of a shared machine hits every side alike.
"""

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ.setdefault(_name, "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import argparse
import statistics
import sys
import time
from typing import Dict, Tuple

import ml_collections
import psutil

from qwen_audio_jax.audio import io as audio_io
from qwen_audio_jax.audio import lengths
from qwen_audio_jax.data import batching
from qwen_audio_jax.data import manifest as manifest_lib
from qwen_audio_jax.data.config import DEMO_DIR, get_data_config, mixture_entry
from qwen_audio_jax.data.pipeline import DataPipeline
from qwen_audio_jax.data.transforms import load_tokenizer


def cpu_seconds() -> Dict[int, float]:
  """pid -> user + system CPU seconds of this process and all its descendants."""
  me = psutil.Process()
  out = {}
  for process in [me] + me.children(recursive=True):
    try:
      times = process.cpu_times()
    except psutil.NoSuchProcess:
      continue
    out[process.pid] = times.user + times.system
  return out


def cpu_used(before: Dict[int, float], after: Dict[int, float]) -> float:
  return sum(after[pid] - before.get(pid, 0.0) for pid in after)


class Baseline:
  """A plain loop over the manifest's rows: load, Whisper features, tokens."""

  def __init__(self, manifest: str, n_mels: int):
    from transformers import WhisperFeatureExtractor
    from qwen_audio_jax.text import chat, tasks
    self._extractor = WhisperFeatureExtractor(feature_size=n_mels)
    self._tokenizer = load_tokenizer(None)
    self._chat, self._tasks = chat, tasks
    self._rows = [row for _, row in manifest_lib.iter_rows(manifest, strict=False)]
    self._next = 0
    self.take(8)  # warm-up

  def _one(self, row):
    refs = manifest_lib.clip_refs(row)
    waves = [audio_io.load_audio(r.path, start=r.start, end=r.end) for r in refs]
    num_samples = [w.shape[0] for w in waves]
    features = [self._extractor(w, sampling_rate=lengths.SAMPLE_RATE, return_tensors="np")
                ["input_features"][0] for w in waves]
    if row["task"] == manifest_lib.CHAT_TASK:
      encoded = self._chat.encode_dialogue(row, self._tokenizer, num_samples)
    else:
      encoded = self._tasks.encode_example(row, self._tokenizer, num_samples,
                                           clip_seconds=num_samples[0] / lengths.SAMPLE_RATE)
    return encoded, features

  def take(self, examples: int) -> int:
    """Processes the next `examples` rows (cycling over the manifest)."""
    out = []
    for _ in range(examples):
      out.append(self._one(self._rows[self._next % len(self._rows)]))
      self._next += 1
    return len(out)


class Pipeline:
  """The whole pipeline (DataPipeline's iterator), started once; `take` reads batches."""

  def __init__(self, manifest: str, features: str, workers: int, n_mels: int, batch_size: int,
               max_clips: int):
    config = get_data_config()
    config.mixture = ml_collections.ConfigDict({"all": mixture_entry(paths=manifest)})
    config.features = features
    config.n_mels = n_mels
    config.batch_size = batch_size
    config.max_clips_per_row = max_clips
    config.worker_count = workers
    config.read_threads = 1
    config.max_bad_fraction = 1.0
    self._it = DataPipeline(config, process_index=0, process_count=1).iterator()
    for _ in range(2 * max(1, workers)):  # two batches from every worker: start-up not timed
      next(self._it)

  def take(self, examples: int) -> int:
    done = 0
    while done < examples:
      done += int(batching.task_counts(next(self._it), 1).sum())
    return done

  def close(self):
    self._it.close()


def rate(source, examples: int) -> Tuple[float, float]:
  """(examples per wall second, per CPU-second of this process and its workers)."""
  cpu_before, start = cpu_seconds(), time.perf_counter()
  done = source.take(examples)
  wall = time.perf_counter() - start
  return done / wall, done / cpu_used(cpu_before, cpu_seconds())


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--manifest", default=os.path.join(DEMO_DIR, "train.jsonl"))
  parser.add_argument("--examples", type=int, default=512, help="per side and round")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--workers", default="0,2", help="comma-separated worker counts")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--n_mels", type=int, default=80)
  args = parser.parse_args(argv)
  if not os.path.exists(args.manifest):
    print(f"manifest {args.manifest} not found", file=sys.stderr)
    return 1
  max_clips = max(len(manifest_lib.clip_refs(row))
                  for _, row in manifest_lib.iter_rows(args.manifest, strict=False))
  print(f"{args.manifest}: {args.examples} examples per side and round, {args.rounds} rounds "
        f"(medians), batch {args.batch_size}, {max_clips} audio slots per row, "
        f"{psutil.cpu_count()} cores")
  baseline = Baseline(args.manifest, args.n_mels)
  configs = [(features, int(workers)) for features in ("mel", "waveform")
             for workers in args.workers.split(",")]
  rates = {name: [] for name in ["baseline"] + [f"{f} workers={w}" for f, w in configs]}
  for _ in range(args.rounds):  # interleaved: a slower stretch of the machine hits every side
    rates["baseline"].append(rate(baseline, args.examples))
    for features, workers in configs:
      # Started afresh each round and closed after it, so no pipeline's background threads
      # or workers run (and are counted) while another side is measured.
      pipeline = Pipeline(args.manifest, features, workers, args.n_mels, args.batch_size,
                          max_clips)
      rates[f"{features} workers={workers}"].append(rate(pipeline, args.examples))
      pipeline.close()
  median = lambda name, i: statistics.median(r[i] for r in rates[name])  # noqa: E731
  base_core = median("baseline", 1)
  print(f"baseline  WhisperFeatureExtractor + tokenizer, plain loop: "
        f"{median('baseline', 0):7.1f} examples/s, {base_core:7.1f} per core")
  for name in rates:
    if name != "baseline":
      core = median(name, 1)
      print(f"pipeline  {name:18s}: {median(name, 0):7.1f} examples/s, {core:7.1f} per core, "
            f"ratio to baseline per core {core / base_core:5.2f}x")
  return 0


if __name__ == "__main__":
  sys.exit(main())
