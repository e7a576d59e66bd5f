"""Audio-caption metrics: CIDEr, SPICE and SPIDEr, as the released Clotho evaluation computes them.

QwenLM/Qwen-Audio eval_audio/evaluate_caption.py tokenises every caption with the COCO caption
tools' PTB tokenizer (Stanford CoreNLP, run with Java; lower-cased, punctuation tokens dropped),
then scores with the COCO CIDEr (CIDEr-D: n = 1..4, sigma 6, clipped counts, x 10) and SPICE
scorers; SPIDEr is their mean. Here the scorers are pycocoevalcap's.

Java: the PTB tokenizer and SPICE need a `java` on PATH.
  * tokenizer 'ptb' (the released tokenisation) needs Java; 'simple' is a pure-Python
    approximation (lower-case, contractions and punctuation split off as PTB does for plain
    English, punctuation tokens dropped) so that CIDEr works without Java; 'auto' picks 'ptb'
    when Java is found. The report names the tokenizer used: CIDEr under 'simple' can differ
    slightly from the released numbers.
  * SPICE has no fallback: without Java, or without the Stanford CoreNLP 3.6.0 jars that
    pycocoevalcap would otherwise download on first use, it raises MetricError saying what is
    missing (and SPIDEr with it).
"""

import os
import re
import shutil
from typing import Any, Dict, List, Sequence

from qwen_audio_jax.evaluate.metrics import MetricError
from qwen_audio_jax.text import parsers

CAPTION_METRICS = ("cider", "spice", "spider")
TOKENIZERS = ("auto", "ptb", "simple")
# What the PTB tokenizer wrapper of the COCO caption tools drops after tokenising.
PTB_PUNCTUATION = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?",
                             "!", ",", ":", "-", "--", "...", ";"])
SPICE_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
_SIMPLE_TOKEN = re.compile(r"n't\b|'(?:s|re|ve|ll|d|m)\b|\.\.\.|--|[a-z0-9]+(?:[.-][a-z0-9]+)*"
                           r"(?=n't\b)|[^\W_]+(?:[-.][^\W_]+)*|[^\w\s]")
# PTB escapes brackets; with -lowerCase the escapes are lower-cased and survive the filter.
_PTB_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "{": "-lcb-", "}": "-rcb-", "[": "-lsb-",
                 "]": "-rsb-"}


def java_available() -> bool:
  return shutil.which("java") is not None


def simple_tokenize(caption: str) -> str:
  """Pure-Python approximation of the PTB tokenisation used for CIDEr (see module docstring)."""
  text = caption.replace("\n", " ").lower()
  tokens = _SIMPLE_TOKEN.findall(text)
  return " ".join(_PTB_BRACKETS.get(t, t) for t in tokens if t not in PTB_PUNCTUATION)


def resolve_tokenizer(name: str) -> str:
  if name not in TOKENIZERS:
    raise MetricError(f"caption tokenizer {name!r}: expected one of {TOKENIZERS}")
  if name == "auto":
    return "ptb" if java_available() else "simple"
  if name == "ptb" and not java_available():
    raise MetricError("caption tokenizer 'ptb' (the released tokenisation, Stanford CoreNLP) "
                      "needs Java, and no `java` is on PATH: install a JRE (e.g. apt-get install "
                      "default-jre-headless) or use tokenizer 'simple' (CIDEr only)")
  return name


def tokenize_captions(captions: Dict[int, List[str]], tokenizer: str) -> Dict[int, List[str]]:
  """{id: [caption, ...]} -> {id: [tokenised caption, ...]}."""
  if tokenizer == "simple":
    return {k: [simple_tokenize(c) for c in v] for k, v in captions.items()}
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer  # pylint: disable=g-import-not-at-top
  return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})


def spice_problem() -> str:
  """Why SPICE cannot run here ('' when it can)."""
  if not java_available():
    return ("SPICE needs Java (pycocoevalcap runs spice-1.0.jar), and no `java` is on PATH: "
            "install a JRE (e.g. apt-get install default-jre-headless)")
  try:
    from pycocoevalcap.spice import spice as spice_lib  # pylint: disable=g-import-not-at-top
  except ImportError:
    return "SPICE needs pycocoevalcap: pip install pycocoevalcap (or pip install -e '.[eval]')"
  lib = os.path.join(os.path.dirname(os.path.abspath(spice_lib.__file__)), "lib")
  missing = [j for j in SPICE_CORENLP_JARS if not os.path.isfile(os.path.join(lib, j))]
  if missing:
    return (f"SPICE needs {', '.join(missing)} in {lib} (pycocoevalcap downloads them from "
            "Stanford's site on first use, which needs the network): copy them there from "
            "stanford-corenlp-full-2015-12-09.zip")
  return ""


def _score(scorer, gts, res) -> float:
  score, _ = scorer.compute_score(gts, res)
  return float(score)


def caption_scores(references: Sequence[Sequence[str]], predictions: Sequence[str], *,
                   metrics: Sequence[str] = CAPTION_METRICS, tokenizer: str = "auto"
                   ) -> Dict[str, Any]:
  """Corpus CIDEr / SPICE / SPIDEr of `predictions` (one per clip) against `references` (one
  or more captions per clip).

  A metric that cannot run raises MetricError naming what is missing; ask only for the metrics
  this machine can compute (e.g. metrics=('cider',) without Java).
  """
  unknown = [m for m in metrics if m not in CAPTION_METRICS]
  if unknown:
    raise MetricError(f"unknown caption metrics {unknown}; expected some of {CAPTION_METRICS}")
  if len(references) != len(predictions) or not references:
    raise MetricError(f"caption_scores: {len(references)} reference sets, {len(predictions)} "
                      "predictions (need as many, at least one)")
  for i, refs in enumerate(references):
    if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
      raise MetricError(f"caption_scores: references[{i}] must be a non-empty list of captions, "
                        f"got {refs!r}")
  want_spice = "spice" in metrics or "spider" in metrics
  if want_spice:
    problem = spice_problem()
    if problem:
      raise MetricError(problem)
  tokenizer = resolve_tokenizer(tokenizer)
  gts = tokenize_captions({i: list(r) for i, r in enumerate(references)}, tokenizer)
  res = tokenize_captions({i: [parsers.strip_specials(p)] for i, p in enumerate(predictions)},
                          tokenizer)
  out: Dict[str, Any] = {"tokenizer": tokenizer, "clips": len(references)}
  if "cider" in metrics or "spider" in metrics:
    from pycocoevalcap.cider.cider import Cider  # pylint: disable=g-import-not-at-top
    out["cider"] = _score(Cider(), gts, res)
  if want_spice:
    from pycocoevalcap.spice.spice import Spice  # pylint: disable=g-import-not-at-top
    out["spice"] = _score(Spice(), gts, res)
  if "spider" in metrics:
    out["spider"] = (out["cider"] + out["spice"]) / 2
  return {k: v for k, v in out.items() if k in metrics or k in ("tokenizer", "clips")}
