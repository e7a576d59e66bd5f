"""Front-end throughput: host log-mel per core, on-device (jitted) log-mel, with ratios.

    python benchmarks/frontend.py [--only host_mel,device_mel] [--clips 16] [--iters 5]

Each measurement is a function registered with `@measurement`; main() runs them in order (or the
ones named by --only) and prints one summary line each, so further measurements (e.g. tokenizer
throughput) are added by appending a function to the marked section below. Every ratio compares
against a reference measured in the same run on the same inputs:

* host_mel: our numpy `log_mel_spectrogram` vs `transformers.WhisperFeatureExtractor`, both its
  numpy path and its torch path, one 30 s clip per call, single-threaded (BLAS / OpenMP / torch
  threads pinned to 1 before numpy is imported), so clips/s is per core.
* device_mel: the jitted `log_mel_spectrogram_jax` on batches of 30 s clips (both DFT methods),
  on whatever JAX finds (this machine: CPU, using all its cores), vs our host path on one core.
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
  os.environ[_var] = "1"

# pylint: disable=g-import-not-at-top,wrong-import-position
import argparse
import statistics
import time
from typing import Callable, Dict, List

import jax
import numpy as np

from qwen_audio_jax.audio import lengths
from qwen_audio_jax.audio import mel

Measurement = Callable[[argparse.Namespace, Dict[str, float]], str]
MEASUREMENTS: List[Measurement] = []


def measurement(fn: Measurement) -> Measurement:
  """Registers a measurement: fn(args, results) -> one summary line; results is shared."""
  MEASUREMENTS.append(fn)
  return fn


def median_seconds(fn: Callable[[], object], iters: int) -> float:
  fn()  # warm-up / compile
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def thirty_second_clips(count: int, seed: int = 0) -> List[np.ndarray]:
  """Speech-like 30 s clips: band-limited noise with a syllable-rate envelope plus a tone."""
  rng = np.random.default_rng(seed)
  t = np.arange(lengths.N_SAMPLES) / lengths.SAMPLE_RATE
  clips = []
  for i in range(count):
    noise = np.convolve(rng.standard_normal(lengths.N_SAMPLES), np.hanning(24), mode="same")
    envelope = 0.2 + np.abs(np.sin(2 * np.pi * (2.5 + 0.1 * i) * t))
    wave = 0.05 * noise * envelope + 0.1 * np.sin(2 * np.pi * (150 + 10 * i) * t)
    clips.append(wave.astype(np.float32))
  return clips


def _rate(fn_one: Callable[[np.ndarray], object], clips, iters: int) -> float:
  """Clips per second of fn_one applied to each clip in turn."""
  return len(clips) / median_seconds(lambda: [fn_one(c) for c in clips], iters)


@measurement
def host_mel(args, results):
  """Our host log-mel vs WhisperFeatureExtractor (numpy and torch paths), 1 thread."""
  import torch
  from transformers import WhisperFeatureExtractor
  import transformers.models.whisper.feature_extraction_whisper as whisper_fe
  torch.set_num_threads(1)
  clips = thirty_second_clips(args.clips)
  extractor = WhisperFeatureExtractor(feature_size=args.n_mels)

  def reference_torch(clip):
    return extractor(clip, sampling_rate=lengths.SAMPLE_RATE, return_tensors="np")

  def reference_numpy(clip):
    original = whisper_fe.is_torch_available
    whisper_fe.is_torch_available = lambda: False
    try:
      return extractor(clip, sampling_rate=lengths.SAMPLE_RATE, return_tensors="np")
    finally:
      whisper_fe.is_torch_available = original

  diff = max(float(np.abs(mel.log_mel_spectrogram(c, args.n_mels)
                          - reference_numpy(c).input_features[0]).max()) for c in clips[:2])
  ours = _rate(lambda c: mel.log_mel_spectrogram(c, args.n_mels), clips, args.iters)
  ref_np = _rate(reference_numpy, clips, args.iters)
  ref_torch = _rate(reference_torch, clips, args.iters)
  results["host_mel_clips_per_s"] = ours
  return (f"host_mel   ({args.n_mels} bins, 30 s clips, 1 thread): ours {ours:7.1f} clips/s | "
          f"WhisperFeatureExtractor numpy {ref_np:6.1f} clips/s (ours {ours / ref_np:4.2f}x), "
          f"torch {ref_torch:6.1f} clips/s (ours {ours / ref_torch:4.2f}x) | "
          f"max |diff| vs numpy path {diff:.1e}")


@measurement
def device_mel(args, results):
  """Jitted on-device log-mel, batch of 30 s clips, both DFT methods."""
  clips = thirty_second_clips(args.batch, seed=1)
  batch = jax.device_put(np.stack(clips))
  rates = {}
  for dft in ("fft", "matmul"):
    fn = jax.jit(lambda w, dft=dft: mel.log_mel_spectrogram_jax(w, args.n_mels, dft=dft))
    seconds = median_seconds(lambda fn=fn: fn(batch).block_until_ready(), args.iters)
    rates[dft] = args.batch / seconds
  host = results.get("host_mel_clips_per_s")
  if host is None:
    host = _rate(lambda c: mel.log_mel_spectrogram(c, args.n_mels), clips, args.iters)
  device = jax.devices()[0]
  return (f"device_mel ({args.n_mels} bins, batch {args.batch}, jit on {device.platform} "
          f"[{device.device_kind}], {os.cpu_count()} cores): fft {rates['fft']:7.1f} clips/s "
          f"({rates['fft'] / host:4.2f}x our host path on 1 core), matmul "
          f"{rates['matmul']:7.1f} clips/s ({rates['matmul'] / host:4.2f}x)")


# ==============================================================================================
# Tokenizer throughput: append its `@measurement` function here (same signature as above:
# fn(args, results) -> summary line); main() picks it up and --only selects it by name.
# ==============================================================================================


def main():
  names = [fn.__name__ for fn in MEASUREMENTS]
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--only", default="",
                      help=f"comma-separated subset of: {', '.join(names)} (default: all)")
  parser.add_argument("--clips", type=int, default=16, help="30 s clips for host_mel")
  parser.add_argument("--batch", type=int, default=8, help="batch size for device_mel")
  parser.add_argument("--n-mels", type=int, default=80, choices=mel.SUPPORTED_N_MELS)
  parser.add_argument("--iters", type=int, default=5, help="timed repeats (median)")
  args = parser.parse_args()
  selected = [n for n in args.only.split(",") if n] or names
  unknown = sorted(set(selected) - set(names))
  if unknown:
    parser.error(f"--only: unknown measurement(s) {unknown}; known: {names}")
  results: Dict[str, float] = {}
  for fn in MEASUREMENTS:
    if fn.__name__ in selected:
      print(fn(args, results), flush=True)


if __name__ == "__main__":
  main()
