"""`python -m qwen_audio_jax.infer` end to end on a tiny converted checkpoint.

The checkpoint's LLM is a fixed Markov chain over a few tokens (tests/_chain_model.py): the
transcript of every file, and the SRWT words and times of every 30 s window, are known, and the
tests check the command's batching, windowing, time shifts, output and errors.
"""

import json

import numpy as np
import pytest
import soundfile as sf

from _chain_model import CONFIG, chain_params
from qwen_audio_jax import infer
from qwen_audio_jax.audio import lengths
from qwen_audio_jax.convert import orbax_io
from qwen_audio_jax.text.tokenizer import QwenAudioTokenizer

SR = lengths.SAMPLE_RATE


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  tok = QwenAudioTokenizer.load(None)
  sid = tok.special_id
  hello, world, good, morning = 14990, 1879, 1661, 6556
  chain = {
      # asr: "<|wo_itn|>" -> " good morning" <|endoftext|>
      sid("<|wo_itn|>"): good, good: morning, morning: tok.eot_id,
      # srwt: "<|0.00|>" -> hello<|0.50|><|0.60|> world<|1.00|><|endoftext|>
      sid("<|0.00|>"): hello, hello: sid("<|0.50|>"), sid("<|0.50|>"): sid("<|0.60|>"),
      sid("<|0.60|>"): world, world: sid("<|1.00|>"), sid("<|1.00|>"): tok.eot_id,
  }
  directory = str(tmp_path_factory.mktemp("ckpt"))
  orbax_io.save_checkpoint(directory, chain_params(chain), CONFIG)
  return directory


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
  directory = tmp_path_factory.mktemp("audio")
  rng = np.random.default_rng(0)
  paths = {}
  for name, seconds in (("short", 1.5), ("other", 3.2), ("long", 41.0)):
    path = str(directory / f"{name}.wav")
    sf.write(path, rng.uniform(-0.3, 0.3, int(seconds * SR)).astype(np.float32), SR)
    paths[name] = path
  return paths


def _json_lines(capsys):
  return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_asr_on_a_batch_of_files_and_a_long_one(checkpoint, audio_files, capsys):
  files = [audio_files["short"], audio_files["long"], audio_files["other"]]
  assert infer.main(["--checkpoint", checkpoint, "--audio", *files, "--task", "asr",
                     "--json"]) == 0
  records = _json_lines(capsys)
  assert [r["audio"] for r in records] == files
  assert [r["windows"] for r in records] == [1, 2, 1]
  assert records[0]["text"] == "good morning"
  assert records[1]["text"] == "good morning good morning"  # two windows, joined
  assert records[0]["finish_reason"] == ["stop"]


def test_srwt_words_carry_times_shifted_by_their_window(checkpoint, audio_files, capsys):
  files = [audio_files["short"], audio_files["long"]]
  assert infer.main(["--checkpoint", checkpoint, "--audio", *files, "--task", "srwt",
                     "--overlap-seconds", "0", "--json"]) == 0
  short, long = _json_lines(capsys)
  assert short["words"] == [{"word": "hello", "start": 0.0, "end": 0.5},
                            {"word": "world", "start": 0.6, "end": 1.0}]
  assert short["text"] == "hello world"
  assert long["windows"] == 2
  assert long["words"] == short["words"] + [{"word": "hello", "start": 30.0, "end": 30.5},
                                            {"word": "world", "start": 30.6, "end": 31.0}]
  # With the default 5 s overlap the second window starts at 25 s: its words (25.0 - 26.0 s)
  # lie in the part the first window owns (up to 27.5 s), where the first window heard nothing
  # but its own two words, so the second window's are dropped.
  assert infer.main(["--checkpoint", checkpoint, "--audio", audio_files["long"], "--task",
                     "srwt"]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out == [f"{audio_files['long']}:", "     0.00    0.50  hello",
                 "     0.60    1.00  world"]


def test_errors_name_the_flag_or_file(checkpoint, audio_files, tmp_path, capsys):
  def fails(argv, code, message):
    with pytest.raises(SystemExit) as exit_info:
      infer.main(argv)
    assert exit_info.value.code == code
    assert message in capsys.readouterr().err

  missing = str(tmp_path / "missing.wav")
  fails(["--checkpoint", checkpoint, "--audio", missing], 2, f"--audio: {missing} does not exist")
  fails(["--checkpoint", checkpoint, "--audio", audio_files["short"], "--task", "aqa"], 2,
        "--question is required")
  fails(["--checkpoint", checkpoint, "--audio", audio_files["short"], "--task", "translation"],
        2, "--target-language is required")
  fails(["--checkpoint", checkpoint, "--audio", audio_files["short"], "--language", "xx"], 2,
        "--language 'xx'")
  fails(["--checkpoint", checkpoint, "--audio", audio_files["short"], "--overlap-seconds", "3"],
        2, "--overlap-seconds needs --task srwt")
  fails(["--checkpoint", checkpoint, "--audio", audio_files["long"], "--task", "scene"], 2,
        "takes clips of at most 30 s")
  fails(["--checkpoint", checkpoint, "--audio", audio_files["short"], "--mesh", "1,2"], 2,
        "--mesh must be three integers")
  assert infer.main(["--checkpoint", str(tmp_path), "--audio", audio_files["short"]]) == 1
  assert "not a checkpoint" in capsys.readouterr().err
  bad = tmp_path / "bad.wav"
  bad.write_bytes(b"not audio")
  assert infer.main(["--checkpoint", checkpoint, "--audio", str(bad)]) == 1
  assert str(bad) in capsys.readouterr().err
