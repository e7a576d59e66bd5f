"""Times <-> timestamp tokens (`<|0.00|>` ... `<|30.00|>`, 0.01 s apart).

Quantisation rounds to the nearest hundredth (halves away from zero, on the decimal value, so
1.005 s -> 1.01 s as a person would write it), then clamps to [0, limit] where the limit is the
clip's duration (itself at most 30 s).
"""

import decimal
import re
from typing import Optional

from qwen_audio_jax.text import specials

MAX_SECONDS = (specials.TIMESTAMP_STEPS - 1) * specials.TIMESTAMP_RESOLUTION  # 30.00
TIMESTAMP_PATTERN = re.compile(r"<\|(\d{1,2})\.(\d{2})\|>")


def to_centiseconds(seconds: float, limit: Optional[float] = None) -> int:
  """`seconds` as hundredths of a second, rounded half away from zero and clamped."""
  if seconds != seconds:  # NaN
    raise ValueError("timestamp is NaN")
  hundredths = int(decimal.Decimal(repr(float(seconds))).scaleb(2).quantize(
      decimal.Decimal(1), rounding=decimal.ROUND_HALF_UP))
  top = MAX_SECONDS if limit is None else min(MAX_SECONDS, limit)
  top_hundredths = int(decimal.Decimal(repr(float(top))).scaleb(2).to_integral_value(
      rounding=decimal.ROUND_FLOOR))
  return max(0, min(hundredths, top_hundredths))


def format_timestamp(seconds: float, limit: Optional[float] = None) -> str:
  """The timestamp token of `seconds` (quantised and clamped as above)."""
  return specials.timestamp_token(to_centiseconds(seconds, limit))


def parse_timestamp(token: str) -> float:
  """Seconds of a timestamp token; ValueError for anything else."""
  match = TIMESTAMP_PATTERN.fullmatch(token)
  if not match or int(match.group(1)) * 100 + int(match.group(2)) > 3000:
    raise ValueError(f"not a timestamp token: {token!r}")
  return int(match.group(1)) + int(match.group(2)) / 100
