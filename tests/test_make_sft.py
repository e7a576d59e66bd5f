"""make_sft's template path: schema-valid dialogues for every task family, determinism for a
seed, provenance, two-clip dialogues that point at the right clip, mixture ratios, user template
files (and their errors), resumption; and stage 2 training on the command's output."""

import json
import re
import os

import ml_collections
import numpy as np
import pytest

from qwen_audio_jax.data import make_sft
from qwen_audio_jax.data import manifest as manifest_lib
from qwen_audio_jax.data.config import DEMO_DIR, mixture_entry
from qwen_audio_jax.data.sft import builtin
from qwen_audio_jax.data.sft import templates as templates_lib
from qwen_audio_jax.data.sft.facts import as_sentence, row_facts
from qwen_audio_jax.text import chat, tasks
from qwen_audio_jax.text.tokenizer import QwenAudioTokenizer

from _train_configs import narrow, load_config

DEMO_TRAIN = os.path.join(DEMO_DIR, "train.jsonl")

# One or more rows of every task family (the fields each family's validation asks for).
ROWS = [
    {"id": "asr-1", "task": "asr", "audio": "clips/s1.wav", "audio_language": "en",
     "text": "the quick brown fox jumps", "text_language": "en"},
    {"id": "asr-2", "task": "asr", "audio": "clips/s2.wav", "audio_language": "en",
     "text": "good morning to you all here today"},
    {"id": "srwt-1", "task": "srwt", "audio": "clips/s1.wav", "audio_language": "en",
     "words": [{"word": "the", "start": 0.1, "end": 0.3}, {"word": "quick", "start": 0.35,
                                                         "end": 0.7}]},
    {"id": "tr-1", "task": "translation", "audio": "clips/s3.wav", "audio_language": "en",
     "text": "Guten Morgen", "text_language": "de"},
    {"id": "cap-1", "task": "caption", "audio": "clips/d1.wav", "audio_language": "unknown",
     "text": "a dog barks twice", "style": "plain"},
    {"id": "cap-2", "task": "caption", "audio": "clips/r1.wav", "audio_language": "unknown",
     "text": "rain falls on a roof"},
    {"id": "mus-1", "task": "music_description", "audio": "clips/m1.wav",
     "text": "a slow piano piece in a minor key"},
    {"id": "aqa-1", "task": "aqa", "audio": "clips/b1.wav", "audio_language": "unknown",
     "question": "How many beeps are there?", "answer": "three",
     "choices": ["one", "two", "three"]},
    {"id": "ev-1", "task": "event", "audio": "clips/d1.wav", "audio_language": "unknown",
     "label": "dog"},
    {"id": "ev-2", "task": "event", "audio": "clips/r1.wav", "audio_language": "unknown",
     "labels": ["rain", "thunder"]},
    {"id": "ev-3", "task": "event", "audio": "clips/d2.wav", "audio_language": "unknown",
     "label": "dog"},
    {"id": "sc-1", "task": "scene", "audio": "clips/p1.wav", "label": "park"},
    {"id": "sc-2", "task": "scene", "audio": "clips/p2.wav", "label": "metro station"},
    {"id": "emo-1", "task": "emotion", "audio": "clips/e1.wav", "audio_language": "en",
     "label": "happy"},
    {"id": "emo-2", "task": "emotion", "audio": "clips/e2.wav", "audio_language": "en",
     "label": "sad"},
    {"id": "vs-1", "task": "vocal_sound", "audio": "clips/v1.wav", "label": "laughter"},
    {"id": "spk-1", "task": "speaker_meta", "audio": "clips/s2.wav", "audio_language": "en",
     "text": "an adult woman with a calm voice"},
    {"id": "song-1", "task": "song_meta", "audio": "clips/m2.wav",
     "text": "a jazz song sung by a man"},
    {"id": "slu-1", "task": "slu", "audio": "clips/c1.wav", "audio_language": "en",
     "scenario": "alarm", "action": "set",
     "entities": [{"type": "time", "value": "seven am"}]},
    {"id": "ner-1", "task": "ner", "audio": "clips/n1.wav", "audio_language": "en",
     "entities": [{"type": "person", "value": "Ada"}, {"type": "city", "value": "Paris"}]},
    {"id": "note-1", "task": "note_analysis", "audio": "clips/k1.wav", "pitch": 60,
     "velocity": 100, "instrument": "piano", "sonic": ["bright"]},
    {"id": "chat-1", "task": "chat", "messages": [
        {"role": "user", "content": [{"audio": "clips/s1.wav"}, {"text": "Hi?"}]},
        {"role": "assistant", "content": "Hello."}]},
]


def write_manifest(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


@pytest.fixture
def every_family(tmp_path):
  (tmp_path / "in").mkdir()
  return write_manifest(tmp_path / "in" / "train.jsonl", ROWS)


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def run(manifests, out, **kwargs):
  return make_sft.run(make_sft.Options(manifests=list(manifests), out=str(out), **kwargs))


def test_every_family_gives_schema_valid_dialogues_with_provenance(every_family, tmp_path):
  assert set(tasks.TASKS) <= {r["task"] for r in ROWS}  # the input covers every family
  out = tmp_path / "out" / "chat.jsonl"
  report = run([every_family], out, mix={"pair": 2.0})
  rows = read_jsonl(out)
  by_id = {r["id"]: r for r in ROWS}

  # The pipeline's reader accepts the file, and every dialogue tokenises.
  scanned = manifest_lib.read_manifest(str(out), strict=True)
  assert len(scanned) == len(rows) == report["dialogues_out"]["total"]
  tokenizer = QwenAudioTokenizer.load()
  for row in rows:
    n_clips = len(manifest_lib.clip_refs(row))
    encoded = chat.encode_dialogue(row, tokenizer, [16000] * n_clips)
    assert encoded.target_mask.any()

  # Every family of the input is covered, by the generator the report says.
  families = report["dialogues_out"]["by_family"]
  assert set(families) == set(tasks.TASKS) | {"chat", "pair"}
  for family in tasks.TASKS:
    assert families[family]["template"] >= 1, family
  assert families["chat"] == {"source": 1}
  assert report["rows_in"]["total"] == len(ROWS) and report["rejected"]["dialogues"] == {}
  assert report["no_template"] == {}

  for row in rows:
    prov = row["provenance"]
    assert prov["seed"] == 0 and prov["generator"] in ("template", "source")
    for source in prov["sources"]:
      assert source["manifest"] == every_family
      line = ROWS.index(by_id[source["id"]]) + 1
      assert source["line"] == line and source["task"] == by_id[source["id"]]["task"]
    # The clips of the dialogue are the sources' clips, in order, relative to the output.
    clips = clip_paths(row, out.parent)
    expected = [os.path.normpath(os.path.join(os.path.dirname(every_family), path))
                for s in prov["sources"] for path in _paths(by_id[s["id"]])]
    if prov["generator"] == "template":
      assert clips == expected
      assert prov["template"] in row["id"]
      template_family = "pair" if len(prov["sources"]) == 2 else prov["sources"][0]["task"]
      assert row["id"].split("/")[-1] == prov["template"]
      assert prov["template"].split(".")[0] == template_family


def clip_paths(row, out_dir):
  """A dialogue's clips as absolute paths (they are written relative to the output's folder)."""
  return [os.path.normpath(os.path.join(out_dir, c.path)) for c in manifest_lib.clip_refs(row)]


def _paths(row):
  return [c.path for c in manifest_lib.clip_refs(row)]


def test_dialogue_contents_follow_the_labels(every_family, tmp_path):
  """Template answers carry the source row's transcript, labels and counts."""
  out = tmp_path / "chat.jsonl"
  run([every_family], out, default_ratio=3.0, mix={"pair": 0})
  by_id = {r["id"]: r for r in ROWS}
  seen = set()
  for row in read_jsonl(out):
    prov = row["provenance"]
    if prov["generator"] != "template":
      continue
    source = by_id[prov["sources"][0]["id"]]
    answers = " ".join(m["content"] for m in row["messages"] if m["role"] == "assistant")
    template = prov["template"]
    seen.add(template)
    if template in ("asr.what_said", "asr.words_followup"):
      assert as_sentence(source["text"]) in answers
    if template == "asr.words_followup":
      assert f"{len(source['text'].split())} words" in answers
    if template.startswith("event."):
      labels = source.get("labels") or [source["label"]]
      assert all(label in answers for label in labels)
    if template == "event.yes_no":  # the absent label is another row's, not this one's
      question = row["messages"][0]["content"][-1]["text"]
      absent = [l for l in ("dog", "rain", "thunder") if l in question]
      assert absent and not set(absent) & set(source.get("labels") or [source["label"]])
    if template == "aqa.choices":
      assert answers == source["answer"]
    if template == "note_analysis.pitch":
      assert "C4" in answers and ("MIDI pitch 60" in answers or "MIDI 60" in answers)
  assert {"asr.words_followup", "event.yes_no", "aqa.choices", "note_analysis.pitch"} <= seen


def test_two_clip_dialogues_point_at_the_right_clip(tmp_path):
  """On the demo corpus (whatever its rows): the clip a pair dialogue's answer names is the one
  that has the property asked about."""
  out = tmp_path / "chat.jsonl"
  report = run([DEMO_TRAIN], out, mix={"pair": 1.0}, chat="skip")
  rows = {r["id"]: r for r in read_jsonl(DEMO_TRAIN)}
  pairs = [r for r in read_jsonl(out) if r["id"].startswith("pair/")]
  assert len(pairs) == report["pairs"]["wanted"] - report["pairs"]["unmatched"] > 50
  checked = set()
  for row in pairs:
    prov = row["provenance"]
    first, second = (rows[s["id"]] for s in prov["sources"])
    target_n = prov["target_clip"]
    target, other = (first, second) if target_n == 1 else (second, first)
    ordinal = ("first", "second")[target_n - 1]
    assert clip_paths(row, tmp_path) == [os.path.join(DEMO_DIR, r["audio"])
                                         for r in (first, second)]
    assert first["audio"] != second["audio"]
    question = row["messages"][0]["content"][-1]["text"]
    answer = row["messages"][1]["content"]
    name = prov["template"]
    checked.add(name)
    t, o, f, s_ = (row_facts(r) for r in (target, other, first, second))
    if name == "pair.which_speech":
      assert tasks.get_task(target["task"]).speech and not tasks.get_task(other["task"]).speech
      assert answer.startswith(f"The {ordinal} ")
    elif name == "pair.transcribe_one":
      assert ordinal in question or f"audio {target_n}" in question.lower()
      assert t["sentence"] in answer
    elif name == "pair.which_event":
      assert t["label"] in question and t["label"] != o["label"]
      assert answer.startswith(f"The {ordinal} clip;") or answer == f"Audio {target_n}."
    elif name == "pair.more_words":
      assert t["n_words"] > o["n_words"] and answer.startswith(f"In the {ordinal} clip")
    elif name == "pair.describe_both":
      assert answer == f"First: {f['caption']} Second: {s_['caption']}"
      assert row["messages"][3]["content"] == t["caption"] and ordinal in (
          row["messages"][2]["content"])
    elif name in ("pair.same_event", "pair.different_event"):
      same = f["labels"] == s_["labels"]
      assert same == (name == "pair.same_event")
      assert f["labels"] in answer and (same or answer.index(f["labels"]) < answer.index(
          s_["labels"]))
  assert {"pair.which_speech", "pair.which_event", "pair.describe_both"} <= checked


def test_deterministic_for_a_seed(every_family, tmp_path):
  a, b, c = (tmp_path / f"{name}.jsonl" for name in "abc")
  run([every_family, DEMO_TRAIN], a, seed=3)
  run([every_family, DEMO_TRAIN], b, seed=3)
  run([every_family, DEMO_TRAIN], c, seed=4)
  assert a.read_bytes() == b.read_bytes()
  strip = lambda p: [dict(r, provenance=None) for r in read_jsonl(p)]
  assert strip(a) != strip(c)
  # A row's dialogues depend on the seed and the row, not on where the row comes in the input.
  reordered = tmp_path / "reordered.jsonl"
  run([DEMO_TRAIN, every_family], reordered, seed=3, mix={"pair": 0})
  key = lambda r: r["id"]
  assert sorted(read_jsonl(reordered), key=key) == sorted(
      [r for r in read_jsonl(a) if not r["id"].startswith("pair/")], key=key)


def test_mixture_ratio_per_family(tmp_path):
  out = tmp_path / "chat.jsonl"
  report = run([DEMO_TRAIN], out, mix={"asr": 0.5, "event": 2, "caption": 0, "pair": 0},
               chat="skip")
  rows_in = report["rows_in"]["by_family"]
  out_by = report["dialogues_out"]["by_family"]
  assert "caption" not in out_by and "pair" not in out_by and "chat" not in out_by
  assert out_by["event"]["template"] == 2 * rows_in["event"]  # two distinct templates each
  assert 0.3 * rows_in["asr"] <= out_by["asr"]["template"] <= 0.7 * rows_in["asr"]
  assert out_by["srwt"]["template"] == rows_in["srwt"]  # default ratio 1
  per_row = {}
  for row in read_jsonl(out):
    per_row.setdefault(row["provenance"]["sources"][0]["id"], []).append(
        row["provenance"]["template"])
  assert all(len(set(t)) == len(t) for t in per_row.values())


def test_user_templates_from_a_file(every_family, tmp_path):
  path = tmp_path / "mine.jsonl"
  path.write_text("# my templates\n\n" + json.dumps(
      {"name": "mine.loud", "family": "event", "system": "You are terse.",
       "turns": [{"user": ["Name it.", "Say what it is."], "assistant": "{labels}!"},
                 {"user": "Anything else?", "assistant": "{n_labels} label(s)."}]}) + "\n")
  out = tmp_path / "chat.jsonl"
  report = run([every_family], out, templates=[str(path)], builtin_templates=False)
  rows = read_jsonl(out)
  assert {r["provenance"]["template"] for r in rows if r["provenance"]["generator"]
          == "template"} == {"mine.loud"}
  assert report["dialogues_out"]["by_family"]["event"] == {"template": 3}
  assert report["no_template"]["asr"] == 2  # no template for them: counted
  dog = next(r for r in rows if r["id"] == "ev-1/mine.loud")
  assert dog["messages"][0] == {"role": "system", "content": "You are terse."}
  assert dog["messages"][2]["content"] == "dog!" and dog["messages"][4]["content"] == \
      "1 label(s)."


@pytest.mark.parametrize("line, message", [
    ('{"name": "x", "family": "event", "turns": [{"user": "Hi", "assistant": "{colour}"}]}',
     r"placeholder \{colour\} is not a fact of family 'event'"),
    ('{"name": "x", "family": "evnt", "turns": []}', r"field 'family' is 'evnt'"),
    ('{"name": "x", "family": "asr"}', r"field 'turns' must be a non-empty list"),
    ('{"name": "x", "family": "asr", "turns": [{"user": "Hi"}]}',
     r"turns\[0\] must be an object with exactly 'user' and 'assistant'"),
    ('{"name": "x", "family": "asr", "turns": [{"user": [], "assistant": "a"}]}',
     r"turns\[0\]\.user: expected a non-empty string"),
    ('{"name": "x", "family": "pair", "turns": [{"user": "Hi", "assistant": "{label}"}]}',
     r"placeholder \{label\} is not a pair fact"),
    ('{"name": "x", "family": "pair", "differ": ["colour"], '
     '"turns": [{"user": "Hi", "assistant": "{first_label}"}]}', r"unknown fact 'colour'"),
    ('{"name": "x", "family": "asr", "more": "n_words", "turns": []}', r"for family 'pair' only"),
    ('{"name": "x", "family": "asr", "turns": [{"user": "{transcript!r}", "assistant": "a"}]}',
     r"must be a plain fact name"),
    ('{"name": "x", "family": "asr", "colour": 1, "turns": []}', r"unknown field\(s\) \['colour'\]"),
    ('{"name": "x", "family": "asr", "turns": [{"user": "Hi {", "assistant": "a"}]}',
     r"bad placeholder"),
    ('{"name": "x", "family": "asr"', r"invalid JSON"),
])
def test_template_file_errors_name_the_file_and_line(tmp_path, line, message):
  good = '{"name": "ok", "family": "asr", "turns": [{"user": "Hi", "assistant": "{sentence}"}]}'
  path = tmp_path / "bad.jsonl"
  path.write_text(good + "\n\n" + line + "\n")
  with pytest.raises(templates_lib.TemplateError, match=rf"^{re.escape(str(path))}:3[ :].*{message}"):
    templates_lib.load_templates(str(path))


def test_duplicate_template_names_are_refused(tmp_path):
  path = tmp_path / "dup.jsonl"
  path.write_text(json.dumps({"name": "asr.what_said", "family": "asr", "turns": [
      {"user": "Hi", "assistant": "{sentence}"}]}) + "\n")
  with pytest.raises(templates_lib.TemplateError, match="'asr.what_said' is used twice"):
    run([DEMO_TRAIN], tmp_path / "o.jsonl", templates=[str(path)])


def test_list_templates_round_trips_through_the_file_format(tmp_path, capsys):
  assert make_sft.main(["--list_templates"]) == 0
  path = tmp_path / "listed.jsonl"
  path.write_text(capsys.readouterr().out)
  assert templates_lib.load_templates(str(path)) == builtin.builtin_templates()
  families = {t.family for t in builtin.builtin_templates()}
  assert families == set(tasks.TASKS) | {"pair"}  # every family has built-in templates


def test_bad_input_rows_are_counted_and_duplicate_ids_refused(tmp_path):
  path = tmp_path / "in.jsonl"
  path.write_text(json.dumps(ROWS[0]) + "\n{not json\n" + json.dumps(
      {"id": "e", "task": "event", "audio": "a.wav"}) + "\n")
  report = run([str(path)], tmp_path / "o.jsonl")
  assert report["rows_in"]["malformed"] == 2 and report["rows_in"]["total"] == 3
  assert report["rows_in"]["malformed_examples"][0].startswith(f"{path}:2: invalid JSON")
  assert "field 'label'" in report["rows_in"]["malformed_examples"][1]
  with pytest.raises(manifest_lib.ManifestError, match=f"{path}:2: .*invalid JSON"):
    run([str(path)], tmp_path / "o2.jsonl", strict=True)
  path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[0]) + "\n")
  with pytest.raises(manifest_lib.ManifestError, match=rf"{path}:2: id 'asr-1' .* {path}:1"):
    run([str(path)], tmp_path / "o3.jsonl")
  with pytest.raises(ValueError, match="--mix: unknown family 'asrr'"):
    run([str(path)], tmp_path / "o4.jsonl", mix={"asrr": 1.0})


def test_an_interrupted_run_resumes_without_loss_or_duplicates(every_family, tmp_path):
  straight = tmp_path / "straight.jsonl"
  run([every_family, DEMO_TRAIN], straight)
  out = tmp_path / "chat.jsonl"
  with pytest.raises(KeyboardInterrupt):
    run([every_family, DEMO_TRAIN], out, stop_after=40)
  with open(out, "a") as f:  # a line torn by a kill mid-write
    f.write('{"id": "torn')
  report = run([every_family, DEMO_TRAIN], out)
  assert report["dialogues_out"]["already_present"] == 40
  assert report["dialogues_out"]["written_this_run"] == len(read_jsonl(straight)) - 40
  assert out.read_bytes() == straight.read_bytes()
  again = run([every_family, DEMO_TRAIN], out)  # complete: nothing more is written
  assert again["dialogues_out"]["written_this_run"] == 0
  assert out.read_bytes() == straight.read_bytes()


def test_sft_demo_config_trains_on_the_command_output(tmp_path, tmp_path_factory):
  """`configs/sft.py:demo` trains a few steps on dialogues this command made from the demo
  corpus's labelled rows (its own dialogue rows left out)."""
  from qwen_audio_jax import train  # pylint: disable=g-import-not-at-top
  out = tmp_path / "sft" / "chat.jsonl"
  assert make_sft.main(["--manifest", DEMO_TRAIN, "--out", str(out), "--chat", "skip",
                        "--mix", "srwt=0"]) == 0  # srwt's timed transcripts: long rows
  # The settings of test_train_loop's stage-2 run, so that the suite compiles the step once
  # (the persistent compilation cache it shares); only the data differ.
  c = load_config("sft")
  narrow(c)
  c.data.mixture = ml_collections.ConfigDict({"chat": mixture_entry(paths=str(out),
                                                                    tasks="chat")})
  c.mesh.data, c.mesh.tensor = 4, 2
  c.data.batch_size = c.eval_data.batch_size = 4
  c.data.text_buckets = c.eval_data.text_buckets = (256,)
  steps = c.total_steps = 6
  c.optim.learning_rate = 5e-3
  c.optim.warmup_steps = 2
  c.log_every = 3
  c.eval_every = steps
  c.eval_steps = 1
  c.checkpoint.every_steps = steps
  c.compilation_cache_dir = str(tmp_path_factory.getbasetemp().parent / "train_loop_jax_cache")
  result = train.run(c, str(tmp_path / "run"))
  assert result.step == steps
  losses = [result.history[s]["loss"] for s in sorted(result.history)]
  assert len(losses) == steps and np.all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05
  assert np.isfinite(result.evals[steps]["eval/loss"])


def test_command_line_errors_name_the_input(tmp_path, capsys):
  bad = tmp_path / "t.jsonl"
  bad.write_text('{"name": "x", "family": "asr", "turns": [{"user": "{nope}", '
                 '"assistant": "a"}]}\n')
  assert make_sft.main(["--manifest", DEMO_TRAIN, "--out", str(tmp_path / "o.jsonl"),
                        "--templates", str(bad)]) == 2
  assert f"{bad}:1 (template 'x'): placeholder {{nope}}" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    make_sft.main(["--manifest", DEMO_TRAIN, "--out", "o.jsonl", "--mix", "asr"])
  with pytest.raises(SystemExit):
    make_sft.main(["--manifest", DEMO_TRAIN, "--out", "o.jsonl", "--llm"])
  assert "--llm needs --llm_base_url" in capsys.readouterr().err
