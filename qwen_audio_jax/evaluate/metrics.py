"""Corpus metrics of the paper's benchmarks, computed with the field's libraries.

  error_rate        WER / CER (jiwer) after a named normaliser (`normalizers.py`), corpus-level:
                    edits summed over the corpus / reference units summed, as the released
                    scripts compute it (not a mean of per-utterance rates)
  bleu              sacrebleu.corpus_bleu, tokenize 'zh' for Chinese targets, 'ja-mecab' for
                    Japanese, else '13a' (QwenLM/Qwen-Audio eval_audio/evaluate_st.py); the
                    predictions' `<|...|>` tags are removed first (the released script scores
                    the raw text, where a stray tag would count as a word)
  accuracy          exact match of the generated text with the reference label (sklearn's
                    accuracy_score over strings in the released scripts)
  aqa_accuracy      accuracy, and accuracy over the questions whose answer is yes / no
                    (evaluate_aqa.py)
  word_timing_error SRWT: words aligned by edit distance, then the mean absolute error of their
                    start and end times in ms over the matched words; also the released
                    'average alignment shift' (start + end error per matched word,
                    evaluate_srwt.py) and the WER of the transcripts

Caption metrics (CIDEr, SPICE, SPIDEr) are in `caption_metrics.py`. Every function takes
references and predictions as parallel lists and returns a dict of plain floats / ints.
"""

import importlib
from typing import Any, Dict, List, Sequence

from qwen_audio_jax.evaluate import normalizers
from qwen_audio_jax.text import parsers


class MetricError(ValueError):
  """A metric that cannot be computed (missing dependency, mismatched inputs); says why."""


def require(module: str, package: str):
  """`import module`, or an ImportError that says which package to install."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ImportError(f"evaluation needs the {package!r} package: pip install {package} (or "
                      "pip install -e '.[eval]', which installs every metric's library)") from e


def _check_lengths(references: Sequence[Any], predictions: Sequence[Any], what: str) -> None:
  if len(references) != len(predictions):
    raise MetricError(f"{what}: {len(references)} references but {len(predictions)} "
                      "predictions")
  if not references:
    raise MetricError(f"{what}: no example to score")


def error_rate(references: Sequence[str], predictions: Sequence[str], *, language: str,
               normalizer: str = "qwen_audio") -> Dict[str, Any]:
  """Corpus WER (or CER for zh / ja) after `normalizer`; also the edit counts."""
  jiwer = require("jiwer", "jiwer")
  _check_lengths(references, predictions, "error_rate")
  refs = [" ".join(normalizers.scoring_units(r, language, normalizer)) for r in references]
  hyps = [" ".join(normalizers.scoring_units(p, language, normalizer)) for p in predictions]
  units = sum(len(r.split()) for r in refs)
  if units == 0:
    raise MetricError("error_rate: every reference is empty after normalisation")
  out = jiwer.process_words(refs, hyps)
  edits = out.substitutions + out.deletions + out.insertions
  unit = "character" if normalizers.per_character(language) else "word"
  return {"wer" if unit == "word" else "cer": edits / units, "substitutions": out.substitutions,
          "deletions": out.deletions, "insertions": out.insertions, "reference_units": units,
          "unit": unit, "normalizer": normalizer}


BLEU_TOKENIZERS = {"zh": "zh", "ja": "ja-mecab"}


def bleu_tokenizer(target_language: str) -> str:
  """sacrebleu's tokenizer for a target language, as the released evaluation picks it."""
  return BLEU_TOKENIZERS.get(target_language, "13a")


def _check_bleu_tokenizer(tokenize: str) -> None:
  if tokenize == "ja-mecab":
    try:
      import MeCab  # pylint: disable=g-import-not-at-top,unused-import
      import ipadic  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError as e:
      raise MetricError("BLEU for Japanese targets uses sacrebleu's 'ja-mecab' tokenizer, which "
                        "needs MeCab and its dictionary: pip install 'sacrebleu[ja]'") from e


def bleu(references: Sequence[str], predictions: Sequence[str], *, target_language: str
         ) -> Dict[str, Any]:
  """sacrebleu corpus BLEU with the released evaluation's tokenizer for `target_language`."""
  sacrebleu = require("sacrebleu", "sacrebleu")
  _check_lengths(references, predictions, "bleu")
  tokenize = bleu_tokenizer(target_language)
  _check_bleu_tokenizer(tokenize)
  hyps = [parsers.strip_specials(p) for p in predictions]
  metric = sacrebleu.metrics.BLEU(tokenize=tokenize)
  score = metric.corpus_score(hyps, [list(references)])
  return {"bleu": float(score.score), "tokenize": tokenize,
          "signature": str(metric.get_signature())}


def accuracy(references: Sequence[str], predictions: Sequence[str]) -> Dict[str, Any]:
  """Exact-match accuracy of stripped strings (case and punctuation count, as released)."""
  _check_lengths(references, predictions, "accuracy")
  correct = sum(r.strip() == p.strip() for r, p in zip(references, predictions))
  return {"accuracy": correct / len(references), "correct": correct, "total": len(references)}


YES_NO = ("yes", "no")


def aqa_accuracy(references: Sequence[str], predictions: Sequence[str]) -> Dict[str, Any]:
  """Accuracy over all questions and over those answered yes / no (ClothoAQA's binary
  subset; a reference counts as yes / no case-insensitively, the match itself is exact)."""
  out = accuracy(references, predictions)
  pairs = [(r, p) for r, p in zip(references, predictions) if r.strip().lower() in YES_NO]
  out["yes_no_total"] = len(pairs)
  if pairs:
    yes_no = accuracy([r for r, _ in pairs], [p for _, p in pairs])
    out["yes_no_accuracy"] = yes_no["accuracy"]
    out["yes_no_correct"] = yes_no["correct"]
  return out


def _word_key(word: str) -> str:
  """What two words must share to be aligned as equal (one token for jiwer's alignment)."""
  return "_".join(word.lower().split())


def word_timing_error(references: Sequence[Sequence[parsers.Word]],
                      predictions: Sequence[Sequence[parsers.Word]]) -> Dict[str, Any]:
  """SRWT timing: per example, reference and predicted words aligned by edit distance (jiwer);
  over the words that match, |start error| and |end error| in ms.

  Returns `boundary_mae_ms` (mean over every matched boundary, start and end alike),
  `average_shift_ms` (the released AAS: start + end error summed per matched word, averaged over
  matched words, i.e. twice the boundary error), `matched_words`, `reference_words` and the
  corpus `wer` of the word sequences (lower-cased, as aligned).
  """
  jiwer = require("jiwer", "jiwer")
  _check_lengths(references, predictions, "word_timing_error")
  shift, matched, reference_words, edits = 0.0, 0, 0, 0
  for ref, hyp in zip(references, predictions):
    ref_keys = [_word_key(w.word) for w in ref]
    hyp_keys = [_word_key(w.word) for w in hyp]
    reference_words += len(ref_keys)
    if not ref_keys:
      edits += len(hyp_keys)
      continue
    if not hyp_keys:
      edits += len(ref_keys)
      continue
    out = jiwer.process_words(" ".join(ref_keys), " ".join(hyp_keys))
    edits += out.substitutions + out.deletions + out.insertions
    for chunk in out.alignments[0]:
      if chunk.type != "equal":
        continue
      for k in range(chunk.ref_end_idx - chunk.ref_start_idx):
        r, h = ref[chunk.ref_start_idx + k], hyp[chunk.hyp_start_idx + k]
        shift += abs(r.start - h.start) + abs(r.end - h.end)
        matched += 1
  if reference_words == 0:
    raise MetricError("word_timing_error: every reference has no words")
  out = {"matched_words": matched, "reference_words": reference_words,
         "wer": edits / reference_words}
  if matched:
    out["boundary_mae_ms"] = 1000.0 * shift / (2 * matched)
    out["average_shift_ms"] = 1000.0 * shift / matched
  return out


def words_of(text: str) -> List[parsers.Word]:
  """Timestamped words of a generated SRWT text; [] when it does not parse (counted as all
  words deleted, never an exception in the middle of an evaluation)."""
  try:
    return parsers.parse_words(text)
  except ValueError:
    return []
