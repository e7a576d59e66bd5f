"""Supervised encoder pretraining (the demo's stand-in for Whisper): what it reads, what it
counts, that it learns, and that its checkpoint is what `config.init.whisper` loads."""

import collections
import json
import os

import jax
import numpy as np
import pytest
import soundfile

from qwen_audio_jax import checkpoints, convert
from qwen_audio_jax.audio import io as audio_io
from qwen_audio_jax.convert import orbax_io
from qwen_audio_jax.config import get_preset
from qwen_audio_jax.data.config import DEMO_DIR, DEMO_ENCODER_DIR
from qwen_audio_jax.training import encoder_pretraining as ep
from qwen_audio_jax.training import initialization

EVAL = os.path.join(DEMO_DIR, "eval.jsonl")


def _rows(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_every_labelled_row_of_the_split_is_read_and_the_rest_counted():
  skipped = collections.Counter()
  groups = ep.labelled_examples(EVAL, skipped=skipped)
  rows = _rows(EVAL)
  words = [w["word"] for r in rows if r["task"] == "srwt" for w in r["words"]]
  assert [c for _, c in groups["word"].labels] == words
  clips = [("event", r["label"]) if r["task"] == "event" else (f"aqa: {r['question']}", r["answer"])
           for r in rows if r["task"] in ("event", "aqa")]
  assert groups["clip"].labels == clips
  assert not skipped, skipped
  waves, sizes = groups["word"].waves, groups["word"].num_samples
  assert waves.shape == (len(words), 16000)
  assert np.all((sizes >= 1600) & (sizes <= 16000)), (sizes.min(), sizes.max())
  # A word is sound, and nothing is left past its length.
  assert np.all(np.array([np.abs(w[:n]).max() for w, n in zip(waves, sizes)]) > 0.01)
  assert not np.any([np.any(w[n:]) for w, n in zip(waves, sizes)])
  clip_waves = groups["clip"].waves
  assert clip_waves.shape[1] % 16000 == 0 and clip_waves.shape[1] >= groups["clip"].num_samples.max()


def test_unusable_rows_are_counted_by_reason(tmp_path):
  audio = os.path.join(DEMO_DIR, "audio", "eval-speech-000.ogg")
  sound = os.path.join(DEMO_DIR, "audio", "eval-sound-000.ogg")
  duration = round(audio_io.duration_seconds(audio), 2)
  rows = [
      {"task": "srwt", "audio": audio, "audio_language": "en", "text": "b c a", "words": [
          {"word": "b", "start": 0.35, "end": 1.85},  # longer than 1 s: cut, counted
          {"word": "c", "start": 1.9, "end": 2.2},
          # past the clip's end (within the 0.05 s the validation allows): 10 ms of audio left
          {"word": "a", "start": duration + 0.04, "end": duration + 0.045}]},
      {"task": "event", "audio": sound, "audio_language": "unknown", "label": "beep"},
      {"task": "event", "audio": str(tmp_path / "gone.ogg"), "audio_language": "unknown",
       "label": "beep"},  # unreadable: counted, the rest still read
  ]
  path = tmp_path / "m.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  skipped = collections.Counter()
  groups = ep.labelled_examples(str(path), skipped=skipped)
  assert [c for _, c in groups["word"].labels] == ["b", "c"]
  assert groups["word"].num_samples[0] == 16000
  assert skipped == {"word shorter than 40 ms": 1, "word cut to 1 s": 1, "unreadable audio": 1}
  assert groups["clip"].labels == [("event", "beep")]
  # A malformed row is an error that names its line, not a silent skip.
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({**rows[0], "words": []}) + "\n")
  with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'words'"):
    ep.labelled_examples(str(bad))
  # A clip the encoder cannot take is an error naming its row.
  long_clip = tmp_path / "long.wav"
  soundfile.write(str(long_clip), np.full(31 * 16000, 0.1, np.float32), 16000)
  long_row = tmp_path / "long.jsonl"
  long_row.write_text(json.dumps({**rows[2], "audio": str(long_clip)}) + "\n")
  with pytest.raises(ValueError, match=r"long.jsonl:1: the clip is 31.0 s"):
    ep.labelled_examples(str(long_row))
  with pytest.raises(ValueError, match="unknown label kinds"):
    ep.labelled_examples(str(path), ["words"])
  with pytest.raises(ValueError, match="no labelled audio"):
    ep.labelled_examples(str(path), ["aqa"])  # no aqa row


def test_pretraining_learns_the_held_out_voice_and_loads_as_init_whisper(tmp_path):
  """100 steps on 1,500 training words, 160 sentences' frames (and the clip labels) recognise
  held-out words, cut and in their sentences, far above chance (1/91), and the written encoder
  is what a run with `init.whisper` starts from."""
  train = ep.labelled_examples(os.path.join(DEMO_DIR, "train.jsonl"))
  words, utterances = train["word"], train["utterance"]
  train["word"] = ep.Examples(words.waves[:1500], words.num_samples[:1500], words.labels[:1500],
                              words.origins[:1500])
  train["utterance"] = ep.Examples(utterances.waves[:160], utterances.num_samples[:160],
                                   utterances.labels[:160], utterances.origins[:160],
                                   utterances.words[:160])
  held_out = ep.labelled_examples(EVAL)
  skipped = collections.Counter()
  model_config = get_preset("tiny")
  encoder, history, classes = ep.pretrain(model_config, train, held_out, steps=100,
                                          utterance_batch=4, log_every=100, skipped=skipped,
                                          log=lambda _: None)
  (step, scores), = history
  assert step == 100 and scores["word"] > 0.15, scores
  assert scores["word (frames)"] > 0.1, scores
  assert scores["event"] > 0.5, scores  # 6 labels
  # Held-out words that the training slice never says are counted, not scored.
  known = {c for _, c in train["word"].labels}
  known |= {w for spans in train["utterance"].words for _, _, w in spans}
  unseen = sum(c not in known for _, c in held_out["word"].labels)
  assert skipped["held-out: class never seen in training"] == unseen
  unseen_frames = sum(w not in known for row in ep.frame_labels(held_out["utterance"]) for w in row
                      if w)
  assert skipped["held-out: frame of a word never seen in training"] == unseen_frames
  assert set(classes.sets) == {"word", "event"} | {s for s, _ in held_out["clip"].labels}

  out = ep.save(str(tmp_path / "encoder"), encoder, model_config, {"steps": 100})
  assert orbax_io.read_conversion_info(out) == {"steps": 100}
  config = _demo_config()
  config.init.whisper = out
  run_model = initialization.model_config_from(config)
  params, sources = initialization.initial_params(config, run_model,
                                                  checkpoints.single_device_mesh(),
                                                  jax.random.key(1))
  assert "audio_encoder" in sources[0] and "from " + out in sources[0], sources
  restacked = convert.stack_layers(jax.device_get(params))
  for path, value in _flat(encoder).items():
    np.testing.assert_array_equal(_flat(restacked["audio_encoder"])[path], value, err_msg=path)


def _demo_config():
  from qwen_audio_jax.configs import pretrain  # pylint: disable=g-import-not-at-top
  return pretrain.get_config("demo")


def _flat(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_the_demo_starts_from_the_bundled_encoder():
  """configs/pretrain.py:demo starts from the encoder this module wrote, and it fits the demo
  model (every leaf's shape checked by the loader)."""
  config = _demo_config()
  assert config.init.whisper == DEMO_ENCODER_DIR
  info = orbax_io.read_conversion_info(config.init.whisper)
  assert info["made_by"] == "qwen_audio_jax.training.encoder_pretraining", info
  assert info["train"] == "train.jsonl" and info["eval"] == "eval.jsonl", info
  run_model = initialization.model_config_from(config)
  part = convert.load_params(config.init.whisper, run_model)
  assert sorted(part) == ["audio_encoder"]
  initialization.check_complete(
      initialization._merge(jax.device_get(initialization.random_params(
          run_model, checkpoints.single_device_mesh(), jax.random.key(0))), part),
      run_model, checkpoints.single_device_mesh(), "bundled demo encoder")


def test_learning_rate_warms_up_then_decays_to_a_tenth():
  schedule = ep.learning_rate_schedule(3e-3, 800)
  rates = [float(schedule(step)) for step in (0, 25, 50, 425, 800)]
  assert rates[0] == 0.0 and rates[1] == pytest.approx(1.5e-3)
  assert rates[2] == pytest.approx(3e-3) and rates[4] == pytest.approx(3e-4)
  assert rates[2] > rates[3] > rates[4]
  assert float(ep.learning_rate_schedule(3e-3, 20)(20)) == pytest.approx(3e-4)  # short runs too
  assert float(ep.learning_rate_schedule(3e-3, 1)(0)) == pytest.approx(3e-3)  # no warmup at all


def test_utterance_frames_are_labelled_with_the_word_their_centre_lies_in():
  """A frame is 40 ms (`lengths.audio_tokens`); its centre decides its word, gaps score nothing,
  and unseen words are counted."""
  one_second = ep.Examples(np.zeros((2, 16000), np.float32), np.asarray([16000, 8000], np.int32),
                           [("word", ""), ("word", "")], ["m:1", "m:2"],
                           [[(0.0, 0.1, "a"), (0.5, 0.62, "b")], [(0.3, 0.34, "zz")]])
  labels = ep.frame_labels(one_second)
  assert [len(row) for row in labels] == [25, 12]
  assert [i for i, w in enumerate(labels[0]) if w == "a"] == [0, 1]  # centres 0.02, 0.06
  assert [i for i, w in enumerate(labels[0]) if w == "b"] == [12, 13, 14]  # 0.50 .. 0.58
  assert [i for i, w in enumerate(labels[1]) if w] == [7]  # centre 0.30
  classes = ep.Classes([("word", "a"), ("word", "b")], ["word"])
  skipped = collections.Counter()
  ids, sets = classes.encode(one_second, skipped, "held-out")
  assert ids.shape == (2, 25) and list(sets) == [0, 0]
  assert list(np.flatnonzero(ids[0] >= 0)) == [0, 1, 12, 13, 14]
  assert list(ids[0, [0, 1, 12, 13, 14]]) == [0, 0, 1, 1, 1]
  assert np.all(ids[1] == -1)
  assert skipped == {"held-out: frame of a word never seen in training": 1}
  assert ep.Classes.of({"utterance": one_second}).names == [
      ("word", "a"), ("word", "b"), ("word", "zz")]


def test_utterances_are_read_whole_and_their_frames_share_the_words_readout():
  """`frame` reads each srwt row whole with its word times; the per-frame logits are the pooled
  classifier's layer on each frame (their mean over the valid frames is the pooled logits)."""
  groups = ep.labelled_examples(EVAL, ["frame"])
  rows = [r for r in _rows(EVAL) if r["task"] == "srwt"]
  assert sorted(groups) == ["utterance"]
  utterances = groups["utterance"]
  assert len(utterances) == len(rows)
  assert utterances.words[0] == [(w["start"], w["end"], w["word"]) for w in rows[0]["words"]]
  assert utterances.waves.shape[1] % 16000 == 0
  first = ep.frame_labels(utterances)[0]
  assert [w for i, w in enumerate(first) if w and (i == 0 or first[i - 1] != w)] == \
      rows[0]["text"].split()  # every word has frames, in order
  model = ep.EncoderClassifier(get_preset("tiny"), 7)
  mel = ep._features(utterances, 80)[:2]
  samples = utterances.num_samples[:2]
  params = model.init(jax.random.key(0), mel, samples)
  pooled = model.apply(params, mel, samples)
  per_frame = model.apply(params, mel, samples, per_frame=True)
  for row in range(2):
    n = int(ep.lengths.audio_tokens(int(samples[row])))
    np.testing.assert_allclose(per_frame[row, :n].mean(0), pooled[row], rtol=1e-4, atol=1e-5)
