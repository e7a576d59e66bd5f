"""Bad data is counted once and nothing wrongly accepted: truncated audio, rows no mixture entry
can own, SRWT word times beyond the clip, and the load-time and running abort rules agreeing."""

import io
import json
import os

import ml_collections
import numpy as np
import pytest
import soundfile

from qwen_audio_jax.audio import io as audio_io
from qwen_audio_jax.data.config import DEMO_DIR, mixture_entry
from qwen_audio_jax.data.pipeline import DataPipeline
from qwen_audio_jax.data.sources import SourceExample
from qwen_audio_jax.data.stats import DataQualityError, DataStats, Rejection, StatsDelta
from qwen_audio_jax.data.transforms import Example, ExampleBuilder, load_tokenizer
from test_data_pipeline import asr_row, data_config, event_row, tone

DEMO_OGG = os.path.join(DEMO_DIR, "audio", "train-speech-000.ogg")  # 4.7 s of Vorbis


def _encoded(fmt, subtype, seconds=3.0):
  buffer = io.BytesIO()
  soundfile.write(buffer, tone(seconds, 16000, 440), 16000, format=fmt, subtype=subtype)
  return buffer.getvalue()


def _ogg_pages(data):
  return [i for i in range(len(data) - 3) if data[i:i + 4] == b"OggS"]


def _truncations():
  demo = open(DEMO_OGG, "rb").read()
  wav, mp3 = _encoded("WAV", "PCM_16"), _encoded("MP3", "MPEG_LAYER_III")
  opus = _encoded("OGG", "OPUS")
  return {
      # Half the bytes of the 4.7 s clip: 1.0 s still decodes, and libsndfile reports 1.0 s.
      "vorbis_half": (demo, demo[:len(demo) // 2]),
      # Cut exactly between two pages: every page is whole, the end-of-stream page is missing.
      "vorbis_page_boundary": (demo, demo[:_ogg_pages(demo)[-2]]),
      "opus_half": (opus, opus[:len(opus) // 2]),
      "wav_half": (wav, wav[:len(wav) // 2]),
      "mp3_half": (mp3, mp3[:len(mp3) // 2]),
  }


TRUNCATIONS = _truncations()


@pytest.fixture(scope="module")
def tokenizer():
  return load_tokenizer(None)


@pytest.mark.parametrize("case", sorted(TRUNCATIONS))
def test_truncated_audio_is_refused_and_counted_as_truncated_audio(case, tokenizer):
  whole, cut = TRUNCATIONS[case]
  assert audio_io.decode_audio(whole, name="whole").size > 16000  # the intact file is fine
  with pytest.raises(audio_io.AudioError, match=r"clip: truncated audio: "):
    audio_io.decode_audio(cut, name="clip")
  builder = ExampleBuilder(task_id=0, features="waveform", tokenizer=tokenizer)
  row = asr_row(0, "clip")
  result = builder(SourceExample(row, "m.jsonl:1", audio_bytes={"clip": cut}))
  assert isinstance(result, Rejection) and result.reason == "truncated_audio", result
  assert isinstance(builder(SourceExample(row, "m.jsonl:1", audio_bytes={"clip": whole})),
                    Example)


def test_a_segment_inside_what_survived_is_still_usable():
  _, cut = TRUNCATIONS["vorbis_page_boundary"]
  assert audio_io.decode_audio(cut, name="clip", start=0.0, end=0.5).shape == (8000,)


def test_srwt_words_beyond_the_clip_are_refused_with_the_reason(tokenizer):
  clip = io.BytesIO()
  soundfile.write(clip, tone(5.0, 16000, 300), 16000, format="WAV")
  row = {"task": "srwt", "audio": "clip.wav", "audio_language": "en", "text_language": "en",
         "words": [{"word": "hello", "start": 0.1, "end": 0.6},
                   {"word": "again", "start": 50.0, "end": 60.0}]}
  builder = ExampleBuilder(task_id=0, features="waveform", tokenizer=tokenizer)
  result = builder(SourceExample(row, "m.jsonl:3", audio_bytes={"clip.wav": clip.getvalue()}))
  assert isinstance(result, Rejection) and result.reason == "malformed", result
  assert "('again'): end 60.0 s is beyond the end of the clip (5.00 s" in result.detail


@pytest.fixture
def unowned_manifest(tmp_path):
  """4 asr and 4 event rows, and 4 rows no entry can own (lines 9-12)."""
  os.makedirs(tmp_path / "clips")
  lines = []
  for i in range(4):
    soundfile.write(tmp_path / "clips" / f"a{i}.wav", tone(0.5, 16000, 300 + 20 * i), 16000)
    lines.append(json.dumps(asr_row(i, f"clips/a{i}.wav")))
    lines.append(json.dumps(event_row(i, f"clips/a{i}.wav")))
  no_task = asr_row(9, "clips/a0.wav")
  del no_task["task"]
  lines += [json.dumps(no_task), json.dumps(dict(asr_row(10, "clips/a0.wav"), task="asrr")),
            '{"task": "asr", "audio": ', json.dumps(["not", "an", "object"])]
  path = tmp_path / "train.jsonl"
  path.write_text("\n".join(lines) + "\n")
  return str(path)


@pytest.mark.parametrize("entries", [("asr", "event"), ("asr", "event", "")])
def test_rows_no_entry_can_own_are_counted_once(unowned_manifest, entries):
  # Per-task entries used to skip rows without a (known) task uncounted, and to count a
  # non-JSON row once per entry reading the file.
  mixture = ml_collections.ConfigDict({
      (tasks or "all"): mixture_entry(paths=unowned_manifest, tasks=tasks) for tasks in entries})
  pipeline = DataPipeline(data_config(unowned_manifest, mixture=mixture),
                          process_index=0, process_count=1)
  load = pipeline._load_stats.load_rejected  # pylint: disable=protected-access
  assert sum(t.num_rejected for t in load.values()) == 4
  described = [d for t in load.values() for d in t.first_rejected]
  assert sorted(int(d.split(".jsonl:")[1].split(" ")[0]) for d in described) == [9, 10, 11, 12]
  report = pipeline._load_stats.report()  # pylint: disable=protected-access
  assert "field 'task' is missing" in report and "'asrr'" in report and "invalid JSON" in report
  assert "4 malformed rows at load" in report
  assert sorted(len(s) for s in pipeline.sources) == [4, 4] + ([8] if len(entries) == 3 else [])


@pytest.mark.parametrize("min_examples,aborts", [(21, False), (20, True)])
def test_load_time_and_running_abort_rules_agree(min_examples, aborts):
  # 5 bad of 20 (25% > 10%): both checks abort only once min_examples rows were seen.
  rejections = [Rejection(0, "malformed", f"m.jsonl:{i}", "bad") for i in range(5)]

  def at_load():
    DataStats(["asr"], max_bad_fraction=0.1, min_examples=min_examples).record_load_rejections(
        "asr", rejections, total_rows=20)

  def running():
    stats = DataStats(["asr"], max_bad_fraction=0.1, min_examples=min_examples)
    stats.tasks["asr"].examples, stats.tasks["asr"].rejected = 15, {"malformed": 5}
    stats.check()

  for check in (at_load, running):
    if aborts:
      with pytest.raises(DataQualityError, match=r"5 of 20"):
        check()
    else:
      check()


def test_truncated_audio_counts_towards_the_abort_threshold():
  stats = DataStats(["asr"], max_bad_fraction=0.1, min_examples=10)
  delta = StatsDelta()
  for _ in range(8):
    delta.add_example(0, tokens=10, target_tokens=5, truncated=False)
  for i in range(2):
    delta.add_rejection(Rejection(0, "truncated_audio", f"m.jsonl:{i}", "truncated audio: ..."))
  stats.merge(delta)
  assert stats.tasks["asr"].rejected == {"truncated_audio": 2}
  assert np.isclose(stats.tasks["asr"].bad_fraction(), 0.2)
  with pytest.raises(DataQualityError, match="truncated_audio"):
    stats.check()
