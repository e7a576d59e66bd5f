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
  """100 steps on 1,500 training words (and the clip labels) recognise held-out words far above
  chance (1/91), and the written encoder is what a run with `init.whisper` starts from."""
  train = ep.labelled_examples(os.path.join(DEMO_DIR, "train.jsonl"))
  words = train["word"]
  train["word"] = ep.Examples(words.waves[:1500], words.num_samples[:1500], words.labels[:1500],
                              words.origins[:1500])
  held_out = ep.labelled_examples(EVAL)
  skipped = collections.Counter()
  model_config = get_preset("tiny")
  encoder, history, classes = ep.pretrain(model_config, train, held_out, steps=100,
                                          log_every=100, skipped=skipped, log=lambda _: None)
  (step, scores), = history
  assert step == 100 and scores["word"] > 0.15, scores
  assert scores["event"] > 0.5, scores  # 6 labels
  # Held-out words that the first 1,500 training words never say are counted, not scored.
  known = {c for _, c in train["word"].labels}
  unseen = sum(c not in known for _, c in held_out["word"].labels)
  assert skipped["held-out: class never seen in training"] == unseen
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
