"""The Qwen-Audio tokenizer: tiktoken BPE over `qwen.tiktoken` plus Qwen-Audio's special tokens.

Encoding NFC-normalises the text and treats the surface form of every special token as that
token (as the released tokenizer does). A clip is named in text as `<audio>PATH</audio>`:

  * `encode_with_audio(text, num_samples)` -> `Encoded(ids, audio_paths, audio_starts)` turns the
    i-th span into `<audio>` + `[[[AUDIO:modality]]]` x n_audio + `</audio>` (n_audio + 2
    positions, the encoder's output length for a clip of `num_samples[i]` samples, from
    `audio.lengths`) and returns the paths alongside;
  * `encode(text, audio_num_samples)` is the same, ids only;
  * `decode(ids, audio_paths=paths)` puts the paths back: each `<audio>` ... `</audio>` run
    becomes `<audio>PATH</audio>` again. The ids alone do not hold the paths (the span is pad
    tokens), so keep `Encoded.audio_paths` (or `EncodedExample.audio_paths`) to decode.

Note on the official ASR prompt: Qwen-Audio's README writes
`<|startoftranscription|>`, which is NOT a vocabulary token (the tag is `<|startoftranscript|>`):
it encodes as ordinary text, token for token, exactly as the released tokenizer does.
`tasks.official_asr_prompt` reproduces that prompt literally.

`QwenAudioTokenizer.load(path)` takes the `qwen.tiktoken` file, a checkpoint directory holding
it, or None for the copy shipped in the `dashscope` package. A checkpoint directory holding
transformers tokenizer files instead (Qwen2-Audio: tokenizer.json / vocab.json + merges.txt)
gives an `HFAudioTokenizer`, which has the same interface; its clip span is `<|audio_bos|>` +
`<|AUDIO|>` x n_audio + `<|audio_eos|>`.
"""

import abc
import base64
import dataclasses
import importlib.util
import os
import re
import unicodedata
from typing import AbstractSet, Dict, List, Optional, Sequence, Union

import numpy as np
import tiktoken

from qwen_audio_jax.audio import lengths
from qwen_audio_jax.text import specials

VOCAB_FILE = "qwen.tiktoken"
HF_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
SPLIT_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
                 r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
SPECIAL_CANDIDATE = re.compile(
    r"<\|[^<>|]{1,64}\|>|" + "|".join(re.escape(t) for t in (
        specials.AUDIO_START, specials.AUDIO_END, specials.AUDIO_PAD)))
AUDIO_SPAN = re.compile(re.escape(specials.AUDIO_START) + r"(.*?)" + re.escape(specials.AUDIO_END),
                        re.DOTALL)


class TokenizerError(ValueError):
  """A vocabulary file is missing or malformed, or a prompt's audio spans do not match its clips."""


@dataclasses.dataclass
class Encoded:
  """Token ids of a text with its clips expanded."""
  ids: List[int]
  audio_paths: List[str]
  audio_starts: List[int]  # index of each clip's opening token


def dashscope_vocab_file() -> Optional[str]:
  """`dashscope/resources/qwen.tiktoken` when the dashscope package is installed (not imported)."""
  spec = importlib.util.find_spec("dashscope")
  if spec is None or not spec.submodule_search_locations:
    return None
  for root in spec.submodule_search_locations:
    candidate = os.path.join(root, "resources", VOCAB_FILE)
    if os.path.isfile(candidate):
      return candidate
  return None


def has_transformers_tokenizer(directory: str) -> bool:
  """Whether `directory` holds transformers tokenizer files (and no `qwen.tiktoken`)."""
  return (os.path.isdir(directory) and not os.path.isfile(os.path.join(directory, VOCAB_FILE))
          and any(os.path.isfile(os.path.join(directory, f)) for f in HF_TOKENIZER_FILES))


def find_vocab_file(path: Optional[str] = None) -> str:
  """The `qwen.tiktoken` to use for `path` (a file, a directory holding it, or None)."""
  if path:
    if os.path.isdir(path):
      candidate = os.path.join(path, VOCAB_FILE)
      if os.path.isfile(candidate):
        return candidate
      raise TokenizerError(
          f"{path}: directory has neither {VOCAB_FILE} (Qwen-Audio checkpoints hold one) nor "
          f"transformers tokenizer files ({', '.join(HF_TOKENIZER_FILES)}; Qwen2-Audio)")
    if os.path.isfile(path):
      return path
    raise TokenizerError(f"tokenizer file {path} does not exist")
  found = dashscope_vocab_file()
  if found:
    return found
  raise TokenizerError(
      f"no {VOCAB_FILE} given and none found: pass the Qwen-Audio checkpoint directory (the "
      f"Qwen/Qwen-Audio and Qwen/Qwen-Audio-Chat releases hold {VOCAB_FILE}) or the file itself, "
      f"or `pip install dashscope`, which ships a copy in dashscope/resources/{VOCAB_FILE}")


def read_ranks(vocab_file: str) -> Dict[bytes, int]:
  """`qwen.tiktoken`: one 'base64-token rank' per line."""
  ranks = {}
  with open(vocab_file, "rb") as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
      except ValueError as e:
        raise TokenizerError(f"{vocab_file}:{line_number}: expected 'base64-token rank' "
                             f"({e})") from None
  if len(ranks) != specials.NUM_BPE_RANKS:
    raise TokenizerError(f"{vocab_file}: expected {specials.NUM_BPE_RANKS} ranks, got "
                         f"{len(ranks)}")
  return ranks


class AudioTextTokenizer(abc.ABC):
  """Text <-> ids with `<audio>PATH</audio>` spans sized to their clips (both vocabularies).

  Subclasses set `audio_start_id`, `audio_pad_id`, `audio_end_id`, `eot_id`, `im_start_id`,
  `im_end_id`, `vocab_size` and provide the plain-text encode / decode and the special lookup.
  """

  audio_start_id: int
  audio_pad_id: int
  audio_end_id: int
  eot_id: int
  im_start_id: Optional[int]
  im_end_id: Optional[int]
  vocab_size: int

  @abc.abstractmethod
  def encode_text(self, text: str, allowed_special: Union[str, AbstractSet[str]] = "all"
                  ) -> List[int]:
    """Ids of text without audio spans; `allowed_special`: the specials recognised in it."""

  @abc.abstractmethod
  def decode_text(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
    """Text of ids holding no audio span."""

  @abc.abstractmethod
  def special_id(self, token: str) -> int:
    """Id of a special token; KeyError naming it when the vocabulary lacks it."""

  def has_special(self, token: str) -> bool:
    try:
      self.special_id(token)
    except KeyError:
      return False
    return True

  def encode_with_audio(self, text: str, audio_num_samples: Sequence[int] = (),
                        allowed_special: Union[str, AbstractSet[str]] = "all") -> Encoded:
    """Ids of `text` with its i-th `<audio>PATH</audio>` span sized for `audio_num_samples[i]`."""
    spans = list(AUDIO_SPAN.finditer(text))
    if len(spans) != len(audio_num_samples):
      raise TokenizerError(f"the text names {len(spans)} clip(s) in <audio>...</audio> spans but "
                           f"{len(audio_num_samples)} clip length(s) were given")
    ids, paths, starts, cursor = [], [], [], 0
    for span, num_samples in zip(spans, audio_num_samples):
      ids += self.encode_text(text[cursor:span.start()], allowed_special)
      lengths.check_num_samples(int(num_samples), f"clip {span.group(1)!r}")
      starts.append(len(ids))
      ids += ([self.audio_start_id] + [self.audio_pad_id] * lengths.audio_tokens(int(num_samples))
              + [self.audio_end_id])
      paths.append(span.group(1))
      cursor = span.end()
    ids += self.encode_text(text[cursor:], allowed_special)
    return Encoded(ids, paths, starts)

  def encode(self, text: str, audio_num_samples: Optional[Sequence[int]] = None) -> List[int]:
    """Ids of `text`; its `<audio>PATH</audio>` spans need `audio_num_samples` (one per clip)."""
    if audio_num_samples is None and AUDIO_SPAN.search(text):
      raise TokenizerError("the text names clips in <audio>...</audio> spans: pass "
                           "audio_num_samples (one sample count per clip)")
    return self.encode_with_audio(text, audio_num_samples or ()).ids

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False,
             audio_paths: Optional[Sequence[str]] = None) -> str:
    """Text of `ids`.

    Each `<audio>` + pads + `</audio>` run becomes `<audio>PATH</audio>` with the next of
    `audio_paths` (`<audio></audio>` when the paths run out); with skip_special_tokens, special
    tokens and whole audio spans are dropped.
    """
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    paths = list(audio_paths or [])
    pieces: List[str] = []
    start, clip, i = 0, 0, 0
    while i < len(ids):
      if ids[i] != self.audio_start_id:
        i += 1
        continue
      pieces.append(self.decode_text(ids[start:i], skip_special_tokens))
      end = i + 1
      while end < len(ids) and ids[end] == self.audio_pad_id:
        end += 1
      closed = end < len(ids) and ids[end] == self.audio_end_id
      if not skip_special_tokens:
        path = paths[clip] if clip < len(paths) else ""
        pieces.append(specials.AUDIO_START + path + (specials.AUDIO_END if closed else ""))
      clip += 1
      i = start = end + 1 if closed else end
    pieces.append(self.decode_text(ids[start:], skip_special_tokens))
    return "".join(pieces)


class QwenAudioTokenizer(AudioTextTokenizer):
  """Qwen-Audio's tokenizer (tiktoken over `qwen.tiktoken` + the special-token table)."""

  family = "qwen_audio"  # the model family of this vocabulary (chat.format_for reads it)
  _cache: Dict[str, "QwenAudioTokenizer"] = {}

  def __init__(self, vocab_file: str):
    self.vocab_file = vocab_file
    self.special_ids = dict(specials.SPECIAL_IDS)
    self._special_tokens = {i: t for t, i in self.special_ids.items()}
    self.encoding = tiktoken.Encoding(
        name="qwen_audio", pat_str=SPLIT_PATTERN, mergeable_ranks=read_ranks(vocab_file),
        special_tokens=self.special_ids)
    self.eot_id = self.special_ids[specials.ENDOFTEXT]
    self.im_start_id = self.special_ids[specials.IM_START]
    self.im_end_id = self.special_ids[specials.IM_END]
    self.audio_pad_id = self.special_ids[specials.AUDIO_PAD]
    self.audio_start_id = self.special_ids[specials.AUDIO_START]
    self.audio_end_id = self.special_ids[specials.AUDIO_END]
    self.vocab_size = specials.NUM_BPE_RANKS + len(self.special_ids)

  @classmethod
  def load(cls, path: Optional[str] = None) -> AudioTextTokenizer:
    """The tokenizer of `path`, cached per file.

    `path`: a `qwen.tiktoken` file, a Qwen-Audio checkpoint directory holding one, a Qwen2-Audio
    checkpoint directory with transformers tokenizer files (-> `HFAudioTokenizer`), or None for
    the copy shipped in the `dashscope` package.
    """
    if path and has_transformers_tokenizer(path):
      return HFAudioTokenizer.load(path)
    vocab_file = os.path.realpath(find_vocab_file(path))
    if vocab_file not in cls._cache:
      cls._cache[vocab_file] = cls(vocab_file)
    return cls._cache[vocab_file]

  def __getstate__(self):  # worker processes re-read the file instead of pickling the BPE tables
    return {"vocab_file": self.vocab_file}

  def __setstate__(self, state):
    self.__init__(state["vocab_file"])

  def special_id(self, token: str) -> int:
    try:
      return self.special_ids[token]
    except KeyError:
      raise KeyError(f"{token!r} is not a special token of the Qwen-Audio vocabulary") from None

  def is_special(self, token_id: int) -> bool:
    return int(token_id) in self._special_tokens

  def id_to_token(self, token_id: int) -> bytes:
    """The bytes of an id (a special token's surface form for specials)."""
    token_id = int(token_id)
    if token_id in self._special_tokens:
      return self._special_tokens[token_id].encode()
    if not 0 <= token_id < specials.NUM_BPE_RANKS:
      raise TokenizerError(f"token id {token_id} is outside the vocabulary (0 ... "
                           f"{self.vocab_size - 1})")
    return self.encoding.decode_single_token_bytes(token_id)

  def encode_text(self, text: str, allowed_special: Union[str, AbstractSet[str]] = "all"
                  ) -> List[int]:
    """Ids of text (NFC-normalised); surface forms of `allowed_special` become those tokens and
    other special surface forms encode as ordinary text.

    Same ids as tiktoken's `encode(text, allowed_special, disallowed_special=())`, which splits
    at special tokens and BPE-encodes the text between them; but tiktoken looks for the 3,522
    specials with one large alternation, ~100x slower than BPE itself on short prompts. Here a
    small pattern finds candidates (`<|...|>`, `<audio>`, `</audio>`, the pad token) that are
    then looked up.
    """
    text = unicodedata.normalize("NFC", text)
    allowed = self.special_ids if allowed_special == "all" else allowed_special
    ids: List[int] = []
    cursor = search_from = 0
    while True:
      match = SPECIAL_CANDIDATE.search(text, search_from)
      if match is None:
        break
      token = match.group(0)
      if token in allowed and token in self.special_ids:
        if match.start() > cursor:
          ids += self.encoding.encode_ordinary(text[cursor:match.start()])
        ids.append(self.special_ids[token])
        cursor = search_from = match.end()
      else:  # not a special here: a special may still start inside it (`<|[[[AUDIO:...`)
        search_from = match.start() + 1
    if cursor < len(text):
      ids += self.encoding.encode_ordinary(text[cursor:])
    return ids

  def decode_text(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
    pieces: List[str] = []
    buffer: List[int] = []
    for token in ids:
      if 0 <= token < specials.NUM_BPE_RANKS:
        buffer.append(token)
        continue
      if token not in self._special_tokens:
        raise TokenizerError(f"token id {token} is outside the vocabulary (0 ... "
                             f"{self.vocab_size - 1})")
      if buffer:
        pieces.append(self.encoding.decode(buffer, errors="replace"))
        buffer = []
      if not skip_special_tokens:
        pieces.append(self._special_tokens[token])
    if buffer:
      pieces.append(self.encoding.decode(buffer, errors="replace"))
    return "".join(pieces)


class HFAudioTokenizer(AudioTextTokenizer):
  """A Qwen2-Audio checkpoint's transformers tokenizer behind the same interface.

  Qwen2-Audio marks a clip as `<|audio_bos|><|AUDIO|><|audio_eos|>`; here, as for Qwen-Audio,
  `<audio>PATH</audio>` in a prompt names a clip and becomes `<|audio_bos|>` + `<|AUDIO|>` x
  n_audio + `<|audio_eos|>`. Qwen-Audio's multitask tags are not in this vocabulary (the tasks
  refuse it); ChatML is, and `chat` writes dialogues as Qwen2-Audio's chat template does
  (`family`).
  """

  family = "qwen2_audio"  # the model family of this vocabulary (chat.format_for reads it)

  AUDIO_BOS, AUDIO_PAD, AUDIO_EOS = "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"
  _cache: Dict[str, "HFAudioTokenizer"] = {}

  def __init__(self, directory: str):
    try:
      from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise TokenizerError("reading a Qwen2-Audio tokenizer needs transformers "
                           "(`pip install transformers`)") from e
    self.directory = directory
    try:
      self.hf = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as e:
      raise TokenizerError(f"{directory}: cannot read the transformers tokenizer ({e})") from e
    self._vocab = self.hf.get_vocab()
    for token in (self.AUDIO_BOS, self.AUDIO_PAD, self.AUDIO_EOS, specials.ENDOFTEXT):
      if token not in self._vocab:
        raise TokenizerError(f"{directory}: the tokenizer has no {token} token (a Qwen2-Audio "
                             "tokenizer has <|audio_bos|>, <|AUDIO|>, <|audio_eos|>)")
    self.audio_start_id = self._vocab[self.AUDIO_BOS]
    self.audio_pad_id = self._vocab[self.AUDIO_PAD]
    self.audio_end_id = self._vocab[self.AUDIO_EOS]
    self.eot_id = self._vocab[specials.ENDOFTEXT]
    self.im_start_id = self._vocab.get(specials.IM_START)
    self.im_end_id = self._vocab.get(specials.IM_END)
    self.vocab_size = len(self.hf)
    self._added = {t.content for t in self.hf.added_tokens_decoder.values()}
    self._special_ids = {self._vocab[t] for t in self._added}

  @classmethod
  def load(cls, directory: str) -> "HFAudioTokenizer":
    """The transformers tokenizer of a local checkpoint directory, cached per directory."""
    key = os.path.realpath(directory)
    if key not in cls._cache:
      cls._cache[key] = cls(directory)
    return cls._cache[key]

  def __getstate__(self):
    return {"directory": self.directory}

  def __setstate__(self, state):
    self.__init__(state["directory"])

  def special_id(self, token: str) -> int:
    if token not in self._added:
      raise KeyError(f"{token!r} is not a special token of the tokenizer in {self.directory}")
    return self._vocab[token]

  def is_special(self, token_id: int) -> bool:
    return int(token_id) in self._special_ids

  def encode_text(self, text: str, allowed_special: Union[str, AbstractSet[str]] = "all"
                  ) -> List[int]:
    """Ids of text (NFC-normalised). transformers always splits on its added tokens, so
    surface forms outside `allowed_special` are refused rather than silently made special."""
    text = unicodedata.normalize("NFC", text)
    if allowed_special != "all":
      for token in self._added - set(allowed_special):
        if token in text:
          raise TokenizerError(f"the text holds {token!r}, which this tokenizer always reads "
                               "as a special token")
    return self.hf.encode(text, add_special_tokens=False)

  def decode_text(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
    return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens,
                          clean_up_tokenization_spaces=False)


