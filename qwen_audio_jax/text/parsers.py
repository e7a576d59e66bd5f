"""Generated text -> structure: plain text, timestamped words, label lists, tagged fields."""

import dataclasses
import re
from typing import Dict, List

from qwen_audio_jax.text import specials, timestamps

_ANY_SPECIAL = re.compile(r"<\|[^|<>]+\|>")


@dataclasses.dataclass(frozen=True)
class Word:
  word: str
  start: float
  end: float


def strip_specials(text: str) -> str:
  """`text` without `<|...|>` tags and with `<|endoftext|>` and what follows it cut off."""
  text = text.split(specials.ENDOFTEXT, 1)[0]
  return _ANY_SPECIAL.sub("", text).strip()


def parse_words(text: str) -> List[Word]:
  """`<|s|>word<|e|><|s|> word<|e|>...` -> words with times; ValueError if malformed."""
  text = text.split(specials.ENDOFTEXT, 1)[0]
  pieces = re.split(r"(<\|\d{1,2}\.\d{2}\|>)", text)
  words, i = [], 1
  if pieces[0].strip():
    raise ValueError(f"text before the first timestamp: {pieces[0]!r}")
  while i < len(pieces):
    if i + 2 >= len(pieces):
      raise ValueError(f"word {pieces[i + 1] if i + 1 < len(pieces) else ''!r} has no end "
                       "timestamp")
    start, word, end = pieces[i], pieces[i + 1], pieces[i + 2]
    if not word.strip():
      raise ValueError(f"empty word between {start} and {end}")
    if i + 3 < len(pieces) and pieces[i + 3].strip():
      raise ValueError(f"text between words: {pieces[i + 3]!r}")
    words.append(Word(word.strip(), timestamps.parse_timestamp(start),
                      timestamps.parse_timestamp(end)))
    i += 4
  return words


def split_on(text: str, delimiter: str = "<|delim|>") -> List[str]:
  """Non-empty, stripped parts of `text` between delimiters."""
  return [part.strip() for part in text.split(delimiter) if part.strip()]


def tagged_fields(text: str, tags: List[str]) -> Dict[str, str]:
  """{'tag': text up to the next of `tags`} for each tag present (e.g. SLU's scenario/action)."""
  text = text.split(specials.ENDOFTEXT, 1)[0]
  pattern = "(" + "|".join(re.escape(t) for t in tags) + ")"
  parts = re.split(pattern, text)
  out = {}
  for i in range(1, len(parts), 2):
    out[parts[i]] = parts[i + 1]
  return out
