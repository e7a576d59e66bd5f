"""Generated text -> structure: plain text, timestamped words, label lists, tagged fields.

The input is text decoded with special tokens kept; anything from `<|endoftext|>` on is ignored.
"""

import dataclasses
import re
from typing import Dict, List

from qwen_audio_jax.text import specials, timestamps

_ANY_SPECIAL = re.compile(r"<\|[^|<>]+\|>")
_TIMESTAMP_SPLIT = re.compile(r"(<\|\d{1,2}\.\d{2}\|>)")


@dataclasses.dataclass(frozen=True)
class Word:
  word: str
  start: float
  end: float


def _until_end(text: str) -> str:
  return text.split(specials.ENDOFTEXT, 1)[0]


def strip_specials(text: str) -> str:
  """`text` without `<|...|>` tags, cut at `<|endoftext|>`."""
  return _ANY_SPECIAL.sub("", _until_end(text)).strip()


def _segments(text: str):
  """(raw text, start, end) for each non-blank text between two timestamp tokens."""
  pieces = _TIMESTAMP_SPLIT.split(_until_end(text))
  if pieces[0].strip():
    raise ValueError(f"text before the first timestamp: {pieces[0]!r}")
  if len(pieces) > 1 and pieces[-1].strip():
    raise ValueError(f"word {pieces[-1].strip()!r} has no end timestamp")
  times = [timestamps.parse_timestamp(t) for t in pieces[1::2]]
  texts = pieces[2::2]
  return [(texts[k], times[k], times[k + 1]) for k in range(len(times) - 1)
          if texts[k].strip()]


def parse_words(text: str) -> List[Word]:
  """Timestamped words -> [Word]; ValueError if malformed.

  Reads both `<|s|>word<|e|><|s|> word<|e|>` (each word wrapped) and the shared-boundary form
  `<|t0|>word<|t1|> word<|t2|>` (each word between consecutive timestamps).
  """
  return [Word(raw.strip(), start, end) for raw, start, end in _segments(text)]


def timestamped_transcript(text: str) -> str:
  """The transcript of timestamped `text`: its words with their own separators (none for zh)."""
  return "".join(raw for raw, _, _ in _segments(text)).strip()


def split_on(text: str, delimiter: str = "<|delim|>") -> List[str]:
  """Non-empty, stripped parts of `text` between delimiters, specials removed."""
  return [strip_specials(part) for part in _until_end(text).split(delimiter)
          if strip_specials(part)]


def tagged_fields(text: str, tags: List[str]) -> Dict[str, str]:
  """{'tag': text up to the next of `tags`} for each tag present (e.g. SLU's scenario/action)."""
  pattern = "(" + "|".join(re.escape(t) for t in tags) + ")"
  parts = re.split(pattern, _until_end(text))
  return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}
