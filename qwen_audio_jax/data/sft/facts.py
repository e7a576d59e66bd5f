"""What a stage-1 row says about its clip, as named facts for templates and LLM prompts.

Every family of `qwen_audio_jax.text.tasks` maps its fields onto a few plain facts (a transcript,
a caption, labels, counts, ...). Templates name facts as `{placeholders}`; a template applies to
a row only when the row has every fact the template names. `FACTS` documents them per family and
is what user templates are checked against.
"""

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence

from qwen_audio_jax.text import tasks

LANGUAGE_NAMES = {"en": "English", "zh": "Chinese", "de": "German", "es": "Spanish",
                  "ko": "Korean", "fr": "French", "ja": "Japanese", "it": "Italian",
                  "zh_tr": "Traditional Chinese"}
NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                "fourteen fifteen sixteen seventeen eighteen nineteen twenty").split()
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")

COMMON_FACTS = {
    "family": "the row's task family (asr, event, ...)",
    "has_speech": "'yes' / 'no': whether the clip holds speech (absent when unknown)",
    "language": "the spoken language's English name (speech rows)",
}
TRANSCRIPT_FACTS = {
    "transcript": "the words spoken, as in the row",
    "sentence": "the transcript as a sentence (capital first letter, final full stop)",
    "n_words": "number of words spoken",
    "first_word": "the first word spoken",
    "last_word": "the last word spoken",
}
LABEL_FACTS = {
    "label": "the (first) label",
    "labels": "every label, as a list in words ('a, b and c')",
    "n_labels": "number of labels",
    "absent_label": "a label of the same family seen elsewhere in the input but not on this row "
                    "(drawn per dialogue)",
}
ENTITY_FACTS = {
    "entities": "the named entities as 'value (type)', listed; 'none' when there are none",
    "n_entities": "number of named entities",
}
FACTS: Dict[str, Dict[str, str]] = {
    "asr": dict(TRANSCRIPT_FACTS),
    "srwt": dict(TRANSCRIPT_FACTS, start_time="when the first word starts (s, 2 decimals)",
                 end_time="when the last word ends (s)",
                 timed_transcript="every word with its start and end ('the [0.20-0.49 s] ...')"),
    "translation": {"translation": "the translation", "target_language": "its language's name"},
    "caption": {"caption": "the caption"},
    "music_description": {"description": "the description of the music"},
    "aqa": {"question": "the question", "answer": "the answer",
            "choices": "the multiple-choice options in words (rows with choices)",
            "count": "the answer as a number, when the question asks 'how many'",
            "count_noun": "what the question counts ('beeps' in 'How many beeps ...')"},
    "event": dict(LABEL_FACTS),
    "scene": dict(LABEL_FACTS),
    "emotion": dict(LABEL_FACTS),
    "vocal_sound": dict(LABEL_FACTS),
    "speaker_meta": {"speaker": "the speaker's attributes, as in the row"},
    "song_meta": {"song": "the song's attributes, as in the row"},
    "slu": dict(ENTITY_FACTS, scenario="the request's scenario", action="the requested action"),
    "ner": dict(ENTITY_FACTS),
    "note_analysis": {"pitch": "MIDI pitch", "note": "the note's name ('C4')",
                      "velocity": "MIDI velocity", "loudness": "soft / medium / loud (velocity)",
                      "instrument": "the instrument (rows with one)",
                      "sonic": "the sonic qualities in words (rows with them)"},
}
SPEECH_FAMILIES = frozenset({"asr", "srwt", "translation", "emotion", "speaker_meta", "slu",
                             "ner"})
LABEL_FAMILIES = frozenset({"event", "scene", "emotion", "vocal_sound"})
# Facts that hold counts: what an answer about them can be checked against.
COUNT_FACTS = ("n_words", "n_labels", "n_entities", "count")


def family_facts(family: str) -> Dict[str, str]:
  """Every fact a row of `family` may have (the family's own and the common ones)."""
  return dict(COMMON_FACTS, **FACTS[family])


def list_in_words(items: Sequence[str]) -> str:
  items = [str(i) for i in items]
  if len(items) <= 1:
    return "".join(items)
  return ", ".join(items[:-1]) + " and " + items[-1]


def as_sentence(text: str) -> str:
  text = text.strip()
  if not text:
    return text
  text = text[0].upper() + text[1:]
  return text if text[-1] in ".!?。！？" else text + "."


def parse_number(text: str) -> Optional[int]:
  """'4', 'four', 'Four.' -> 4; anything else None."""
  word = text.strip().strip(".!?").lower()
  if word.isdigit():
    return int(word)
  return NUMBER_WORDS.index(word) if word in NUMBER_WORDS else None


def words_of(text: str) -> List[str]:
  """Lower-cased words without punctuation (for comparing transcripts)."""
  return re.findall(r"[\w']+", text.lower())


def _labels(row: Mapping[str, Any]) -> List[str]:
  if "labels" in row:
    return [str(l).strip() for l in row["labels"]]
  return [str(row["label"]).strip()]


def _entities(row: Mapping[str, Any]) -> Dict[str, Any]:
  entities = row.get("entities") or []
  text = list_in_words([f"{e['value'].strip()} ({e['type'].strip()})" for e in entities])
  return {"entities": text or "none", "n_entities": len(entities)}


def _transcript(text: str) -> Dict[str, Any]:
  words = text.split()
  return {"transcript": text.strip(), "sentence": as_sentence(text), "n_words": len(words),
          "first_word": words[0], "last_word": words[-1]}


def row_facts(row: Mapping[str, Any]) -> Dict[str, Any]:
  """The facts of a validated stage-1 row (see FACTS)."""
  family = row["task"]
  task = tasks.get_task(family)
  facts: Dict[str, Any] = {"family": family}
  audio_language = row.get("audio_language")
  if family in SPEECH_FAMILIES or task.speech:
    facts["has_speech"] = "yes"
  elif audio_language == "unknown":
    facts["has_speech"] = "no"
  if facts.get("has_speech") == "yes" and audio_language in LANGUAGE_NAMES:
    facts["language"] = LANGUAGE_NAMES[audio_language]

  if family == "asr":
    facts.update(_transcript(row["text"]))
  elif family == "srwt":
    words = row["words"]
    text = row.get("text") or " ".join(w["word"].strip() for w in words)
    facts.update(_transcript(text))
    facts["start_time"] = f"{words[0]['start']:.2f}"
    facts["end_time"] = f"{words[-1]['end']:.2f}"
    facts["timed_transcript"] = " ".join(
        f"{w['word'].strip()} [{w['start']:.2f}-{w['end']:.2f} s]" for w in words)
  elif family == "translation":
    facts["translation"] = row["text"].strip()
    facts["target_language"] = LANGUAGE_NAMES.get(row["text_language"], row["text_language"])
  elif family == "caption":
    facts["caption"] = as_sentence(row["text"])
  elif family == "music_description":
    facts["description"] = as_sentence(row["text"])
  elif family == "aqa":
    facts["question"] = row["question"].strip()
    facts["answer"] = row["answer"].strip()
    if row.get("choices"):
      facts["choices"] = list_in_words(row["choices"]).replace(" and ", " or ")
    counted = re.match(r"\s*how many ([\w' -]+?)(?: are| is| do| does| can|\?|$)",
                       row["question"], re.IGNORECASE)
    number = parse_number(row["answer"])
    if counted and number is not None:
      facts["count"], facts["count_noun"] = number, counted.group(1).strip().lower()
  elif family in LABEL_FAMILIES:
    labels = _labels(row)
    facts.update(label=labels[0], labels=list_in_words(labels), n_labels=len(labels))
  elif family == "speaker_meta":
    facts["speaker"] = row["text"].strip()
  elif family == "song_meta":
    facts["song"] = row["text"].strip()
  elif family == "slu":
    facts.update(_entities(row), scenario=row["scenario"].strip(), action=row["action"].strip())
  elif family == "ner":
    facts.update(_entities(row))
  elif family == "note_analysis":
    pitch, velocity = row["pitch"], row["velocity"]
    facts.update(pitch=pitch, velocity=velocity,
                 note=f"{NOTE_NAMES[pitch % 12]}{pitch // 12 - 1}",
                 loudness="soft" if velocity < 50 else "medium" if velocity < 100 else "loud")
    if row.get("instrument"):
      facts["instrument"] = row["instrument"].strip()
    if row.get("sonic"):
      facts["sonic"] = list_in_words(row["sonic"])
  else:
    raise ValueError(f"task family {family!r} has no facts defined in "
                     "qwen_audio_jax.data.sft.facts (add it to FACTS and row_facts)")
  return facts


def row_labels(row: Mapping[str, Any]) -> List[str]:
  """The labels of a label-family row ([] for other families)."""
  return _labels(row) if row["task"] in LABEL_FAMILIES else []


def check_coverage() -> None:
  """Every registered task family has facts (a new family must add them)."""
  missing = sorted(set(tasks.TASKS) - set(FACTS))
  if missing:
    raise ValueError(f"task families without facts in qwen_audio_jax.data.sft.facts: {missing}")
