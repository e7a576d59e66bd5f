"""The bundled demo corpus: complete, valid, small, and with word times that hold."""

import collections
import json
import os

import numpy as np
import pytest
import soundfile as sf

from qwen_audio_jax.audio import lengths
from qwen_audio_jax.data import manifest as manifest_lib
from qwen_audio_jax.data import make_demo_corpus
from qwen_audio_jax.data.config import DEMO_DIR

EXPECTED_COUNTS = {
    "train": {"asr": 640, "srwt": 640, "caption": 480, "event": 480, "aqa": 1660, "chat": 1280},
    "eval": {"asr": 48, "srwt": 48, "caption": 96, "event": 96, "aqa": 64, "chat": 160},
}


def rows_of(split):
  with open(os.path.join(DEMO_DIR, f"{split}.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def clips_of(row):
  if row["task"] == "chat":
    return [item["audio"] for m in row["messages"] if isinstance(m["content"], list)
            for item in m["content"] if "audio" in item]
  return [row["audio"]]


def sample_rows(task, every=6):
  """The held-out rows of `task` and every `every`-th training row (decoding all takes long)."""
  train = [r for r in rows_of("train") if r["task"] == task]
  return train[::every] + [r for r in rows_of("eval") if r["task"] == task]


@pytest.mark.parametrize("split", ["train", "eval"])
def test_manifest_is_valid_and_complete(split):
  manifest = manifest_lib.read_manifest(os.path.join(DEMO_DIR, f"{split}.jsonl"), strict=True)
  rows = rows_of(split)
  assert len(manifest) == len(rows)
  assert dict(collections.Counter(r["task"] for r in rows)) == EXPECTED_COUNTS[split]
  assert len({r["id"] for r in rows}) == len(rows)


def test_counting_rows_are_the_generators_default_count_of_its_own_stream(tmp_path):
  """The extra counting clips are what `make_demo_corpus` writes by default: as many as
  TRAIN_COUNT_SOUNDS, last in train.jsonl, the first of them drawn from their own stream."""
  counting = [r for r in rows_of("train") if r["id"].startswith("aqa-train-count-")]
  assert len(counting) == make_demo_corpus.TRAIN_COUNT_SOUNDS
  assert rows_of("train")[-len(counting):] == counting
  (tmp_path / "audio").mkdir()
  first = make_demo_corpus.counting_rows(4, str(tmp_path), np.random.default_rng([0, 1]))
  assert counting[:4] == first
  for row in first:
    regenerated, _ = sf.read(tmp_path / row["audio"])
    bundled, _ = sf.read(os.path.join(DEMO_DIR, row["audio"]))
    np.testing.assert_array_equal(regenerated, bundled)


@pytest.mark.parametrize("split", ["train", "eval"])
def test_every_clip_is_16khz_mono_and_within_30_s(split):
  for path in {p for row in rows_of(split) for p in clips_of(row)}:
    info = sf.info(os.path.join(DEMO_DIR, path))
    assert (info.samplerate, info.channels) == (lengths.SAMPLE_RATE, 1), path
    assert 0.5 < info.duration <= lengths.CHUNK_SECONDS, path


def test_splits_share_no_audio_and_the_corpus_is_small():
  train = {p for row in rows_of("train") for p in clips_of(row)}
  held_out = {p for row in rows_of("eval") for p in clips_of(row)}
  assert not train & held_out
  total = sum(os.path.getsize(os.path.join(root, f))
              for root, _, files in os.walk(DEMO_DIR) for f in files)
  assert total <= 8 * 1024 * 1024


def test_held_out_speech_is_new_sentences_of_known_words_by_a_new_voice():
  train = [r for r in rows_of("train") if r["task"] == "asr"]
  held_out = [r for r in rows_of("eval") if r["task"] == "asr"]
  assert not {r["text"] for r in train} & {r["text"] for r in held_out}
  known = {w for r in train for w in r["text"].split()}
  assert {w for r in held_out for w in r["text"].split()} <= known
  assert len(known) == len(make_demo_corpus.vocabulary())
  for key in ("voice", "speed"):
    assert not {r[key] for r in train} & {r[key] for r in held_out}, key
  assert len({r["voice"] for r in train}) >= 20  # many training voices: the words generalise


def test_word_times_hold():
  """Inside each SRWT word the signal is far louder than in the pauses between words (the
  10 kbit/s Opus coding leaks some energy into the 50-150 ms pauses: a few times louder than
  the pause on the worst clips, ~50 times on the typical one; wrong times give ~1)."""
  ratios = []
  for row in sample_rows("srwt"):
    wave, rate = sf.read(os.path.join(DEMO_DIR, row["audio"]), dtype="float32")
    words = row["words"]
    assert [w["word"] for w in words] == row["text"].split()
    ends = [0.0] + [w["end"] for w in words]
    for previous_end, word in zip(ends, words):
      assert previous_end <= word["start"] < word["end"] <= len(wave) / rate
    speech = np.concatenate([wave[int(w["start"] * rate):int(w["end"] * rate)] for w in words])
    gaps = np.concatenate([wave[int(a["end"] * rate) + 80:int(b["start"] * rate) - 80]
                           for a, b in zip(words, words[1:])])
    ratios.append(np.sqrt(np.mean(speech ** 2)) / np.sqrt(np.mean(gaps ** 2) + 1e-12))
    assert ratios[-1] > 4, row["id"]
  assert np.median(ratios) > 30


NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven"]


def count_bursts(wave: np.ndarray, rate: int) -> int:
  """Loud events: 5 ms frames above a tenth of the peak level, split by >= 40 ms of quiet."""
  frame = rate // 200
  level = np.sqrt(np.mean(wave[:len(wave) // frame * frame].reshape(-1, frame) ** 2, axis=1))
  loud = np.flatnonzero(level > 0.1 * level.max())
  return 1 + int(np.sum(np.diff(loud) >= 8))


def dominant_frequency(wave: np.ndarray, rate: int) -> float:
  spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
  return float(np.argmax(spectrum) * rate / len(wave))


def test_aqa_answers_follow_from_the_audio():
  """Beeps and clicks are counted and sweeps are heard rising or falling from the waveform."""
  checked = collections.Counter()
  for row in sample_rows("aqa"):
    wave, rate = sf.read(os.path.join(DEMO_DIR, row["audio"]), dtype="float32")
    assert row["answer"] in row.get("choices", [row["answer"]]), row["id"]
    if row["question"] in ("How many beeps are there?", "How many clicks are there?"):
      assert NUMBERS[count_bursts(wave, rate) - 1] == row["answer"], row["id"]
    elif row["question"] == "Is the tone rising or falling?":
      loud = np.flatnonzero(np.abs(wave) > 0.1)
      head, tail = wave[loud[0]:loud[0] + rate // 4], wave[loud[-1] - rate // 4:loud[-1]]
      rising = dominant_frequency(tail, rate) > dominant_frequency(head, rate)
      assert row["answer"] == ("rising" if rising else "falling"), row["id"]
    else:
      assert (row["question"], row["answer"]) == ("How many notes are played together?", "three")
    checked[row["question"]] += 1
  assert len(checked) == 4 and min(checked.values()) >= 5


def test_count_manifest_holds_the_held_out_counting_questions():
  with open(os.path.join(DEMO_DIR, make_demo_corpus.COUNT_MANIFEST), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  assert rows == make_demo_corpus.count_rows(rows_of("eval"))
  assert {r["question"] for r in rows} == set(make_demo_corpus.COUNT_QUESTIONS)
  assert len({r["answer"] for r in rows}) >= 4  # the answers vary: a constant answer scores low
