"""Audio-length buckets: how much of the 30 s window a batch carries.

Whisper's features describe a 30 s window, and padding every clip to it makes the encoder's cost
that of 30 s whatever the clip (a 5 s clip: 6x the work). A batch is instead padded to the
smallest of a few configured lengths (its bucket) that holds all its clips, so the train step
compiles once per (text bucket, audio bucket) pair and the encoder's cost follows the audio.

The numbers do not change: a bucket carries the first frames of the clip's 30 s features
(`mel.log_mel_spectrogram(..., num_frames=)` and the on-device `log_mel_spectrogram_jax` over a
bucket of samples give exactly that prefix), and it holds every frame the encoder's valid
outputs read. A clip of L samples has m = L // 160 mel frames and T = (m - 1) // 2 + 1 encoder
frames; valid frame T - 1 reads mel frames up to index 2T (conv2's stride-2 window over conv1's
kernel-3 window): frame m when m is even, m + 1 when it is odd. Qwen-Audio cuts the batch's mel
to 2 T_max frames (`EncoderConfig.cut_mel_to_batch_max`, as the encoder code shipped with the
released checkpoint does), so frame 2T is zero there; Qwen2-Audio (transformers) reads all 3000.
A bucket therefore needs 2T + 1 frames (capped at 3000: past the window the conv's own zero
padding is what both see), which serves both models. Generation and evaluation import
`audio_bucket_for` so that prompts are padded the same way as training batches.
"""

from typing import Iterable, Sequence, Tuple

from qwen_audio_jax.audio import lengths

# Default buckets in seconds (the largest must be the whole 30 s window). Closer at the short
# end, where a bucket's padding is the largest share of its work: batches of 4 clips drawn from
# 0.8-6.6 s (the demo corpus's range) average a 6.8 s bucket here against 8.6 s with 5 s steps,
# LibriSpeech-like lengths (mean 12.4 s) 20.8 s against 21.9 s (batches of 8: 23.5 s against
# 25.2 s). Seven buckets x four text buckets stay within `data.config.MAX_BATCH_SHAPES`.
DEFAULT_SECONDS: Tuple[float, ...] = (5.0, 7.5, 10.0, 15.0, 20.0, 25.0, 30.0)
# Bucket lengths are whole multiples of this many samples: an even number of mel frames, so that
# the stride-2 conv and the stride-2 pool divide every bucket exactly.
SAMPLES_QUANTUM = 2 * lengths.HOP_LENGTH


def frames_needed(num_samples):
  """Mel frames a clip of `num_samples` samples must carry: 2T + 1 (at most 3000), see above."""
  needed = 2 * lengths.encoder_frames(num_samples) + 1
  if isinstance(needed, int):
    return min(needed, lengths.N_FRAMES)
  import numpy as np  # pylint: disable=g-import-not-at-top
  return np.minimum(needed, lengths.N_FRAMES)


def bucket_samples(seconds: Iterable[float], what: str = "audio_buckets") -> Tuple[int, ...]:
  """Seconds -> bucket lengths in samples; ValueError naming `what` unless they are increasing,
  multiples of 20 ms (SAMPLES_QUANTUM samples) and end with the 30 s window."""
  seconds = tuple(float(s) for s in seconds)
  samples = tuple(int(round(s * lengths.SAMPLE_RATE)) for s in seconds)
  if not samples:
    raise ValueError(f"{what}: expected at least one bucket (seconds), got {seconds}")
  for s, n in zip(seconds, samples):
    if n <= 0 or n % SAMPLES_QUANTUM or abs(n - s * lengths.SAMPLE_RATE) > 1e-6:
      raise ValueError(f"{what}: every bucket must be a positive multiple of "
                       f"{1000 * SAMPLES_QUANTUM / lengths.SAMPLE_RATE:g} ms, got {s:g} s")
  if list(samples) != sorted(set(samples)):
    raise ValueError(f"{what}: buckets must be strictly increasing, got {seconds}")
  if samples[-1] != lengths.N_SAMPLES:
    raise ValueError(f"{what}: the largest bucket must be the whole {lengths.CHUNK_SECONDS} s "
                     f"window (every clip must fit one), got {seconds}")
  return samples


def audio_bucket_for(num_samples: int, buckets: Sequence[int]) -> int:
  """The smallest bucket (in samples) that holds a clip of `num_samples` samples.

  `buckets`: increasing lengths in samples (`bucket_samples(seconds)`), the last 480,000.
  A batch's bucket is the largest of its clips' buckets; an empty batch takes the smallest.
  """
  num_samples = int(num_samples)
  if num_samples <= 0:
    return int(buckets[0])
  if num_samples > lengths.N_SAMPLES:
    raise ValueError(f"a clip of {num_samples} samples is longer than the 30 s window")
  needed = frames_needed(num_samples)
  for bucket in buckets:
    if needed <= int(bucket) // lengths.HOP_LENGTH:
      return int(bucket)
  raise ValueError(f"a clip of {num_samples} samples needs {needed} mel frames, more than the "
                   f"largest audio bucket ({int(buckets[-1])} samples) holds")


def batch_bucket(clip_samples: Iterable[int], buckets: Sequence[int]) -> int:
  """The bucket of a batch: the largest of its clips' buckets (the smallest when it has none)."""
  return max((audio_bucket_for(n, buckets) for n in clip_samples if n > 0),
             default=int(buckets[0]))
