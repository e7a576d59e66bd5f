"""The terminal chat: context ids against Qwen-Audio-Chat's `make_context` (history window), and
the command loop end to end on a tiny model that always answers "yes"."""

import io

import numpy as np
import pytest

from _chain_model import CONFIG, chain_params
from _reference_models import from_list_format
from qwen_audio_jax import chat
from qwen_audio_jax.audio import lengths
from qwen_audio_jax.generate import Generator, get_generation_config
from qwen_audio_jax.text import specials
from qwen_audio_jax.text.tokenizer import AUDIO_SPAN, QwenAudioTokenizer

SR = lengths.SAMPLE_RATE
SYSTEM = "You are a helpful assistant."


@pytest.fixture(scope="module")
def tok():
  return QwenAudioTokenizer.load(None)


def make_context(tokenizer, query, history, system, max_window_size, clip_samples):
  """`qwen_generation_utils.make_context` of the official Qwen-Audio repository (chatml),
  transcribed; `clip_samples` maps a clip path to its sample count (the official tokenizer
  reads the file to size the span)."""
  audio_specials = set(specials.AUDIO_SPECIAL_TOKENS)

  def encode(text):
    samples = [clip_samples[m.group(1)] for m in AUDIO_SPAN.finditer(text)]
    return tokenizer.encode_with_audio(text, samples, audio_specials).ids

  im_start, im_end = [tokenizer.im_start_id], [tokenizer.im_end_id]
  nl = tokenizer.encode_text("\n")

  def tokenize_str(role, content):
    return encode(role) + nl + encode(content)

  system_tokens = im_start + tokenize_str("system", system) + im_end
  context = []
  for turn_query, turn_response in reversed(history):
    query_tokens = im_start + tokenize_str("user", turn_query) + im_end
    response_tokens = im_start + tokenize_str("assistant", turn_response) + im_end
    next_context = nl + query_tokens + nl + response_tokens
    if len(system_tokens) + len(next_context) + len(context) < max_window_size:
      context = next_context + context
    else:
      break
  return (system_tokens + context + nl + im_start + tokenize_str("user", query) + im_end + nl
          + im_start + encode("assistant") + nl)


def test_context_ids_equal_make_context_with_history_dropped(tok):
  waves = {"a.wav": np.zeros(3 * SR, np.float32), "b.wav": np.zeros(SR, np.float32)}
  history = [chat.Turn([("a.wav", waves["a.wav"])], "What is this sound?", "A dog barking."),
             chat.Turn([], "Is it loud?", "Yes, quite loud."),
             chat.Turn([], "Where could it be?", "In a garden, probably.")]
  query = chat.Turn([], "Thanks. Anything else?")
  samples = {k: v.shape[0] for k, v in waves.items()}
  official_history = [(from_list_format(t.user_content()), t.answer) for t in history]
  lengths_seen = set()
  for window in (6144, 200, 120, 90, 40, 15):
    expected = make_context(tok, from_list_format(query.user_content()), official_history,
                            SYSTEM, window, samples)
    kept = chat.fit_history(SYSTEM, history, query, tok, window)
    got = chat.prompt_ids(SYSTEM, kept + [query], tok)
    np.testing.assert_array_equal(got, expected, err_msg=f"max_window_size {window}")
    lengths_seen.add(len(kept))
  assert lengths_seen == {0, 1, 2, 3}  # the windows exercise every amount of history


@pytest.fixture(scope="module")
def session(tok):
  newline = tok.encode_text("\n")[0]
  yes = tok.encode_text(" yes")[0]
  params = chain_params({newline: yes, yes: tok.im_end_id})
  config = get_generation_config("qwen_audio_chat", do_sample=False, max_new_tokens=8)
  return chat.ChatSession(Generator(CONFIG, params, tok), config)


def test_repl_streams_answers_and_handles_commands(session, tmp_path):
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  clip = tmp_path / "clip.wav"
  sf.write(str(clip), np.zeros(SR, np.float32), SR)
  missing = tmp_path / "missing.wav"
  stdin = io.StringIO(f"/audio {clip}\nWhat is it?\nAnd now?\n/audio {missing}\n/bogus\n"
                      "/reset\nHello\n/exit\nnever read\n")
  stdout = io.StringIO()
  chat.repl(session, stdin, stdout)
  out = stdout.getvalue()
  assert out.count("Assistant> yes\n") == 3
  assert f"(attached {clip}: 1 clip(s) for the next message)" in out
  assert f"error: {missing}" in out and "unknown command /bogus" in out
  assert "(conversation cleared)" in out and "never read" not in out
  assert len(session.history) == 1 and session.history[0].text == "Hello"


def test_history_holds_the_clips_and_answers(session, tok):
  session.reset()
  session.pending = [("x.wav", np.zeros(2 * SR, np.float32))]
  assert session.send("What is it?") == "yes"
  assert session.send("Sure?") == "yes"
  ids = chat.prompt_ids(session.system, session.history + [chat.Turn([], "Next?")], tok)
  text = tok.decode(ids, audio_paths=["x.wav"])
  assert text.count("<|im_start|>assistant\nyes<|im_end|>") == 2
  assert "Audio 1:<audio>x.wav</audio>\nWhat is it?" in text
