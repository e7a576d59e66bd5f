"""Writes the bundled demo corpus (qwen_audio_jax/data/demo/): real synthetic speech and sounds.

    python -m qwen_audio_jax.data.make_demo_corpus [--out qwen_audio_jax/data/demo] [--seed 0]

Speech: sentences of a small grammar over a closed vocabulary (`GRAMMAR`, `WORDS`: numbers,
colours, sizes, objects, actions, places, names), spoken by espeak-ng (`apt-get install
espeak-ng`). The held-out sentences are combinations of known words that no training clip says,
and they are spoken by a voice and at a speed that no training clip uses, so the held-out split
measures recognition of the words, not memory of the clips. Each word is synthesised on its own,
its leading and trailing silence trimmed, and the words are joined with short pauses, so every
word's start and end time is known by construction (to the sample, stored rounded to 0.01 s).
Sounds: tones, beeps, sweeps, chords, noise bursts and click trains made with numpy, with a class
label, a caption and (for beeps, sweeps, chords and clicks) a question whose answer follows from
how the sound was made.

Rows (schema: qwen_audio_jax/data/README.md): `asr` and `srwt` for every speech clip, `caption`
and `event` for every sound clip, `aqa` for the sound clips that have a question, and `chat`
dialogues over both (some multi-turn, some with two clips), then extra training clips of beeps and
click trains with their counting question only. Clips are Ogg Opus at 16 kHz mono:
the corpus must stay small, and lossy coding does not move word boundaries. For a seed the
manifests and the decoded audio are reproduced exactly; the .ogg bytes are not, because every
Ogg stream gets a random serial number.
"""

import argparse
import itertools
import json
import os
import shutil
import subprocess
import tempfile
from typing import Dict, List, Sequence, Tuple

import numpy as np
import soundfile as sf
import soxr

RATE = 16_000

# The closed vocabulary, by the grammar's word classes.
WORDS = {
    "number": ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
    "colour": ("red", "green", "blue", "yellow", "black", "white", "orange", "purple", "brown",
               "grey"),
    "size": ("big", "small", "old", "new"),
    "object": ("box", "ball", "cup", "book", "chair", "key", "pen", "hat", "shoe", "lamp", "bag",
               "coin"),
    "objects": ("boxes", "balls", "cups", "books", "chairs", "keys", "pens", "hats", "shoes",
                "lamps", "bags", "coins"),
    "action": ("take", "move", "open", "find", "drop", "lift", "push", "pull", "hold", "show",
               "bring", "paint"),
    "place": ("on", "under", "near", "behind", "in", "beside"),
    "name": ("anna", "tom", "maria", "david", "lisa", "peter", "sam", "emma"),
    "verb": ("has", "sees", "wants", "needs", "likes"),
    "verbs": ("have", "see", "want", "need", "like"),
}
# Sentence templates: {class} is a word of that class; a class used twice in a template gets
# two different words ({object} ... {object2}). The other words are fixed.
GRAMMAR = (
    "{action} the {colour} {object}",
    "{action} {number} {colour} {objects}",
    "put the {size} {colour} {object} {place} the {object2}",
    "{name} {verb} {number} {size} {objects}",
    "the {colour} {object} is {place} the {object2}",
    "please {action} the {object} and the {colour} {object2}",
    "there are {number} {objects} {place} the {colour} {object2}",
    "{name} and {name2} {verbs} the {size} {objects}",
    "{action} the {size} {object} now",
)
# Training voices: espeak-ng accents x voice variants, each clip at a random pitch; the held-out
# voice and speed appear in no training clip.
TRAIN_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-029")
TRAIN_VARIANTS = ("", "+m1", "+m2", "+m3", "+m5", "+m6", "+f1", "+f2", "+f4", "+f5")
TRAIN_SPEEDS = (140, 155, 170, 195, 210)  # words per minute
TRAIN_PITCHES = (30, 70)  # espeak-ng -p range (0-99, default 50)
HELD_OUT_VOICE, HELD_OUT_SPEED, HELD_OUT_PITCH = "en-us+m4", 180, 50

# Ogg Opus at libsndfile's strongest compression (about 10 kbit/s at 16 kHz): keeps the corpus
# small; the word boundaries and the counted clicks and beeps survive it (tests/test_demo_corpus.py).
OPUS_COMPRESSION = 1.0

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven",
                8: "eight", 9: "nine", 10: "ten", 11: "eleven"}


def vocabulary() -> List[str]:
  """Every word the grammar can say, sorted."""
  fixed = {w for t in GRAMMAR for w in t.split() if not w.startswith("{")}
  return sorted(fixed | {w for words in WORDS.values() for w in words})


def make_sentence(rng: np.random.Generator) -> str:
  """One random sentence of the grammar."""
  template = GRAMMAR[rng.integers(len(GRAMMAR))]
  words = []
  used: Dict[str, set] = {}
  for token in template.split():
    if not token.startswith("{"):
      words.append(token)
      continue
    word_class = token.strip("{}").rstrip("0123456789")
    choices = [w for w in WORDS[word_class] if w not in used.get(word_class, set())]
    word = choices[rng.integers(len(choices))]
    used.setdefault(word_class, set()).add(word)
    words.append(word)
  return " ".join(words)


def split_sentences(n_train: int, n_eval: int, rng: np.random.Generator
                    ) -> Tuple[List[str], List[str]]:
  """Distinct sentences for each split, none in both; every held-out word is a training word."""
  seen = set()
  sentences = []
  while len(sentences) < n_train + n_eval:
    sentence = make_sentence(rng)
    if sentence not in seen:
      seen.add(sentence)
      sentences.append(sentence)
  held_out, train = sentences[:n_eval], sentences[n_eval:]
  known = set(itertools.chain.from_iterable(s.split() for s in train))
  unknown = sorted({w for s in held_out for w in s.split()} - known)
  if unknown:
    raise SystemExit(f"held-out words never spoken in training: {unknown}; raise "
                     "--train-speech")
  return train, held_out


# --------------------------------------------------------------------------- speech


class Speaker:
  """espeak-ng words at 16 kHz with their leading/trailing silence trimmed, cached (a word said
  by one voice at one speed and pitch is always the same samples)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "word.wav")
    self.cache: Dict[Tuple[str, str, int, int], np.ndarray] = {}

  def word(self, word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    key = (word, voice, speed, pitch)
    if key not in self.cache:
      subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w",
                      self.path, word], check=True, capture_output=True)
      wave, rate = sf.read(self.path, dtype="float32")
      wave = soxr.resample(wave, rate, RATE, quality="HQ")
      frame = 160
      energy = np.sqrt(np.convolve(wave ** 2, np.ones(frame) / frame, mode="same"))
      loud = np.flatnonzero(energy > 0.02 * energy.max())
      self.cache[key] = wave[loud[0]:loud[-1] + 1]
    return self.cache[key]

  def sentence(self, sentence: str, voice: str, speed: int, pitch: int,
               rng: np.random.Generator) -> Tuple[np.ndarray, List[Dict]]:
    """A sentence spoken word by word with pauses, and the words' times in seconds."""
    pieces = [np.zeros(int(rng.uniform(0.1, 0.25) * RATE), np.float32)]
    words, cursor = [], len(pieces[0])
    for word in sentence.split():
      audio = self.word(word, voice, speed, pitch)
      words.append({"word": word, "start": round(cursor / RATE, 2),
                    "end": round((cursor + len(audio)) / RATE, 2)})
      pause = np.zeros(int(rng.uniform(0.05, 0.15) * RATE), np.float32)
      pieces += [audio, pause]
      cursor += len(audio) + len(pause)
    pieces.append(np.zeros(int(rng.uniform(0.1, 0.2) * RATE), np.float32))
    wave = np.concatenate(pieces)
    return 0.8 * wave / np.abs(wave).max(), words


# --------------------------------------------------------------------------- sounds


def _tone(freq, seconds, rng, amplitude=0.4):
  t = np.arange(int(seconds * RATE)) / RATE
  fade = np.minimum(1, np.minimum(t, t[::-1]) / 0.01)
  return (amplitude * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi)) * fade)


def _silence(seconds):
  return np.zeros(int(seconds * RATE))


def make_sound(kind: str, rng: np.random.Generator) -> Tuple[np.ndarray, Dict]:
  """A synthetic sound of `kind` with its label, caption, a noun phrase naming it (used in the
  two-clip dialogues) and, for some kinds, a question with its answer and choices."""
  background = lambda n: rng.normal(0, 0.003, n)  # noqa: E731
  if kind == "beeps":
    count = int(rng.integers(1, 6))
    freq = float(rng.choice([600, 880, 1000, 1500]))
    parts = [_silence(rng.uniform(0.2, 0.4))]
    for _ in range(count):
      parts += [_tone(freq, rng.uniform(0.12, 0.25), rng), _silence(rng.uniform(0.15, 0.3))]
    wave = np.concatenate(parts)
    pitch = "high-pitched" if freq >= 1000 else "mid-pitched"
    times = NUMBER_WORDS[count] + (" time" if count == 1 else " times")
    info = dict(label="beep", caption=f"A {pitch} electronic beep sounds {times}.",
                phrase="a single beep" if count == 1 else "a series of beeps",
                question="How many beeps are there?", answer=NUMBER_WORDS[count],
                choices=[NUMBER_WORDS[i] for i in range(1, 6)])
  elif kind == "sweep":
    rising = bool(rng.integers(0, 2))
    seconds = rng.uniform(1.0, 2.5)
    t = np.arange(int(seconds * RATE)) / RATE
    f0, f1 = (300, 2000) if rising else (2000, 300)
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds))
    wave = 0.4 * np.sin(phase) * np.minimum(1, np.minimum(t, t[::-1]) / 0.02)
    direction = "rising" if rising else "falling"
    glide = "upward" if rising else "downward"
    info = dict(label="sweep", phrase="a tone sweep",
                caption=f"A pure tone glides steadily {glide} in pitch.",
                question="Is the tone rising or falling?", answer=direction,
                choices=["rising", "falling"])
  elif kind == "siren":
    seconds = rng.uniform(1.5, 3.0)
    t = np.arange(int(seconds * RATE)) / RATE
    rate = rng.uniform(1.5, 3.0)
    freq = 900 + 300 * np.sin(2 * np.pi * rate * t)
    wave = 0.35 * np.sin(2 * np.pi * np.cumsum(freq) / RATE)
    info = dict(label="siren", phrase="a siren", caption="A siren wails up and down repeatedly.")
  elif kind == "chord":
    root = float(rng.choice([220, 262, 330]))
    seconds = rng.uniform(1.0, 2.5)
    wave = sum(_tone(root * r, seconds, rng, 0.15) for r in (1.0, 1.26, 1.5))
    wave *= np.exp(-np.arange(len(wave)) / RATE * 1.2)
    info = dict(label="chord", phrase="a musical chord",
                caption="A soft major chord rings out and slowly fades away.",
                question="How many notes are played together?", answer="three",
                choices=["one", "two", "three", "four"])
  elif kind == "noise":
    seconds = rng.uniform(0.8, 2.0)
    n = int(seconds * RATE)
    envelope = np.minimum(1, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.05 * RATE))
    wave = rng.normal(0, 0.15, n) * envelope
    info = dict(label="noise", phrase="a burst of noise",
                caption="A burst of static hiss fades in and out.")
  elif kind == "clicks":
    count = int(rng.integers(2, 8))
    gap = rng.uniform(0.12, 0.25)
    wave = _silence(0.2 + count * gap)
    for i in range(count):
      start = int((0.1 + i * gap) * RATE)
      wave[start:start + 40] += 0.6 * np.hanning(40) * np.sign(rng.normal(size=40))
    info = dict(label="clicks", phrase="a train of clicks",
                caption="A rapid series of sharp clicks ticks like a clock.",
                question="How many clicks are there?", answer=NUMBER_WORDS[count])
  else:
    raise ValueError(f"unknown sound kind {kind!r}")
  wave = np.concatenate([_silence(0.1), wave, _silence(0.1)])
  wave = wave + background(len(wave))
  return (0.9 * wave / np.abs(wave).max()).astype(np.float32), info


SOUND_KINDS = ("beeps", "sweep", "siren", "chord", "noise", "clicks")


# --------------------------------------------------------------------------- rows


def write_clip(out_dir: str, name: str, wave: np.ndarray) -> str:
  relative = f"audio/{name}.ogg"
  sf.write(os.path.join(out_dir, relative), wave, RATE, format="OGG", subtype="OPUS",
           compression_level=OPUS_COMPRESSION)
  return relative


def chat_rows(speech: List[Dict], sounds: List[Dict], rng: np.random.Generator) -> List[Dict]:
  """Dialogues over the split's clips: single questions, follow-ups, and two-clip comparisons."""
  rows = []
  for i, clip in enumerate(speech):
    messages = [{"role": "user", "content": [{"audio": clip["audio"]},
                                             {"text": "What does the speaker say?"}]},
                {"role": "assistant", "content": clip["text"].capitalize() + "."}]
    if i % 4 == 0:
      words = clip["text"].split()
      messages += [{"role": "user", "content": "How many words is that?"},
                   {"role": "assistant", "content": f"{len(words)} words."}]
    rows.append({"id": f"chat-speech-{clip['id']}", "task": "chat", "messages": messages})
  for clip in sounds:
    rows.append({"id": f"chat-sound-{clip['id']}", "task": "chat", "messages": [
        {"role": "user", "content": [{"audio": clip["audio"]}, {"text": "Describe the sound."}]},
        {"role": "assistant", "content": clip["caption"]}]})
  for pair, i in enumerate(range(0, min(len(speech), len(sounds)) - 1, 3)):
    spoken, sound = speech[i], sounds[i]
    speech_first = pair % 2 == 0  # alternate so the answer does not follow from position
    first, second = (spoken, sound) if speech_first else (sound, spoken)
    answer = (f"The first clip contains speech; the second is {sound['phrase']}." if speech_first
              else f"The second clip contains speech; the first is {sound['phrase']}.")
    rows.append({"id": f"chat-pair-{first['id']}-{second['id']}", "task": "chat", "messages": [
        {"role": "system", "content": "You are a helpful assistant that listens carefully."},
        {"role": "user", "content": [{"audio": first["audio"]}, {"audio": second["audio"]},
                                     {"text": "Which clip contains speech?"}]},
        {"role": "assistant", "content": answer}]})
  order = rng.permutation(len(rows))
  return [rows[i] for i in order]


def speech_voices(split: str, count: int, rng: np.random.Generator
                  ) -> List[Tuple[str, int, int]]:
  """(voice, speed, pitch) of each clip: random training voices, or the held-out one."""
  if split == "eval":
    return [(HELD_OUT_VOICE, HELD_OUT_SPEED, HELD_OUT_PITCH)] * count
  return [(TRAIN_ACCENTS[rng.integers(len(TRAIN_ACCENTS))]
           + TRAIN_VARIANTS[rng.integers(len(TRAIN_VARIANTS))],
           int(TRAIN_SPEEDS[rng.integers(len(TRAIN_SPEEDS))]),
           int(TRAIN_PITCHES[rng.integers(len(TRAIN_PITCHES))])) for _ in range(count)]


def aqa_row(clip_id: str, audio: str, info: Dict) -> Dict:
  """The question row of a sound clip (`info` from make_sound, with a question)."""
  row = {"id": f"aqa-{clip_id}", "task": "aqa", "audio": audio, "audio_language": "unknown",
         "question": info["question"], "answer": info["answer"]}
  if "choices" in info:
    row["choices"] = info["choices"]
  return row


def build_split(split: str, sentences: Sequence[str], n_sounds: int, out_dir: str,
                rng: np.random.Generator, speaker: Speaker) -> List[Dict]:
  rows, speech, sounds = [], [], []
  for i, (sentence, (voice, speed, pitch)) in enumerate(
      zip(sentences, speech_voices(split, len(sentences), rng))):
    wave, words = speaker.sentence(sentence, voice, speed, pitch, rng)
    clip_id = f"{split}-speech-{i:03d}"
    audio = write_clip(out_dir, clip_id, wave)
    speech.append({"id": clip_id, "audio": audio, "text": sentence})
    rows.append({"id": f"asr-{clip_id}", "task": "asr", "audio": audio, "audio_language": "en",
                 "text": sentence, "text_language": "en", "itn": False,
                 "voice": voice, "speed": speed, "pitch": pitch})
    rows.append({"id": f"srwt-{clip_id}", "task": "srwt", "audio": audio,
                 "audio_language": "en", "text_language": "en", "words": words,
                 "text": sentence})
  for i in range(n_sounds):
    kind = SOUND_KINDS[i % len(SOUND_KINDS)]
    wave, info = make_sound(kind, rng)
    clip_id = f"{split}-sound-{i:03d}"
    audio = write_clip(out_dir, clip_id, wave)
    sounds.append({"id": clip_id, "audio": audio, "caption": info["caption"],
                   "phrase": info["phrase"]})
    rows.append({"id": f"caption-{clip_id}", "task": "caption", "audio": audio,
                 "audio_language": "unknown", "text": info["caption"], "style": "plain"})
    rows.append({"id": f"event-{clip_id}", "task": "event", "audio": audio,
                 "audio_language": "unknown", "label": info["label"]})
    if "question" in info:
      rows.append(aqa_row(clip_id, audio, info))
  rows += chat_rows(speech, sounds, rng)
  return rows


# Extra training clips of counting_rows in the bundled corpus (--train-count-sounds).
TRAIN_COUNT_SOUNDS = 1340


def counting_rows(n_clips: int, out_dir: str, rng: np.random.Generator) -> List[Dict]:
  """Extra training clips of beeps and click trains (in turn), each with its counting question
  only. Counting is the one question whose answer varies most from clip to clip, and 160 clips
  of it are too few to learn it from (with 480 of these the encoder's classifier counted 75% of
  the held-out click trains, with 1,340 all 16). They come from their own random stream, so the
  rest of the corpus is the same with or without them, and clip i is the same for any n_clips
  above i."""
  rows = []
  for i in range(n_clips):
    kind = ("beeps", "clicks")[i % 2]
    wave, info = make_sound(kind, rng)
    clip_id = f"train-count-{i:03d}"
    rows.append(aqa_row(clip_id, write_clip(out_dir, clip_id, wave), info))
  return rows


COUNT_QUESTIONS = ("How many beeps are there?", "How many clicks are there?")
COUNT_MANIFEST = "eval_count.jsonl"


def count_rows(rows: Sequence[Dict]) -> List[Dict]:
  """The counting questions among `rows` (held out in `eval_count.jsonl` for their own score)."""
  return [r for r in rows if r["task"] == "aqa" and r["question"] in COUNT_QUESTIONS]


def write_manifest(path: str, rows: Sequence[Dict]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "demo"))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--train-speech", type=int, default=640,
                      help="training speech clips (distinct sentences, random training voices)")
  parser.add_argument("--eval-speech", type=int, default=48,
                      help="held-out speech clips (new sentences, the held-out voice and speed)")
  parser.add_argument("--train-sounds", type=int, default=480)
  parser.add_argument("--eval-sounds", type=int, default=96)
  parser.add_argument("--train-count-sounds", type=int, default=TRAIN_COUNT_SOUNDS,
                      help="extra training clips with a counting question only (beeps, clicks)")
  args = parser.parse_args(argv)
  if shutil.which("espeak-ng") is None:
    raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng)")
  rng = np.random.default_rng(args.seed)
  shutil.rmtree(os.path.join(args.out, "audio"), ignore_errors=True)
  os.makedirs(os.path.join(args.out, "audio"))
  train_sentences, eval_sentences = split_sentences(args.train_speech, args.eval_speech, rng)
  splits = {"train": (train_sentences, args.train_sounds),
            "eval": (eval_sentences, args.eval_sounds)}
  with tempfile.TemporaryDirectory() as workdir:
    speaker = Speaker(workdir)
    for split, (sentences, n_sounds) in splits.items():
      rows = build_split(split, sentences, n_sounds, args.out, rng, speaker)
      if split == "train":
        rows += counting_rows(args.train_count_sounds, args.out,
                              np.random.default_rng([args.seed, 1]))
      write_manifest(os.path.join(args.out, f"{split}.jsonl"), rows)
      if split == "eval":
        write_manifest(os.path.join(args.out, COUNT_MANIFEST), count_rows(rows))
      counts = {}
      for row in rows:
        counts[row["task"]] = counts.get(row["task"], 0) + 1
      print(f"{split}: {len(rows)} rows {dict(sorted(counts.items()))}")
  print(f"vocabulary: {len(vocabulary())} words")


if __name__ == "__main__":
  main()
