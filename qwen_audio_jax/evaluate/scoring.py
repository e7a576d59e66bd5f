"""Prediction records -> the benchmark's metrics (and what each task's reference is).

A record is one line of predictions.jsonl: {index, id, origin, prompt, language, reference,
prediction, ...}. The reference is stored in the form its metric reads, so a predictions file can
be re-scored on its own (`python -m qwen_audio_jax.evaluate --predictions FILE`):

  wer, bleu          the row's `text`
  caption            the row's `references` (a list; Clotho's five captions) or [its `text`]
  accuracy           the row's target as trained (`label`, or `labels` joined by <|delim|>)
  aqa                the row's `answer`
  srwt               the row's `words` ([{word, start, end}])

The prediction is the generated text decoded with special tokens kept, cut at the stop token (as
the released scripts decode it), with the response prefix in front (SRWT).
"""

from typing import Any, Dict, List, Mapping, Sequence, Tuple

import ml_collections

from qwen_audio_jax.evaluate import caption_metrics, metrics
from qwen_audio_jax.evaluate import config as config_lib
from qwen_audio_jax.text import parsers, tasks


def reference_of(c: ml_collections.ConfigDict, row: Mapping[str, Any]) -> Any:
  """What the metric compares the prediction with, from a (validated) row."""
  if c.metric == "caption":
    refs = row.get("references")
    if refs is None:
      return [row["text"].strip()]
    if not isinstance(refs, list) or not refs or not all(
        isinstance(r, str) and r.strip() for r in refs):
      raise ValueError(f"field 'references' must be a non-empty list of captions, got {refs!r}")
    return [r.strip() for r in refs]
  if c.metric == "srwt":
    return [{"word": w["word"].strip(), "start": float(w["start"]), "end": float(w["end"])}
            for w in row["words"]]
  return tasks.get_task(c.task).target(row, None)


def language_of(c: ml_collections.ConfigDict, row: Mapping[str, Any]) -> str:
  """The scoring language of a row: the config's, else the row's text language."""
  if c.language:
    return c.language
  return tasks.get_task(c.task).text_language(row)


def _one_language(records: Sequence[Mapping[str, Any]]) -> str:
  languages = sorted({r["language"] for r in records})
  if len(languages) != 1:
    raise metrics.MetricError(f"the rows mix the text languages {languages}: a corpus WER / BLEU "
                              "needs one; set the config's `language` or split the manifest")
  return languages[0]


def _words(items) -> List[parsers.Word]:
  return [parsers.Word(w["word"], w["start"], w["end"]) for w in items]


def score(c: ml_collections.ConfigDict, records: Sequence[Mapping[str, Any]]
          ) -> Tuple[Dict[str, Any], Dict[str, str]]:
  """(metrics, errors): the benchmark's metrics over `records`; a metric that cannot be
  computed here (e.g. SPICE without Java) is left out and its reason put in `errors`."""
  refs = [r["reference"] for r in records]
  hyps = [r["prediction"] for r in records]
  errors: Dict[str, str] = {}
  if not records:
    return {}, {c.metric: "no example was scored"}
  if c.metric == "wer":
    return metrics.error_rate(refs, hyps, language=_one_language(records),
                              normalizer=c.normalizer), errors
  if c.metric == "bleu":
    return metrics.bleu(refs, hyps, target_language=_one_language(records)), errors
  if c.metric == "accuracy":
    return metrics.accuracy(refs, hyps), errors
  if c.metric == "aqa":
    return metrics.aqa_accuracy(refs, hyps), errors
  if c.metric == "srwt":
    out = metrics.word_timing_error([_words(r) for r in refs], [metrics.words_of(h) for h in hyps])
    transcripts = [_transcript(h) for h in hyps]
    out["transcript"] = metrics.error_rate(
        [" ".join(w["word"] for w in r) for r in refs], transcripts,
        language=_one_language(records), normalizer=c.normalizer)
    return out, errors
  # caption: CIDEr needs no Java; SPICE (and SPIDEr) may not be computable here.
  wanted = config_lib.caption_metric_names(c)
  problem = caption_metrics.spice_problem() if {"spice", "spider"} & set(wanted) else ""
  if problem:
    errors.update({m: problem for m in ("spice", "spider") if m in wanted})
    wanted = tuple(m for m in wanted if m not in errors)
  if not wanted:
    return {}, errors
  return caption_metrics.caption_scores(refs, hyps, metrics=wanted,
                                        tokenizer=c.caption_tokenizer), errors


def _transcript(text: str) -> str:
  try:
    return parsers.timestamped_transcript(text)
  except ValueError:
    return ""


def headline(c: ml_collections.ConfigDict, scores: Mapping[str, Any]) -> Tuple[str, Any]:
  """(name, value) of the figure a benchmark is known by (cer for Chinese ASR)."""
  name = config_lib.HEADLINE[c.metric]
  if c.metric == "wer" and "cer" in scores:
    name = "cer"
  if c.metric == "caption" and name not in scores:
    name = "cider"
  return name, scores.get(name)
