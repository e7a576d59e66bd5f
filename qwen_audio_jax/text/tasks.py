"""The stage-1 multitask format: one typed spec per task family.

Every example is `<audio>PATH</audio>` + tags + (prompt text) + target + `<|endoftext|>`. The tags,
in order:

  1. transcription tag: `<|startoftranscript|>` for speech recognition and translation,
     `<|startofanalysis|>` for everything else;
  2. audio language: `<|en|>`, `<|zh|>`, ... or `<|unknown|>` when the clip has no speech;
  3. task tag: the kind of output (`<|transcribe|>`, `<|translate|>`, `<|caption|>`,
     `<|keyword|>` for labels and short attributes, `<|question|>`);
  4. text language of the output;
  5. `<|timestamps|>` or `<|notimestamps|>`;
  6. output-instruction tags: `<|itn|>` / `<|wo_itn|>`, a caption style, or the family of a
     keyword task (`<|scene|>`, `<|event|>`, `<|emotion_recognition|>`, ...).

The loss falls on the target and the closing `<|endoftext|>` only (`EncodedExample.target_mask`).

The tag sequences follow the evaluation prompts released with Qwen-Audio, so that the public
checkpoint sees the prompts it was trained on:

  asr          <|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>
  srwt         <|startoftranscript|><|en|><|transcribe|><|en|><|timestamps|>
  translation  <|startoftranscript|><|en|><|translate|><|de|><|notimestamps|><|itn|>
  caption      <|startofanalysis|><|unknown|><|caption|><|en|><|notimestamps|><|caption_clotho|>
  scene        <|startofanalysis|><|unknown|><|keyword|><|en|><|notimestamps|><|scene|>
  emotion      <|startofanalysis|><|en|><|keyword|><|en|><|notimestamps|><|emotion_recognition|>
  vocal_sound  <|startofanalysis|><|en|><|keyword|><|en|><|notimestamps|><|vocal_classification|>
  note_analysis <|startofanalysis|><|unknown|><|keyword|><|en|><|notimestamps|><|note_analysis|>
  aqa          <|startofanalysis|><|en|><|question|>QUESTION<|answer|>

Choices made where the released material is silent (kept consistent across families):
  * AQA has no text-language / timestamp tags (as released); its second tag is the language of
    the question and answer (`text_language`, default en), not of the clip. Multiple-choice
    options follow the question, each introduced by `<|choice|>`.
  * Keyword families without a released prompt (event, speaker_meta, song_meta, slu, ner) use
    the same `<|keyword|>` + family-tag pattern; music_description is a caption with the
    `<|music_description|>` instruction.
  * The text language of analysis outputs is en unless the row's `text_language` says otherwise;
    emotion and vocal_sound default their audio language to en (as the released prompts do),
    other analysis families to unknown.
  * SRWT: each word is wrapped by its start and end tokens,
    `<|0.00|>hello<|0.48|><|0.52|> world<|0.90|>`: the space that separates words (none for
    zh / ja / zh_tr) stays in front of the word, as BPE prefers. Times are rounded to 0.01 s
    (halves up) and clamped to the clip's duration and 30 s (`timestamps`); a word ending more
    than 0.05 s past the clip is refused. The released SRWT
    evaluation appends `<|0.00|>` to the prompt: `encode_prompt(..., response_prefix="<|0.00|>")`
    does the same; parse the prefix plus the generated text.
  * Several labels (sound events) are joined with `<|delim|>`, since label names themselves may
    hold commas ("Vehicle horn, car horn, honking"); note sonic qualities are joined with ", ",
    as the released note-analysis evaluation reads everything after `<|sonic|>` up to the next tag.
  * SLU target: `<|scenario|>S<|action|>A<|entities|>` then, per entity,
    `<|startofentitytype|>T<|endofentitytype|><|startofentityvalue|>V<|endofentityvalue|>`;
    NER targets are the same entity markup.

The ASR prompt in the official README spells `<|startoftranscription|>`, which is NOT a special
token of the vocabulary (the tag is `<|startoftranscript|>`): it encodes as ordinary text.
`official_asr_prompt` reproduces that prompt literally for comparisons; the task specs here use
the vocabulary's tag, like the released evaluation scripts.

A new family is one subclass of `Task` (tags, prompt text, target, parse) plus `register`.
"""

import abc
import dataclasses
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from qwen_audio_jax.text import parsers, specials, timestamps

SOT = "<|startoftranscript|>"
SOA = "<|startofanalysis|>"
LANGUAGE_NAMES = specials.LANGUAGES + (specials.UNKNOWN_LANGUAGE,)
UNSPACED_LANGUAGES = ("zh", "ja", "zh_tr")  # scripts written without spaces between words


@dataclasses.dataclass
class EncodedExample:
  """Token ids of one example and where its loss falls."""
  input_ids: np.ndarray  # int32 [S]
  target_mask: np.ndarray  # bool [S]: target tokens and the closing <|endoftext|> / <|im_end|>
  audio_paths: List[str]
  audio_starts: np.ndarray  # int32 [n_clips]: index of each clip's <audio> token
  task: str


# ------------------------------------------------------------------------------ field checks


def _str(row: Mapping[str, Any], field: str) -> str:
  value = row.get(field)
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


def _bool(row: Mapping[str, Any], field: str, default: bool) -> bool:
  value = row.get(field, default)
  if not isinstance(value, bool):
    raise ValueError(f"field {field!r} must be true or false, got {value!r}")
  return value


def _string_list(row: Mapping[str, Any], field: str) -> List[str]:
  value = row.get(field)
  if not isinstance(value, list) or not value or not all(
      isinstance(v, str) and v.strip() for v in value):
    raise ValueError(f"field {field!r} must be a non-empty list of non-empty strings, got "
                     f"{value!r}")
  return [v.strip() for v in value]


def _int_in(row: Mapping[str, Any], field: str, low: int, high: int) -> int:
  value = row.get(field)
  if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
    raise ValueError(f"field {field!r} must be an integer in [{low}, {high}], got {value!r}")
  return value


def _entities(row: Mapping[str, Any], field: str = "entities") -> List[Dict[str, str]]:
  value = row.get(field, [])
  if not isinstance(value, list):
    raise ValueError(f"field {field!r} must be a list of {{type, value}}, got {value!r}")
  for i, entity in enumerate(value):
    if not (isinstance(entity, dict) and isinstance(entity.get("type"), str)
            and entity["type"].strip() and isinstance(entity.get("value"), str)
            and entity["value"].strip()):
      raise ValueError(f"field {field!r}[{i}] must be {{'type': non-empty string, 'value': "
                       f"non-empty string}}, got {entity!r}")
  return value


def tag(name: str) -> str:
  return f"<|{name}|>"


def entity_markup(entities: Sequence[Mapping[str, str]]) -> str:
  return "".join(f"<|startofentitytype|>{e['type'].strip()}<|endofentitytype|>"
                 f"<|startofentityvalue|>{e['value'].strip()}<|endofentityvalue|>"
                 for e in entities)


def parse_entities(text: str) -> List[Dict[str, str]]:
  """Entity markup -> [{'type', 'value'}]."""
  entities = []
  for piece in text.split("<|startofentitytype|>")[1:]:
    kind, _, rest = piece.partition("<|endofentitytype|>")
    value = rest.replace("<|startofentityvalue|>", "").split("<|endofentityvalue|>")[0]
    entities.append({"type": kind.strip(), "value": value.strip()})
  return entities


# ------------------------------------------------------------------------------ the families


class Task(abc.ABC):
  """One task family: its tags, the checks of its fields, its target text and its parser."""
  name = ""
  task_tag = ""
  output_tag: Optional[str] = None  # the output instruction, when fixed for the family
  transcription = False  # <|startoftranscript|> (recognition / translation) or analysis
  speech = False  # the clip must be speech: audio_language is required and is not 'unknown'
  default_audio_language = specials.UNKNOWN_LANGUAGE

  def validate(self, row: Mapping[str, Any]) -> None:
    """Raises ValueError naming the field when the row cannot be encoded."""
    audio_reference(row.get("audio"))
    self.tags(row)
    self.prompt_text(row)
    self.target(row, None)

  def audio_language(self, row: Mapping[str, Any]) -> str:
    language = _language(row, "audio_language", None if self.speech else
                         self.default_audio_language)
    if self.speech and language == specials.UNKNOWN_LANGUAGE:
      raise ValueError(f"field 'audio_language' must name the language spoken in the clip for "
                       f"task {self.name!r}, got 'unknown'")
    return language

  def text_language(self, row: Mapping[str, Any]) -> str:
    default = self.audio_language(row) if self.speech else "en"
    language = _language(row, "text_language", default)
    if language == specials.UNKNOWN_LANGUAGE:
      raise ValueError("field 'text_language' must name the output's language, got 'unknown'")
    return language

  def timestamps(self, row: Mapping[str, Any]) -> bool:
    del row
    return False

  def output_tags(self, row: Mapping[str, Any]) -> List[str]:
    del row
    return [self.output_tag] if self.output_tag else []

  def tags(self, row: Mapping[str, Any]) -> List[str]:
    return ([SOT if self.transcription else SOA, tag(self.audio_language(row)), self.task_tag,
             tag(self.text_language(row)),
             "<|timestamps|>" if self.timestamps(row) else "<|notimestamps|>"]
            + self.output_tags(row))

  def prompt_text(self, row: Mapping[str, Any]) -> str:
    """Plain text after the tags (AQA's question); empty for most families."""
    del row
    return ""

  @abc.abstractmethod
  def target(self, row: Mapping[str, Any], clip_seconds: Optional[float]) -> str:
    """The text the model learns to produce (without `<|endoftext|>`)."""

  def parse(self, text: str) -> Dict[str, Any]:
    """Structure of a generated target (decoded with special tokens kept)."""
    return {"text": parsers.strip_specials(text)}

  def special_tokens(self) -> List[str]:
    """Tags the family always uses (checked against the vocabulary on registration)."""
    return [t for t in (SOT if self.transcription else SOA, self.task_tag, self.output_tag) if t]


class TextTarget(Task):
  """Families whose target is the row's `text`."""

  def target(self, row, clip_seconds):
    return _str(row, "text").strip()


class ASR(TextTarget):
  name, task_tag, transcription, speech = "asr", "<|transcribe|>", True, True

  def output_tags(self, row):
    return ["<|itn|>" if _bool(row, "itn", False) else "<|wo_itn|>"]


class SRWT(Task):
  """Speech recognition with word-level timestamps (`words`: [{word, start, end}])."""
  name, task_tag, transcription, speech = "srwt", "<|transcribe|>", True, True

  def timestamps(self, row):
    return True

  def target(self, row, clip_seconds):
    words = row.get("words")
    if not isinstance(words, list) or not words:
      raise ValueError(f"field 'words' must be a non-empty list of {{word, start, end}}, got "
                       f"{words!r}")
    separator = "" if self.text_language(row) in UNSPACED_LANGUAGES else " "
    pieces, previous_end = [], 0.0
    for i, word in enumerate(words):
      if not (isinstance(word, dict) and isinstance(word.get("word"), str)
              and word["word"].strip()):
        raise ValueError(f"field 'words'[{i}] must be {{'word': non-empty string, 'start': s, "
                         f"'end': s}}, got {word!r}")
      start, end = word.get("start"), word.get("end")
      if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and t == t
                 for t in (start, end)):
        raise ValueError(f"field 'words'[{i}] needs numeric 'start' and 'end' (seconds), got "
                         f"{word!r}")
      if not 0 <= start <= end:
        raise ValueError(f"field 'words'[{i}] must have 0 <= start <= end, got start {start}, "
                         f"end {end}")
      if start < previous_end - 1e-9:
        raise ValueError(f"field 'words'[{i}] starts at {start} s, before the previous word "
                         f"ends ({previous_end} s)")
      previous_end = end
      timestamps.check_within_clip(end, clip_seconds,
                                   f"field 'words'[{i}] ({word['word']!r}): end")
      pieces.append(timestamps.format_timestamp(start, clip_seconds) + (separator if i else "")
                    + word["word"].strip() + timestamps.format_timestamp(end, clip_seconds))
    return "".join(pieces)

  def parse(self, text):
    words = parsers.parse_words(text)
    return {"words": words, "text": parsers.timestamped_transcript(text)}


class Translation(TextTarget):
  """Speech translation: `text` in `text_language` (required); `itn` defaults to true."""
  name, task_tag, transcription, speech = "translation", "<|translate|>", True, True

  def text_language(self, row):
    language = _language(row, "text_language", None)
    if language == specials.UNKNOWN_LANGUAGE:
      raise ValueError("field 'text_language' must be the translation's language, got "
                       "'unknown'")
    return language

  def output_tags(self, row):
    return ["<|itn|>" if _bool(row, "itn", True) else "<|wo_itn|>"]


class Caption(TextTarget):
  name, task_tag = "caption", "<|caption|>"
  STYLES = ("audiocaps", "clotho", "plain")

  def output_tags(self, row):
    style = row.get("style", "plain")
    if style not in self.STYLES:
      raise ValueError(f"field 'style' is {style!r}, expected one of {list(self.STYLES)}")
    return [tag(f"caption_{style}")]

  def special_tokens(self):
    return [SOA, self.task_tag] + [tag(f"caption_{s}") for s in self.STYLES]


class MusicDescription(TextTarget):
  name, task_tag, output_tag = "music_description", "<|caption|>", "<|music_description|>"


class AQA(Task):
  """Audio question answering: `question`, `answer`, optional multiple-choice `choices`."""
  name, task_tag = "aqa", "<|question|>"

  def tags(self, row):
    return [SOA, tag(self.text_language(row)), self.task_tag]

  def prompt_text(self, row):
    text = _str(row, "question").strip()
    if row.get("choices") is not None:
      text += "".join("<|choice|>" + c for c in _string_list(row, "choices"))
    return text + "<|answer|>"

  def target(self, row, clip_seconds):
    answer = _str(row, "answer").strip()
    if row.get("choices") is not None and answer not in _string_list(row, "choices"):
      raise ValueError(f"field 'answer' {answer!r} is not one of field 'choices' "
                       f"{row['choices']}")
    return answer

  def parse(self, text):
    return {"answer": parsers.strip_specials(text)}

  def special_tokens(self):
    return [SOA, self.task_tag, "<|choice|>", "<|answer|>"]


class Keyword(Task):
  """Label(s) of a clip: `label` (one) or `labels` (several, joined by <|delim|>)."""
  task_tag = "<|keyword|>"

  def labels(self, row) -> List[str]:
    if "labels" in row:
      if "label" in row:
        raise ValueError("give either field 'label' or field 'labels', not both")
      return _string_list(row, "labels")
    return [_str(row, "label").strip()]

  def target(self, row, clip_seconds):
    return "<|delim|>".join(self.labels(row))

  def parse(self, text):
    return {"labels": parsers.split_on(text.split(specials.ENDOFTEXT, 1)[0])}


class SoundEvent(Keyword):
  name, output_tag = "event", "<|event|>"


class AcousticScene(Keyword):
  name, output_tag = "scene", "<|scene|>"


class SpeechEmotion(Keyword):
  name, output_tag, default_audio_language = "emotion", "<|emotion_recognition|>", "en"


class VocalSound(Keyword):
  name, output_tag, default_audio_language = "vocal_sound", "<|vocal_classification|>", "en"


class SpeakerMeta(TextTarget):
  """Speaker attributes (gender, age, ...) as text."""
  name, task_tag, output_tag = "speaker_meta", "<|keyword|>", "<|speaker_meta|>"


class SongMeta(TextTarget):
  """Song attributes (genre, singer, ...) as text."""
  name, task_tag, output_tag = "song_meta", "<|keyword|>", "<|song_meta|>"


class SpokenLanguageUnderstanding(Task):
  """Intent (`scenario`, `action`) and `entities` ([{type, value}]) of a spoken command."""
  name, task_tag, output_tag, speech = ("slu", "<|keyword|>", "<|speech_understanding|>", True)
  FIELD_TAGS = ["<|scenario|>", "<|action|>", "<|entities|>"]

  def text_language(self, row):
    return _language(row, "text_language", "en")

  def target(self, row, clip_seconds):
    return (f"<|scenario|>{_str(row, 'scenario').strip()}<|action|>"
            f"{_str(row, 'action').strip()}<|entities|>" + entity_markup(_entities(row)))

  def parse(self, text):
    fields = parsers.tagged_fields(text, self.FIELD_TAGS)
    return {"scenario": fields.get("<|scenario|>", "").strip(),
            "action": fields.get("<|action|>", "").strip(),
            "entities": parse_entities(fields.get("<|entities|>", ""))}


class NamedEntities(Task):
  """Named entities spoken in the clip (`entities`: [{type, value}], may be empty)."""
  name, task_tag, output_tag, speech = ("ner", "<|keyword|>", "<|named_entity_recognition|>",
                                        True)

  def target(self, row, clip_seconds):
    if "entities" not in row:
      raise ValueError("field 'entities' is missing: expected a list of {type, value}")
    return entity_markup(_entities(row))

  def parse(self, text):
    return {"entities": parse_entities(text)}


class NoteAnalysis(Task):
  """A played note: MIDI `pitch` and `velocity` (0-127), optional `instrument`, `sonic`."""
  name, task_tag, output_tag = "note_analysis", "<|keyword|>", "<|note_analysis|>"

  def target(self, row, clip_seconds):
    pitch = _int_in(row, "pitch", 0, 127)
    velocity = _int_in(row, "velocity", 0, 127)
    text = f"<|pitch|><|midi_pitch_{pitch}|><|velocity|><|midi_velocity_{velocity}|>"
    if row.get("instrument") is not None:
      text += "<|instrument|>" + _str(row, "instrument").strip()
    if row.get("sonic") is not None:
      text += "<|sonic|>" + ", ".join(_string_list(row, "sonic"))
    return text

  def parse(self, text):
    pitch = re.search(r"<\|midi_pitch_(\d+)\|>", text)
    velocity = re.search(r"<\|midi_velocity_(\d+)\|>", text)
    fields = parsers.tagged_fields(text, ["<|instrument|>", "<|sonic|>"])
    return {"pitch": int(pitch.group(1)) if pitch else None,
            "velocity": int(velocity.group(1)) if velocity else None,
            "instrument": fields.get("<|instrument|>", "").strip() or None,
            "sonic": parsers.split_on(fields.get("<|sonic|>", ""), ",")}


TASKS: Dict[str, Task] = {}


def register(task: Task) -> Task:
  """Adds a family to TASKS; its tags must be special tokens of the vocabulary."""
  if task.name in TASKS:
    raise ValueError(f"task {task.name!r} is already registered")
  for token in task.special_tokens():
    if token not in specials.SPECIAL_IDS:
      raise ValueError(f"task {task.name!r}: {token!r} is not a special token")
  TASKS[task.name] = task
  return task


for _task in (ASR(), SRWT(), Translation(), Caption(), MusicDescription(), AQA(), SoundEvent(),
              AcousticScene(), SpeechEmotion(), VocalSound(), SpeakerMeta(), SongMeta(),
              SpokenLanguageUnderstanding(), NamedEntities(), NoteAnalysis()):
  register(_task)


def get_task(name: str) -> Task:
  try:
    return TASKS[name]
  except (KeyError, TypeError):
    raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}") from None


# ------------------------------------------------------------------------------ encoding


def audio_reference(path: str) -> str:
  """`<audio>PATH</audio>`; ValueError for a path that would break the span."""
  if not isinstance(path, str) or not path:
    raise ValueError(f"field 'audio' must be a non-empty path, got {path!r}")
  if specials.AUDIO_END in path or specials.AUDIO_START in path:
    raise ValueError(f"field 'audio': the path {path!r} contains an <audio> tag")
  return f"{specials.AUDIO_START}{path}{specials.AUDIO_END}"


def _task_of(row: Mapping[str, Any]) -> Task:
  if not isinstance(row, Mapping):
    raise ValueError(f"a row must be a mapping of fields, got {type(row).__name__}")
  return get_task(row.get("task"))


def prompt(row: Mapping[str, Any]) -> str:
  """The prompt string of a row: its clip, tags and prompt text (no target)."""
  task = _task_of(row)
  return audio_reference(row.get("audio")) + "".join(task.tags(row)) + task.prompt_text(row)


def _check_inputs(tokenizer, task: Task, num_samples: Sequence[int]) -> None:
  if len(num_samples) != 1:
    raise ValueError(f"a multitask example has exactly one clip, got {len(num_samples)} clip "
                     "lengths")
  missing = [t for t in task.special_tokens() if not tokenizer.has_special(t)]
  if missing:
    raise ValueError(f"task {task.name!r} needs the special tokens {missing}, which this "
                     "tokenizer lacks (the multitask format needs the Qwen-Audio vocabulary)")


def encode_prompt(row: Mapping[str, Any], tokenizer, num_samples: Sequence[int],
                  response_prefix: str = "") -> EncodedExample:
  """The prompt only, for generation (every mask entry False).

  Only the fields the prompt needs are read (no target). `response_prefix` is appended (e.g.
  `<|0.00|>` for SRWT, as the released evaluation does).
  """
  task = _task_of(row)
  _check_inputs(tokenizer, task, num_samples)
  encoded = tokenizer.encode_with_audio(prompt(row) + response_prefix, num_samples)
  ids = np.asarray(encoded.ids, np.int32)
  return EncodedExample(ids, np.zeros(ids.shape, bool), encoded.audio_paths,
                        np.asarray(encoded.audio_starts, np.int32), task.name)


def encode_example(row: Mapping[str, Any], tokenizer, num_samples: Sequence[int],
                   clip_seconds: Optional[float] = None) -> EncodedExample:
  """Ids and loss mask of a training example (see the module docstring).

  `num_samples`: the clip's sample count (16 kHz), in a one-element list. `clip_seconds`: the
  clip's duration, the upper clamp of SRWT timestamps (None: 30 s).
  """
  task = _task_of(row)
  _check_inputs(tokenizer, task, num_samples)
  task.validate(row)
  encoded = tokenizer.encode_with_audio(prompt(row), num_samples)
  target = tokenizer.encode_text(task.target(row, clip_seconds)) + [tokenizer.eot_id]
  ids = np.asarray(encoded.ids + target, np.int32)
  mask = np.zeros(ids.shape, bool)
  mask[len(encoded.ids):] = True
  return EncodedExample(ids, mask, encoded.audio_paths,
                        np.asarray(encoded.audio_starts, np.int32), task.name)


def parse_output(task_name: str, text: str) -> Dict[str, Any]:
  """Structure of a generated target (text decoded with special tokens kept)."""
  return get_task(task_name).parse(text)


def parse_output_ids(task_name: str, ids: Sequence[int], tokenizer) -> Dict[str, Any]:
  """Structure of generated token ids (decoding stops at the first `<|endoftext|>`)."""
  ids = [int(i) for i in np.asarray(ids).reshape(-1)]
  if tokenizer.eot_id in ids:
    ids = ids[:ids.index(tokenizer.eot_id)]
  return parse_output(task_name, tokenizer.decode(ids))


def official_asr_prompt(path: str, language: str = "en") -> str:
  """The ASR prompt as the official Qwen-Audio README writes it, character for character.

  It spells `<|startoftranscription|>`, which is not a special token and encodes as ordinary
  text (the vocabulary's tag, used by `TASKS['asr']`, is `<|startoftranscript|>`).
  """
  if language not in specials.LANGUAGES:
    raise ValueError(f"language {language!r} is not one of {list(specials.LANGUAGES)}")
  return (f"{audio_reference(path)}<|startoftranscription|><|{language}|><|transcribe|>"
          f"<|{language}|><|notimestamps|><|wo_itn|>")
