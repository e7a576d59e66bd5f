"""The multitask tag format: prompts, loss masks, targets, parsers, timestamps, bad rows."""

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from qwen_audio_jax.audio import lengths
from qwen_audio_jax.text import tasks, timestamps
from qwen_audio_jax.text.tokenizer import QwenAudioTokenizer

SECOND = 16000


@pytest.fixture(scope="module")
def tok():
  return QwenAudioTokenizer.load()


ROWS = {
    "asr": dict(task="asr", audio="a.wav", audio_language="en", text="hello world", itn=False),
    "srwt": dict(task="srwt", audio="a.wav", audio_language="en",
                 words=[dict(word="hello", start=0.0, end=0.48),
                        dict(word="world", start=0.52, end=0.9)]),
    "translation": dict(task="translation", audio="a.wav", audio_language="en",
                        text_language="de", text="Hallo Welt"),
    "caption": dict(task="caption", audio="a.wav", text="A dog barks.", style="audiocaps"),
    "music_description": dict(task="music_description", audio="a.wav", text="Slow piano."),
    "aqa": dict(task="aqa", audio="a.wav", question="How many beeps?", answer="three",
                choices=["two", "three"]),
    "event": dict(task="event", audio="a.wav", labels=["Dog", "Vehicle horn, car horn"]),
    "scene": dict(task="scene", audio="a.wav", label="park"),
    "emotion": dict(task="emotion", audio="a.wav", audio_language="en", label="happy"),
    "vocal_sound": dict(task="vocal_sound", audio="a.wav", label="cough"),
    "slu": dict(task="slu", audio="a.wav", audio_language="en", scenario="alarm", action="set",
                entities=[dict(type="time", value="seven am")]),
    "speaker_meta": dict(task="speaker_meta", audio="a.wav", audio_language="en",
                         text="female, twenties"),
    "song_meta": dict(task="song_meta", audio="a.wav", text="genre: jazz"),
    "ner": dict(task="ner", audio="a.wav", audio_language="en",
                entities=[dict(type="person", value="Anna"), dict(type="city", value="Köln")]),
    "note_analysis": dict(task="note_analysis", audio="a.wav", pitch=60, velocity=100,
                          instrument="keyboard", sonic=["bright", "percussive"]),
}

# Tags as Qwen-Audio's released evaluation scripts write them (eval_audio/evaluate_*.py), and the
# documented choices for the families without a released prompt.
EXPECTED_PROMPTS = {
    "asr": "<|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>",
    "srwt": "<|startoftranscript|><|en|><|transcribe|><|en|><|timestamps|>",
    "translation": "<|startoftranscript|><|en|><|translate|><|de|><|notimestamps|><|itn|>",
    "caption": ("<|startofanalysis|><|unknown|><|caption|><|en|><|notimestamps|>"
                "<|caption_audiocaps|>"),
    "music_description": ("<|startofanalysis|><|unknown|><|caption|><|en|><|notimestamps|>"
                          "<|music_description|>"),
    "aqa": ("<|startofanalysis|><|en|><|question|>How many beeps?<|choice|>two<|choice|>three"
            "<|answer|>"),
    "event": "<|startofanalysis|><|unknown|><|keyword|><|en|><|notimestamps|><|event|>",
    "scene": "<|startofanalysis|><|unknown|><|keyword|><|en|><|notimestamps|><|scene|>",
    "emotion": ("<|startofanalysis|><|en|><|keyword|><|en|><|notimestamps|>"
                "<|emotion_recognition|>"),
    "vocal_sound": ("<|startofanalysis|><|en|><|keyword|><|en|><|notimestamps|>"
                    "<|vocal_classification|>"),
    "speaker_meta": "<|startofanalysis|><|en|><|keyword|><|en|><|notimestamps|><|speaker_meta|>",
    "song_meta": "<|startofanalysis|><|unknown|><|keyword|><|en|><|notimestamps|><|song_meta|>",
    "slu": ("<|startofanalysis|><|en|><|keyword|><|en|><|notimestamps|>"
            "<|speech_understanding|>"),
    "ner": ("<|startofanalysis|><|en|><|keyword|><|en|><|notimestamps|>"
            "<|named_entity_recognition|>"),
    "note_analysis": ("<|startofanalysis|><|unknown|><|keyword|><|en|><|notimestamps|>"
                      "<|note_analysis|>"),
}

EXPECTED_TARGETS = {
    "asr": "hello world",
    "srwt": "<|0.00|>hello<|0.48|><|0.52|> world<|0.90|>",
    "translation": "Hallo Welt",
    "caption": "A dog barks.",
    "music_description": "Slow piano.",
    "aqa": "three",
    "event": "Dog<|delim|>Vehicle horn, car horn",
    "scene": "park",
    "emotion": "happy",
    "vocal_sound": "cough",
    "speaker_meta": "female, twenties",
    "song_meta": "genre: jazz",
    "slu": ("<|scenario|>alarm<|action|>set<|entities|><|startofentitytype|>time"
            "<|endofentitytype|><|startofentityvalue|>seven am<|endofentityvalue|>"),
    "ner": ("<|startofentitytype|>person<|endofentitytype|><|startofentityvalue|>Anna"
            "<|endofentityvalue|><|startofentitytype|>city<|endofentitytype|>"
            "<|startofentityvalue|>Köln<|endofentityvalue|>"),
    "note_analysis": ("<|pitch|><|midi_pitch_60|><|velocity|><|midi_velocity_100|>"
                      "<|instrument|>keyboard<|sonic|>bright, percussive"),
}


def test_every_family_is_covered():
  assert set(ROWS) == set(tasks.TASKS) == set(EXPECTED_PROMPTS) == set(EXPECTED_TARGETS)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_prompt_target_and_loss_mask(tok, name):
  """Ids = prompt + target + <|endoftext|>; the mask is True exactly on target + <|endoftext|>."""
  row = ROWS[name]
  assert tasks.prompt(row) == "<audio>a.wav</audio>" + EXPECTED_PROMPTS[name]
  example = tasks.encode_example(row, tok, [2 * SECOND], clip_seconds=2.0)
  ids, mask = example.input_ids, example.target_mask
  assert ids.dtype == np.int32 and mask.dtype == np.bool_ and ids.shape == mask.shape
  assert example.task == name and example.audio_paths == ["a.wav"]
  assert example.audio_starts.dtype == np.int32 and list(example.audio_starts) == [0]
  prompt_ids = tok.encode("<audio>a.wav</audio>" + EXPECTED_PROMPTS[name], [2 * SECOND])
  target_ids = tok.encode(EXPECTED_TARGETS[name]) + [tok.eot_id]
  np.testing.assert_array_equal(ids, prompt_ids + target_ids)
  np.testing.assert_array_equal(mask, [False] * len(prompt_ids) + [True] * len(target_ids))
  span = lengths.audio_span(2 * SECOND)
  assert ids[0] == tok.audio_start_id and ids[span - 1] == tok.audio_end_id
  assert not mask[:span].any()
  assert tok.decode(ids, audio_paths=example.audio_paths) == (
      tasks.prompt(row) + EXPECTED_TARGETS[name] + "<|endoftext|>")


@pytest.mark.parametrize("name", sorted(ROWS))
def test_prompt_only_encoding(tok, name):
  example = tasks.encode_prompt(ROWS[name], tok, [SECOND])
  assert not example.target_mask.any()
  assert tok.decode(example.input_ids, audio_paths=example.audio_paths) == tasks.prompt(ROWS[name])


def test_prompt_only_needs_no_target_fields(tok):
  row = {k: v for k, v in ROWS["asr"].items() if k != "text"}
  example = tasks.encode_prompt(row, tok, [SECOND])
  assert example.input_ids[-1] == tok.special_id("<|wo_itn|>")
  srwt = tasks.encode_prompt({"task": "srwt", "audio": "a.wav", "audio_language": "zh"}, tok,
                             [SECOND], response_prefix="<|0.00|>")
  assert tok.decode(srwt.input_ids, audio_paths=srwt.audio_paths) == (
      "<audio>a.wav</audio><|startoftranscript|><|zh|><|transcribe|><|zh|><|timestamps|><|0.00|>")


def target_text(tok, name, row=None):
  ex = tasks.encode_example(row or ROWS[name], tok, [2 * SECOND], clip_seconds=2.0)
  return tok.decode(ex.input_ids[ex.target_mask])


def test_parsers_recover_the_fields(tok):
  assert tasks.parse_output("asr", target_text(tok, "asr")) == {"text": "hello world"}
  parsed = tasks.parse_output("srwt", target_text(tok, "srwt"))
  assert [(w.word, w.start, w.end) for w in parsed["words"]] == [
      ("hello", 0.0, 0.48), ("world", 0.52, 0.9)]
  assert parsed["text"] == "hello world"
  assert tasks.parse_output("event", target_text(tok, "event")) == {
      "labels": ["Dog", "Vehicle horn, car horn"]}
  assert tasks.parse_output("scene", target_text(tok, "scene")) == {"labels": ["park"]}
  assert tasks.parse_output("aqa", target_text(tok, "aqa")) == {"answer": "three"}
  assert tasks.parse_output("caption", target_text(tok, "caption")) == {"text": "A dog barks."}
  assert tasks.parse_output("slu", target_text(tok, "slu")) == {
      "scenario": "alarm", "action": "set", "entities": [{"type": "time", "value": "seven am"}]}
  assert tasks.parse_output("ner", target_text(tok, "ner")) == {
      "entities": [{"type": "person", "value": "Anna"}, {"type": "city", "value": "Köln"}]}
  assert tasks.parse_output("note_analysis", target_text(tok, "note_analysis")) == {
      "pitch": 60, "velocity": 100, "instrument": "keyboard", "sonic": ["bright", "percussive"]}


def test_parse_generated_ids_stops_at_endoftext(tok):
  ids = tok.encode("<|0.00|>hi<|0.30|><|endoftext|><|0.40|>junk")
  parsed = tasks.parse_output_ids("srwt", np.asarray(ids), tok)
  assert [(w.word, w.start, w.end) for w in parsed["words"]] == [("hi", 0.0, 0.3)]


def test_srwt_parser_reads_both_timestamp_layouts():
  wrapped = tasks.parse_output("srwt", "<|0.00|>a<|0.20|><|0.30|> b<|0.50|>")
  shared = tasks.parse_output("srwt", "<|0.00|>a<|0.20|> b<|0.50|>")
  assert [(w.word, w.start, w.end) for w in wrapped["words"]] == [("a", 0.0, 0.2), ("b", 0.3, 0.5)]
  assert [(w.word, w.start, w.end) for w in shared["words"]] == [("a", 0.0, 0.2), ("b", 0.2, 0.5)]
  for bad in ("a<|0.20|>", "<|0.00|>a<|0.20|> b", "<|0.00|>a<|31.00|>"):
    with pytest.raises(ValueError):
      tasks.parse_output("srwt", bad)


def test_srwt_timestamps_are_quantised_and_clamped(tok):
  # A word ending a frame past the clip (within the 0.05 s tolerance) is clamped to it.
  row = dict(ROWS["srwt"], words=[dict(word="a", start=0.004, end=0.005),
                                  dict(word="b", start=1.2, end=2.04)])
  assert target_text(tok, "srwt", row) == "<|0.00|>a<|0.01|><|1.20|> b<|2.00|><|endoftext|>"
  long_row = dict(row, words=[dict(word="a", start=29.996, end=45.0)])
  ex = tasks.encode_example(long_row, tok, [lengths.N_SAMPLES])  # no clip_seconds: 30 s cap
  assert tok.decode(ex.input_ids[ex.target_mask]) == "<|30.00|>a<|30.00|><|endoftext|>"


def test_srwt_words_beyond_the_clip_are_refused_not_clamped(tok):
  # A word at 50-60 s of a 2 s clip used to become <|2.00|>again<|2.00|>.
  row = dict(ROWS["srwt"], words=[dict(word="hello", start=0.0, end=0.5),
                                  dict(word="again", start=50.0, end=60.0)])
  with pytest.raises(ValueError, match=r"field 'words'\[1\] \('again'\): end 60.0 s is beyond "
                     r"the end of the clip \(2.00 s; tolerance 0.05 s\)"):
    target_text(tok, "srwt", row)
  just_past = dict(row, words=[dict(word="hello", start=0.0, end=2.06)])
  with pytest.raises(ValueError, match="beyond the end of the clip"):
    target_text(tok, "srwt", just_past)


def test_srwt_chinese_words_are_not_spaced(tok):
  row = dict(task="srwt", audio="a.wav", audio_language="zh",
             words=[dict(word="你好", start=0.0, end=0.4), dict(word="世界", start=0.41, end=0.9)])
  text = target_text(tok, "srwt", row)
  assert text == "<|0.00|>你好<|0.40|><|0.41|>世界<|0.90|><|endoftext|>"
  assert tasks.parse_output("srwt", text)["text"] == "你好世界"


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.integers(0, 3000))
def test_timestamp_tokens_round_trip(centiseconds):
  seconds = centiseconds / 100
  token = timestamps.format_timestamp(seconds)
  assert timestamps.parse_timestamp(token) == pytest.approx(seconds)
  assert timestamps.to_centiseconds(seconds) == centiseconds


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(st.lists(st.tuples(st.text("abcxyzäß", min_size=1, max_size=5),
                                     st.integers(0, 300), st.integers(0, 300)),
                           min_size=1, max_size=5))
def test_srwt_target_round_trips(words):
  """Words at 0.01 s times (at most 30 s) -> target text -> the same words and times."""
  tok = QwenAudioTokenizer.load()
  rows, t = [], 0
  for word, gap, length in words:
    rows.append(dict(word=word, start=(t + gap) / 100, end=(t + gap + length) / 100))
    t += gap + length
  row = dict(task="srwt", audio="a.wav", audio_language="de", words=rows)
  ex = tasks.encode_example(row, tok, [lengths.N_SAMPLES], clip_seconds=30.0)
  parsed = tasks.parse_output("srwt", tok.decode(ex.input_ids[ex.target_mask]))
  assert [(w.word, w.start, w.end) for w in parsed["words"]] == [
      (r["word"], pytest.approx(r["start"]), pytest.approx(r["end"])) for r in rows]
  assert parsed["text"] == " ".join(r["word"] for r in rows)


def test_timestamp_rounding_and_limits():
  assert timestamps.format_timestamp(1.005) == "<|1.01|>"  # halves up, on the decimal value
  assert timestamps.format_timestamp(1.0049) == "<|1.00|>"
  assert timestamps.format_timestamp(2.675) == "<|2.68|>"
  assert timestamps.format_timestamp(-0.3) == "<|0.00|>"
  assert timestamps.format_timestamp(31.0) == "<|30.00|>"
  assert timestamps.format_timestamp(5.0, limit=3.337) == "<|3.33|>"
  assert timestamps.format_timestamp(5.0, limit=45.0) == "<|5.00|>"
  for bad in (float("nan"), float("inf")):
    with pytest.raises(ValueError, match="finite"):
      timestamps.format_timestamp(bad)
  for bad in ("<|30.01|>", "<|1.5|>", "1.50", "<|1.50|> "):
    with pytest.raises(ValueError, match="timestamp"):
      timestamps.parse_timestamp(bad)


BAD_ROWS = [
    (dict(ROWS["asr"], text=""), "'text'"),
    (dict(ROWS["asr"], audio_language="klingon"), "'audio_language'"),
    ({k: v for k, v in ROWS["asr"].items() if k != "audio_language"}, "'audio_language'"),
    (dict(ROWS["asr"], audio_language="unknown"), "'audio_language'"),
    (dict(ROWS["asr"], itn="yes"), "'itn'"),
    (dict(ROWS["srwt"], words=[]), "'words'"),
    (dict(ROWS["srwt"], words=[dict(word="a", start=1.0, end=0.5)]), r"'words'\[0\]"),
    (dict(ROWS["srwt"], words=[dict(word="a", start="0", end=0.5)]), r"'words'\[0\]"),
    (dict(ROWS["srwt"], words=[dict(word=" ", start=0, end=0.5)]), r"'words'\[0\]"),
    (dict(ROWS["srwt"], words=[dict(word="a", start=0.0, end=0.5),
                               dict(word="b", start=0.2, end=0.6)]), r"'words'\[1\]"),
    ({k: v for k, v in ROWS["translation"].items() if k != "text_language"}, "'text_language'"),
    (dict(ROWS["translation"], text_language="unknown"), "'text_language'"),
    (dict(ROWS["caption"], style="poetic"), "'style'"),
    (dict(ROWS["aqa"], answer="four"), "'answer'"),
    (dict(ROWS["aqa"], question=None), "'question'"),
    (dict(ROWS["event"], label="Dog"), "'label' or field 'labels'"),
    (dict(ROWS["event"], labels=[]), "'labels'"),
    ({k: v for k, v in ROWS["scene"].items() if k != "label"}, "'label'"),
    (dict(ROWS["note_analysis"], pitch=128), "'pitch'"),
    (dict(ROWS["note_analysis"], velocity=True), "'velocity'"),
    (dict(ROWS["slu"], entities=[dict(type="time")]), r"'entities'\[0\]"),
    ({k: v for k, v in ROWS["ner"].items() if k != "entities"}, "'entities'"),
    (dict(ROWS["asr"], audio="x<audio>.wav"), "'audio'"),
]


@pytest.mark.parametrize("row,message", BAD_ROWS)
def test_bad_rows_name_the_field(tok, row, message):
  with pytest.raises(ValueError, match=message):
    tasks.get_task(row["task"]).validate(row)
  with pytest.raises(ValueError, match=message):
    tasks.encode_example(row, tok, [SECOND])


def test_unknown_task_and_clip_count(tok):
  with pytest.raises(ValueError, match="unknown task 'dance'.*asr"):
    tasks.get_task("dance")
  with pytest.raises(ValueError, match="unknown task None"):
    tasks.encode_example({"audio": "a.wav"}, tok, [SECOND])
  with pytest.raises(ValueError, match="exactly one clip"):
    tasks.encode_example(ROWS["asr"], tok, [SECOND, SECOND])


def test_registering_a_family_checks_its_tags():
  class Lyrics(tasks.TextTarget):
    name, task_tag, output_tag = "lyrics", "<|transcribe|>", "<|lyrics|>"

  with pytest.raises(ValueError, match="'<\\|lyrics\\|>' is not a special token"):
    tasks.register(Lyrics())
  with pytest.raises(ValueError, match="already registered"):
    tasks.register(tasks.TASKS["asr"])


def test_official_asr_prompt_is_literal(tok):
  text = tasks.official_asr_prompt("x.wav")
  assert text == ("<audio>x.wav</audio><|startoftranscription|><|en|><|transcribe|><|en|>"
                  "<|notimestamps|><|wo_itn|>")
  ids = tok.encode(text, [SECOND])
  assert tok.special_id("<|startoftranscript|>") not in ids
  assert tok.decode(ids, audio_paths=["x.wav"]) == text
  # The spec'd ASR prompt differs only in that tag: <|startoftranscript|> is one token.
  ours = tasks.encode_prompt(ROWS["asr"], tok, [SECOND]).input_ids.tolist()
  span = lengths.audio_span(SECOND)
  assert ours[span] == tok.special_id("<|startoftranscript|>")
  assert ours[span + 1:] == ids[ids.index(tok.special_id("<|en|>")):]
  with pytest.raises(ValueError, match="language"):
    tasks.official_asr_prompt("x.wav", "xx")
