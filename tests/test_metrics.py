"""Metrics and normalisers on known pairs; every expected value is worked out by hand in the
comment above its assertion."""

import math

import pytest

from qwen_audio_jax.evaluate import caption_metrics, metrics, normalizers
from qwen_audio_jax.text.parsers import Word


# ------------------------------------------------------------------------------ normalisers


def test_qwen_audio_normalizer_follows_the_released_asr_scoring():
  # Tags become spaces, spaces collapse, the space before ',' and '!' goes, lower-cased,
  # punctuation kept: "hello, world! mr. smith".
  text = "<|en|>Hello ,  World !<|notimestamps|>Mr. Smith"
  assert normalizers.qwen_audio(text, "en") == "hello, world! mr. smith"
  # Chinese: every space removed, then one unit per character (the full-width comma included).
  assert normalizers.scoring_units("你好 ，<|zh|> 世界", "zh") == ["你", "好", "，", "世", "界"]


def test_qwen2_audio_normalizer_is_whispers_english_then_basic():
  # Whisper's English normaliser: "Mr." -> "mister", "colour" -> "color", "twenty-one" -> "21",
  # "isn't" -> "is not"; punctuation removed.
  assert (normalizers.qwen2_audio("Mr. Smith's colour is twenty-one, isn't it?", "en")
          == "mister smith is color is 21 is not it")
  # Other languages: the basic normaliser only (punctuation -> space, lower-cased).
  assert normalizers.qwen2_audio("Guten Tag, Welt!", "de") == "guten tag welt"


def test_unknown_normalizer_is_named():
  with pytest.raises(ValueError, match="unknown normalizer 'whisper'.*qwen2_audio"):
    normalizers.get_normalizer("whisper")


# ------------------------------------------------------------------------------ WER / CER


def test_corpus_wer_sums_edits_over_the_corpus():
  # Utterance 1: "the cat sat" vs "the cat sat down" -> 1 insertion over 3 words.
  # Utterance 2: "a dog barked." vs "a frog barked." -> 1 substitution over 3 words (the
  # full stop stays glued to "barked." under the Qwen-Audio scoring: no edit there).
  # Corpus: (1 + 1) / (3 + 3) = 1/3 (the mean of per-utterance rates would be the same here;
  # utterance 3 below separates the two).
  # Utterance 3: "yes" vs "" -> 1 deletion over 1 word. Corpus: 3 / 7.
  refs = ["The cat sat", "A dog barked .", "yes"]
  hyps = ["the cat sat down", "a frog barked.", ""]
  out = metrics.error_rate(refs, hyps, language="en")
  assert out["wer"] == pytest.approx(3 / 7)
  assert (out["substitutions"], out["deletions"], out["insertions"]) == (1, 1, 1)
  assert out["reference_units"] == 7 and out["unit"] == "word"


def test_chinese_is_scored_per_character():
  # "今天天气好" vs "今天天汽很好": 汽 for 气 (1 substitution), 很 inserted (1 insertion);
  # 5 reference characters: CER 2 / 5 = 0.4.
  out = metrics.error_rate(["今天 天气好"], ["今天天汽很好"], language="zh")
  assert out["cer"] == pytest.approx(0.4)
  assert out["unit"] == "character"


def test_normalizer_choice_changes_the_wer():
  # Qwen-Audio scoring keeps punctuation: "hello, world" vs "hello world" -> "hello," != "hello"
  # (1 substitution / 2 words = 0.5). The Whisper normaliser removes it: 0 errors.
  refs, hyps = ["Hello, world"], ["hello world"]
  assert metrics.error_rate(refs, hyps, language="en")["wer"] == pytest.approx(0.5)
  assert metrics.error_rate(refs, hyps, language="en", normalizer="qwen2_audio")["wer"] == 0.0


def test_error_rate_refuses_mismatched_or_empty_input():
  with pytest.raises(metrics.MetricError, match="2 references but 1 predictions"):
    metrics.error_rate(["a", "b"], ["a"], language="en")
  with pytest.raises(metrics.MetricError, match="empty after normalisation"):
    metrics.error_rate(["<|en|>"], ["x"], language="en")


# ------------------------------------------------------------------------------ BLEU


def test_bleu_by_hand():
  # One sentence pair, 13a tokenisation: ref "the cat sat on the mat" (6 tokens), hyp "the cat
  # sat on a mat" (6 tokens). Matches: 1-grams 5/6 (all but "a"), 2-grams 3/5 (the cat, cat sat,
  # sat on), 3-grams 2/4 (the cat sat, cat sat on), 4-grams 1/3 (the cat sat on). Equal lengths:
  # no brevity penalty. BLEU = 100 * (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = 100 * (1/12) ** 0.25
  # = 53.7284965...
  out = metrics.bleu(["the cat sat on the mat"], ["the cat sat on a mat"], target_language="en")
  assert out["bleu"] == pytest.approx(100 * (1 / 12) ** 0.25)
  assert out["tokenize"] == "13a" and "tok:13a" in out["signature"]


def test_bleu_tokenizes_chinese_per_character():
  # sacrebleu's 'zh' tokenizer splits CJK characters: ref 我喜欢猫 -> 4 tokens, hyp 我喜欢狗 ->
  # 4 tokens. Matches: 1-grams 3/4, 2-grams 2/3, 3-grams 1/2, 4-grams 0/1. With a zero 4-gram
  # count sacrebleu's default 'exp' smoothing replaces it by 1 / (2 * 1) = 1/2 (its k-th zero
  # precision gets 1 / (2^k * total)): BLEU = 100 * (3/4 * 2/3 * 1/2 * 1/2) ** (1/4)
  # = 100 * (1/8) ** 0.25 = 59.4603557...
  out = metrics.bleu(["我喜欢猫"], ["我喜欢狗"], target_language="zh")
  assert out["tokenize"] == "zh"
  assert out["bleu"] == pytest.approx(100 * (1 / 8) ** 0.25)
  # Under 13a the same pair is one token each and shares nothing.
  assert metrics.bleu(["我喜欢猫"], ["我喜欢狗"], target_language="en")["bleu"] == 0.0


def test_bleu_for_japanese_needs_mecab_and_says_so(monkeypatch):
  import builtins
  real_import = builtins.__import__

  def no_mecab(name, *args, **kwargs):
    if name in ("MeCab", "ipadic"):
      raise ImportError(f"No module named {name!r}")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_mecab)
  assert metrics.bleu_tokenizer("ja") == "ja-mecab"
  with pytest.raises(metrics.MetricError, match=r"ja-mecab.*pip install 'sacrebleu\[ja\]'"):
    metrics.bleu(["猫です"], ["猫です"], target_language="ja")


# ------------------------------------------------------------------------------ accuracy


def test_accuracy_and_yes_no_accuracy():
  # 5 questions, 3 exact matches ("yes", "no"... see below): accuracy 3/5 = 0.6. The yes/no
  # subset is questions 1, 2 and 5 (references "yes", "No", "yes"); of them 1 and 5 match
  # exactly ("No" vs "no" does not: the released match is case-sensitive): 2/3.
  refs = ["yes", "No", "three", "a dog", "yes"]
  hyps = ["yes", "no", "three", "a cat", " yes "]
  out = metrics.aqa_accuracy(refs, hyps)
  assert out["accuracy"] == pytest.approx(0.6) and out["correct"] == 3
  assert out["yes_no_total"] == 3 and out["yes_no_accuracy"] == pytest.approx(2 / 3)


def test_classification_accuracy():
  # "Cough" matches, "Laughter" vs "laughter" does not, "Sneeze" matches: 2/3.
  out = metrics.accuracy(["Cough", "Laughter", "Sneeze"], ["Cough", "laughter", "Sneeze"])
  assert out["accuracy"] == pytest.approx(2 / 3) and out["total"] == 3


# ------------------------------------------------------------------------------ SRWT


def test_word_timing_error_over_aligned_words():
  # Reference: hello [0.00, 0.48], big [0.52, 0.80], world [0.90, 1.40].
  # Prediction: hello [0.02, 0.50], world [0.90, 1.30] ("big" deleted).
  # Aligned equal words: hello (|0.00-0.02| + |0.48-0.50| = 0.04 s) and world (0 + 0.10 =
  # 0.10 s). Total 0.14 s over 2 words and 4 boundaries: boundary MAE 0.14 / 4 = 35 ms; the
  # released average shift (start + end per word) 0.14 / 2 = 70 ms. WER: 1 deletion / 3 words.
  ref = [Word("hello", 0.0, 0.48), Word("big", 0.52, 0.80), Word("world", 0.90, 1.40)]
  hyp = [Word("Hello", 0.02, 0.50), Word("world", 0.90, 1.30)]
  out = metrics.word_timing_error([ref], [hyp])
  assert out["boundary_mae_ms"] == pytest.approx(35.0)
  assert out["average_shift_ms"] == pytest.approx(70.0)
  assert out["matched_words"] == 2 and out["reference_words"] == 3
  assert out["wer"] == pytest.approx(1 / 3)


def test_unparsable_srwt_output_counts_as_no_words():
  assert metrics.words_of("hello<|0.48|>") == []
  words = metrics.words_of("<|0.00|>hello<|0.48|><|0.52|> world<|0.90|>")
  assert words == [Word("hello", 0.0, 0.48), Word("world", 0.52, 0.90)]
  # No word matched: only the WER (2 deletions / 2 words = 1.0), no timing figure.
  out = metrics.word_timing_error([words], [[]])
  assert out["wer"] == 1.0 and "boundary_mae_ms" not in out


# ------------------------------------------------------------------------------ captions


CAPTION_REFS = [["a dog barks very loudly"], ["rain falls on the roof"]]


@pytest.mark.parametrize("tokenizer", ["simple", "ptb"])
def test_cider_by_hand(tokenizer):
  # Two clips with disjoint vocabularies: every reference n-gram has document frequency 1, idf
  # log(2/1). Clip 1's prediction equals its single reference (5 words, so 1- to 4-grams all
  # exist): cosine 1 for each n, no length penalty -> mean 1, x 10 -> 10. Clip 2's prediction
  # shares no n-gram with its reference -> 0. Corpus CIDEr-D = (10 + 0) / 2 = 5.
  out = caption_metrics.caption_scores(CAPTION_REFS, ["A dog barks very loudly.", "wind blows"],
                                       metrics=("cider",), tokenizer=tokenizer)
  assert out["cider"] == pytest.approx(5.0)
  assert out["tokenizer"] == tokenizer and set(out) == {"cider", "tokenizer", "clips"}


def test_simple_tokenizer_matches_ptb_on_captions():
  captions = ["A dog's barking, loudly!", "Rain falls... on the roof.", "Don't stop.",
              "Birds chirp in the well-lit room (outside).", "It's 3.5 meters away; we're sure"]
  ptb = caption_metrics.tokenize_captions({i: [c] for i, c in enumerate(captions)}, "ptb")
  for i, caption in enumerate(captions):
    assert caption_metrics.simple_tokenize(caption) == ptb[i][0]


def test_without_java_cider_works_and_spice_fails_clearly(monkeypatch):
  monkeypatch.setattr(caption_metrics.shutil, "which", lambda name: None)
  # 'auto' falls back to the pure-Python tokenizer; the value is the same as by hand above.
  out = caption_metrics.caption_scores(CAPTION_REFS, ["a dog barks very loudly", "wind blows"],
                                       metrics=("cider",))
  assert out == {"cider": pytest.approx(5.0), "tokenizer": "simple", "clips": 2}
  for metric in ("spice", "spider"):
    with pytest.raises(metrics.MetricError, match="SPICE needs Java"):
      caption_metrics.caption_scores(CAPTION_REFS, ["a", "b"], metrics=(metric,))
  with pytest.raises(metrics.MetricError, match="'ptb'.*needs Java"):
    caption_metrics.caption_scores(CAPTION_REFS, ["a", "b"], metrics=("cider",),
                                   tokenizer="ptb")


def test_spice_without_the_corenlp_jars_names_them(monkeypatch, tmp_path):
  # With Java present but the Stanford CoreNLP 3.6.0 jars absent, SPICE would try to download
  # them: refused with the jar names and where they go.
  monkeypatch.setattr(caption_metrics.shutil, "which", lambda name: "/usr/bin/java")
  monkeypatch.setattr(caption_metrics, "SPICE_CORENLP_JARS", ("no-such-corenlp.jar",))
  assert "no-such-corenlp.jar" in caption_metrics.spice_problem()
  with pytest.raises(metrics.MetricError, match="no-such-corenlp.jar"):
    caption_metrics.caption_scores(CAPTION_REFS, ["a", "b"], metrics=("spider",))


def test_caption_references_must_be_lists():
  with pytest.raises(metrics.MetricError, match=r"references\[0\] must be a non-empty list"):
    caption_metrics.caption_scores(["a dog"], ["a dog"], metrics=("cider",))
  # CIDEr is a corpus metric: with one clip every n-gram occurs in "all" clips' references, its
  # idf is log(1/1) = 0 and the score is 0 even for a perfect prediction.
  assert math.isclose(caption_metrics.caption_scores(
      [["a b c d"]], ["a b c d"], metrics=("cider",), tokenizer="simple")["cider"], 0.0)
