"""Stage-2 ChatML dialogues (Qwen-Audio-Chat).

    <|im_start|>system
    You are a helpful assistant.<|im_end|>
    <|im_start|>user
    Audio 1:<audio>a.wav</audio>
    What does the speaker say?<|im_end|>
    <|im_start|>assistant
    ...<|im_end|>

Messages are joined by a newline; clips are numbered `Audio 1:`, `Audio 2:` ... across the whole
dialogue, each followed by a newline, as Qwen-Audio-Chat's `from_list_format` does. The loss
falls on each assistant turn's content and its closing `<|im_end|>`, nothing else.

A message's `content` is a string or a list of items `{"text": ...}` / `{"audio": path,
"start"?: s, "end"?: s}`.
"""

from typing import Any, List, Mapping, Sequence, Tuple

import numpy as np

from qwen_audio_jax.text import specials
from qwen_audio_jax.text.tasks import EncodedExample, audio_reference

DEFAULT_SYSTEM = "You are a helpful assistant."
ROLES = ("system", "user", "assistant")


def content_text(content: Any, clip_number: int, where: str) -> Tuple[str, int]:
  """A message's content as text with numbered clips, and the next clip number."""
  if isinstance(content, str):
    return content, clip_number
  if not isinstance(content, list):
    raise ValueError(f"{where}: 'content' must be a string or a list of {{'text'}} / {{'audio'}} "
                     f"items, got {type(content).__name__}")
  text = ""
  for i, item in enumerate(content):
    if isinstance(item, dict) and isinstance(item.get("text"), str):
      text += item["text"]
    elif isinstance(item, dict) and isinstance(item.get("audio"), str) and item["audio"]:
      clip_number += 1
      text += f"Audio {clip_number}:{audio_reference(item['audio'])}\n"
    else:
      raise ValueError(f"{where}: content[{i}] must be {{'text': str}} or {{'audio': path}}, got "
                       f"{item!r}")
  return text, clip_number


def dialogue_pieces(messages: Sequence[Mapping[str, Any]], *, generation_prompt: bool = False
                    ) -> List[Tuple[str, bool]]:
  """(text, is_target) pieces of a dialogue in ChatML, a system turn added when missing."""
  if not isinstance(messages, (list, tuple)) or not messages:
    raise ValueError("field 'messages' must be a non-empty list of {role, content}")
  messages = list(messages)
  if messages[0].get("role") != "system":
    messages.insert(0, {"role": "system", "content": DEFAULT_SYSTEM})
  pieces: List[Tuple[str, bool]] = []
  clips = 0
  for i, message in enumerate(messages):
    where = f"field 'messages'[{i}]"
    if not isinstance(message, Mapping) or message.get("role") not in ROLES:
      raise ValueError(f"{where}: 'role' must be one of {list(ROLES)}")
    role = message["role"]
    if role == "system" and i:
      raise ValueError(f"{where}: a system message may only open the dialogue")
    text, new_clips = content_text(message.get("content"), clips, where)
    if role != "user" and new_clips != clips:
      raise ValueError(f"{where}: only user messages may hold audio")
    clips = new_clips
    opening = ("\n" if i else "") + f"{specials.IM_START}{role}\n"
    pieces.append((opening, False))
    pieces.append((text + specials.IM_END, role == "assistant"))
  if generation_prompt:
    pieces.append((f"\n{specials.IM_START}assistant\n", False))
  elif messages[-1]["role"] != "assistant":
    raise ValueError("field 'messages': a training dialogue must end with an assistant turn")
  return pieces


def _encode(pieces, tokenizer, num_samples, task) -> EncodedExample:
  ids: List[int] = []
  mask: List[bool] = []
  paths: List[str] = []
  starts: List[int] = []
  remaining = list(num_samples)
  for text, is_target in pieces:
    n_clips = text.count(specials.AUDIO_START)
    if n_clips > len(remaining):
      raise ValueError(f"the dialogue names more clips than the {len(num_samples)} clip "
                       "length(s) given")
    encoded = tokenizer.encode_with_audio(text, remaining[:n_clips])
    remaining = remaining[n_clips:]
    starts += [len(ids) + s for s in encoded.audio_starts]
    paths += encoded.audio_paths
    ids += encoded.ids
    mask += [is_target] * len(encoded.ids)
  if remaining:
    raise ValueError(f"{len(num_samples)} clip lengths given but the dialogue names "
                     f"{len(num_samples) - len(remaining)} clip(s)")
  return EncodedExample(np.asarray(ids, np.int32), np.asarray(mask, bool), paths,
                        np.asarray(starts, np.int32), task)


def encode_dialogue(row: Mapping[str, Any], tokenizer, num_samples: Sequence[int]
                    ) -> EncodedExample:
  """A training dialogue: ids, and the loss mask on assistant turns."""
  return _encode(dialogue_pieces(row.get("messages")), tokenizer, num_samples, "chat")


def encode_chat_prompt(messages: Sequence[Mapping[str, Any]], tokenizer,
                       num_samples: Sequence[int]) -> EncodedExample:
  """The dialogue so far plus `<|im_start|>assistant\\n`, for generating the next answer."""
  return _encode(dialogue_pieces(messages, generation_prompt=True), tokenizer, num_samples,
                 "chat")


def dialogue_text(messages: Sequence[Mapping[str, Any]], *, generation_prompt: bool = False
                  ) -> str:
  """The dialogue as one ChatML string (with `<audio>PATH</audio>` spans)."""
  return "".join(t for t, _ in dialogue_pieces(messages, generation_prompt=generation_prompt))
