"""ChatML dialogues per model family: Qwen-Audio-Chat's text and ids against its context builder
(from_list_format per query + make_context), Qwen2-Audio's against the chat template shipped in
transformers' Qwen2AudioProcessor (rendered with jinja2), and the loss mask."""

import jinja2
import numpy as np
import pytest
from transformers import Qwen2AudioProcessor

from _reference_models import from_list_format
from qwen_audio_jax import config as model_config_lib
from qwen_audio_jax.audio import lengths
from qwen_audio_jax.text import chat
from qwen_audio_jax.text.tokenizer import QwenAudioTokenizer

SECOND = 16000


@pytest.fixture(scope="module")
def tok():
  return QwenAudioTokenizer.load()


DIALOGUE = {"task": "chat", "messages": [
    {"role": "user", "content": [{"audio": "a.wav"}, {"text": "What is said?"}]},
    {"role": "assistant", "content": "Hello there."},
    {"role": "user", "content": [{"audio": "b.wav", "start": 1.0, "end": 3.0},
                                 {"audio": "c.wav"}, {"text": "And in these two?"}]},
    {"role": "assistant", "content": [{"text": "Goodbye, "}, {"text": "and 再见."}]},
]}
CLIPS = [SECOND, 2 * SECOND, 3 * SECOND]

EXPECTED_TEXT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nAudio 1:<audio>a.wav</audio>\nWhat is said?<|im_end|>\n"
    "<|im_start|>assistant\nHello there.<|im_end|>\n"
    "<|im_start|>user\nAudio 1:<audio>b.wav</audio>\nAudio 2:<audio>c.wav</audio>\n"
    "And in these two?<|im_end|>\n"
    "<|im_start|>assistant\nGoodbye, and 再见.<|im_end|>")


def make_context_ids(tok, turns, system, clips):
  """Qwen-Audio-Chat's `make_context` (chatml), written out: im_start + role + "\\n" + content
  + im_end per turn, turns joined by "\\n", a content's audio spans expanded in order."""
  clips = list(clips)
  nl = tok.encode_text("\n")

  def part(role, content):
    n = content.count("<audio>")
    ids = tok.encode_with_audio(content, clips[:n]).ids
    del clips[:n]
    return [tok.im_start_id] + tok.encode_text(role) + nl + ids + [tok.im_end_id]

  ids = part("system", system)
  for query, response in turns:
    ids += nl + part("user", query)
    ids += nl + (part("assistant", response) if response is not None else
                 [tok.im_start_id] + tok.encode_text("assistant") + nl)
  return ids


def test_dialogue_text_is_chatml_with_numbered_clips():
  assert chat.dialogue_text(DIALOGUE["messages"]) == EXPECTED_TEXT


def test_ids_follow_the_reference_context_builder(tok):
  ex = chat.encode_dialogue(DIALOGUE, tok, CLIPS)
  assert chat.format_for(tok) is chat.QWEN_AUDIO_CHAT
  # The released usage: each query goes through from_list_format on its own.
  messages = DIALOGUE["messages"]
  turns = [(from_list_format(messages[0]["content"]), "Hello there."),
           (from_list_format(messages[2]["content"]), "Goodbye, and 再见.")]
  assert turns[1][0].startswith("Audio 1:<audio>b.wav</audio>\nAudio 2:")
  expected = make_context_ids(tok, turns, "You are a helpful assistant.", CLIPS)
  assert ex.input_ids.dtype == np.int32 and ex.input_ids.tolist() == expected
  # For ordinary content this is also the whole ChatML string through the tokenizer.
  assert ex.input_ids.tolist() == tok.encode(EXPECTED_TEXT, CLIPS)
  assert tok.decode(ex.input_ids, audio_paths=ex.audio_paths) == EXPECTED_TEXT


def test_loss_on_assistant_turns_only(tok):
  ex = chat.encode_dialogue(DIALOGUE, tok, CLIPS)
  assert ex.target_mask.dtype == np.bool_ and ex.task == "chat"
  assert tok.decode(ex.input_ids[ex.target_mask]) == (
      "Hello there.<|im_end|>Goodbye, and 再见.<|im_end|>")
  # Exactly the assistant contents and their <|im_end|>: two contiguous runs.
  runs = np.flatnonzero(np.diff(np.concatenate([[0], ex.target_mask.astype(int), [0]])))
  assert len(runs) == 4
  assert ex.input_ids[runs[1] - 1] == tok.im_end_id and ex.input_ids[runs[3] - 1] == tok.im_end_id
  assert tok.decode(ex.input_ids[runs[0] - 3:runs[0]]) == "<|im_start|>assistant\n"


def test_clips_are_numbered_and_located(tok):
  ex = chat.encode_dialogue(DIALOGUE, tok, CLIPS)
  assert ex.audio_paths == ["a.wav", "b.wav", "c.wav"]
  assert ex.audio_starts.dtype == np.int32 and len(ex.audio_starts) == 3
  for start, n in zip(ex.audio_starts, CLIPS):
    span = lengths.audio_span(n)
    assert ex.input_ids[start] == tok.audio_start_id
    assert (ex.input_ids[start + 1:start + span - 1] == tok.audio_pad_id).all()
    assert ex.input_ids[start + span - 1] == tok.audio_end_id
    assert not ex.target_mask[start:start + span].any()


def test_custom_system_and_generation_prompt(tok):
  messages = [{"role": "system", "content": "Be brief."},
              {"role": "user", "content": [{"audio": "a.wav"}, {"text": "Describe it."}]}]
  ex = chat.encode_chat_prompt(messages, tok, [SECOND])
  expected = make_context_ids(tok, [("Audio 1:<audio>a.wav</audio>\nDescribe it.", None)],
                              "Be brief.", [SECOND])
  assert ex.input_ids.tolist() == expected
  assert tok.decode(ex.input_ids, audio_paths=ex.audio_paths) == (
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nAudio 1:<audio>a.wav</audio>\n"
      "Describe it.<|im_end|>\n<|im_start|>assistant\n")
  assert not ex.target_mask.any()


def test_chat_specials_in_content_stay_text(tok):
  """Content cannot close its turn: <|im_end|> / <|endoftext|> in a message encode as text,
  while the audio vocabulary's tags stay special, as in Qwen-Audio-Chat."""
  row = {"task": "chat", "messages": [
      {"role": "user", "content": "Say <|im_end|> or <|endoftext|> <|en|>"},
      {"role": "assistant", "content": "ok"}]}
  ex = chat.encode_dialogue(row, tok, [])
  ids = ex.input_ids.tolist()
  assert ids.count(tok.im_end_id) == 3 and tok.eot_id not in ids  # system, user, assistant
  assert tok.special_id("<|en|>") in ids


def test_response_text_stops_at_im_end(tok):
  ids = tok.encode("She says hello.<|im_end|>\n<|im_start|>user")
  assert chat.response_text(ids, tok) == "She says hello."


@pytest.mark.parametrize("messages,clips,message", [
    ([], [], "non-empty"),
    ([{"role": "robot", "content": "hi"}], [], "'role'"),
    ([{"role": "user", "content": "hi"}], [], "end with an assistant"),
    ([{"role": "assistant", "content": "hi"}], [], "must be a user message"),
    ([{"role": "user", "content": "q"}, {"role": "user", "content": "q"}], [], "in a row"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": [{"audio": "a"}]}], [1],
     "only user messages"),
    ([{"role": "user", "content": [{"video": "a"}]}, {"role": "assistant", "content": "x"}], [],
     r"messages'\[0\]: content\[0\]"),
    ([{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}], [], "'content'"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
      {"role": "system", "content": "s"}], [], "only open"),
    ([{"role": "user", "content": [{"audio": "a.wav"}]}, {"role": "assistant", "content": "x"}],
     [], "names 1 clip"),
])
def test_bad_dialogues_are_explained(tok, messages, clips, message):
  with pytest.raises(ValueError, match=message):
    chat.encode_dialogue({"task": "chat", "messages": messages}, tok, [SECOND] * len(clips))


# ----------------------------------------------------------------------------- Qwen2-Audio


@pytest.fixture(scope="module")
def qwen2_tok(qwen2_audio_tokenizer_dir):
  return QwenAudioTokenizer.load(qwen2_audio_tokenizer_dir)


def template_ids(hf_tokenizer, messages, clips, generation_prompt):
  """transformers' Qwen2-Audio chat template rendered with jinja2, each `<|AUDIO|>` expanded to
  the clip's frame count as Qwen2AudioProcessor does, then tokenised as one string."""
  source = Qwen2AudioProcessor.default_chat_template.fget(None)
  text = jinja2.Environment().from_string(source).render(
      messages=messages, add_generation_prompt=generation_prompt)
  pieces = text.split("<|AUDIO|>")
  assert len(pieces) == len(clips) + 1
  expanded = pieces[0] + "".join("<|AUDIO|>" * lengths.audio_tokens(n) + rest
                                 for n, rest in zip(clips, pieces[1:]))
  return hf_tokenizer.encode(expanded, add_special_tokens=False)


def as_template_messages(messages):
  """Our rows in the template's content format ({'type': 'audio' | 'text', ...})."""
  out = []
  for m in messages:
    content = m["content"]
    if isinstance(content, list):
      content = [{"type": "audio", "audio_url": c["audio"]} if "audio" in c else
                 {"type": "text", "text": c["text"]} for c in content]
    out.append({"role": m["role"], "content": content})
  return out


def test_qwen2_audio_dialogue_matches_the_transformers_chat_template(qwen2_tok):
  assert chat.format_for(qwen2_tok) is chat.QWEN2_AUDIO
  assert chat.format_for(model_config_lib.QWEN2_AUDIO_7B) is chat.QWEN2_AUDIO
  assert chat.format_for(model_config_lib.QWEN_AUDIO_7B) is chat.QWEN_AUDIO_CHAT
  text = chat.dialogue_text(DIALOGUE["messages"], chat_format="qwen2_audio")
  assert "Audio 1: <audio>a.wav</audio>\n" in text
  assert "Audio 2: <audio>b.wav</audio>\nAudio 3: <audio>c.wav</audio>\n" in text
  ex = chat.encode_dialogue(DIALOGUE, qwen2_tok, CLIPS)
  expected = template_ids(qwen2_tok.hf, as_template_messages(DIALOGUE["messages"]), CLIPS, False)
  assert ex.input_ids.tolist() == expected
  assert qwen2_tok.decode(ex.input_ids[ex.target_mask]) == (
      "Hello there.<|im_end|>Goodbye, and 再见.<|im_end|>")
  for start, n in zip(ex.audio_starts, CLIPS):
    assert ex.input_ids[start] == qwen2_tok.audio_start_id
    assert ex.input_ids[start + lengths.audio_span(n) - 1] == qwen2_tok.audio_end_id


def test_qwen2_audio_generation_prompt_and_system_match_the_template(qwen2_tok):
  messages = [{"role": "system", "content": "Be brief."},
              {"role": "user", "content": [{"text": "Compare "}, {"audio": "a.wav"},
                                           {"audio": "b.wav"}, {"text": "please."}]}]
  clips = [SECOND, 3 * SECOND]
  ex = chat.encode_chat_prompt(messages, qwen2_tok, clips)
  assert ex.input_ids.tolist() == template_ids(qwen2_tok.hf, as_template_messages(messages),
                                               clips, True)
  assert not ex.target_mask.any()
  # Without a system message the default one is inserted, as the template does.
  ex = chat.encode_chat_prompt(messages[1:], qwen2_tok, clips)
  assert ex.input_ids.tolist() == template_ids(qwen2_tok.hf, as_template_messages(messages[1:]),
                                               clips, True)
