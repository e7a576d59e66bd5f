"""The Qwen-Audio tokenizer: tiktoken BPE over `qwen.tiktoken` plus the special tokens of SPEC.

Encoding NFC-normalises the text and treats the surface form of every special token as that
token. A clip is named in text as `<audio>PATH</audio>`; `encode_with_audio` turns each such span
into `<audio>` + `[[[AUDIO:modality]]]` x n_audio + `</audio>` (n_audio + 2 positions, the
encoder's output length for the clip, from `audio.lengths`) and returns the paths alongside, so
that `decode(..., audio_paths=...)` restores the spans.

Note on the official ASR prompt: Qwen-Audio's README writes
`<|startoftranscription|>`, which is NOT a vocabulary token (the tag is `<|startoftranscript|>`):
it encodes as ordinary text, token for token, exactly as the reference tokenizer does.
`tasks.official_asr_prompt` reproduces that prompt literally.

The vocabulary file is looked up, in order: the given file, `qwen.tiktoken` inside the given
directory (a checkpoint directory), the copy shipped in the `dashscope` package.

Qwen2-Audio checkpoints ship transformers tokenizer files instead: `HFAudioTokenizer` wraps
those with the same interface (its audio span is `<|audio_bos|>` + `<|AUDIO|>` x n + `<|audio_eos|>`).
"""

import base64
import dataclasses
import importlib.util
import os
import re
import unicodedata
from typing import Dict, List, Optional, Sequence

import numpy as np
import tiktoken

from qwen_audio_jax.audio import lengths
from qwen_audio_jax.text import specials

VOCAB_FILE = "qwen.tiktoken"
SPLIT_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                 r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
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


def find_vocab_file(path: Optional[str] = None) -> str:
  """The `qwen.tiktoken` to use for `path` (a file, a directory holding it, or None)."""
  if path:
    if os.path.isdir(path):
      candidate = os.path.join(path, VOCAB_FILE)
      if os.path.isfile(candidate):
        return candidate
      raise TokenizerError(f"{path}: directory has no {VOCAB_FILE} (the Qwen-Audio checkpoint "
                           "directory holds one)")
    if os.path.isfile(path):
      return path
    raise TokenizerError(f"tokenizer file {path} does not exist")
  found = dashscope_vocab_file()
  if found:
    return found
  raise TokenizerError(
      f"no {VOCAB_FILE} given and none found: pass the Qwen-Audio checkpoint directory (it holds "
      f"{VOCAB_FILE}) or the file itself, or `pip install dashscope`, which ships a copy")


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


class QwenAudioTokenizer:
  """Text <-> ids for Qwen-Audio, with `<audio>PATH</audio>` spans sized to their clips."""

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
  def load(cls, path: Optional[str] = None) -> "QwenAudioTokenizer":
    """The tokenizer of `path` (file or checkpoint directory; None: dashscope's copy), cached."""
    vocab_file = os.path.realpath(find_vocab_file(path))
    if vocab_file not in cls._cache:
      cls._cache[vocab_file] = cls(vocab_file)
    return cls._cache[vocab_file]

  def __getstate__(self):  # grain workers re-read the file instead of pickling the BPE tables
    return {"vocab_file": self.vocab_file}

  def __setstate__(self, state):
    self.__init__(state["vocab_file"])

  # ---------------------------------------------------------------- lookup

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
    return self.encoding.decode_single_token_bytes(token_id)

  # ---------------------------------------------------------------- encoding

  def encode_text(self, text: str) -> List[int]:
    """Ids of plain text (NFC-normalised; special-token surface forms become those tokens)."""
    return self.encoding.encode(unicodedata.normalize("NFC", text), allowed_special="all")

  def encode_with_audio(self, text: str, audio_num_samples: Sequence[int] = ()) -> Encoded:
    """Ids of `text` with its i-th `<audio>PATH</audio>` span sized for `audio_num_samples[i]`."""
    spans = list(AUDIO_SPAN.finditer(text))
    if len(spans) != len(audio_num_samples):
      raise TokenizerError(f"the text names {len(spans)} clip(s) in <audio>...</audio> spans but "
                           f"{len(audio_num_samples)} clip length(s) were given")
    ids, paths, starts, cursor = [], [], [], 0
    for span, num_samples in zip(spans, audio_num_samples):
      ids += self.encode_text(text[cursor:span.start()])
      lengths.check_num_samples(int(num_samples), f"clip {span.group(1)!r}")
      starts.append(len(ids))
      ids += ([self.audio_start_id] + [self.audio_pad_id] * lengths.audio_tokens(int(num_samples))
              + [self.audio_end_id])
      paths.append(span.group(1))
      cursor = span.end()
    ids += self.encode_text(text[cursor:])
    return Encoded(ids, paths, starts)

  def encode(self, text: str, audio_num_samples: Optional[Sequence[int]] = None) -> List[int]:
    """Ids of `text`; with `audio_num_samples`, its audio spans are expanded (see module doc)."""
    if audio_num_samples is None:
      if AUDIO_SPAN.search(text):
        raise TokenizerError("the text names clips in <audio>...</audio> spans: pass "
                             "audio_num_samples (one sample count per clip)")
      return self.encode_text(text)
    return self.encode_with_audio(text, audio_num_samples).ids

  # ---------------------------------------------------------------- decoding

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False,
             audio_paths: Optional[Sequence[str]] = None) -> str:
    """Text of `ids`.

    Each `<audio>` ... `</audio>` run becomes `<audio>PATH</audio>` with the next of
    `audio_paths` (`<audio></audio>` without paths); with skip_special_tokens, specials and
    audio spans are dropped.
    """
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    paths = list(audio_paths or [])
    pieces: List[str] = []
    buffer: List[int] = []
    i, clip = 0, 0

    def flush():
      if buffer:
        pieces.append(self.encoding.decode(buffer, errors="replace"))
        buffer.clear()

    while i < len(ids):
      token = ids[i]
      if token == self.audio_start_id:
        end = i + 1
        while end < len(ids) and ids[end] == self.audio_pad_id:
          end += 1
        flush()
        if not skip_special_tokens:
          path = paths[clip] if clip < len(paths) else ""
          closed = end < len(ids) and ids[end] == self.audio_end_id
          pieces.append(specials.AUDIO_START + path + (specials.AUDIO_END if closed else ""))
        clip += 1
        i = end + 1 if end < len(ids) and ids[end] == self.audio_end_id else end
        continue
      if token in self._special_tokens:
        flush()
        if not skip_special_tokens:
          pieces.append(self._special_tokens[token])
      elif 0 <= token < specials.NUM_BPE_RANKS:
        buffer.append(token)
      else:
        raise TokenizerError(f"token id {token} is outside the vocabulary (0 ... "
                             f"{self.vocab_size - 1})")
      i += 1
    flush()
    return "".join(pieces)


class HFAudioTokenizer:
  """A Qwen2-Audio checkpoint's transformers tokenizer behind the QwenAudioTokenizer interface.

  Qwen2-Audio marks a clip as `<|audio_bos|><|AUDIO|><|audio_eos|>`; here, as for Qwen-Audio,
  `<audio>PATH</audio>` in a prompt names a clip and becomes `<|audio_bos|>` + `<|AUDIO|>` x
  n_audio + `<|audio_eos|>`.
  """

  AUDIO_BOS, AUDIO_PAD, AUDIO_EOS = "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"

  def __init__(self, directory: str):
    try:
      from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise TokenizerError("reading a Qwen2-Audio tokenizer needs transformers "
                           "(`pip install transformers`)") from e
    self.directory = directory
    self.hf = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    vocab = self.hf.get_vocab()
    for token in (self.AUDIO_BOS, self.AUDIO_PAD, self.AUDIO_EOS, specials.ENDOFTEXT):
      if token not in vocab:
        raise TokenizerError(f"{directory}: the tokenizer has no {token} token")
    self.audio_start_id = vocab[self.AUDIO_BOS]
    self.audio_pad_id = vocab[self.AUDIO_PAD]
    self.audio_end_id = vocab[self.AUDIO_EOS]
    self.eot_id = vocab[specials.ENDOFTEXT]
    self.im_start_id = vocab.get(specials.IM_START)
    self.im_end_id = vocab.get(specials.IM_END)
    self.vocab_size = len(vocab)
    self._special_ids = set(self.hf.all_special_ids) | {
        self.audio_start_id, self.audio_pad_id, self.audio_end_id}

  @classmethod
  def load(cls, directory: str) -> "HFAudioTokenizer":
    return cls(directory)

  def special_id(self, token: str) -> int:
    token_id = self.hf.convert_tokens_to_ids(token)
    if token_id is None or token_id == self.hf.unk_token_id:
      raise KeyError(f"{token!r} is not a token of {self.directory}")
    return token_id

  def is_special(self, token_id: int) -> bool:
    return int(token_id) in self._special_ids

  def encode_text(self, text: str) -> List[int]:
    return self.hf.encode(unicodedata.normalize("NFC", text), add_special_tokens=False)

  def encode_with_audio(self, text: str, audio_num_samples: Sequence[int] = ()) -> Encoded:
    spans = list(AUDIO_SPAN.finditer(text))
    if len(spans) != len(audio_num_samples):
      raise TokenizerError(f"the text names {len(spans)} clip(s) in <audio>...</audio> spans but "
                           f"{len(audio_num_samples)} clip length(s) were given")
    ids, paths, starts, cursor = [], [], [], 0
    for span, num_samples in zip(spans, audio_num_samples):
      ids += self.encode_text(text[cursor:span.start()])
      lengths.check_num_samples(int(num_samples), f"clip {span.group(1)!r}")
      starts.append(len(ids))
      ids += ([self.audio_start_id] + [self.audio_pad_id] * lengths.audio_tokens(int(num_samples))
              + [self.audio_end_id])
      paths.append(span.group(1))
      cursor = span.end()
    ids += self.encode_text(text[cursor:])
    return Encoded(ids, paths, starts)

  def encode(self, text: str, audio_num_samples: Optional[Sequence[int]] = None) -> List[int]:
    return self.encode_with_audio(text, audio_num_samples or []).ids

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False,
             audio_paths: Optional[Sequence[str]] = None) -> str:
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    paths = list(audio_paths or [])
    pieces, start, clip, i = [], 0, 0, 0
    while i < len(ids):
      if ids[i] == self.audio_start_id:
        pieces.append(self.hf.decode(ids[start:i], skip_special_tokens=skip_special_tokens))
        end = i + 1
        while end < len(ids) and ids[end] == self.audio_pad_id:
          end += 1
        if end < len(ids) and ids[end] == self.audio_end_id:
          end += 1
        if not skip_special_tokens:
          pieces.append(specials.AUDIO_START + (paths[clip] if clip < len(paths) else "")
                        + specials.AUDIO_END)
        clip += 1
        i = start = end
        continue
      i += 1
    pieces.append(self.hf.decode(ids[start:], skip_special_tokens=skip_special_tokens))
    return "".join(pieces)


def load_tokenizer(path: Optional[str] = None):
  """Qwen-Audio's tokenizer, or a Qwen2-Audio checkpoint's transformers tokenizer.

  A directory with `qwen.tiktoken` -> QwenAudioTokenizer; a directory with transformers
  tokenizer files (tokenizer.json or vocab.json) -> HFAudioTokenizer; a file or None ->
  QwenAudioTokenizer.
  """
  if path and os.path.isdir(path) and not os.path.isfile(os.path.join(path, VOCAB_FILE)):
    if any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "vocab.json")):
      return HFAudioTokenizer.load(path)
  return QwenAudioTokenizer.load(path)

