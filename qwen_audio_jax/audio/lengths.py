"""Valid-length bookkeeping for one clip, in one place.

Every part of the stack that needs to know how many mel frames, encoder frames or audio tokens a
clip of L samples yields (the model's masks, the tokenizer's `<audio>` span, the data pipeline's
shapes) calls these functions, so the numbers can never drift apart. They accept Python ints,
numpy arrays and jax arrays alike (only integer floor division is used).
"""

SAMPLE_RATE = 16_000
HOP_LENGTH = 160
N_FFT = 400
CHUNK_SECONDS = 30
N_SAMPLES = SAMPLE_RATE * CHUNK_SECONDS  # 480,000 samples: every clip is padded / cut to this
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3,000 mel frames
N_ENCODER_FRAMES = (N_FRAMES - 1) // 2 + 1  # 1,500 frames after the stride-2 conv
N_AUDIO_TOKENS = (N_ENCODER_FRAMES - 2) // 2 + 1  # 750 frames after the stride-2 average pool


def mel_frames(num_samples):
  """Valid mel frames of a clip of `num_samples` samples (<= N_SAMPLES): L // 160."""
  return num_samples // HOP_LENGTH


def encoder_frames_from_mel(mel_len):
  """Frames after conv2 (kernel 3, stride 2, padding 1): (mel_len - 1) // 2 + 1."""
  return (mel_len - 1) // 2 + 1


def audio_tokens_from_encoder_frames(encoder_len):
  """Frames after the average pool (kernel 2, stride 2): (T - 2) // 2 + 1."""
  return (encoder_len - 2) // 2 + 1


def encoder_frames(num_samples):
  """Valid encoder frames (after the convs) of a clip of `num_samples` samples."""
  return encoder_frames_from_mel(mel_frames(num_samples))


def audio_tokens(num_samples):
  """Number of audio frames the LLM sees for a clip (the `<audio>` span holds this + 2)."""
  return audio_tokens_from_encoder_frames(encoder_frames(num_samples))


def audio_span(num_samples):
  """Token positions of a clip's span: audio-bos + frames + audio-eos."""
  return audio_tokens(num_samples) + 2


def check_num_samples(num_samples, what="clip"):
  """Raises ValueError unless 1 <= num_samples <= N_SAMPLES (a Python int)."""
  if not 0 < int(num_samples) <= N_SAMPLES:
    raise ValueError(
        f"{what}: expected between 1 and {N_SAMPLES} samples (30 s at 16 kHz), got {num_samples}")
  if audio_tokens(int(num_samples)) < 1:
    raise ValueError(
        f"{what}: {num_samples} samples is too short to yield one audio token "
        f"(at least {min_samples_for_one_token()} samples are needed)")


def min_samples_for_one_token():
  """Shortest clip (in samples) that yields at least one audio token."""
  n = 1
  while audio_tokens(n) < 1:
    n += 1
  return n
