"""The Qwen-Audio tokenizer against a reference built here from the real vocabulary and SPEC.md.

The reference is a plain `tiktoken.Encoding` over dashscope's `qwen.tiktoken` with the special
token table of SPEC.md written out below, independently of `qwen_audio_jax.text.specials`; a few
ids are also pinned literally (values of the released tokenizer).
"""

import base64
import unicodedata

import hypothesis
import hypothesis.strategies as st
import pytest
import tiktoken

from qwen_audio_jax.audio import lengths
from qwen_audio_jax.text import tokenizer as tokenizer_lib
from qwen_audio_jax.text.tokenizer import QwenAudioTokenizer, TokenizerError

PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
           r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")


def spec_special_tokens():
  """SPEC.md's table, in order."""
  head = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)]
  audio = ("[[[AUDIO:modality]]] <|startoftranscript|> <|startofanalysis|> <|translate|> "
           "<|transcribe|> <|caption|> <|keyword|> <|unknown|> <|en|> <|zh|> <|de|> <|es|> <|ko|> "
           "<|fr|> <|ja|> <|it|> <|zh_tr|> <|notimestamps|> <|sil|> <|timestamps|>").split()
  audio += ["<|%.2f|>" % (i * 0.01) for i in range(3001)]
  audio += ("<|caption_audiocaps|> <|caption_clotho|> <|audioset_ontology|> <|caption_plain|> "
            "<|itn|> <|wo_itn|> <|startofentityvalue|> <|endofentityvalue|> <|startofentitytype|> "
            "<|endofentitytype|> <|named_entity_recognition|> <|audio_grounding|> <|startofword|> "
            "<|endofword|> <|delim|> <|emotion_recognition|> <|music_description|> "
            "<|note_analysis|> <|pitch|>").split()
  audio += [f"<|midi_pitch_{i}|>" for i in range(128)] + ["<|velocity|>"]
  audio += [f"<|midi_velocity_{i}|>" for i in range(128)]
  audio += ("<|sonic|> <|instrument|> <|speaker_meta|> <|song_meta|> <|question|> <|answer|> "
            "<|choice|> <|scene|> <|event|> <|vocal_classification|> <|speech_understanding|> "
            "<|scenario|> <|action|> <|entities|> <|speech_edit|> <audio> </audio>").split()
  return head + audio


@pytest.fixture(scope="module")
def tok():
  return QwenAudioTokenizer.load()


@pytest.fixture(scope="module")
def reference():
  path = tokenizer_lib.dashscope_vocab_file()
  ranks = {}
  with open(path, "rb") as f:
    for line in f:
      token, rank = line.split()
      ranks[base64.b64decode(token)] = int(rank)
  specials = {t: 151643 + i for i, t in enumerate(spec_special_tokens())}
  return tiktoken.Encoding("reference", pat_str=PATTERN, mergeable_ranks=ranks,
                           special_tokens=specials), specials


def test_special_ids_match_spec(tok, reference):
  _, specials = reference
  assert tok.special_ids == specials
  assert tok.audio_start_id == 155163 and tok.audio_end_id == 155164
  assert tok.audio_pad_id == 151851 and tok.eot_id == 151643
  assert (tok.im_start_id, tok.im_end_id) == (151644, 151645)
  assert tok.special_id("<|0.00|>") == 151871 and tok.special_id("<|30.00|>") == 151871 + 3000
  assert tok.vocab_size == 155165 == max(specials.values()) + 1
  assert len(tok.special_ids) == 3522 == len(specials)
  assert tok.special_id("<|midi_pitch_0|>") == 154891
  assert tok.special_id("<|midi_velocity_127|>") == 155147
  assert tok.special_id("<|wo_itn|>") == 154877
  with pytest.raises(KeyError, match="not a special token"):
    tok.special_id("<|startoftranscription|>")


def test_pinned_ids_of_the_released_vocabulary(tok):
  assert tok.encode("Hello world") == [9707, 1879]
  assert tok.encode("你好") == [108386]


def audio_ids(n_samples):
  return [155163] + [151851] * lengths.audio_tokens(n_samples) + [155164]


# (prompt, number of samples of each clip): every tag family, timestamps, chat, the README quirk,
# non-ASCII text. The multitask prompts are those of Qwen-Audio's released evaluation scripts.
GOLDEN_PROMPTS = [
    ("<audio>a.wav</audio><|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|>"
     "<|wo_itn|>", [16000]),
    ("<audio>a.wav</audio><|startoftranscript|><|zh|><|transcribe|><|zh|><|notimestamps|><|itn|>"
     "今天天气很好，我们去公园吧。<|endoftext|>", [480000]),
    ("<audio>a.wav</audio><|startoftranscription|><|en|><|transcribe|><|en|><|notimestamps|>"
     "<|wo_itn|>", [32000]),  # the official README's spelling: not a special token
    ("<audio>a.wav</audio><|startoftranscript|><|en|><|transcribe|><|en|><|timestamps|>"
     "<|0.00|>hello<|0.48|><|0.52|> world<|0.90|><|endoftext|>", [16000]),
    ("<audio>a.wav</audio><|startoftranscript|><|zh|><|transcribe|><|zh|><|timestamps|>"
     "<|0.00|>你好<|0.40|><|0.41|>世界<|29.99|><|endoftext|>", [480000]),
    ("<audio>a.wav</audio><|startoftranscript|><|en|><|translate|><|de|><|notimestamps|><|itn|>"
     "Grüße aus München, Straße 12.<|endoftext|>", [48000]),
    ("<audio>a.wav</audio><|startoftranscript|><|en|><|translate|><|zh|><|notimestamps|><|itn|>"
     "今天天气很好。<|endoftext|>", [48000]),
    ("<audio>b.flac</audio><|startofanalysis|><|unknown|><|caption|><|en|><|notimestamps|>"
     "<|caption_audiocaps|>A dog barks twice.<|endoftext|>", [80000]),
    ("<audio>b.flac</audio><|startofanalysis|><|unknown|><|caption|><|en|><|notimestamps|>"
     "<|caption_clotho|>Rain falls on a tin roof.<|endoftext|>", [80000]),
    ("<audio>c.wav</audio><|startofanalysis|><|unknown|><|keyword|><|en|><|notimestamps|><|event|>"
     "Dog<|delim|>Vehicle horn, car horn, honking<|endoftext|>", [160000]),
    ("<audio>c.wav</audio><|startofanalysis|><|unknown|><|keyword|><|en|><|notimestamps|><|scene|>"
     "metro station<|endoftext|>", [160000]),
    ("<audio>c.wav</audio><|startofanalysis|><|en|><|keyword|><|en|><|notimestamps|>"
     "<|emotion_recognition|>happy<|endoftext|>", [24000]),
    ("<audio>c.wav</audio><|startofanalysis|><|en|><|keyword|><|en|><|notimestamps|>"
     "<|vocal_classification|>cough<|endoftext|>", [8000]),
    ("<audio>d.wav</audio><|startofanalysis|><|en|><|question|>How many beeps are there?"
     "<|choice|>two<|choice|>three<|answer|>three<|endoftext|>", [64000]),
    ("<audio>d.wav</audio><|startofanalysis|><|en|><|keyword|><|en|><|notimestamps|>"
     "<|speech_understanding|><|scenario|>alarm<|action|>set<|entities|><|startofentitytype|>time"
     "<|endofentitytype|><|startofentityvalue|>seven am<|endofentityvalue|><|endoftext|>", [64000]),
    ("<audio>e.wav</audio><|startofanalysis|><|unknown|><|keyword|><|en|><|notimestamps|>"
     "<|note_analysis|><|pitch|><|midi_pitch_60|><|velocity|><|midi_velocity_127|><|instrument|>"
     "keyboard<|sonic|>bright, percussive<|endoftext|>", [64000]),
    ("<audio>e.wav</audio><|startofanalysis|><|de|><|keyword|><|en|><|notimestamps|>"
     "<|speaker_meta|>female, twenties<|endoftext|>", [64000]),
    ("<audio>e.wav</audio><|startofanalysis|><|unknown|><|keyword|><|en|><|notimestamps|>"
     "<|song_meta|>genre: jazz<|endoftext|>", [64000]),
    ("<audio>e.wav</audio><|startofanalysis|><|unknown|><|caption|><|en|><|notimestamps|>"
     "<|music_description|>A slow piano ballad.<|endoftext|>", [64000]),
    ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
     "Audio 1:<audio>x.wav</audio>\nWhat does the speaker say?<|im_end|>\n<|im_start|>assistant\n"
     "She says hello.<|im_end|>", [40000]),
    ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
     "Audio 1:<audio>x.wav</audio>\nAudio 2:<audio>y.wav</audio>\n这两段音频有什么不同？<|im_end|>\n"
     "<|im_start|>assistant\n", [40000, 123456]),
    ("Straße, Ölkännchen und Ärger — 1234567 ümlaut's\n\n  tabs\tand  spaces", []),
    ("<|im_start|>user\n<|startofanalysis|> is special, <|not_a_token|> is not<|im_end|>", []),
]


def reference_encode(encoding, specials, text, num_samples):
  """Expected ids: text between audio spans through the reference, spans built by hand."""
  text = unicodedata.normalize("NFC", text)
  ids, rest = [], text
  for n in num_samples:
    before, _, rest = rest.partition("<audio>")
    ids += encoding.encode(before, allowed_special="all")
    _, _, rest = rest.partition("</audio>")
    ids += [specials["<audio>"]] + [specials["[[[AUDIO:modality]]]"]] * lengths.audio_tokens(n)
    ids += [specials["</audio>"]]
  return ids + encoding.encode(rest, allowed_special="all")


@pytest.mark.parametrize("index", range(len(GOLDEN_PROMPTS)))
def test_golden_ids(tok, reference, index):
  text, num_samples = GOLDEN_PROMPTS[index]
  encoding, specials = reference
  expected = reference_encode(encoding, specials, text, num_samples)
  encoded = tok.encode_with_audio(text, num_samples)
  assert encoded.ids == expected
  for start, n in zip(encoded.audio_starts, num_samples):
    assert encoded.ids[start:start + lengths.audio_span(n)] == audio_ids(n)
  # Round trip: decoding with the paths gives the prompt back.
  assert tok.decode(encoded.ids, audio_paths=encoded.audio_paths) == unicodedata.normalize(
      "NFC", text)


def test_startoftranscription_quirk_encodes_as_text(tok):
  ids = tok.encode("<|startoftranscription|>")
  assert tok.special_id("<|startoftranscript|>") not in ids
  assert len(ids) > 1 and not any(tok.is_special(i) for i in ids)
  assert tok.encode("<|startoftranscript|>") == [151852]


def test_nfc_normalisation(tok):
  decomposed = "Mu\u0308nchen"
  assert tok.encode(decomposed) == tok.encode("München")


def test_skip_special_tokens_drops_tags_and_audio(tok):
  text, n = GOLDEN_PROMPTS[3]
  ids = tok.encode(text, n)
  assert tok.decode(ids, skip_special_tokens=True) == "hello world"


def test_audio_span_length_follows_the_clip(tok):
  for n in (lengths.min_samples_for_one_token(), 16000, 479999, 480000):
    ids = tok.encode("x<audio>p</audio>y", [n])
    assert ids.count(tok.audio_pad_id) == lengths.audio_tokens(n)
  assert tok.encode("<audio>p</audio>", [480000]).count(tok.audio_pad_id) == 750


def test_audio_errors_are_clear(tok):
  with pytest.raises(TokenizerError, match="1 clip"):
    tok.encode_with_audio("<audio>a</audio>", [])
  with pytest.raises(TokenizerError, match="audio_num_samples"):
    tok.encode("<audio>a</audio>")
  with pytest.raises(ValueError, match="30 s"):
    tok.encode("<audio>a</audio>", [480001])
  with pytest.raises(ValueError, match="too short"):
    tok.encode("<audio>a</audio>", [100])
  with pytest.raises(TokenizerError, match="outside the vocabulary"):
    tok.decode([155165])


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_decode_round_trips_any_text(tok, text):
  hypothesis.assume("<audio>" not in text)
  normal = unicodedata.normalize("NFC", text)
  assert tok.decode(tok.encode(text)) == normal


FRAGMENTS = ["<|", "|>", "<", ">", "|", "[[[", "]]]", "<|en|>", "<|endoftext|>", "<|0.50|>",
             "<|30.01|>", "<|foo|>", "[[[AUDIO:modality]]]", "</audio>", "<audio", "audio>",
             "<|midi_pitch_7|>", " ", "\n", "Grüße", "你好", "a", "1", "'s"]


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.lists(st.sampled_from(FRAGMENTS), max_size=12),
                  st.sets(st.sampled_from(["<|en|>", "<|endoftext|>", "<|0.50|>"])))
def test_special_splitting_matches_tiktoken(tok, reference, fragments, allowed):
  """Special tokens are found exactly where tiktoken finds them, for any allowed subset."""
  encoding, _ = reference
  text = "".join(fragments)
  assert tok.encode_text(text) == encoding.encode(text, allowed_special="all")
  assert tok.encode_text(text, allowed) == encoding.encode(text, allowed_special=allowed,
                                                           disallowed_special=())


def test_load_from_directory_file_and_errors(tmp_path, monkeypatch):
  source = tokenizer_lib.dashscope_vocab_file()
  directory = tmp_path / "ckpt"
  directory.mkdir()
  (directory / "qwen.tiktoken").write_bytes(open(source, "rb").read())
  assert QwenAudioTokenizer.load(str(directory)).encode("Hello world") == [9707, 1879]
  assert QwenAudioTokenizer.load(str(directory / "qwen.tiktoken")).vocab_size == 155165
  with pytest.raises(TokenizerError, match="neither qwen.tiktoken"):
    QwenAudioTokenizer.load(str(tmp_path))
  with pytest.raises(TokenizerError, match="does not exist"):
    QwenAudioTokenizer.load(str(tmp_path / "missing.tiktoken"))
  bad = tmp_path / "bad.tiktoken"
  bad.write_text("not-base64-and-no-rank\n")
  with pytest.raises(TokenizerError, match="bad.tiktoken:1"):
    QwenAudioTokenizer.load(str(bad))
  monkeypatch.setattr(tokenizer_lib, "dashscope_vocab_file", lambda: None)
  with pytest.raises(TokenizerError, match="pip install dashscope"):
    tokenizer_lib.find_vocab_file(None)


def test_pickles_by_vocabulary_path(tok):
  import pickle  # pylint: disable=g-import-not-at-top
  clone = pickle.loads(pickle.dumps(tok))
  assert clone.encode("Grüße") == tok.encode("Grüße")
  assert len(pickle.dumps(tok)) < 1000


@pytest.fixture(scope="module")
def qwen2_audio_dir(qwen2_audio_tokenizer_dir):
  """A Qwen2-Audio-style checkpoint directory: transformers' Qwen2Tokenizer over the same BPE
  ranks, converted from qwen.tiktoken offline, with Qwen2-Audio's first special tokens."""
  return qwen2_audio_tokenizer_dir


def test_transformers_tokenizer_of_a_qwen2_audio_checkpoint(qwen2_audio_dir, tok, tmp_path):
  """A checkpoint directory with transformers tokenizer files is read through them."""
  hf = QwenAudioTokenizer.load(qwen2_audio_dir)
  assert isinstance(hf, tokenizer_lib.HFAudioTokenizer)
  # Qwen2-Audio's ids: <|AUDIO|> 151646, <|audio_bos|> 151647, <|audio_eos|> 151648.
  assert (hf.audio_pad_id, hf.audio_start_id, hf.audio_end_id) == (151646, 151647, 151648)
  assert (hf.eot_id, hf.im_start_id, hf.im_end_id) == (151643, 151644, 151645)
  text = "<audio>x.wav</audio>Grüße aus München, 你好！ 12345\n\n  ok"
  encoded = hf.encode_with_audio(text, [32000])
  n = lengths.audio_tokens(32000)
  assert encoded.ids[:n + 2] == [151647] + [151646] * n + [151648]
  assert encoded.ids[n + 2:] == tok.encode(text.split("</audio>")[1])  # same BPE as tiktoken
  assert encoded.audio_starts == [0] and encoded.audio_paths == ["x.wav"]
  assert hf.decode(encoded.ids, audio_paths=encoded.audio_paths) == text
  assert hf.decode(encoded.ids, skip_special_tokens=True) == text.split("</audio>")[1]
  with pytest.raises(TokenizerError, match="always reads"):
    hf.encode_text("a <|im_end|> b", allowed_special=frozenset())
  with pytest.raises(KeyError):
    hf.special_id("<|startoftranscript|>")
  # Without tokenizer files the directory is not a tokenizer.
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(TokenizerError, match="neither"):
    QwenAudioTokenizer.load(str(empty))


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_transformers_and_tiktoken_paths_agree(qwen2_audio_dir, tok, text):
  hypothesis.assume("<|" not in text and "<audio>" not in text)
  hf = QwenAudioTokenizer.load(qwen2_audio_dir)
  assert hf.encode(text) == tok.encode(text)
