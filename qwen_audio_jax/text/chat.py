"""Stage-2 ChatML dialogues, written exactly as each model family writes them.

    <|im_start|>system
    You are a helpful assistant.<|im_end|>
    <|im_start|>user
    Audio 1:<audio>a.wav</audio>
    What does the speaker say?<|im_end|>
    <|im_start|>assistant
    ...<|im_end|>

The clip labels are a property of the model family (`ChatFormat`, `format_for`):

- Qwen-Audio-Chat (`QWEN_AUDIO_CHAT`): its tokenizer's `from_list_format` writes each clip of
  one query as `Audio {n}:<audio>PATH</audio>\n`, n counting from 1 within that query, and the
  released usage calls it once per turn, so every user turn's first clip is `Audio 1:` again.
  Turns are joined by a newline (the release's `make_context`, chatml).
- Qwen2-Audio(-Instruct) (`QWEN2_AUDIO`): the chat template of transformers'
  `Qwen2AudioProcessor` writes `Audio {n}: <|audio_bos|><|AUDIO|><|audio_eos|>\n` (a space
  after the colon; here the clip span is `<audio>PATH</audio>`, which its tokenizer turns into
  those tokens), n counting across the whole dialogue, and ends every turn with a newline.

Both insert the default system prompt when the dialogue does not open with one. `<|im_start|>`,
the role, a newline and the content are tokenised separately (as `make_context` does; for the
template's one-string tokenisation this is the same wherever a content does not start with
whitespace, since the pre-tokeniser splits there anyway), and inside a content only the audio
vocabulary's specials (`<audio>`, timestamps, task tags, ...) are special, so that a message
holding the text `<|im_end|>` cannot close its turn. The loss (`target_mask`) falls on each
assistant turn's content and its closing `<|im_end|>`, nothing else.

A row is `{"task": "chat", "messages": [{"role": "system" | "user" | "assistant", "content":
str | [{"text": ...} | {"audio": path, "start"?: s, "end"?: s}]}]}`; without a leading system
message the default system prompt "You are a helpful assistant." is used. Only user messages
hold clips.
"""

import dataclasses
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from qwen_audio_jax.text import specials
from qwen_audio_jax.text.tasks import EncodedExample, audio_reference

DEFAULT_SYSTEM = "You are a helpful assistant."
ROLES = ("system", "user", "assistant")
CONTENT_SPECIALS = frozenset(specials.AUDIO_SPECIAL_TOKENS)
NO_SPECIALS: frozenset = frozenset()


@dataclasses.dataclass(frozen=True)
class ChatFormat:
  """How a model family writes clips and turns into ChatML."""
  family: str  # the model family it belongs to (QwenAudioConfig.family, tokenizer.family)
  clip_label: str  # written before each clip's span; {n} is the clip's number
  numbered_per_turn: bool  # True: each user turn numbers its clips from 1
  newline_after_last_turn: bool  # every turn, the last included, ends with a newline
  default_system: str = DEFAULT_SYSTEM


QWEN_AUDIO_CHAT = ChatFormat("qwen_audio", "Audio {n}:", numbered_per_turn=True,
                             newline_after_last_turn=False)
QWEN2_AUDIO = ChatFormat("qwen2_audio", "Audio {n}: ", numbered_per_turn=False,
                         newline_after_last_turn=True)
CHAT_FORMATS = {f.family: f for f in (QWEN_AUDIO_CHAT, QWEN2_AUDIO)}


def format_for(family_of: Any = None) -> ChatFormat:
  """The chat format of a family: given by name, or by anything with a `family` (a
  QwenAudioConfig, a tokenizer, a ChatFormat); None: Qwen-Audio-Chat's."""
  if family_of is None:
    return QWEN_AUDIO_CHAT
  if isinstance(family_of, ChatFormat):
    return family_of
  family = family_of if isinstance(family_of, str) else getattr(family_of, "family", None)
  if family not in CHAT_FORMATS:
    raise ValueError(f"no chat format for model family {family!r}; expected one of "
                     f"{sorted(CHAT_FORMATS)}")
  return CHAT_FORMATS[family]


@dataclasses.dataclass(frozen=True)
class Piece:
  """A run of dialogue text tokenised on its own."""
  text: str
  is_target: bool
  allowed_special: frozenset  # surface forms read as special tokens inside `text`


def content_text(content: Any, clip_number: int, where: str,
                 chat_format: ChatFormat = QWEN_AUDIO_CHAT) -> Tuple[str, int]:
  """A message's content as text with numbered clips, and the last clip number used."""
  if isinstance(content, str):
    return content, clip_number
  if not isinstance(content, list):
    raise ValueError(f"{where}: 'content' must be a string or a list of {{'text'}} / {{'audio'}} "
                     f"items, got {type(content).__name__}")
  text = ""
  for i, item in enumerate(content):
    if isinstance(item, Mapping) and isinstance(item.get("text"), str):
      text += item["text"]
    elif isinstance(item, Mapping) and isinstance(item.get("audio"), str) and item["audio"]:
      clip_number += 1
      label = chat_format.clip_label.format(n=clip_number)
      text += label + audio_reference(item["audio"]) + "\n"
    else:
      raise ValueError(f"{where}: content[{i}] must be {{'text': str}} or {{'audio': path}}, got "
                       f"{item!r}")
  return text, clip_number


def dialogue_pieces(messages: Sequence[Mapping[str, Any]], *, generation_prompt: bool = False,
                    chat_format: Any = None) -> List[Piece]:
  """The dialogue in ChatML as separately tokenised pieces, a system turn added when missing.

  generation_prompt: end with `<|im_start|>assistant\\n` (for generating the next answer);
  otherwise the dialogue must end with an assistant turn (for training).
  chat_format: a ChatFormat or a family (see `format_for`); default Qwen-Audio-Chat's.
  """
  chat_format = format_for(chat_format)
  if not isinstance(messages, (list, tuple)) or not messages:
    raise ValueError("field 'messages' must be a non-empty list of {role, content}")
  messages = list(messages)
  offset = 0  # messages[i] is the row's message i - offset
  if not (isinstance(messages[0], Mapping) and messages[0].get("role") == "system"):
    messages.insert(0, {"role": "system", "content": chat_format.default_system})
    offset = 1
  pieces: List[Piece] = []
  clips = 0
  for i, message in enumerate(messages):
    where = f"field 'messages'[{i - offset}]"
    if not isinstance(message, Mapping) or message.get("role") not in ROLES:
      raise ValueError(f"{where}: 'role' must be one of {list(ROLES)}, got "
                       f"{message.get('role') if isinstance(message, Mapping) else message!r}")
    role = message["role"]
    if role == "system" and i:
      raise ValueError(f"{where}: a system message may only open the dialogue")
    if i > 1 and role == messages[i - 1].get("role"):
      raise ValueError(f"{where}: two {role} messages in a row (user and assistant alternate)")
    if i == 1 and role != "user":
      raise ValueError(f"{where}: the first turn after the system prompt must be a user message")
    if chat_format.numbered_per_turn:
      clips = 0
    text, new_clips = content_text(message.get("content"), clips, where, chat_format)
    if role != "user" and new_clips != clips:
      raise ValueError(f"{where}: only user messages may hold audio")
    clips = new_clips
    target = role == "assistant"
    opening = ("\n" if i else "") + specials.IM_START
    pieces += [Piece(opening, False, frozenset({specials.IM_START})),
               Piece(role, False, NO_SPECIALS), Piece("\n", False, NO_SPECIALS),
               Piece(text, target, CONTENT_SPECIALS),
               Piece(specials.IM_END, target, frozenset({specials.IM_END}))]
  if generation_prompt:
    if messages[-1]["role"] != "user":
      raise ValueError("field 'messages': a generation prompt must end with a user turn")
    pieces += [Piece("\n" + specials.IM_START, False, frozenset({specials.IM_START})),
               Piece("assistant", False, NO_SPECIALS), Piece("\n", False, NO_SPECIALS)]
  elif messages[-1]["role"] != "assistant":
    raise ValueError("field 'messages': a training dialogue must end with an assistant turn")
  elif chat_format.newline_after_last_turn:
    pieces.append(Piece("\n", False, NO_SPECIALS))
  return pieces


def _encode(pieces: Sequence[Piece], tokenizer, num_samples: Sequence[int]) -> EncodedExample:
  ids: List[int] = []
  mask: List[bool] = []
  paths: List[str] = []
  starts: List[int] = []
  n_named = sum(p.text.count(specials.AUDIO_START) for p in pieces)
  if n_named != len(num_samples):
    raise ValueError(f"the dialogue names {n_named} clip(s) but {len(num_samples)} clip "
                     "length(s) were given")
  remaining = list(num_samples)
  for piece in pieces:
    n_clips = piece.text.count(specials.AUDIO_START)
    encoded = tokenizer.encode_with_audio(piece.text, remaining[:n_clips], piece.allowed_special)
    remaining = remaining[n_clips:]
    starts += [len(ids) + s for s in encoded.audio_starts]
    paths += encoded.audio_paths
    ids += encoded.ids
    mask += [piece.is_target] * len(encoded.ids)
  return EncodedExample(np.asarray(ids, np.int32), np.asarray(mask, bool), paths,
                        np.asarray(starts, np.int32), "chat")


def encode_dialogue(row: Mapping[str, Any], tokenizer, num_samples: Sequence[int],
                    chat_format: Any = None) -> EncodedExample:
  """A training dialogue: ids, and the loss mask on assistant turns.

  `num_samples`: the sample count (16 kHz) of each clip, in order of appearance. chat_format:
  default the tokenizer's family's (Qwen2-Audio's for its transformers tokenizer).
  """
  if not isinstance(row, Mapping):
    raise ValueError(f"a chat row must be a mapping of fields, got {type(row).__name__}")
  pieces = dialogue_pieces(row.get("messages"), chat_format=chat_format or format_for(tokenizer))
  return _encode(pieces, tokenizer, num_samples)


def encode_chat_prompt(messages: Sequence[Mapping[str, Any]], tokenizer,
                       num_samples: Sequence[int], chat_format: Any = None) -> EncodedExample:
  """The dialogue so far plus `<|im_start|>assistant\\n`, for generating the next answer."""
  pieces = dialogue_pieces(messages, generation_prompt=True,
                           chat_format=chat_format or format_for(tokenizer))
  return _encode(pieces, tokenizer, num_samples)


def dialogue_text(messages: Sequence[Mapping[str, Any]], *, generation_prompt: bool = False,
                  chat_format: Any = None) -> str:
  """The dialogue as one ChatML string (with `<audio>PATH</audio>` spans)."""
  return "".join(p.text for p in dialogue_pieces(messages, generation_prompt=generation_prompt,
                                                 chat_format=chat_format))


def response_text(ids: Sequence[int], tokenizer, stop_ids: Optional[Sequence[int]] = None
                  ) -> str:
  """A generated answer's text: decoded up to the first `<|im_end|>` or `<|endoftext|>`."""
  stops = set(stop_ids if stop_ids is not None else (tokenizer.im_end_id, tokenizer.eot_id))
  ids = [int(i) for i in np.asarray(ids).reshape(-1)]
  end = next((k for k, i in enumerate(ids) if i in stops), len(ids))
  return tokenizer.decode(ids[:end]).strip()
