"""Writes the bundled demo corpus (qwen_audio_jax/data/demo/): real synthetic speech and sounds.

    python -m qwen_audio_jax.data.make_demo_corpus [--out qwen_audio_jax/data/demo] [--seed 0]

Speech: English sentences spoken by espeak-ng (several voices and speeds; `apt-get install
espeak-ng`). Each word is synthesised on its own, its leading and trailing silence trimmed, and
the words are joined with short pauses, so every word's start and end time is known by
construction (to the sample, stored rounded to 0.01 s). Sounds: tones, beeps, sweeps, chords,
noise bursts and click trains made with numpy, with a class label, a caption and (for beeps,
sweeps, chords and clicks) a question whose answer follows from how the sound was made.

Rows (schema: qwen_audio_jax/data/README.md): `asr` and `srwt` for every speech clip, `caption`
and `event` for every sound clip, `aqa` for the sound clips that have a question, and `chat`
dialogues over both (some multi-turn, some with two clips). Clips are Ogg Vorbis at 16 kHz mono:
the corpus must stay small, and lossy coding does not move word boundaries. For a seed the
manifests and the decoded audio are reproduced exactly; the .ogg bytes are not, because every
Ogg stream gets a random serial number.
"""

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from typing import Dict, List, Tuple

import numpy as np
import soundfile as sf
import soxr

RATE = 16_000
VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb+m3", "en-us+f2", "en+m7")
SPEEDS = (140, 165, 190)

SENTENCES = """the cat sat quietly on the warm red mat
please open the window before the rain starts
we walked along the river to the old stone bridge
my brother plays the piano every evening after dinner
a small green bird sang from the top of the tree
the train to the city leaves at seven in the morning
she wrote a long letter to her friend in spain
turn left at the bakery and then walk two blocks
the children built a tall castle out of sand
he forgot his umbrella at the coffee shop again
bright stars filled the sky above the quiet village
the farmer counted nine brown cows in the field
could you pass me the salt and the pepper please
our teacher read a story about a clever fox
the wind blew the yellow leaves across the road
i would like a cup of tea with a little milk
the library closes early on sunday afternoons
they painted the kitchen a pale shade of blue
a heavy truck rolled slowly up the steep hill
the museum has a famous painting of the sea
my phone battery died in the middle of the call
the baker sells fresh bread from six until noon
we need three apples two lemons and some flour
the dog chased the ball into the tall grass
snow covered the mountains early this winter
he fixed the broken chair with glue and nails
the meeting will start in about ten minutes
a gentle breeze moved the curtains in the room
the river was cold and clear after the storm
please remember to lock the door when you leave
the old clock in the hall stopped at midnight
she planted tomatoes and beans in the garden
the boat drifted slowly toward the sandy shore
this soup needs a bit more salt and pepper
the kids laughed at the funny little clown
we watched the sun set behind the hills
an owl hooted softly in the dark forest
he carried the heavy boxes up the stairs
the shop on the corner sells cheap shoes
rain fell all night on the tin roof
""".strip().splitlines()

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven",
                8: "eight", 9: "nine", 10: "ten", 11: "eleven"}


# --------------------------------------------------------------------------- speech


def speak_word(word: str, voice: str, speed: int, workdir: str) -> np.ndarray:
  """One word from espeak-ng, at 16 kHz, with its leading/trailing silence trimmed."""
  path = os.path.join(workdir, "word.wav")
  subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", path, word], check=True,
                 capture_output=True)
  wave, rate = sf.read(path, dtype="float32")
  wave = soxr.resample(wave, rate, RATE, quality="HQ")
  frame = 160
  energy = np.sqrt(np.convolve(wave ** 2, np.ones(frame) / frame, mode="same"))
  loud = np.flatnonzero(energy > 0.02 * energy.max())
  return wave[loud[0]:loud[-1] + 1]


def speech_clip(sentence: str, voice: str, speed: int, rng: np.random.Generator, workdir: str
                ) -> Tuple[np.ndarray, List[Dict]]:
  """A sentence spoken word by word with pauses, and the words' times in seconds."""
  pieces = [np.zeros(int(rng.uniform(0.15, 0.35) * RATE), np.float32)]
  words, cursor = [], len(pieces[0])
  for word in sentence.split():
    audio = speak_word(word, voice, speed, workdir)
    words.append({"word": word, "start": round(cursor / RATE, 2),
                  "end": round((cursor + len(audio)) / RATE, 2)})
    pause = np.zeros(int(rng.uniform(0.06, 0.18) * RATE), np.float32)
    pieces += [audio, pause]
    cursor += len(audio) + len(pause)
  pieces.append(np.zeros(int(rng.uniform(0.1, 0.3) * RATE), np.float32))
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
    count = int(rng.integers(4, 12))
    gap = rng.uniform(0.08, 0.2)
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
  sf.write(os.path.join(out_dir, relative), wave, RATE, format="OGG", subtype="VORBIS")
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


def build_split(split: str, sentences: List[str], n_sounds: int, out_dir: str,
                rng: np.random.Generator, workdir: str) -> List[Dict]:
  rows, speech, sounds = [], [], []
  for i, sentence in enumerate(sentences):
    voice, speed = VOICES[rng.integers(len(VOICES))], SPEEDS[rng.integers(len(SPEEDS))]
    wave, words = speech_clip(sentence, voice, speed, rng, workdir)
    clip_id = f"{split}-speech-{i:03d}"
    audio = write_clip(out_dir, clip_id, wave)
    speech.append({"id": clip_id, "audio": audio, "text": sentence})
    rows.append({"id": f"asr-{clip_id}", "task": "asr", "audio": audio, "audio_language": "en",
                 "text": sentence, "text_language": "en", "itn": False,
                 "voice": voice, "speed": speed})
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
      rows.append({"id": f"aqa-{clip_id}", "task": "aqa", "audio": audio,
                   "audio_language": "unknown", "question": info["question"],
                   "answer": info["answer"]})
      if "choices" in info:
        rows[-1]["choices"] = info["choices"]
  rows += chat_rows(speech, sounds, rng)
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "demo"))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--eval-sentences", type=int, default=8)
  parser.add_argument("--train-voices", type=int, default=2,
                      help="times each training sentence is spoken (by other voices / speeds)")
  parser.add_argument("--train-sounds", type=int, default=60)
  parser.add_argument("--eval-sounds", type=int, default=12)
  args = parser.parse_args(argv)
  if shutil.which("espeak-ng") is None:
    raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng)")
  rng = np.random.default_rng(args.seed)
  shutil.rmtree(os.path.join(args.out, "audio"), ignore_errors=True)
  os.makedirs(os.path.join(args.out, "audio"))
  sentences = list(SENTENCES)
  held_out = args.eval_sentences
  splits = {"train": (sentences[held_out:] * args.train_voices, args.train_sounds),
            "eval": (sentences[:held_out], args.eval_sounds)}
  with tempfile.TemporaryDirectory() as workdir:
    for split, (split_sentences, n_sounds) in splits.items():
      rows = build_split(split, split_sentences, n_sounds, args.out, rng, workdir)
      with open(os.path.join(args.out, f"{split}.jsonl"), "w", encoding="utf-8") as f:
        for row in rows:
          f.write(json.dumps(row, ensure_ascii=False) + "\n")
      counts = {}
      for row in rows:
        counts[row["task"]] = counts.get(row["task"], 0) + 1
      print(f"{split}: {len(rows)} rows {dict(sorted(counts.items()))}")


if __name__ == "__main__":
  main()
