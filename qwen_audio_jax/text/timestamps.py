"""Times <-> timestamp tokens (`<|0.00|>` ... `<|30.00|>`, 0.01 s apart).

Quantisation rounds to the nearest hundredth, halves up, on the decimal value of the float as
written (so 1.005 s -> `<|1.01|>`, as a person reading the label would expect, though the binary
float 1.005 lies just below 1.005), then clamps to [0, limit], where the limit is the clip's
duration (rounded down to a hundredth) and never more than 30 s.
"""

import decimal
import math
import re
from typing import Optional

from qwen_audio_jax.text import specials

MAX_CENTISECONDS = specials.TIMESTAMP_STEPS - 1  # 3000: <|30.00|>
MAX_SECONDS = MAX_CENTISECONDS * specials.TIMESTAMP_RESOLUTION
TIMESTAMP_PATTERN = re.compile(r"<\|(\d{1,2})\.(\d{2})\|>")


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


def format_timestamp(seconds: float, limit: Optional[float] = None) -> str:
  """The timestamp token of `seconds` (quantised and clamped as above)."""
  return specials.timestamp_token(to_centiseconds(seconds, limit))


def parse_timestamp(token: str) -> float:
  """Seconds of a timestamp token; ValueError for anything else."""
  match = TIMESTAMP_PATTERN.fullmatch(token)
  if not match or int(match.group(1)) * 100 + int(match.group(2)) > MAX_CENTISECONDS:
    raise ValueError(f"not a timestamp token: {token!r}")
  return int(match.group(1)) + int(match.group(2)) / 100
