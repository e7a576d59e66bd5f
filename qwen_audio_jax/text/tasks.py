"""The stage-1 multitask format: one typed spec per task family.

Every example is `<audio>PATH</audio>` + tags + (prompt text) + target + `<|endoftext|>`. The tags,
in order (SPEC):

  1. transcription tag: `<|startoftranscript|>` for speech recognition and translation,
     `<|startofanalysis|>` for everything else;
  2. audio language: `<|en|>`, `<|zh|>`, ... or `<|unknown|>` when the clip has no speech;
  3. task tag (`<|transcribe|>`, `<|translate|>`, `<|caption|>`, `<|event|>`, ...);
  4. text language of the output;
  5. `<|timestamps|>` or `<|notimestamps|>`;
  6. output-instruction tags (`<|itn|>` / `<|wo_itn|>`, a caption style, ...).

The loss falls on the target and the closing `<|endoftext|>` only.

Choices made where the paper is silent (kept consistent across families):
  * analysis tasks whose output is English text (captions, labels, answers) use `<|en|>` as text
    language unless the row's `text_language` says otherwise;
  * SRWT: each word is wrapped by its start and end tokens, `<|0.00|>hello<|0.48|><|0.52|> world
    <|0.90|>` (the space that separates words stays in the word, as BPE prefers); times are
    rounded to 0.01 s (halves up) and clamped to the clip's duration;
  * several labels (sound events, sonic qualities) are joined with `<|delim|>`, since label names
    themselves may hold commas ("Vehicle horn, car horn, honking");
  * AQA: the question follows the tags as plain text, each choice is introduced by `<|choice|>`,
    and `<|answer|>` closes the prompt;
  * SLU: `<|scenario|>S<|action|>A<|entities|>` + one `<|startofentitytype|>T<|endofentitytype|>
    <|startofentityvalue|>V<|endofentityvalue|>` per entity.

A new family is one subclass of `Task` (tags, validation, target, parse) plus `register`.
"""

import dataclasses
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from qwen_audio_jax.text import parsers, specials, timestamps

SOT = "<|startoftranscript|>"
SOA = "<|startofanalysis|>"
LANGUAGE_NAMES = specials.LANGUAGES + (specials.UNKNOWN_LANGUAGE,)


@dataclasses.dataclass
class EncodedExample:
  """Token ids of one example and where its loss falls."""
  input_ids: np.ndarray  # int32 [S]
  target_mask: np.ndarray  # bool [S]: target tokens and the closing <|endoftext|> / <|im_end|>
  audio_paths: List[str]
  audio_starts: np.ndarray  # int32 [n_clips]: index of each clip's <audio> token
  task: str


# ------------------------------------------------------------------------------ field checks


def _str(row: Mapping[str, Any], field: str, *, required: bool = True) -> Optional[str]:
  value = row.get(field)
  if value is None and not required:
    return None
  if not isinstance(value, str) or not value.strip():
    raise ValueError(f"field {field!r} must be a non-empty string, got {value!r}")
  return value


def _language(row: Mapping[str, Any], field: str, default: Optional[str]) -> str:
  value = row.get(field, default)
  if value is None:
    raise ValueError(f"field {field!r} is missing: expected one of {list(LANGUAGE_NAMES)}")
  if value not in LANGUAGE_NAMES:
    raise ValueError(f"field {field!r} is {value!r}, expected one of {list(LANGUAGE_NAMES)}")
  return value


def _string_list(row: Mapping[str, Any], field: str) -> List[str]:
  value = row.get(field)
  if not isinstance(value, list) or not value or not all(
      isinstance(v, str) and v.strip() for v in value):
    raise ValueError(f"field {field!r} must be a non-empty list of non-empty strings, got "
                     f"{value!r}")
  return value


def _int_in(row: Mapping[str, Any], field: str, low: int, high: int) -> int:
  value = row.get(field)
  if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
    raise ValueError(f"field {field!r} must be an integer in [{low}, {high}], got {value!r}")
  return value


def tag(name: str) -> str:
  return f"<|{name}|>"


# ------------------------------------------------------------------------------ the families


class Task:
  """One task family: its tags, the checks of its fields, its target text and its parser."""
  name = ""
  task_tag = ""
  transcription = False  # <|startoftranscript|> (speech recognition / translation) or analysis
  speech = False  # the clip is speech: audio_language is required
  default_text_language = "en"

  def validate(self, row: Mapping[str, Any]) -> None:
    """Raises ValueError naming the field when the row cannot be encoded."""
    self.tags(row)
    self.prompt_text(row)
    self.target(row, None)

  def audio_language(self, row: Mapping[str, Any]) -> str:
    return _language(row, "audio_language", None if self.speech else specials.UNKNOWN_LANGUAGE)

  def text_language(self, row: Mapping[str, Any]) -> str:
    default = self.audio_language(row) if self.speech else self.default_text_language
    language = _language(row, "text_language", default)
    if language == specials.UNKNOWN_LANGUAGE:
      raise ValueError("field 'text_language' must name the output's language, got 'unknown'")
    return language

  def timestamps(self, row: Mapping[str, Any]) -> bool:
    del row
    return False

  def output_tags(self, row: Mapping[str, Any]) -> List[str]:
    del row
    return []

  def tags(self, row: Mapping[str, Any]) -> List[str]:
    return ([SOT if self.transcription else SOA, tag(self.audio_language(row)), self.task_tag,
             tag(self.text_language(row)),
             "<|timestamps|>" if self.timestamps(row) else "<|notimestamps|>"]
            + self.output_tags(row))

  def prompt_text(self, row: Mapping[str, Any]) -> str:
    del row
    return ""

  def target(self, row: Mapping[str, Any], clip_seconds: Optional[float]) -> str:
    raise NotImplementedError

  def parse(self, text: str) -> Dict[str, Any]:
    return {"text": parsers.strip_specials(text)}


class ASR(Task):
  name, task_tag, transcription, speech = "asr", "<|transcribe|>", True, True

  def output_tags(self, row):
    itn = row.get("itn", False)
    if not isinstance(itn, bool):
      raise ValueError(f"field 'itn' must be true or false, got {itn!r}")
    return ["<|itn|>" if itn else "<|wo_itn|>"]

  def target(self, row, clip_seconds):
    return _str(row, "text")


class SRWT(ASR):
  """Speech recognition with word-level timestamps."""
  name = "srwt"

  def timestamps(self, row):
    return True

  def validate(self, row):
    super().validate(row)
    previous_end = 0.0
    for i, word in enumerate(row["words"]):
      if word["start"] < previous_end - 1e-9:
        raise ValueError(f"field 'words'[{i}] starts at {word['start']} before the previous "
                         f"word ends ({previous_end})")
      previous_end = word["end"]

  def target(self, row, clip_seconds):
    words = row.get("words")
    if not isinstance(words, list) or not words:
      raise ValueError(f"field 'words' must be a non-empty list of {{word, start, end}}, got "
                       f"{words!r}")
    pieces = []
    for i, word in enumerate(words):
      if not isinstance(word, dict) or not isinstance(word.get("word"), str) or not word[
          "word"].strip():
        raise ValueError(f"field 'words'[{i}] must be {{'word': non-empty string, 'start': s, "
                         f"'end': s}}, got {word!r}")
      start, end = word.get("start"), word.get("end")
      if not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in (start, end)):
        raise ValueError(f"field 'words'[{i}] needs numeric 'start' and 'end', got {word!r}")
      if not 0 <= start <= end:
        raise ValueError(f"field 'words'[{i}] must have 0 <= start <= end, got {start}, {end}")
      text = word["word"].strip()
      pieces.append(timestamps.format_timestamp(start, clip_seconds) + (" " if i else "") + text
                    + timestamps.format_timestamp(end, clip_seconds))
    return "".join(pieces)

  def parse(self, text):
    words = parsers.parse_words(text)
    return {"words": words, "text": " ".join(w.word for w in words)}


class Translation(Task):
  name, task_tag, transcription, speech = "translation", "<|translate|>", True, True

  def text_language(self, row):
    language = _language(row, "text_language", None)
    if language == specials.UNKNOWN_LANGUAGE:
      raise ValueError("field 'text_language' must be the translation's language")
    return language

  def output_tags(self, row):
    return ["<|wo_itn|>"]

  def target(self, row, clip_seconds):
    return _str(row, "text")


class Caption(Task):
  name, task_tag = "caption", "<|caption|>"
  STYLES = ("audiocaps", "clotho", "plain")

  def output_tags(self, row):
    style = row.get("style", "plain")
    if style not in self.STYLES:
      raise ValueError(f"field 'style' is {style!r}, expected one of {list(self.STYLES)}")
    return [tag(f"caption_{style}")]

  def target(self, row, clip_seconds):
    return _str(row, "text")


class MusicDescription(Task):
  name, task_tag = "music_description", "<|music_description|>"

  def target(self, row, clip_seconds):
    return _str(row, "text")


class AQA(Task):
  """Audio question answering: the question follows the tags; optional multiple choice."""
  name, task_tag = "aqa", "<|question|>"

  def prompt_text(self, row):
    question = _str(row, "question")
    choices = row.get("choices")
    text = question
    if choices is not None:
      text += "".join("<|choice|>" + c for c in _string_list(row, "choices"))
    return text + "<|answer|>"

  def target(self, row, clip_seconds):
    answer = _str(row, "answer")
    if row.get("choices") is not None and answer not in row["choices"]:
      raise ValueError(f"field 'answer' {answer!r} is not one of 'choices' {row['choices']}")
    return answer

  def parse(self, text):
    return {"answer": parsers.strip_specials(text)}


class Classification(Task):
  """Label(s) of a clip: `label` (one) or `labels` (several, joined by <|delim|>)."""

  def labels(self, row) -> List[str]:
    if "labels" in row:
      if "label" in row:
        raise ValueError("give either field 'label' or field 'labels', not both")
      return [s.strip() for s in _string_list(row, "labels")]
    return [_str(row, "label").strip()]

  def target(self, row, clip_seconds):
    return "<|delim|>".join(self.labels(row))

  def parse(self, text):
    return {"labels": parsers.split_on(text.split(specials.ENDOFTEXT, 1)[0])}


class SoundEvent(Classification):
  name, task_tag = "event", "<|event|>"


class AcousticScene(Classification):
  name, task_tag = "scene", "<|scene|>"


class SpeechEmotion(Classification):
  name, task_tag, speech = "emotion", "<|emotion_recognition|>", False


class VocalSound(Classification):
  name, task_tag = "vocal_sound", "<|vocal_classification|>"


class SpokenLanguageUnderstanding(Task):
  """Intent (scenario, action) and entities of a spoken command."""
  name, task_tag, speech = "slu", "<|speech_understanding|>", True
  FIELD_TAGS = ["<|scenario|>", "<|action|>", "<|entities|>"]

  def text_language(self, row):
    return _language(row, "text_language", "en")

  def target(self, row, clip_seconds):
    scenario, action = _str(row, "scenario"), _str(row, "action")
    entities = row.get("entities", [])
    if not isinstance(entities, list):
      raise ValueError(f"field 'entities' must be a list of {{type, value}}, got {entities!r}")
    text = f"<|scenario|>{scenario}<|action|>{action}<|entities|>"
    for i, entity in enumerate(entities):
      if not (isinstance(entity, dict) and isinstance(entity.get("type"), str)
              and isinstance(entity.get("value"), str)):
        raise ValueError(f"field 'entities'[{i}] must be {{'type': str, 'value': str}}, got "
                         f"{entity!r}")
      text += (f"<|startofentitytype|>{entity['type']}<|endofentitytype|>"
               f"<|startofentityvalue|>{entity['value']}<|endofentityvalue|>")
    return text

  def parse(self, text):
    fields = parsers.tagged_fields(text, self.FIELD_TAGS)
    entities = []
    for piece in fields.get("<|entities|>", "").split("<|startofentitytype|>")[1:]:
      kind, _, rest = piece.partition("<|endofentitytype|>")
      value = rest.replace("<|startofentityvalue|>", "").split("<|endofentityvalue|>")[0]
      entities.append({"type": kind.strip(), "value": value.strip()})
    return {"scenario": fields.get("<|scenario|>", "").strip(),
            "action": fields.get("<|action|>", "").strip(), "entities": entities}


class SpeakerMeta(Task):
  """Speaker metadata (gender, age, ...) as text."""
  name, task_tag = "speaker_meta", "<|speaker_meta|>"

  def target(self, row, clip_seconds):
    return _str(row, "text")


class SongMeta(Task):
  """Song metadata (genre, singer, ...) as text."""
  name, task_tag = "song_meta", "<|song_meta|>"

  def target(self, row, clip_seconds):
    return _str(row, "text")


class NoteAnalysis(Task):
  """A played note: MIDI pitch and velocity tokens, instrument, sonic qualities."""
  name, task_tag = "note_analysis", "<|note_analysis|>"

  def target(self, row, clip_seconds):
    pitch = _int_in(row, "pitch", 0, 127)
    velocity = _int_in(row, "velocity", 0, 127)
    text = f"<|pitch|><|midi_pitch_{pitch}|><|velocity|><|midi_velocity_{velocity}|>"
    if row.get("instrument") is not None:
      text += "<|instrument|>" + _str(row, "instrument")
    if row.get("sonic") is not None:
      text += "<|sonic|>" + "<|delim|>".join(_string_list(row, "sonic"))
    return text

  def parse(self, text):
    pitch = re.search(r"<\|midi_pitch_(\d+)\|>", text)
    velocity = re.search(r"<\|midi_velocity_(\d+)\|>", text)
    fields = parsers.tagged_fields(text, ["<|instrument|>", "<|sonic|>"])
    return {"pitch": int(pitch.group(1)) if pitch else None,
            "velocity": int(velocity.group(1)) if velocity else None,
            "instrument": fields.get("<|instrument|>", "").strip() or None,
            "sonic": parsers.split_on(fields.get("<|sonic|>", ""))}


TASKS: Dict[str, Task] = {}


def register(task: Task) -> Task:
  if task.name in TASKS:
    raise ValueError(f"task {task.name!r} is already registered")
  for token in [task.task_tag]:
    if token not in specials.SPECIAL_IDS:
      raise ValueError(f"task {task.name!r}: {token!r} is not a special token")
  TASKS[task.name] = task
  return task


for _task in (ASR(), SRWT(), Translation(), Caption(), MusicDescription(), AQA(), SoundEvent(),
              AcousticScene(), SpeechEmotion(), VocalSound(), SpokenLanguageUnderstanding(),
              SpeakerMeta(), SongMeta(), NoteAnalysis()):
  register(_task)


def get_task(name: str) -> Task:
  try:
    return TASKS[name]
  except KeyError:
    raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}") from None


# ------------------------------------------------------------------------------ encoding


def audio_reference(path: str) -> str:
  if specials.AUDIO_END in path or specials.AUDIO_START in path:
    raise ValueError(f"field 'audio': the path {path!r} contains an <audio> tag")
  return f"{specials.AUDIO_START}{path}{specials.AUDIO_END}"


def prompt(row: Mapping[str, Any]) -> str:
  """The prompt string of a row: its clip, tags and prompt text (no target)."""
  task = get_task(row["task"])
  return audio_reference(row["audio"]) + "".join(task.tags(row)) + task.prompt_text(row)


def _clip_count(num_samples: Sequence[int]) -> None:
  if len(num_samples) != 1:
    raise ValueError(f"a multitask example has exactly one clip, got {len(num_samples)} clip "
                     "lengths")


def encode_prompt(row: Mapping[str, Any], tokenizer, num_samples: Sequence[int]) -> EncodedExample:
  """The prompt only (for generation): every mask entry False."""
  _clip_count(num_samples)
  encoded = tokenizer.encode_with_audio(prompt(row), num_samples)
  ids = np.asarray(encoded.ids, np.int32)
  return EncodedExample(ids, np.zeros(ids.shape, bool), encoded.audio_paths,
                        np.asarray(encoded.audio_starts, np.int32), row["task"])


def encode_example(row: Mapping[str, Any], tokenizer, num_samples: Sequence[int],
                   clip_seconds: Optional[float] = None) -> EncodedExample:
  """Ids and loss mask of a training example (see the module docstring)."""
  _clip_count(num_samples)
  task = get_task(row["task"])
  task.validate(row)
  encoded = tokenizer.encode_with_audio(prompt(row), num_samples)
  target = tokenizer.encode_text(task.target(row, clip_seconds)) + [tokenizer.eot_id]
  ids = np.asarray(encoded.ids + target, np.int32)
  mask = np.zeros(ids.shape, bool)
  mask[len(encoded.ids):] = True
  return EncodedExample(ids, mask, encoded.audio_paths,
                        np.asarray(encoded.audio_starts, np.int32), task.name)


def parse_output(task_name: str, text: str) -> Dict[str, Any]:
  """Structure of a generated target (text decoded with specials kept)."""
  return get_task(task_name).parse(text)


def official_asr_prompt(path: str, language: str = "en") -> str:
  """The ASR prompt as the official Qwen-Audio README writes it, character for character.

  It spells `<|startoftranscription|>`, which is not a special token and encodes as text.
  """
  if language not in specials.LANGUAGES:
    raise ValueError(f"language {language!r} is not one of {list(specials.LANGUAGES)}")
  return (f"{audio_reference(path)}<|startoftranscription|><|{language}|><|transcribe|>"
          f"<|{language}|><|notimestamps|><|wo_itn|>")
