"""Front-end throughput: host log-mel per core, on-device (jitted) log-mel, with ratios.

    python benchmarks/frontend.py [--only host_mel,device_mel,tokenizer] [--clips 16] [--iters 5]

Each measurement is a function registered with `@measurement`; main() runs them in order (or the
ones named by --only) and prints one summary line each, so further measurements (e.g. tokenizer
throughput) are added by appending a function to the marked section below. Every ratio compares
against a reference measured in the same run on the same inputs:

* host_mel: our numpy `log_mel_spectrogram` vs `transformers.WhisperFeatureExtractor`, both its
  numpy path and its torch path, one 30 s clip per call, single-threaded (BLAS / OpenMP / torch
  threads pinned to 1 before numpy is imported), so clips/s is per core.
* device_mel: the jitted `log_mel_spectrogram_jax` on batches of 30 s clips (both DFT methods),
  on whatever JAX finds (this machine: CPU, using all its cores), vs our host path on one core.
* tokenizer: training examples of every task family and chat dialogues (prompts/s) through
  `tasks.encode_example` / `chat.encode_dialogue` (tags, validation, NFC, audio spans, loss mask)
  vs tokenising the finished example strings with a plain `tiktoken.Encoding` over the same
  vocabulary and with transformers' `Qwen2Tokenizer` converted from it offline.
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


BENCHMARK_ROWS = [
    dict(task="asr", audio="librispeech/1272-128104-0000.flac", audio_language="en",
         text="mister quilter is the apostle of the middle classes and we are glad to welcome "
              "his gospel", itn=False),
    dict(task="asr", audio="aishell/BAC009S0764W0121.wav", audio_language="zh",
         text="甚至出现交易几乎停滞的情况", itn=True),
    dict(task="srwt", audio="a.wav", audio_language="en",
         words=[dict(word=w, start=0.4 * i, end=0.4 * i + 0.35)
                for i, w in enumerate("the quick brown fox jumps over the lazy dog".split())]),
    dict(task="translation", audio="covost/common_voice_de_1.mp3", audio_language="de",
         text_language="en", text="The weather in Munich is nice today."),
    dict(task="caption", audio="clotho/rain.wav", style="clotho",
         text="Rain falls steadily on a tin roof while thunder rumbles in the distance."),
    dict(task="aqa", audio="clotho/birds.wav", question="Are there birds singing?",
         answer="yes"),
    dict(task="event", audio="audioset/x.wav", labels=["Dog", "Vehicle horn, car horn, honking"]),
    dict(task="scene", audio="tut/park.wav", label="park"),
    dict(task="emotion", audio="meld/1.wav", audio_language="en", label="joy"),
    dict(task="vocal_sound", audio="vocalsound/1.wav", label="laughter"),
    dict(task="note_analysis", audio="nsynth/key.wav", pitch=60, velocity=100,
         instrument="keyboard", sonic=["bright", "percussive"]),
    dict(task="chat", messages=[
        dict(role="user", content=[dict(audio="a.wav"), dict(text="What does the speaker say?")]),
        dict(role="assistant", content="She says the meeting moved to Thursday afternoon."),
        dict(role="user", content=[dict(audio="b.wav"), dict(text="这段音频里有什么声音？")]),
        dict(role="assistant", content="一只狗在叫，远处有汽车喇叭声。")]),
]


@measurement
def tokenizer(args, results):
  """Training examples of every task family + chat through our text stack vs plain tokenizers."""
  import tiktoken
  from transformers import Qwen2Tokenizer
  from transformers.convert_slow_tokenizer import TikTokenConverter
  from qwen_audio_jax.text import chat, specials, tasks
  from qwen_audio_jax.text import tokenizer as tokenizer_lib
  tok = tokenizer_lib.QwenAudioTokenizer.load()
  rows = [BENCHMARK_ROWS[i % len(BENCHMARK_ROWS)] for i in range(args.prompts)]
  samples = lengths.SAMPLE_RATE * 10

  def encode_row(row):
    if row["task"] == "chat":
      return chat.encode_dialogue(row, tok, [samples, samples])
    return tasks.encode_example(row, tok, [samples], clip_seconds=10.0)

  # The baselines tokenise the final example strings (the same text, `<audio>PATH</audio>` left
  # unexpanded): no tag building, validation, NFC, span sizing or loss mask.
  texts = [tok.decode(e.input_ids, audio_paths=e.audio_paths)
           for e in map(encode_row, rows)]
  plain = tiktoken.Encoding("plain", pat_str=tokenizer_lib.SPLIT_PATTERN,
                            mergeable_ranks=tokenizer_lib.read_ranks(tok.vocab_file),
                            special_tokens=tok.special_ids)
  hf = Qwen2Tokenizer(tokenizer_object=TikTokenConverter(
      vocab_file=tok.vocab_file, pattern=tokenizer_lib.SPLIT_PATTERN,
      extra_special_tokens=specials.SPECIAL_TOKENS).converted())
  n = len(rows)
  ours = n / median_seconds(lambda: [encode_row(r) for r in rows], args.iters)
  ours_text = n / median_seconds(
      lambda: [tok.encode_with_audio(t, [samples] * t.count("<audio>")) for t in texts],
      args.iters)
  base = n / median_seconds(lambda: [plain.encode(t, allowed_special="all") for t in texts],
                            args.iters)
  base_hf = n / median_seconds(lambda: [hf.encode(t, add_special_tokens=False) for t in texts],
                               args.iters)
  results["tokenizer_prompts_per_s"] = ours
  return (f"tokenizer  ({n} training examples, {len(BENCHMARK_ROWS) - 1} task families + chat, "
          f"1 thread): ours encode_example/encode_dialogue {ours:8.0f} prompts/s | ours "
          f"encode_with_audio on the text {ours_text:8.0f}/s | plain tiktoken {base:8.0f}/s "
          f"(ours {ours / base:4.2f}x) | transformers Qwen2Tokenizer {base_hf:8.0f}/s "
          f"(ours {ours / base_hf:4.2f}x)")


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
  parser.add_argument("--prompts", type=int, default=2000, help="examples for tokenizer")
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
