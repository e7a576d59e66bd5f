"""The multitask tag format, its parsers, timestamps, and the ChatML dialogues."""

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from qwen_audio_jax.audio import lengths
from qwen_audio_jax.text import chat, tasks, timestamps
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
    "note_analysis": dict(task="note_analysis", audio="a.wav", pitch=60, velocity=100,
                          instrument="keyboard", sonic=["bright", "percussive"]),
}

EXPECTED_TAGS = {
    "asr": "<|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>",
    "srwt": "<|startoftranscript|><|en|><|transcribe|><|en|><|timestamps|><|wo_itn|>",
    "translation": "<|startoftranscript|><|en|><|translate|><|de|><|notimestamps|><|wo_itn|>",
    "caption": ("<|startofanalysis|><|unknown|><|caption|><|en|><|notimestamps|>"
                "<|caption_audiocaps|>"),
    "event": "<|startofanalysis|><|unknown|><|event|><|en|><|notimestamps|>",
    "aqa": ("<|startofanalysis|><|unknown|><|question|><|en|><|notimestamps|>How many beeps?"
            "<|choice|>two<|choice|>three<|answer|>"),
}


def test_every_family_is_covered():
  assert set(ROWS) == set(tasks.TASKS)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_loss_falls_on_target_and_endoftext_only(tok, name):
  row = ROWS[name]
  example = tasks.encode_example(row, tok, [2 * SECOND], clip_seconds=2.0)
  ids, mask = example.input_ids, example.target_mask
  assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == mask.shape
  prompt_ids = tok.encode(tasks.prompt(row), [2 * SECOND])
  np.testing.assert_array_equal(ids[:len(prompt_ids)], prompt_ids)
  assert not mask[:len(prompt_ids)].any() and mask[len(prompt_ids):].all()
  assert ids[-1] == tok.eot_id
  assert list(example.audio_starts) == [0] and example.audio_paths == ["a.wav"]
  span = lengths.audio_span(2 * SECOND)
  assert ids[0] == tok.audio_start_id and ids[span - 1] == tok.audio_end_id
  if name in EXPECTED_TAGS:
    assert tasks.prompt(row) == "<audio>a.wav</audio>" + EXPECTED_TAGS[name]
  # The target parses back to the row's structure.
  parsed = tasks.parse_output(name, tok.decode(ids[mask]))
  assert parsed, name


def test_parsers_recover_the_fields(tok):
  def target_text(name):
    ex = tasks.encode_example(ROWS[name], tok, [2 * SECOND], clip_seconds=2.0)
    return tok.decode(ex.input_ids[ex.target_mask])

  assert tasks.parse_output("asr", target_text("asr")) == {"text": "hello world"}
  words = tasks.parse_output("srwt", target_text("srwt"))["words"]
  assert [(w.word, w.start, w.end) for w in words] == [("hello", 0.0, 0.48), ("world", 0.52, 0.9)]
  assert tasks.parse_output("event", target_text("event")) == {
      "labels": ["Dog", "Vehicle horn, car horn"]}
  assert tasks.parse_output("aqa", target_text("aqa")) == {"answer": "three"}
  assert tasks.parse_output("slu", target_text("slu")) == {
      "scenario": "alarm", "action": "set", "entities": [{"type": "time", "value": "seven am"}]}
  assert tasks.parse_output("note_analysis", target_text("note_analysis")) == {
      "pitch": 60, "velocity": 100, "instrument": "keyboard", "sonic": ["bright", "percussive"]}


def test_srwt_timestamps_are_quantised_and_clamped(tok):
  row = dict(ROWS["srwt"], words=[dict(word="a", start=0.004, end=0.005),
                                  dict(word="b", start=1.2, end=2.75)])
  ex = tasks.encode_example(row, tok, [2 * SECOND], clip_seconds=2.0)
  text = tok.decode(ex.input_ids[ex.target_mask])
  assert text == "<|0.00|>a<|0.01|><|1.20|> b<|2.00|><|endoftext|>"


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.integers(0, 3000))
def test_timestamp_tokens_round_trip(centiseconds):
  seconds = centiseconds / 100
  token = timestamps.format_timestamp(seconds)
  assert timestamps.parse_timestamp(token) == pytest.approx(seconds)
  assert timestamps.to_centiseconds(seconds) == centiseconds


def test_timestamp_rounding_and_limits():
  assert timestamps.format_timestamp(1.005) == "<|1.01|>"  # halves up, on the decimal value
  assert timestamps.format_timestamp(1.0049) == "<|1.00|>"
  assert timestamps.format_timestamp(-0.3) == "<|0.00|>"
  assert timestamps.format_timestamp(31.0) == "<|30.00|>"
  assert timestamps.format_timestamp(5.0, limit=3.337) == "<|3.33|>"
  for bad in ("<|30.01|>", "<|1.5|>", "1.50"):
    with pytest.raises(ValueError, match="timestamp"):
      timestamps.parse_timestamp(bad)


BAD_ROWS = [
    (dict(ROWS["asr"], text=""), "'text'"),
    (dict(ROWS["asr"], audio_language="klingon"), "'audio_language'"),
    ({k: v for k, v in ROWS["asr"].items() if k != "audio_language"}, "'audio_language'"),
    (dict(ROWS["asr"], itn="yes"), "'itn'"),
    (dict(ROWS["srwt"], words=[]), "'words'"),
    (dict(ROWS["srwt"], words=[dict(word="a", start=1.0, end=0.5)]), r"'words'\[0\]"),
    (dict(ROWS["srwt"], words=[dict(word="a", start=0.0, end=0.5),
                               dict(word="b", start=0.2, end=0.6)]), r"'words'\[1\]"),
    ({k: v for k, v in ROWS["translation"].items() if k != "text_language"}, "'text_language'"),
    (dict(ROWS["caption"], style="poetic"), "'style'"),
    (dict(ROWS["aqa"], answer="four"), "'answer'"),
    (dict(ROWS["event"], label="Dog"), "'label' or field 'labels'"),
    (dict(ROWS["note_analysis"], pitch=128), "'pitch'"),
    (dict(ROWS["slu"], entities=[dict(type="time")]), r"'entities'\[0\]"),
]


@pytest.mark.parametrize("row,message", BAD_ROWS)
def test_bad_rows_name_the_field(tok, row, message):
  with pytest.raises(ValueError, match=message):
    tasks.get_task(row["task"]).validate(row)


def test_unknown_task_and_clip_count(tok):
  with pytest.raises(ValueError, match="unknown task 'dance'.*asr"):
    tasks.get_task("dance")
  with pytest.raises(ValueError, match="exactly one clip"):
    tasks.encode_example(ROWS["asr"], tok, [SECOND, SECOND])


def test_prompt_for_generation_has_no_target(tok):
  ex = tasks.encode_prompt(ROWS["asr"], tok, [SECOND])
  assert not ex.target_mask.any()
  assert tok.decode(ex.input_ids, audio_paths=ex.audio_paths) == (
      "<audio>a.wav</audio>" + EXPECTED_TAGS["asr"])


def test_official_asr_prompt_is_literal(tok):
  text = tasks.official_asr_prompt("x.wav")
  assert text == ("<audio>x.wav</audio><|startoftranscription|><|en|><|transcribe|><|en|>"
                  "<|notimestamps|><|wo_itn|>")
  ids = tok.encode(text, [SECOND])
  assert tok.special_id("<|startoftranscript|>") not in ids


DIALOGUE = {"task": "chat", "messages": [
    {"role": "user", "content": [{"audio": "a.wav"}, {"text": "What is said?"}]},
    {"role": "assistant", "content": "Hello there."},
    {"role": "user", "content": [{"audio": "b.wav"}, {"text": "And here?"}]},
    {"role": "assistant", "content": [{"text": "Goodbye."}]},
]}


def test_chat_format_is_chatml_with_numbered_clips(tok):
  assert chat.dialogue_text(DIALOGUE["messages"]) == (
      "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
      "<|im_start|>user\nAudio 1:<audio>a.wav</audio>\nWhat is said?<|im_end|>\n"
      "<|im_start|>assistant\nHello there.<|im_end|>\n"
      "<|im_start|>user\nAudio 2:<audio>b.wav</audio>\nAnd here?<|im_end|>\n"
      "<|im_start|>assistant\nGoodbye.<|im_end|>")


def test_chat_loss_on_assistant_turns_only(tok):
  ex = chat.encode_dialogue(DIALOGUE, tok, [SECOND, 2 * SECOND])
  full = tok.encode(chat.dialogue_text(DIALOGUE["messages"]), [SECOND, 2 * SECOND])
  np.testing.assert_array_equal(ex.input_ids, full)
  assert tok.decode(ex.input_ids[ex.target_mask]) == "Hello there.<|im_end|>Goodbye.<|im_end|>"
  assert ex.audio_paths == ["a.wav", "b.wav"]
  for start, n in zip(ex.audio_starts, [SECOND, 2 * SECOND]):
    assert ex.input_ids[start] == tok.audio_start_id
    assert ex.input_ids[start + lengths.audio_span(n) - 1] == tok.audio_end_id
    assert not ex.target_mask[start:start + lengths.audio_span(n)].any()


def test_chat_custom_system_and_generation_prompt(tok):
  messages = [{"role": "system", "content": "Be brief."},
              {"role": "user", "content": [{"audio": "a.wav"}, {"text": "Describe it."}]}]
  ex = chat.encode_chat_prompt(messages, tok, [SECOND])
  text = tok.decode(ex.input_ids, audio_paths=ex.audio_paths)
  assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
  assert text.endswith("Describe it.<|im_end|>\n<|im_start|>assistant\n")
  assert not ex.target_mask.any()


@pytest.mark.parametrize("messages,message", [
    ([], "non-empty"),
    ([{"role": "robot", "content": "hi"}], "'role'"),
    ([{"role": "user", "content": "hi"}], "end with an assistant"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": [{"audio": "a"}]}],
     "only user messages"),
    ([{"role": "user", "content": [{"video": "a"}]}, {"role": "assistant", "content": "x"}],
     r"content\[0\]"),
])
def test_bad_dialogues_are_explained(tok, messages, message):
  with pytest.raises(ValueError, match=message):
    chat.encode_dialogue({"task": "chat", "messages": messages}, tok, [])
