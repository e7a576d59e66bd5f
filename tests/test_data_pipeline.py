"""The grain pipeline end to end on a tiny corpus written to tmp_path.

Determinism, exact resume through Orbax, disjoint host slices, mixture proportions, bad-data
accounting and the abort threshold, truncation rules, and the batch format.
"""

import collections
import json
import os

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
import soundfile
import transformers

from qwen_audio_jax import sharding
from qwen_audio_jax.audio import io as audio_io
from qwen_audio_jax.audio import lengths
from qwen_audio_jax.data import batching, global_batch
from qwen_audio_jax.data.config import DEMO_DIR, get_data_config, mixture_entry
from qwen_audio_jax.data.pipeline import DataPipeline
from qwen_audio_jax.data.stats import DataQualityError
from qwen_audio_jax.data.transforms import load_tokenizer

EVENT_LABELS = ("dog barking", "rain", "car horn")


def tone(seconds, rate, freq, amplitude=0.3):
  t = np.arange(int(round(seconds * rate))) / rate
  return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def asr_row(i, audio, **extra):
  return dict({"id": f"asr{i}", "task": "asr", "audio": audio, "audio_language": "en",
               "text": f"utterance number {i}", "text_language": "en", "itn": False}, **extra)


def event_row(i, audio):
  return {"id": f"ev{i}", "task": "event", "audio": audio, "audio_language": "unknown",
          "label": EVENT_LABELS[i % len(EVENT_LABELS)]}


BAD_FILES = {  # file -> reason it must be rejected with
    "bad/garbage.wav": "unreadable",
    "bad/missing.wav": "unreadable",
    "bad/empty.wav": "empty",
    "bad/nan.wav": "non_finite",
    "bad/long.wav": "too_long",
    "bad/short.wav": "too_short",
}


def write_corpus(root, n_asr=12, n_event=6, bad=False):
  """Clips of 0.4-0.8 s at 16 or 8 kHz (WAV and FLAC) and a manifest; returns its path."""
  os.makedirs(root / "clips", exist_ok=True)
  rows = []
  for i in range(n_asr):
    rate, ext = (16000, "wav") if i % 2 == 0 else (8000, "flac")
    name = f"clips/asr{i}.{ext}"
    soundfile.write(root / name, tone(0.4 + 0.1 * (i % 5), rate, 200 + 20 * i), rate)
    rows.append(asr_row(i, name))
  for i in range(n_event):
    name = f"clips/ev{i}.wav"
    soundfile.write(root / name, tone(0.5, 16000, 500 + 30 * i), 16000)
    rows.append(event_row(i, name))
  if bad:
    os.makedirs(root / "bad", exist_ok=True)
    (root / "bad/garbage.wav").write_bytes(b"RIFF" + os.urandom(200))
    soundfile.write(root / "bad/empty.wav", np.zeros(0, np.float32), 16000)
    nan = tone(0.5, 16000, 300)
    nan[100] = np.nan
    soundfile.write(root / "bad/nan.wav", nan, 16000, subtype="FLOAT")
    soundfile.write(root / "bad/long.wav", tone(31.0, 8000, 300), 8000)
    soundfile.write(root / "bad/short.wav", tone(0.01, 16000, 300), 16000)
    for j, name in enumerate(BAD_FILES):
      rows.append(asr_row(100 + j, name))
    rows.append({"id": "broken", "task": "asr", "audio": "clips/asr0.wav"})  # no text
  path = root / "train.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory):
  return write_corpus(tmp_path_factory.mktemp("bad_corpus"), n_asr=14, n_event=4, bad=True)


@pytest.fixture(scope="module")
def tokenizer():
  return load_tokenizer(None)


def data_config(manifest, weights=(("asr", 1.0), ("event", 1.0)), **overrides):
  config = get_data_config()
  config.mixture = overrides.pop("mixture", None) or ml_collections.ConfigDict(
      {name: mixture_entry(weight=w, paths=manifest, tasks=name) for name, w in weights})
  config.batch_size = 4
  config.text_buckets = (64, 128)
  config.features = "waveform"
  config.read_threads = 2
  config.update(overrides)
  return config


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def row_texts(batch, tokenizer):
  """Decoded target text of every segment of every row (identifies examples)."""
  out = []
  for r in range(batch["input_ids"].shape[0]):
    for s in range(1, batch["segment_ids"][r].max() + 1):
      keep = (batch["segment_ids"][r] == s) & batch["target_mask"][r]
      ids = [int(t) for t in batch["input_ids"][r][keep] if t != tokenizer.eot_id]
      out.append(tokenizer.decode(ids))
  return out


def test_same_seed_same_batches_other_seed_other_order(corpus, tokenizer):
  config = data_config(corpus, seed=3)
  first = take(DataPipeline(config, process_index=0, process_count=1).iterator(), 5)
  again = take(DataPipeline(config, process_index=0, process_count=1).iterator(), 5)
  assert_batches_equal(first, again)
  config.seed = 4
  other = take(DataPipeline(config, process_index=0, process_count=1).iterator(), 5)
  texts = lambda batches: [t for b in batches for t in row_texts(b, tokenizer)]
  assert texts(first) != texts(other)
  spoken = [t for t in texts(first) if t.startswith("utterance")]
  assert len(spoken) == 10 and len(set(spoken)) == 10  # a permutation: no repeat in an epoch


def test_batch_format_mel_mode(corpus, tokenizer):
  config = data_config(corpus, features="mel", shuffle=False, num_epochs=1, batch_size=2,
                       mixture=ml_collections.ConfigDict(
                           {"asr": mixture_entry(paths=corpus, tasks="asr")}))
  batch = next(DataPipeline(config, process_index=0, process_count=1).iterator())
  # Clips of 0.4-0.8 s: the batch carries the 5 s bucket's 500 frames.
  spec = batching.batch_spec(2, 64, max_clips=1, features="mel", n_mels=80,
                             audio_samples=5 * lengths.SAMPLE_RATE)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == spec
  # Row 0 is the manifest's first row: asr0.wav at 16 kHz, 0.4 s.
  wave = audio_io.load_audio(os.path.join(os.path.dirname(corpus), "clips/asr0.wav"))
  assert batch["audio_lengths"][0, 0] == wave.shape[0] == 6400
  reference = transformers.WhisperFeatureExtractor(feature_size=80)(
      wave, sampling_rate=16000, return_tensors="np")["input_features"][0]
  # The batch carries the reference features (the mel's own tight parity lives in its tests).
  np.testing.assert_allclose(batch["audio_mel"][0, 0], reference[:, :500], rtol=0, atol=1e-4)
  for r in range(2):
    start, n = batch["audio_starts"][r, 0], batch["audio_lengths"][r, 0]
    end = start + lengths.audio_span(int(n)) - 1
    assert batch["input_ids"][r, start] == tokenizer.audio_start_id
    assert batch["input_ids"][r, end] == tokenizer.audio_end_id
    assert (batch["input_ids"][r, start + 1:end] == tokenizer.audio_pad_id).all()
    assert not batch["target_mask"][r, :end + 1].any()  # no loss on the prompt and audio
    valid = batch["segment_ids"][r] == 1
    assert valid.sum() == np.flatnonzero(valid)[-1] + 1  # one segment, then padding
    np.testing.assert_array_equal(batch["positions"][r][valid], np.arange(valid.sum()))
    assert (batch["task_ids"][r][valid] == 0).all() and (batch["task_ids"][r][~valid] == -1).all()
    last = np.flatnonzero(valid)[-1]
    assert batch["input_ids"][r, last] == tokenizer.eot_id and batch["target_mask"][r, last]
  assert row_texts(batch, tokenizer) == ["utterance number 0", "utterance number 1"]


def test_waveform_mode_carries_the_resampled_samples(corpus):
  config = data_config(corpus, shuffle=False, num_epochs=1, batch_size=2,
                       mixture=ml_collections.ConfigDict(
                           {"asr": mixture_entry(paths=corpus, tasks="asr")}))
  batch = next(DataPipeline(config, process_index=0, process_count=1).iterator())
  assert batch["audio_wave"].shape == (2, 1, 5 * lengths.SAMPLE_RATE)  # the 5 s bucket
  wave = audio_io.load_audio(os.path.join(os.path.dirname(corpus), "clips/asr1.flac"))
  assert batch["audio_lengths"][1, 0] == wave.shape[0] == 8000  # 0.5 s at 8 kHz -> 16 kHz
  np.testing.assert_array_equal(batch["audio_wave"][1, 0, :8000], wave)
  assert not batch["audio_wave"][1, 0, 8000:].any()


def test_resume_mid_epoch_through_orbax_gives_the_same_batches(corpus, tmp_path):
  config = data_config(corpus, packing=True, max_clips_per_row=3, pack_bins=2)
  pipeline = DataPipeline(config, process_index=0, process_count=1)
  it = pipeline.iterator()
  take(it, 3)
  manager = ocp.CheckpointManager(tmp_path / "ckpt",
                                  item_handlers={"data": grain.checkpoint.CheckpointHandler()})
  manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  expected = take(it, 5)  # runs past the end of the first epoch (18 examples)
  restored = DataPipeline(config, process_index=0, process_count=1).iterator()
  manager.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  assert restored.stats.to_state() != pipeline.iterator().stats.to_state()  # counts came back
  assert_batches_equal(take(restored, 5), expected)
  assert restored.stats.to_state() == it.stats.to_state()


def test_two_hosts_read_disjoint_slices_that_cover_the_data(corpus):
  config = data_config(corpus, num_epochs=1)
  origins = []
  for host in range(2):
    pipeline = DataPipeline(config, process_index=host, process_count=2)
    assert pipeline.rows_per_batch == 2
    origins.append([x.origin for t in range(2) for x in pipeline.task_dataset(t)])
  assert not set(origins[0]) & set(origins[1])
  assert len(set(origins[0] + origins[1])) == len(origins[0]) + len(origins[1]) == 18
  assert abs(len(origins[0]) - len(origins[1])) <= 2


def test_mixture_proportions_follow_the_weights(corpus, bad_corpus):
  config = data_config(corpus, weights=(("asr", 3.0), ("event", 1.0)), batch_size=8)
  it = DataPipeline(config, process_index=0, process_count=1).iterator()
  counts = sum(batching.task_counts(b, 2) for b in take(it, 10))
  assert counts.sum() == 80
  assert abs(counts[0] / 80 - 0.75) <= 0.02
  assert it.stats.tasks["asr"].examples == counts[0]
  assert it.stats.metrics()["data/asr/share"] == pytest.approx(counts[0] / 80)
  # Bad examples do not shift the shares: the weights apply to delivered examples.
  config = data_config(bad_corpus, weights=(("asr", 1.0), ("event", 1.0)), batch_size=8,
                       max_bad_fraction=0.9)
  it = DataPipeline(config, process_index=0, process_count=1).iterator()
  counts = sum(batching.task_counts(b, 2) for b in take(it, 5))
  assert counts[0] == counts[1] == 20
  assert it.stats.tasks["asr"].num_rejected > 0


def test_bad_data_is_counted_per_task_and_named(bad_corpus):
  config = data_config(bad_corpus, num_epochs=1, max_bad_fraction=0.9)
  it = DataPipeline(config, process_index=0, process_count=1).iterator()
  batches = list(it)
  asr, event = it.stats.tasks["asr"], it.stats.tasks["event"]
  expected = {}
  for reason in BAD_FILES.values():
    expected[reason] = expected.get(reason, 0) + 1
  assert asr.rejected == expected
  assert asr.examples == 14 and event.examples == 4 and not event.rejected
  assert sum(batching.task_counts(b, 2).sum() for b in batches) == 18
  named = " ".join(asr.first_rejected)
  for name, reason in BAD_FILES.items():
    assert f"{name}" in named and f"({reason}" in named
  loaded = it.stats.load_rejected["asr"]
  assert loaded.rejected == {"malformed": 1} and "train.jsonl:" in loaded.first_rejected[0]
  assert "garbage.wav" in it.stats.report() and "malformed rows at load" in it.stats.report()


def test_past_the_bad_fraction_the_run_stops_naming_examples(bad_corpus):
  config = data_config(bad_corpus, max_bad_fraction=0.1, min_examples_before_abort=10,
                       mixture=ml_collections.ConfigDict(
                           {"asr": mixture_entry(paths=bad_corpus, tasks="asr")}))
  it = DataPipeline(config, process_index=0, process_count=1).iterator()
  with pytest.raises(DataQualityError, match=r"task 'asr': .* bad .*bad/"):
    take(it, 20)


def test_malformed_rows_alone_can_stop_the_run_at_load(bad_corpus):
  # The load-time check follows the same rule as the running one: once min_examples rows.
  config = data_config(bad_corpus, max_bad_fraction=0.01, min_examples_before_abort=21,
                       mixture=ml_collections.ConfigDict(
                           {"asr": mixture_entry(paths=bad_corpus, tasks="asr")}))
  with pytest.raises(DataQualityError, match=r"1 of 21 rows are malformed .*train.jsonl:\d+"):
    DataPipeline(config, process_index=0, process_count=1)


def test_missing_vocabulary_stops_the_pipeline_at_start(corpus, tmp_path):
  config = data_config(corpus, tokenizer_path=str(tmp_path / "missing" / "qwen.tiktoken"))
  with pytest.raises(ValueError, match=r"data config tokenizer_path='.*missing/qwen\.tiktoken': "
                     r"tokenizer file .* does not exist"):
    DataPipeline(config, process_index=0, process_count=1)


def test_truncation_rules_and_long_audio_trim(tmp_path):
  soundfile.write(tmp_path / "a.wav", tone(0.5, 16000, 300), 16000)
  soundfile.write(tmp_path / "long.wav", tone(3.0, 16000, 300), 16000)
  rows = [asr_row(0, "a.wav", text="word " * 200), asr_row(1, "a.wav"),
          asr_row(2, "long.wav"),
          {"id": "c", "task": "chat", "messages": [
              {"role": "user", "content": [{"audio": "a.wav"}, {"audio": "a.wav"},
                                           {"text": "Compare."}]},
              {"role": "assistant", "content": "Same."}]}]
  manifest = tmp_path / "m.jsonl"
  manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
  mixture = ml_collections.ConfigDict({"asr": mixture_entry(paths=str(manifest), tasks="asr"),
                                       "chat": mixture_entry(paths=str(manifest), tasks="chat")})
  base = dict(mixture=mixture, num_epochs=1, shuffle=False, max_bad_fraction=1.0,
              max_audio_seconds=2.0, batch_size=2)
  it = DataPipeline(data_config(str(manifest), **base), process_index=0,
                    process_count=1).iterator()
  batches = list(it)
  asr = it.stats.tasks["asr"]
  assert asr.examples == 2 and asr.truncated == 1 and asr.rejected == {"too_long": 1}
  assert it.stats.tasks["chat"].dropped == {"too_many_clips": 1}
  assert batches[0]["input_ids"].shape[1] == 128 and batches[0]["segment_ids"][0].all()
  it = DataPipeline(data_config(str(manifest), text_overflow="drop", long_audio="trim",
                                max_clips_per_row=2, **base),
                    process_index=0, process_count=1).iterator()
  batches = list(it)
  asr = it.stats.tasks["asr"]
  assert asr.dropped == {"text_too_long": 1} and asr.examples == 2 and asr.truncated == 1
  assert max(b["audio_lengths"].max() for b in batches) == 32000  # trimmed to 2 s
  assert it.stats.tasks["chat"].examples == 1


@pytest.mark.parametrize("stage", ["pretrain", "chat"])
def test_default_configs_read_every_row_of_the_bundled_demo_corpus(stage):
  rows = [json.loads(line) for line in open(os.path.join(DEMO_DIR, "eval.jsonl"))]
  expected = collections.Counter(r["task"] for r in rows)
  expected = ({"chat": expected["chat"]} if stage == "chat" else
              {t: n for t, n in expected.items() if t != "chat"})
  config = get_data_config(stage, "eval")
  config.features = "waveform"
  it = DataPipeline(config, process_index=0, process_count=1).iterator()
  assert sorted(config.mixture.keys()) == sorted(expected)  # every family of the corpus
  delivered = sum(batching.task_counts(b, len(expected)) for b in it)
  assert dict(zip(sorted(expected), delivered.tolist())) == expected
  for task in it.stats.tasks.values():
    assert not task.rejected and not task.dropped and not task.truncated


def test_worker_processes_are_deterministic_and_resume(corpus):
  config = data_config(corpus, worker_count=2, packing=True, max_clips_per_row=2)
  pipeline = DataPipeline(config, process_index=0, process_count=1)
  it = pipeline.iterator()
  head = take(it, 2)
  state = it.get_state()
  tail = take(it, 3)
  it.close()
  again = pipeline.iterator()
  assert_batches_equal(take(again, 2), head)
  again.set_state(json.loads(json.dumps(state)))
  assert_batches_equal(take(again, 3), tail)
  again.close()
  serial = DataPipeline(data_config(corpus, packing=True, max_clips_per_row=2),
                        process_index=0, process_count=1).iterator()
  assert sum(batching.task_counts(b, 2).sum() for b in take(serial, 5)) == sum(
      batching.task_counts(b, 2).sum() for b in head + tail)


def test_global_batch_is_sharded_over_the_batch_axes(corpus):
  mesh = sharding.make_mesh((2, 4, 1))
  config = data_config(corpus, batch_size=8)
  batch = next(DataPipeline(config, process_index=0, process_count=1).iterator())
  arrays = global_batch.make_global_batch(batch, mesh)
  for key, value in arrays.items():
    assert value.shape == batch[key].shape and value.dtype == batch[key].dtype
    assert value.sharding.spec[0] == ("data", "fsdp")
    assert len(value.addressable_shards) == 8
    assert value.addressable_shards[0].data.shape[0] == 1
    np.testing.assert_array_equal(np.asarray(value), batch[key])
  with pytest.raises(ValueError, match="multiple of 8"):
    global_batch.make_global_batch({k: v[:4] for k, v in batch.items()}, mesh)


def test_pad_text_length_keeps_padding_semantics(corpus):
  batch = next(DataPipeline(data_config(corpus), process_index=0, process_count=1).iterator())
  padded = global_batch.pad_text_length(batch, 128)
  assert padded["input_ids"].shape == (4, 128)
  for key in batching.TEXT_KEYS:
    np.testing.assert_array_equal(padded[key][:, :64], batch[key])
  assert (padded["task_ids"][:, 64:] == -1).all() and not padded["segment_ids"][:, 64:].any()
  assert padded["audio_wave"] is batch["audio_wave"]
  with pytest.raises(ValueError, match="cannot pad"):
    global_batch.pad_text_length(batch, 32)
  assert jax.process_count() == 1
  assert global_batch.agree_on_text_length(batch)["input_ids"].shape == (4, 64)


def test_finite_streams_end_together_across_processes(corpus, monkeypatch):
  mesh = sharding.make_mesh((2, 4, 1))
  pipeline = DataPipeline(data_config(corpus, num_epochs=1, batch_size=8), process_index=0,
                          process_count=1)
  local = list(pipeline.iterator())
  arrays = list(global_batch.global_batches(pipeline.iterator(), mesh,
                                            padding_batch=pipeline.padding_batch))
  assert len(arrays) == len(local) == 3  # 18 examples in rows of 8
  assert_batches_equal([{k: np.asarray(v) for k, v in b.items()} for b in arrays], local)
  # Another process still has two batches: this one keeps stepping with padding batches.
  others_done = iter([False, False, True])
  monkeypatch.setattr(global_batch, "_every_process", lambda flag: flag and next(others_done))
  arrays = list(global_batch.global_batches(pipeline.iterator(), mesh,
                                            padding_batch=pipeline.padding_batch))
  assert len(arrays) == len(local) + 2
  for padding in arrays[-2:]:
    assert not np.asarray(padding["segment_ids"]).any()
    assert (np.asarray(padding["task_ids"]) == -1).all()
    assert padding["audio_wave"].shape == local[0]["audio_wave"].shape


def test_length_grouping_is_deterministic_resumable_and_keeps_every_example(corpus, tokenizer,
                                                                            tmp_path):
  config = data_config(corpus, batch_size=2, length_group_window=6, audio_buckets=(0.6, 30.0))
  arrival = data_config(corpus, batch_size=2, audio_buckets=(0.6, 30.0))
  it = DataPipeline(config, process_index=0, process_count=1).iterator()
  grouped = take(it, 9)  # one epoch: 18 examples
  plain = take(DataPipeline(arrival, process_index=0, process_count=1).iterator(), 9)
  # The same examples, in another order, with less audio padding (clips of 0.4-0.8 s split
  # over the 0.6 s and 30 s buckets).
  texts = lambda batches: sorted(t for b in batches for t in row_texts(b, tokenizer))  # noqa
  assert texts(grouped) == texts(plain)
  audio = lambda batches: sum(b["audio_wave"].size for b in batches)  # noqa: E731
  assert audio(grouped) < audio(plain)
  # Deterministic, and resumable mid-window through Orbax.
  again = DataPipeline(config, process_index=0, process_count=1).iterator()
  assert_batches_equal(take(again, 9), grouped)
  it = DataPipeline(config, process_index=0, process_count=1).iterator()
  take(it, 4)  # 8 rows: inside the second window of 6
  manager = ocp.CheckpointManager(tmp_path / "ckpt",
                                  item_handlers={"data": grain.checkpoint.CheckpointHandler()})
  manager.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  expected = take(it, 6)
  restored = DataPipeline(config, process_index=0, process_count=1).iterator()
  manager.restore(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  assert_batches_equal(take(restored, 6), expected)


@pytest.mark.parametrize("features", ["mel", "waveform"])
def test_feature_cache_gives_the_same_batches_and_reads_each_clip_once(tmp_path, features):
  # Three epochs of two tasks that share their clips, one over-long clip trimmed and one
  # rejected: with the cache every clip is featurised once, the batches and counts unchanged.
  manifest = write_corpus(tmp_path, n_asr=8, n_event=4)
  soundfile.write(tmp_path / "long.wav", tone(3.0, 16000, 300), 16000)
  soundfile.write(tmp_path / "short.wav", tone(0.01, 16000, 300), 16000)
  rows = [json.loads(line) for line in open(manifest)]
  rows += [asr_row(50, "long.wav"), asr_row(51, "short.wav")]
  rows += [asr_row(60 + i, r["audio"]) for i, r in enumerate(rows) if r["task"] == "event"]
  with open(manifest, "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows))
  batches, stats, caches = {}, {}, {}
  for cache_mb in (0, 64):
    config = data_config(manifest, features=features, num_epochs=3, batch_size=2,
                         long_audio="trim", max_audio_seconds=2.0, max_bad_fraction=1.0,
                         feature_cache_mb=cache_mb, read_threads=0)  # exact counts
    pipeline = DataPipeline(config, process_index=0, process_count=1)
    it = pipeline.iterator()
    batches[cache_mb] = list(it)
    stats[cache_mb] = it.stats.to_state()
    caches[cache_mb] = pipeline.feature_cache
  assert_batches_equal(batches[0], batches[64])
  assert stats[0] == stats[64]  # trimmed and rejected examples are counted in every epoch
  assert stats[0]["tasks"]["asr"]["rejected"] == {"too_short": 3}
  assert caches[0] is None
  cache = caches[64]
  # 8 + 4 clips + the trimmed one; the event clips are read by both tasks; the too-short clip
  # is rejected every time and never cached.
  assert len(cache) == 13
  reads = 3 * (8 + 4 + 4 + 1)
  assert cache.misses == 13 + 3 and cache.hits == reads - 13
  assert sum(b["audio_lengths"].max() == 32000 for b in batches[64]) == 3  # trimmed to 2 s


def test_feature_cache_is_bounded_lru_and_starts_empty_in_a_worker():
  import pickle  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.data.feature_cache import FeatureCache  # pylint: disable=g-import-not-at-top
  cache = FeatureCache(max_bytes=3 * 400)
  clip = lambda v: np.full(100, v, np.float32)  # 400 bytes
  for k in "abc":
    cache.put(k, clip(ord(k)), 100, False)
  assert cache.get("a")[0][0] == ord("a")  # "a" is now the most recent
  cache.put("d", clip(4), 100, True)
  assert cache.get("b") is None and len(cache) == 3 and cache.nbytes == 1200
  assert cache.get("d")[1:] == (100, True)
  with pytest.raises(ValueError, match="read-only"):
    cache.get("a")[0][0] = 0  # shared by every example that reads the clip
  cache.put("huge", np.zeros(1000, np.float32), 1000, False)  # larger than the whole cache
  assert cache.get("huge") is None and len(cache) == 3
  worker = pickle.loads(pickle.dumps(cache))
  assert len(worker) == 0 and worker.max_bytes == cache.max_bytes
  with pytest.raises(ValueError, match="max_bytes"):
    FeatureCache(-1)
