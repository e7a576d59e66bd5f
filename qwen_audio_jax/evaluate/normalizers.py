"""Text normalisation before WER / CER, one per released evaluation it reproduces.

A normaliser turns a reference or a generated transcript (decoded with special tokens kept)
into the units the error rate counts: words, or characters for languages written without spaces.

  qwen_audio   Qwen-Audio's released ASR scoring (QwenLM/Qwen-Audio, eval_audio/evaluate_asr.py):
               every `<|...|>` tag replaced by a space, runs of whitespace collapsed, the space
               before `! , . ? ; :` removed, leading spaces stripped, lower-cased (fairseq's
               EvaluationTokenizer, tokenizer 'none', lowercase, punctuation kept), split on
               whitespace. Chinese is scored per character (spaces removed).
  qwen2_audio  Qwen2-Audio's released ASR scoring (QwenLM/Qwen2-Audio, eval_audio/
               evaluate_asr.py): the same tag and space clean-up, then the Whisper English text
               normaliser for English, the Whisper basic normaliser for every language but
               Chinese (for English both run, as in the released script), then lower-casing and
               removal of tokens made only of punctuation. The Whisper normalisers come from
               the `whisper-normalizer` package (OpenAI Whisper's own code and spelling table).
               For Chinese the released script applies the `cn_tn` text normaliser of its repo,
               which is not a published package: here Chinese gets the basic normaliser instead
               (numbers are not verbalised), so Chinese CERs under this name are not the
               released ones.

Per-character scoring: Qwen-Audio's scripts score `zh` per character; the other languages
written without spaces in the Qwen-Audio vocabulary (`ja`, `zh_tr`) are scored per character
here too (the released scripts have no such test set).
"""

import re
import unicodedata
from typing import Callable, Dict, List

CHARACTER_LANGUAGES = ("zh", "ja", "zh_tr")
_TAG = re.compile(r"<\|.*?\|>")
_SPACE_BEFORE_PUNCTUATION = re.compile(r" ?([!,.?;:])")
_WHITESPACE = re.compile(r"\s+")


def remove_special_tokens(text: str, language: str) -> str:
  """The released scripts' clean-up: tags -> space, spaces collapsed, none before punctuation
  (`! , . ? ; :`), leading spaces stripped; all whitespace removed for Chinese."""
  text = _TAG.sub(" ", text)
  text = _WHITESPACE.sub(" ", text)
  text = _SPACE_BEFORE_PUNCTUATION.sub(r"\1", text)
  text = text.lstrip(" ")
  if language == "zh":
    text = _WHITESPACE.sub("", text)
  return text


def _drop_punctuation_tokens(text: str) -> str:
  """fairseq EvaluationTokenizer's punctuation removal: tokens whose every character is
  Unicode punctuation are dropped."""
  return " ".join(t for t in text.split() if not all(
      unicodedata.category(c).startswith("P") for c in t))


def qwen_audio(text: str, language: str) -> str:
  return remove_special_tokens(text, language).lower()


_WHISPER: Dict[str, Callable[[str], str]] = {}


def _whisper(kind: str) -> Callable[[str], str]:
  if kind not in _WHISPER:
    try:
      from whisper_normalizer.basic import BasicTextNormalizer  # pylint: disable=g-import-not-at-top
      from whisper_normalizer.english import EnglishTextNormalizer  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError("normalizer 'qwen2_audio' needs the Whisper text normalisers: pip install "
                        "whisper-normalizer (or pip install -e '.[eval]')") from e
    _WHISPER["english"] = EnglishTextNormalizer()
    _WHISPER["basic"] = BasicTextNormalizer()
  return _WHISPER[kind]


def qwen2_audio(text: str, language: str) -> str:
  text = remove_special_tokens(text, language)
  if language == "en":
    text = _whisper("english")(text)
  text = _whisper("basic")(text)  # zh included: the released cn_tn is not a package (see above)
  return _drop_punctuation_tokens(text.lower())


NORMALIZERS: Dict[str, Callable[[str, str], str]] = {
    "qwen_audio": qwen_audio,
    "qwen2_audio": qwen2_audio,
}


def get_normalizer(name: str) -> Callable[[str, str], str]:
  try:
    return NORMALIZERS[name]
  except KeyError:
    raise ValueError(f"unknown normalizer {name!r}; expected one of {sorted(NORMALIZERS)}"
                     ) from None


def per_character(language: str) -> bool:
  return language in CHARACTER_LANGUAGES


def scoring_units(text: str, language: str, normalizer: str = "qwen_audio") -> List[str]:
  """The words (or, for Chinese / Japanese, characters) an error rate counts in `text`."""
  words = get_normalizer(normalizer)(text, language).split()
  if per_character(language):
    return list("".join(words))
  return words
