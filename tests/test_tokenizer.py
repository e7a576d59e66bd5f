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

PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
           r"""\s*[\r\n]+|\s+(?!\S)|\s+""")


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


def test_pinned_ids_of_the_released_vocabulary(tok):
  assert tok.encode("Hello world") == [9707, 1879]
  assert tok.encode("你好") == [108386]


def audio_ids(n_samples):
  return [155163] + [151851] * lengths.audio_tokens(n_samples) + [155164]


# (prompt, number of samples of each clip)
GOLDEN_PROMPTS = [
    ("<audio>a.wav</audio><|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>",
     [16000]),
    ("<audio>a.wav</audio><|startoftranscript|><|zh|><|transcribe|><|zh|><|notimestamps|><|itn|>",
     [480000]),
    ("<audio>a.wav</audio><|startoftranscription|><|en|><|transcribe|><|en|><|notimestamps|>"
     "<|wo_itn|>", [32000]),  # the official README's spelling: not a special token
    ("<audio>a.wav</audio><|startoftranscript|><|en|><|transcribe|><|en|><|timestamps|><|wo_itn|>"
     "<|0.00|>hello<|0.48|><|0.52|> world<|0.90|><|endoftext|>", [16000]),
    ("<audio>a.wav</audio><|startoftranscript|><|en|><|translate|><|de|><|notimestamps|><|wo_itn|>"
     "Grüße aus München<|endoftext|>", [48000]),
    ("<audio>a.wav</audio><|startoftranscript|><|en|><|translate|><|zh|><|notimestamps|><|wo_itn|>"
     "今天天气很好。<|endoftext|>", [48000]),
    ("<audio>b.flac</audio><|startofanalysis|><|unknown|><|caption|><|en|><|notimestamps|>"
     "<|caption_audiocaps|>A dog barks twice.<|endoftext|>", [80000]),
    ("<audio>b.flac</audio><|startofanalysis|><|unknown|><|caption|><|en|><|notimestamps|>"
     "<|caption_clotho|>Rain falls on a tin roof.<|endoftext|>", [80000]),
    ("<audio>c.wav</audio><|startofanalysis|><|unknown|><|event|><|en|><|notimestamps|>"
     "Dog<|delim|>Vehicle horn, car horn, honking<|endoftext|>", [160000]),
    ("<audio>c.wav</audio><|startofanalysis|><|unknown|><|scene|><|en|><|notimestamps|>"
     "metro station<|endoftext|>", [160000]),
    ("<audio>c.wav</audio><|startofanalysis|><|en|><|emotion_recognition|><|en|><|notimestamps|>"
     "happy<|endoftext|>", [24000]),
    ("<audio>c.wav</audio><|startofanalysis|><|unknown|><|vocal_classification|><|en|>"
     "<|notimestamps|>cough<|endoftext|>", [8000]),
    ("<audio>d.wav</audio><|startofanalysis|><|unknown|><|question|><|en|><|notimestamps|>"
     "How many beeps are there?<|choice|>two<|choice|>three<|answer|>three<|endoftext|>",
     [64000]),
    ("<audio>d.wav</audio><|startofanalysis|><|en|><|speech_understanding|><|en|><|notimestamps|>"
     "<|scenario|>alarm<|action|>set<|entities|><|startofentitytype|>time<|endofentitytype|>"
     "<|startofentityvalue|>seven am<|endofentityvalue|><|endoftext|>", [64000]),
    ("<audio>e.wav</audio><|startofanalysis|><|unknown|><|note_analysis|><|en|><|notimestamps|>"
     "<|pitch|><|midi_pitch_60|><|velocity|><|midi_velocity_100|><|instrument|>keyboard"
     "<|sonic|>bright<|delim|>percussive<|endoftext|>", [64000]),
    ("<audio>e.wav</audio><|startofanalysis|><|en|><|speaker_meta|><|en|><|notimestamps|>"
     "female, twenties<|endoftext|>", [64000]),
    ("<audio>e.wav</audio><|startofanalysis|><|unknown|><|song_meta|><|en|><|notimestamps|>"
     "genre: jazz<|endoftext|>", [64000]),
    ("<audio>e.wav</audio><|startofanalysis|><|unknown|><|music_description|><|en|>"
     "<|notimestamps|>A slow piano ballad.<|endoftext|>", [64000]),
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


def test_load_from_directory_file_and_errors(tmp_path, monkeypatch):
  source = tokenizer_lib.dashscope_vocab_file()
  directory = tmp_path / "ckpt"
  directory.mkdir()
  (directory / "qwen.tiktoken").write_bytes(open(source, "rb").read())
  assert QwenAudioTokenizer.load(str(directory)).encode("Hello world") == [9707, 1879]
  assert QwenAudioTokenizer.load(str(directory / "qwen.tiktoken")).vocab_size == 155165
  with pytest.raises(TokenizerError, match="has no qwen.tiktoken"):
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


def test_transformers_tokenizer_of_a_qwen2_audio_checkpoint(tmp_path):
  """A checkpoint directory with transformers tokenizer files (Qwen2-Audio) is read through them."""
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top
  words = ["hello", "world", "what", "is", "said", "?", "Ġ"]
  vocab = {w: i for i, w in enumerate(words)}
  vocab["[UNK]"] = len(vocab)
  core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  core.pre_tokenizer = pre_tokenizers.Whitespace()
  fast = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")
  fast.add_special_tokens({"additional_special_tokens": [
      "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>",
      "<|audio_eos|>"]})
  fast.save_pretrained(str(tmp_path))
  tok = tokenizer_lib.load_tokenizer(str(tmp_path))
  assert isinstance(tok, tokenizer_lib.HFAudioTokenizer)
  encoded = tok.encode_with_audio("<audio>x.wav</audio>what is said", [32000])
  n = lengths.audio_tokens(32000)
  assert encoded.ids[:n + 2] == ([tok.audio_start_id] + [tok.audio_pad_id] * n
                                 + [tok.audio_end_id])
  assert encoded.ids[n + 2:] == [vocab["what"], vocab["is"], vocab["said"]]
  assert encoded.audio_starts == [0]
  assert tok.decode(encoded.ids, audio_paths=["x.wav"]).startswith("<audio>x.wav</audio>")
  assert tok.decode(encoded.ids, skip_special_tokens=True).split() == ["what", "is", "said"]
  # Without tokenizer files the directory is not a tokenizer.
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(TokenizerError):
    tokenizer_lib.load_tokenizer(str(empty))
