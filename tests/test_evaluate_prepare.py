"""Benchmark manifests from each dataset's published layout, on tiny copies of those layouts:
rows as the benchmark expects them, missing audio counted and named, wrong layouts refused."""

import json
import os

import numpy as np
import pytest
import soundfile

from qwen_audio_jax.evaluate import prepare
from qwen_audio_jax.text import tasks


def clip(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  soundfile.write(path, np.zeros(1600, np.float32), 16000)
  return str(path)


def write(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def rows_of(out):
  with open(out, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_librispeech(tmp_path):
  folder = tmp_path / "test-clean" / "1089" / "134686"
  write(folder / "1089-134686.trans.txt",
        "1089-134686-0000 HE HOPED THERE WOULD BE STEW\n1089-134686-0001 STUFF IT INTO YOU\n")
  clip(folder / "1089-134686-0000.flac")  # 0001's audio is missing
  out = tmp_path / "ls.jsonl"
  summary = prepare.convert("librispeech", str(out), root=str(tmp_path / "test-clean"))
  assert summary["rows"] == 1 and summary["missing_audio"] == 1
  assert summary["first_missing"][0].endswith("1089-134686-0001.flac")
  [row] = rows_of(out)
  assert row["text"] == "he hoped there would be stew" and row["audio_language"] == "en"
  assert tasks.prompt(row).endswith(
      "<|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>")


def test_aishell1(tmp_path):
  write(tmp_path / "transcript" / "aishell_transcript_v0.8.txt",
        "BAC009S0764W0121 甚至 出现 交易 几乎 停滞 的 情况\n")
  clip(tmp_path / "wav" / "test" / "S0764" / "BAC009S0764W0121.wav")
  clip(tmp_path / "wav" / "test" / "S0764" / "BAC009S0764W0122.wav")  # no transcript
  out = tmp_path / "a.jsonl"
  summary = prepare.convert("aishell1", str(out), root=str(tmp_path), split="test")
  assert summary["rows"] == 1 and summary["missing_audio"] == 1
  [row] = rows_of(out)
  assert row["text"] == "甚至出现交易几乎停滞的情况" and row["text_language"] == "zh"


def test_covost2(tmp_path):
  clip(tmp_path / "cv" / "clips" / "common_voice_en_1.mp3.wav")
  write(tmp_path / "covost_v2.en_de.tsv",
        "path\tsentence\ttranslation\tclient_id\tsplit\n"
        "common_voice_en_1.mp3.wav\tHello there.\tHallo zusammen.\tc1\ttest\n"
        "common_voice_en_2.mp3\tTrain row.\tZug.\tc2\ttrain\n")
  out = tmp_path / "c.jsonl"
  summary = prepare.convert("covost2", str(out), root=str(tmp_path / "cv"),
                            tsv=str(tmp_path / "covost_v2.en_de.tsv"))
  assert summary == {"rows": 1, "missing_audio": 0, "first_missing": []}  # train row not read
  [row] = rows_of(out)
  assert (row["audio_language"], row["text_language"], row["text"]) == ("en", "de",
                                                                        "Hallo zusammen.")
  assert tasks.prompt(row).endswith(
      "<|startoftranscript|><|en|><|translate|><|de|><|notimestamps|><|itn|>")
  with pytest.raises(ValueError, match=r"covost_v2.<src>_<tgt>.tsv"):
    prepare.convert("covost2", str(out), root=str(tmp_path), tsv=str(tmp_path / "pairs.tsv"))


def test_clotho(tmp_path):
  clip(tmp_path / "evaluation" / "rain.wav")
  write(tmp_path / "clotho_captions_evaluation.csv",
        "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
        'rain.wav,"Rain falls, steadily.",Rain on a roof.,Water drips.,Rain pours.,It rains.\n')
  out = tmp_path / "cl.jsonl"
  prepare.convert("clotho", str(out), root=str(tmp_path))
  [row] = rows_of(out)
  assert row["references"] == ["Rain falls, steadily.", "Rain on a roof.", "Water drips.",
                               "Rain pours.", "It rains."]
  assert tasks.prompt(row).endswith(
      "<|startofanalysis|><|unknown|><|caption|><|en|><|notimestamps|><|caption_clotho|>")


def test_vocalsound_cochlscene_meld_labels(tmp_path):
  clip(tmp_path / "vs" / "audio_16k" / "f0003_0_throatclearing.wav")
  clip(tmp_path / "vs" / "audio_16k" / "m0100_1_cough.wav")
  write(tmp_path / "vs" / "meta" / "te_meta.csv", "f0003,F\n")
  out = tmp_path / "v.jsonl"
  prepare.convert("vocalsound", str(out), root=str(tmp_path / "vs"),
                  speakers=str(tmp_path / "vs" / "meta" / "te_meta.csv"))
  assert [r["label"] for r in rows_of(out)] == ["Throat clearing"]

  clip(tmp_path / "cs" / "Test" / "Bus" / "Bus_1.wav")
  prepare.convert("cochlscene", str(out), root=str(tmp_path / "cs"))
  [row] = rows_of(out)
  assert row["label"] == "Bus" and tasks.prompt(row).endswith("<|scene|>")

  clip(tmp_path / "meld_wav" / "dia0_utt1.wav")
  write(tmp_path / "MELD.Raw" / "test_sent_emo.csv",
        "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID\n"
        "1,Oh my God!,Ross,surprise,positive,0,1\n")
  prepare.convert("meld", str(out), root=str(tmp_path / "MELD.Raw"),
                  audio_dir=str(tmp_path / "meld_wav"))
  [row] = rows_of(out)
  assert row["label"] == "surprise"
  assert tasks.prompt(row).endswith(
      "<|startofanalysis|><|en|><|keyword|><|en|><|notimestamps|><|emotion_recognition|>")


def test_clothoaqa_majority_answer(tmp_path):
  clip(tmp_path / "audio_files" / "birds.wav")
  write(tmp_path / "clotho_aqa_test.csv",
        "file_name,QuestionText,answer,confidence\n"
        "birds.wav,Are birds chirping?,yes,yes\nbirds.wav,Are birds chirping?,no,maybe\n"
        "birds.wav,Are birds chirping?,yes,yes\nbirds.wav,How many birds?,two,yes\n")
  out = tmp_path / "q.jsonl"
  prepare.convert("clothoaqa", str(out), root=str(tmp_path))
  rows = rows_of(out)
  assert [(r["question"], r["answer"]) for r in rows] == [("Are birds chirping?", "yes"),
                                                          ("How many birds?", "two")]
  assert tasks.prompt(rows[0]).endswith(
      "<|startofanalysis|><|en|><|question|>Are birds chirping?<|answer|>")


def test_wrong_layout_is_refused_by_the_command(tmp_path, capsys):
  code = prepare.main(["librispeech", "--root", str(tmp_path), "--out", str(tmp_path / "x")])
  assert code == 1
  assert "no <speaker>/<chapter>/*.trans.txt files" in capsys.readouterr().err
