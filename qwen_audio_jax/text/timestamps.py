"""Times <-> timestamp tokens (`<|0.00|>` ... `<|30.00|>`, 0.01 s apart).

Quantisation rounds to the nearest hundredth, halves up, on the decimal value of the float as
written (so 1.005 s -> `<|1.01|>`, as a person reading the label would expect, though the binary
float 1.005 lies just below 1.005), then clamps to [0, limit], where the limit is the clip's
duration (rounded down to a hundredth) and never more than 30 s. Labels past the clip's end by
more than `BEYOND_CLIP_TOLERANCE_SECONDS` are refused (`check_within_clip`), not clamped.
"""

import decimal
import math
import re
from typing import Optional

from qwen_audio_jax.text import specials

MAX_CENTISECONDS = specials.TIMESTAMP_STEPS - 1  # 3000: <|30.00|>
MAX_SECONDS = MAX_CENTISECONDS * specials.TIMESTAMP_RESOLUTION
TIMESTAMP_PATTERN = re.compile(r"<\|(\d{1,2})\.(\d{2})\|>")
# How far a labelled time may lie past the end of its clip and still be clamped to it: forced
# aligners work in 10-20 ms frames, so a last word can end a frame or two after the audio does.
# Anything later means the labels belong to other audio (or the clip was cut): refused.
BEYOND_CLIP_TOLERANCE_SECONDS = 0.05


def _hundredths(seconds: float, rounding: str) -> int:
  return int(decimal.Decimal(repr(float(seconds))).scaleb(2).quantize(
      decimal.Decimal(1), rounding=rounding))


def to_centiseconds(seconds: float, limit: Optional[float] = None) -> int:
  """`seconds` as hundredths of a second, rounded (halves up) and clamped to [0, limit]."""
  for name, value in (("time", seconds), ("limit", limit)):
    if value is not None and not math.isfinite(value):
      raise ValueError(f"timestamp {name} must be a finite number of seconds, got {value}")
  top = MAX_CENTISECONDS
  if limit is not None:
    top = max(0, min(top, _hundredths(limit, decimal.ROUND_FLOOR)))
  return max(0, min(_hundredths(seconds, decimal.ROUND_HALF_UP), top))


def check_within_clip(seconds: float, clip_seconds: Optional[float], what: str) -> None:
  """ValueError naming `what` when `seconds` lies past the clip's end by more than the
  tolerance (such labels were silently clamped to the clip's last hundredth before)."""
  if clip_seconds is not None and seconds > clip_seconds + BEYOND_CLIP_TOLERANCE_SECONDS:
    raise ValueError(f"{what} {seconds} s is beyond the end of the clip ({clip_seconds:.2f} s; "
                     f"tolerance {BEYOND_CLIP_TOLERANCE_SECONDS} s)")


def format_timestamp(seconds: float, limit: Optional[float] = None) -> str:
  """The timestamp token of `seconds` (quantised and clamped as above)."""
  return specials.timestamp_token(to_centiseconds(seconds, limit))


def parse_timestamp(token: str) -> float:
  """Seconds of a timestamp token; ValueError for anything else."""
  match = TIMESTAMP_PATTERN.fullmatch(token)
  if not match or int(match.group(1)) * 100 + int(match.group(2)) > MAX_CENTISECONDS:
    raise ValueError(f"not a timestamp token: {token!r}")
  return int(match.group(1)) + int(match.group(2)) / 100
