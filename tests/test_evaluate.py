"""The evaluation runner without a model: every demo benchmark's prompts are the released ones,
an oracle generator (it answers each prompt with the row's own target) scores perfectly under
every metric, rows that cannot be used are counted by reason, ArrayRecord shards work as a
source, and bad configs are refused by key. The model end to end is in test_evaluate_cli.py."""

import json

import numpy as np
import pytest
import soundfile

from qwen_audio_jax.data import manifest as manifest_lib
from qwen_audio_jax.data.config import DEMO_DIR, mixture_entry
from qwen_audio_jax.data.transforms import load_tokenizer
from qwen_audio_jax.evaluate import config as config_lib
from qwen_audio_jax.evaluate import runner
from qwen_audio_jax.generate import Result
from qwen_audio_jax.text import tasks

from _train_configs import load_config

DEMO = f"{DEMO_DIR}/eval.jsonl"


class Oracle:
  """Answers every prompt with the target its row was trained on (text decoded as the engine
  returns it: special tokens kept, no stop token); counts the calls it gets."""

  def __init__(self, manifest=DEMO, strip_prefix=""):
    self.answers = {}
    for _, row in manifest_lib.iter_rows(manifest, strict=False):
      if row["task"] != "chat":
        self.answers[tasks.prompt(row)] = tasks.get_task(row["task"]).target(row, None)
    self.strip_prefix = strip_prefix
    self.calls = []

  def generate(self, requests, config):
    self.calls.append((len(requests), config))
    out = []
    for r in requests:
      assert r.audio is not None and r.audio[0].dtype == np.float32  # pre-loaded 16 kHz clip
      text = self.answers[r.prompt[:len(r.prompt) - len(self.strip_prefix)]]
      if self.strip_prefix:  # the released SRWT prompt already holds the first timestamp
        assert text.startswith("<|")
      out.append(Result(tokens=np.zeros(3, np.int32), text=text, finish_reason="stop",
                        stop_token=151643, prompt_tokens=10, id=r.id))
    return out


@pytest.fixture(scope="module")
def tokenizer():
  return load_tokenizer(None)


EXPECTED_TAGS = {
    "demo": "<|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>",
    "demo_srwt": "<|startoftranscript|><|en|><|transcribe|><|en|><|timestamps|><|0.00|>",
    "demo_caption": "<|startofanalysis|><|unknown|><|caption|><|en|><|notimestamps|>"
                    "<|caption_plain|>",
    "demo_event": "<|startofanalysis|><|unknown|><|keyword|><|en|><|notimestamps|><|event|>",
}
PERFECT = {"demo": ("wer", 0.0), "demo_srwt": ("boundary_mae_ms", 0.0),
           "demo_caption": ("cider", None), "demo_event": ("accuracy", 1.0),
           "demo_aqa": ("accuracy", 1.0)}


@pytest.mark.parametrize("name", sorted(PERFECT))
def test_demo_benchmarks_with_an_oracle(name, tokenizer, tmp_path):
  c = load_config("eval", name)
  c.caption_tokenizer = "simple"  # no Java needed for this test
  oracle = Oracle(strip_prefix=c.response_prefix)
  result = runner.evaluate(c, oracle, tokenizer, str(tmp_path))
  records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
  rows = [row for _, row in manifest_lib.iter_rows(DEMO) if row["task"] == c.task]
  assert result["examples"]["scored"] == len(records) == len(rows)
  assert result["examples"]["skipped"] == 0
  # Batches of the config's size, greedy with the released token budget.
  assert [n for n, _ in oracle.calls] == [4] * (len(rows) // 4) + ([len(rows) % 4] if len(
      rows) % 4 else [])
  assert all(cfg.max_new_tokens == c.max_new_tokens and cfg.greedy for _, cfg in oracle.calls)
  for record, row in zip(records, rows):
    assert record["id"] == row["id"]
    assert record["prompt"].startswith(f"<audio>{row['audio']}</audio>")
    if name in EXPECTED_TAGS:
      assert record["prompt"] == f"<audio>{row['audio']}</audio>{EXPECTED_TAGS[name]}"
  if name == "demo_aqa":  # question, then its choices, then <|answer|>
    row = rows[0]
    assert records[0]["prompt"] == (
        f"<audio>{row['audio']}</audio><|startofanalysis|><|en|><|question|>{row['question']}"
        + "".join(f"<|choice|>{choice}" for choice in row["choices"]) + "<|answer|>")
  metric, perfect = PERFECT[name]
  if perfect is None:  # CIDEr of a perfect caption: the same as the references scored alone
    assert result["metrics"][metric] > 1.0
  else:
    assert result["metrics"][metric] == pytest.approx(perfect)
  assert json.loads((tmp_path / "report.json").read_text())["metrics"] == result["metrics"]


def _write_clip(path, seconds):
  t = np.arange(int(16000 * seconds)) / 16000
  soundfile.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)


def asr_row(i, audio, text="a b c"):
  return {"id": f"r{i}", "task": "asr", "audio": audio, "audio_language": "en", "text": text,
          "text_language": "en", "itn": False}


@pytest.fixture()
def mixed_manifest(tmp_path):
  """Rows that can be scored and rows that cannot, each for its own reason."""
  _write_clip(tmp_path / "ok.wav", 1.0)
  _write_clip(tmp_path / "long.wav", 31.0)
  _write_clip(tmp_path / "short.wav", 0.01)
  (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wav")
  lines = [json.dumps(asr_row(0, "ok.wav")),
           json.dumps(asr_row(1, "long.wav")),
           json.dumps(asr_row(2, "short.wav")),
           json.dumps(asr_row(3, "missing.wav")),
           json.dumps(asr_row(4, "broken.wav")),
           '{"task": "asr", "audio": "ok.wav"',  # not JSON
           json.dumps({**asr_row(6, "ok.wav"), "text_language": "xx"}),  # bad field
           json.dumps({"id": "e", "task": "event", "audio": "ok.wav", "label": "beep"})]
  path = tmp_path / "eval.jsonl"
  path.write_text("\n".join(lines) + "\n")
  return path


class Echo:
  """Answers the same text to everything."""
  num_compiled = 0

  def __init__(self, text="a b c"):
    self.text = text

  def generate(self, requests, config):
    return [Result(tokens=np.zeros(1, np.int32), text=self.text, finish_reason="stop",
                   stop_token=0, prompt_tokens=1) for _ in requests]


@pytest.mark.parametrize("long_audio", ["trim", "skip"])
def test_unusable_rows_are_counted_by_reason(mixed_manifest, tokenizer, tmp_path, long_audio):
  c = config_lib.benchmark_config("mixed", task="asr", metric="wer", language="en",
                                  paths=str(mixed_manifest))
  c.long_audio = long_audio
  result = runner.evaluate(c, Echo(), tokenizer, str(tmp_path / "out"))
  counts = result["examples"]
  # Scored: ok.wav, and long.wav when trimmed to 30 s. The event row is another task's: neither
  # scored nor skipped.
  expected = {"too_short": 1, "unreadable": 2, "malformed": 2}
  if long_audio == "skip":
    expected["too_long"] = 1
  assert counts["skipped_by_reason"] == expected
  assert counts["scored"] == (2 if long_audio == "trim" else 1)
  assert counts["trimmed_to_30s"] == (1 if long_audio == "trim" else 0)
  assert counts["skipped"] == sum(expected.values())
  assert any("missing.wav" in s for s in counts["first_skipped"])
  assert any(f"{mixed_manifest}:6" in s for s in counts["first_skipped"])  # the broken JSON
  assert result["metrics"]["wer"] == 0.0


def test_array_record_shards_as_a_source(tokenizer, tmp_path):
  from qwen_audio_jax.data import prepare
  prepare.prepare([DEMO], str(tmp_path / "shards"), examples_per_shard=40, progress=False)
  shards = ",".join(sorted(str(p) for p in (tmp_path / "shards").glob("*.array_record")))
  c = load_config("eval", "demo_event")
  c.data = mixture_entry(source="array_record", paths=shards)
  result = runner.evaluate(c, Oracle(), tokenizer, str(tmp_path / "out"))
  # Every event row of the mixed-task shards, nothing skipped (the other tasks' rows are passed
  # over), and the oracle's answers score 1.
  with open(DEMO, encoding="utf-8") as f:
    events = sum(json.loads(line).get("task") == "event" for line in f if line.strip())
  assert events > 0
  assert result["examples"]["scored"] == events and result["examples"]["skipped"] == 0
  assert result["metrics"]["accuracy"] == 1.0


def test_tfds_source_through_its_adapter(tokenizer, tmp_path, monkeypatch):
  # A TFDS LibriSpeech split (faked: dicts as tfds.data_source returns them, 16-bit PCM in
  # int64) read through the librispeech adapter: clips arrive as arrays, transcripts lower-cased.
  from qwen_audio_jax.data import tfds_source
  t = np.arange(16000) / 16000
  examples = [{"speech": (np.sin(2 * np.pi * 300 * t) * 20000).astype(np.int64),
               "text": b"HELLO NUMBER ONE", "id": b"84-121-0"}]
  monkeypatch.setattr(tfds_source, "open_data_source", lambda name, split, data_dir: examples)
  c = config_lib.benchmark_config("ls", task="asr", metric="wer", language="en",
                                  source="tfds", tfds_name="librispeech", tfds_split="test_clean")
  result = runner.evaluate(c, Echo("hello number one"), tokenizer, str(tmp_path))
  [record] = runner.read_predictions(str(tmp_path / "predictions.jsonl"))
  assert record["reference"] == "hello number one" and record["id"] == "84-121-0"
  assert record["prompt"].startswith("<audio>tfds://librispeech/84-121-0</audio>")
  assert result["metrics"]["wer"] == 0.0


def test_caption_references_and_unavailable_spice(tokenizer, tmp_path, monkeypatch):
  # Clotho rows carry all five captions in `references`; without Java, CIDEr is computed and
  # SPICE / SPIDEr are reported as not computable, with the reason.
  from qwen_audio_jax.evaluate import caption_metrics
  monkeypatch.setattr(caption_metrics.shutil, "which", lambda name: None)
  _write_clip(tmp_path / "a.wav", 1.0)
  _write_clip(tmp_path / "b.wav", 1.0)
  rows = [{"id": "a", "task": "caption", "audio": "a.wav", "text": "a dog barks very loudly",
           "style": "clotho", "references": ["a dog barks very loudly", "a dog is barking"]},
          {"id": "b", "task": "caption", "audio": "b.wav", "text": "rain falls on the roof",
           "style": "clotho"}]
  (tmp_path / "clotho.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  c = load_config("eval", "clotho")
  c.data.paths = str(tmp_path / "clotho.jsonl")
  result = runner.evaluate(c, Oracle(str(tmp_path / "clotho.jsonl")), tokenizer,
                           str(tmp_path / "out"))
  records = runner.read_predictions(str(tmp_path / "out" / "predictions.jsonl"))
  assert records[0]["reference"] == rows[0]["references"]
  assert records[1]["reference"] == [rows[1]["text"]]
  assert records[0]["prompt"].endswith("<|caption_clotho|>")
  assert result["metrics"]["tokenizer"] == "simple" and result["metrics"]["cider"] > 0
  assert set(result["unavailable_metrics"]) == {"spice", "spider"}
  assert "SPICE needs Java" in result["unavailable_metrics"]["spice"]
  assert result["headline"] == {"cider": result["metrics"]["cider"]}


def test_a_vocabulary_without_the_multitask_tags_is_refused(tmp_path):
  class Qwen2Vocabulary:
    def has_special(self, token):
      return token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

  c = load_config("eval", "demo")
  with pytest.raises(ValueError, match=r"lacks \['<\|startoftranscript\|>', '<\|transcribe\|>'"):
    runner.evaluate(c, Echo(), Qwen2Vocabulary(), str(tmp_path))


@pytest.mark.parametrize("key, value, message", [
    ("metric", "rouge", "config.metric='rouge': expected one of"),
    ("task", "caption", "config.task='caption': metric 'wer' scores the tasks"),
    ("normalizer", "whisper", "config.normalizer='whisper': expected one of"),
    ("generation", "beam", "config.generation='beam': expected one of"),
    ("long_audio", "window", "config.long_audio='window': expected one of"),
    ("language", "xx", "config.language='xx'"),
])
def test_bad_configs_are_refused_by_key(key, value, message):
  c = load_config("eval", "librispeech_test_clean")
  c[key] = value
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
    config_lib.validate_eval_config(c)


def test_paper_benchmarks_released_settings():
  expected = {  # name: (task, metric, max new tokens, language)
      "librispeech_test_other": ("asr", "wer", 256, "en"),
      "aishell1_test": ("asr", "wer", 256, "zh"),
      "covost2_en_zh": ("translation", "bleu", 256, "zh"),
      "covost2_it_en": ("translation", "bleu", 256, "en"),
      "clotho": ("caption", "caption", 30, ""),
      "cochlscene": ("scene", "accuracy", 10, ""),
      "meld": ("emotion", "accuracy", 4, ""),
      "vocalsound": ("vocal_sound", "accuracy", 4, ""),
      "clothoaqa": ("aqa", "aqa", 4, ""),
  }
  names = [f"librispeech_{a}_{b}" for a in ("dev", "test") for b in ("clean", "other")]
  names += ["aishell1_dev", "aishell1_test", "clotho", "vocalsound", "cochlscene", "clothoaqa",
            "meld"]
  names += [f"covost2_{p}" for p in ("en_de", "de_en", "en_zh", "zh_en", "es_en", "fr_en",
                                     "it_en")]
  for name in names:
    c = load_config("eval", name)
    config_lib.validate_eval_config(c)
    assert c.name == name and c.generation == "greedy" and c.published
    if name in expected:
      assert (c.task, c.metric, c.max_new_tokens, c.language) == expected[name]
  with pytest.raises(ValueError, match="unknown benchmark 'librispeech'"):
    load_config("eval", "librispeech")
