"""ArrayRecord shards (prepare CLI) and TFDS sources feed the same examples as the manifests."""

import json
import sys

import ml_collections
import numpy as np
import pytest
import soundfile

from qwen_audio_jax.data import prepare as prepare_lib
from qwen_audio_jax.data import tfds_source
from qwen_audio_jax.data.config import mixture_entry
from qwen_audio_jax.data.pipeline import DataPipeline
from test_data_pipeline import (BAD_FILES, asr_row, assert_batches_equal, data_config, tone,
                                write_corpus)


def read_all(config):
  it = DataPipeline(config, process_index=0, process_count=1).iterator()
  return list(it), it.stats


def shard_mixture(out_dir):
  return ml_collections.ConfigDict({
      task: mixture_entry(source="array_record", paths=f"{out_dir}/{task}-*.array_record")
      for task in ("asr", "event")})


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory):
  return write_corpus(tmp_path_factory.mktemp("corpus"), n_asr=9, n_event=3, bad=True)


def test_shards_feed_the_same_batches_as_the_manifest(bad_corpus, tmp_path):
  out = tmp_path / "shards"
  report = prepare_lib.prepare([bad_corpus], str(out), examples_per_shard=4,
                               split_by_task=True, max_bad_fraction=1.0, progress=False)
  # 15 asr rows (9 good, 6 bad audio) split 3/4/4/4; missing.wav cannot be packed.
  assert report["shards"] == {"asr-00000-of-00004.array_record": 3,
                              "asr-00001-of-00004.array_record": 4,
                              "asr-00002-of-00004.array_record": 3,
                              "asr-00003-of-00004.array_record": 4,
                              "event-00000-of-00001.array_record": 3}
  skipped = {s["origin"].rsplit(":", 1)[-1]: s for s in report["skipped_rows"]}
  assert len(skipped) == 2 and report["rows"] == 9 + 3 + len(BAD_FILES) + 1
  assert any("missing.wav" in s["detail"] for s in skipped.values())
  assert any(s["reason"] == "malformed" for s in skipped.values())
  assert json.loads((out / "prepare_report.json").read_text())["examples"] == 17

  base = dict(num_epochs=1, shuffle=False, max_bad_fraction=1.0)
  from_manifest, manifest_stats = read_all(data_config(bad_corpus, **base))
  from_shards, shard_stats = read_all(data_config(bad_corpus, mixture=shard_mixture(out),
                                                  **base))
  assert_batches_equal(from_shards, from_manifest)
  assert shard_stats.tasks["asr"].examples == manifest_stats.tasks["asr"].examples == 9
  # Bad audio packed as is is still caught, and named by its manifest line.
  assert shard_stats.tasks["asr"].num_rejected == len(BAD_FILES) - 1
  assert all("train.jsonl:" in d for d in shard_stats.tasks["asr"].first_rejected)


def test_flac_shards_hold_cut_16k_clips(tmp_path):
  soundfile.write(tmp_path / "a.wav", tone(2.0, 8000, 300), 8000)
  soundfile.write(tmp_path / "b.wav", tone(0.6, 16000, 500), 16000)
  rows = [asr_row(0, "a.wav", start=0.5, end=1.25), asr_row(1, "a.wav"), asr_row(2, "b.wav"),
          asr_row(3, "nothing.wav")]
  manifest = tmp_path / "m.jsonl"
  manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
  out = tmp_path / "shards"
  code = prepare_lib.main(["--manifest", str(manifest), "--output_dir", str(out),
                           "--audio_format", "flac", "--num_shards", "2",
                           "--max_bad_fraction", "0.5"])
  assert code == 0
  assert sorted(p.name for p in out.glob("*.array_record")) == [
      "data-00000-of-00002.array_record", "data-00001-of-00002.array_record"]
  base = dict(num_epochs=1, shuffle=False, batch_size=3,
              mixture=ml_collections.ConfigDict({"asr": mixture_entry(paths=str(manifest))}))
  from_manifest, _ = read_all(data_config(str(manifest), max_bad_fraction=1.0, **base))
  base["mixture"] = ml_collections.ConfigDict({"asr": mixture_entry(
      source="array_record", paths=f"{out}/data-*.array_record")})
  from_shards, stats = read_all(data_config(str(manifest), **base))
  assert stats.tasks["asr"].examples == 3 and not stats.tasks["asr"].rejected
  np.testing.assert_array_equal(from_shards[0]["audio_lengths"][:, 0], [12000, 32000, 9600])
  for key in from_manifest[0]:
    if key == "audio_wave":  # 24-bit FLAC: one quantisation step is 1.2e-7
      np.testing.assert_allclose(from_shards[0][key], from_manifest[0][key], atol=2e-7)
    else:
      np.testing.assert_array_equal(from_shards[0][key], from_manifest[0][key], err_msg=key)
  with pytest.raises(RuntimeError, match=r"1 of 4 rows could not be packed .*nothing.wav"):
    prepare_lib.main(["--manifest", str(manifest), "--output_dir", str(tmp_path / "again"),
                      "--audio_format", "flac", "--max_bad_fraction", "0.1"])


def librispeech_examples():
  """Dicts as `tfds.data_source('librispeech')` returns them (16-bit PCM stored as int64)."""
  return [{"speech": (tone(0.5 + 0.25 * i, 16000, 300 + 100 * i) * 20000).astype(np.int64),
           "text": f"HELLO NUMBER {i}".encode(), "id": f"84-121-{i}".encode(),
           "speaker_id": 84} for i in range(3)]


def test_librispeech_adapter_maps_an_example_to_an_asr_row():
  example = librispeech_examples()[1]
  row, arrays = tfds_source.librispeech_adapter(example, 7)
  assert row == {"id": "84-121-1", "task": "asr", "audio": "tfds://librispeech/84-121-1",
                 "audio_language": "en", "text": "hello number 1", "text_language": "en",
                 "itn": False}
  samples, rate = arrays[row["audio"]]
  assert rate == 16000 and samples.dtype == np.int16
  np.testing.assert_array_equal(samples, example["speech"])
  with pytest.raises(ValueError, match="exceed the 16-bit range"):
    tfds_source.pcm16(np.array([0, 40000]))


def test_tfds_entries_feed_the_pipeline_through_the_adapter(monkeypatch):
  examples = librispeech_examples() + [{"speech": np.zeros(100, np.int64), "id": b"no-text"}]
  opened = []

  def fake_data_source(name, split, data_dir):
    opened.append((name, split, data_dir))
    return examples

  monkeypatch.setattr(tfds_source, "open_data_source", fake_data_source)
  mixture = ml_collections.ConfigDict({"librispeech": mixture_entry(
      source="tfds", tfds_name="librispeech", tfds_split="train.clean100",
      tfds_data_dir="/data/tfds", tfds_adapter="librispeech")})
  config = data_config("", mixture=mixture, num_epochs=1, shuffle=False, batch_size=4,
                       max_bad_fraction=1.0)
  batches, stats = read_all(config)
  assert opened == [("librispeech", "train.clean100", "/data/tfds")]
  task = stats.tasks["librispeech"]
  assert task.examples == 3 and task.rejected == {"malformed": 1}
  assert "tfds:librispeech[train.clean100][3]" in task.first_rejected[0]
  assert "KeyError" in task.first_rejected[0]  # the example has no 'text'
  np.testing.assert_array_equal(batches[0]["audio_lengths"][:, 0], [8000, 12000, 16000, 0])
  for r, example in enumerate(examples[:3]):  # 16-bit samples arrive scaled to [-1, 1)
    np.testing.assert_array_equal(batches[0]["audio_wave"][r, 0, :8000 + 4000 * r],
                                  example["speech"].astype(np.float32) / 32768.0)


def test_tfds_needs_the_optional_package_and_says_so(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
  with pytest.raises(ImportError, match=r"tensorflow-datasets is not installed .*\[tfds\]"):
    tfds_source.TfdsSource("librispeech")


def test_adapter_lookup():
  assert tfds_source.get_adapter("librispeech") is tfds_source.librispeech_adapter
  assert tfds_source.get_adapter(
      "qwen_audio_jax.data.tfds_source:librispeech_adapter") is tfds_source.librispeech_adapter
  with pytest.raises(ValueError, match="unknown TFDS adapter 'nope'"):
    tfds_source.get_adapter("nope")
