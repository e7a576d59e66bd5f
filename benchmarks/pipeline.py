"""Throughput of the input pipeline against a plain Python loop, in examples per second per core.

    python benchmarks/pipeline.py [--manifest qwen_audio_jax/data/demo/train.jsonl]
                                  [--examples 256] [--workers 0,2]

Both sides do the same work per example: read and decode the clip, resample to 16 kHz, tag and
tokenise the row. The baseline then computes the log-mel with transformers'
WhisperFeatureExtractor (numpy) and keeps a list of examples; the pipeline computes the host
log-mel (mode 'mel') or hands over the raw waveform for the on-device mel (mode 'waveform') and
assembles fixed-shape batches. The pipeline's rate is divided by the cores it used (its worker
processes, or 1 without workers); the baseline uses one core. Each ratio is measured in this run.
"""

import argparse
import os
import sys
import time

import ml_collections

from qwen_audio_jax.audio import io as audio_io
from qwen_audio_jax.audio import lengths
from qwen_audio_jax.data import batching
from qwen_audio_jax.data import manifest as manifest_lib
from qwen_audio_jax.data.config import DEMO_DIR, get_data_config, mixture_entry
from qwen_audio_jax.data.pipeline import DataPipeline
from qwen_audio_jax.data.transforms import load_tokenizer


def baseline_rate(manifest: str, examples: int, n_mels: int) -> float:
  """Examples per second of a plain loop: load, WhisperFeatureExtractor, tokenizer."""
  from transformers import WhisperFeatureExtractor  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.text import chat, tasks  # pylint: disable=g-import-not-at-top
  extractor = WhisperFeatureExtractor(feature_size=n_mels)
  tokenizer = load_tokenizer(None)
  rows = [row for _, row in manifest_lib.iter_rows(manifest, strict=False)]

  def one(row):
    refs = manifest_lib.clip_refs(row)
    waves = [audio_io.load_audio(r.path, start=r.start, end=r.end) for r in refs]
    num_samples = [w.shape[0] for w in waves]
    features = [extractor(w, sampling_rate=lengths.SAMPLE_RATE, return_tensors="np")
                ["input_features"][0] for w in waves]
    if row["task"] == manifest_lib.CHAT_TASK:
      encoded = chat.encode_dialogue(row, tokenizer, num_samples)
    else:
      encoded = tasks.encode_example(row, tokenizer, num_samples,
                                     clip_seconds=num_samples[0] / lengths.SAMPLE_RATE)
    return encoded, features

  for row in rows[:4]:  # warm-up, as the pipeline's first batch
    one(row)
  out, start = [], time.perf_counter()
  while len(out) < examples:
    out.extend(one(row) for row in rows[:examples - len(out)])
  return len(out) / (time.perf_counter() - start)


def pipeline_rate(manifest: str, examples: int, features: str, workers: int, n_mels: int,
                  batch_size: int, max_clips: int) -> float:
  """Examples per second of the whole pipeline, after its first batches (start-up excluded)."""
  config = get_data_config()
  config.mixture = ml_collections.ConfigDict({"all": mixture_entry(paths=manifest)})
  config.features = features
  config.n_mels = n_mels
  config.batch_size = batch_size
  config.max_clips_per_row = max_clips
  config.worker_count = workers
  config.read_threads = 1
  config.max_bad_fraction = 1.0
  it = DataPipeline(config, process_index=0, process_count=1).iterator()
  for _ in range(max(1, workers)):  # one batch from every worker: start-up is not timed
    next(it)
  done, start = 0, time.perf_counter()
  while done < examples:
    done += int(batching.task_counts(next(it), 1).sum())
  rate = done / (time.perf_counter() - start)
  it.close()
  return rate


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--manifest", default=os.path.join(DEMO_DIR, "train.jsonl"))
  parser.add_argument("--examples", type=int, default=256)
  parser.add_argument("--workers", default="0,2", help="comma-separated worker counts")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--n_mels", type=int, default=80)
  args = parser.parse_args(argv)
  if not os.path.exists(args.manifest):
    print(f"manifest {args.manifest} not found", file=sys.stderr)
    return 1
  max_clips = max(len(manifest_lib.clip_refs(row))
                  for _, row in manifest_lib.iter_rows(args.manifest, strict=False))
  base = baseline_rate(args.manifest, args.examples, args.n_mels)
  print(f"baseline (WhisperFeatureExtractor + tokenizer, plain loop): {base:8.1f} examples/s "
        "on 1 core")
  for features in ("mel", "waveform"):
    for workers in (int(w) for w in args.workers.split(",")):
      rate = pipeline_rate(args.manifest, args.examples, features, workers, args.n_mels,
                           args.batch_size, max_clips)
      cores = max(workers, 1)
      print(f"pipeline {features:8s} workers={workers}: {rate:8.1f} examples/s, "
            f"{rate / cores:8.1f} per core, ratio to baseline per core "
            f"{rate / cores / base:6.2f}x")
  return 0


if __name__ == "__main__":
  sys.exit(main())
