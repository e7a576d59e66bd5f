"""Runs one benchmark: rows -> released prompts -> batched generation -> predictions -> metrics.

    source (JSONL / ArrayRecord / TFDS, the data pipeline's sources) -> rows of the task ->
    audio read, resampled and checked as in training (`ExampleBuilder`, waveform features) ->
    prompt `tasks.prompt(row)` + response prefix -> `Generator.generate` in batches of
    `batch_size` (greedy; shapes bucketed, so a run compiles a handful of programs) ->
    predictions.jsonl (index, id, origin, prompt, reference, prediction, ...) -> metrics ->
    report.json

Nothing is dropped silently: rows that cannot be used (unreadable or too-short audio, malformed
rows, clips over 30 s under long_audio='skip') are counted by reason in the report, the first
few by name; clips cut to 30 s (long_audio='trim') are counted as trimmed.

Multi-host: the generator takes the whole (global) batch on every process, so every process
reads the same rows and runs the same batches; process 0 writes the files.
"""

import dataclasses
import json
import os
import time
from concurrent import futures
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import ml_collections
import numpy as np
from absl import logging
from etils import epath

from qwen_audio_jax.data import pipeline as pipeline_lib
from qwen_audio_jax.data.stats import Rejection
from qwen_audio_jax.data.transforms import ExampleBuilder
from qwen_audio_jax.evaluate import config as config_lib
from qwen_audio_jax.evaluate import scoring
from qwen_audio_jax.text import tasks

PREDICTIONS_FILE = "predictions.jsonl"
REPORT_FILE = "report.json"
FIRST_SKIPPED = 10  # skipped rows named in the report


@dataclasses.dataclass
class EvalItem:
  """One usable row, ready to generate from."""
  index: int  # position in the source
  id: str
  origin: str
  prompt: str  # with the response prefix
  wave: np.ndarray  # float32 16 kHz, <= 30 s
  reference: Any
  language: str
  trimmed: bool


@dataclasses.dataclass
class Skipped:
  index: int
  reason: str
  origin: str
  detail: str = ""

  def describe(self) -> str:
    return f"{self.origin} ({self.reason}{': ' + self.detail if self.detail else ''})"


class EvalData:
  """The rows of a benchmark's source, read one at a time (random access, any order)."""

  def __init__(self, c: ml_collections.ConfigDict, tokenizer):
    missing = [t for t in tasks.get_task(c.task).special_tokens() if not tokenizer.has_special(t)]
    if missing:
      raise ValueError(f"benchmark {c.name!r} prompts with Qwen-Audio's multitask tags, but this "
                       f"checkpoint's tokenizer lacks {missing} (a Qwen2-Audio-family "
                       "vocabulary): evaluate a Qwen-Audio-family checkpoint")
    self.config = c
    self.source = pipeline_lib.make_source(c.data, name=c.name, task_id=0)
    # Rows a manifest scan refused before any was read (malformed JSON or fields).
    self.load_rejections: List[Rejection] = list(getattr(self.source, "rejections", []))
    self.builder = ExampleBuilder(
        task_id=0, features="waveform", max_clips=1, max_tokens=1 << 30, text_overflow="drop",
        clip_overflow="drop", long_audio="trim" if c.long_audio == "trim" else "skip",
        tokenizer=tokenizer)
    total = len(self.source)
    self.indices = list(range(min(total, c.max_examples) if c.max_examples else total))

  def __len__(self) -> int:
    return len(self.indices)

  def read(self, index: int):
    """EvalItem, Skipped, or None for a row of another task (not this benchmark's)."""
    c = self.config
    example = self.source[index]
    row = example.row
    if row is not None and row.get("task") != c.task:
      return None
    built = self.builder(example)
    if isinstance(built, Rejection):
      return Skipped(index, built.reason, built.origin, built.detail)
    try:
      reference = scoring.reference_of(c, row)
      language = scoring.language_of(c, row)
    except ValueError as e:
      return Skipped(index, "malformed", example.origin, str(e))
    wave = built.clips[0]
    trimmed = bool(built.truncated)
    return EvalItem(index=index, id=str(row.get("id", example.origin)), origin=example.origin,
                    prompt=tasks.prompt(row) + c.response_prefix, wave=wave,
                    reference=reference, language=language, trimmed=trimmed)


def read_batches(data: EvalData, batch_size: int, threads: int = 4
                 ) -> Iterator[Tuple[List[EvalItem], List[Skipped], int]]:
  """(items, skipped, rows read) per batch of `batch_size` usable rows (rows of other tasks
  are read and passed over); reads run ahead in threads."""
  items: List[EvalItem] = []
  skipped: List[Skipped] = []
  read = 0
  with futures.ThreadPoolExecutor(max(1, threads)) as pool:
    window = max(2 * batch_size, threads)
    pending = [pool.submit(data.read, i) for i in data.indices[:window]]
    next_index = len(pending)
    while pending:
      result = pending.pop(0).result()
      read += 1
      if next_index < len(data.indices):
        pending.append(pool.submit(data.read, data.indices[next_index]))
        next_index += 1
      if isinstance(result, EvalItem):
        items.append(result)
      elif isinstance(result, Skipped):
        skipped.append(result)
      if len(items) == batch_size:
        yield items, skipped, read
        items, skipped, read = [], [], 0
  if items or skipped or read:
    yield items, skipped, read


def generation_config(c: ml_collections.ConfigDict):
  from qwen_audio_jax.generate import get_generation_config  # pylint: disable=g-import-not-at-top
  return get_generation_config(c.generation, max_new_tokens=c.max_new_tokens)


def predict(c: ml_collections.ConfigDict, generator, tokenizer, *, progress: bool = False
            ) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
  """Generates for every usable row. Returns (prediction records in source order, counts)."""
  from qwen_audio_jax.generate import Request  # pylint: disable=g-import-not-at-top
  data = EvalData(c, tokenizer)
  gen_config = generation_config(c)
  records: List[Dict[str, Any]] = []
  skipped: List[Skipped] = [Skipped(-1, r.reason, r.origin, r.detail)
                            for r in data.load_rejections]
  bar = None
  if progress:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=len(data), desc=c.name, unit="row", dynamic_ncols=True)
  for items, batch_skipped, read in read_batches(data, c.batch_size):
    skipped.extend(batch_skipped)
    if items:
      requests = [Request(prompt=item.prompt, audio=[item.wave], id=item.id) for item in items]
      results = generator.generate(requests, gen_config)
      for item, result in zip(items, results):
        records.append({
            "index": item.index, "id": item.id, "origin": item.origin, "prompt": item.prompt,
            "language": item.language, "reference": item.reference,
            "prediction": c.response_prefix + result.text,
            "finish_reason": result.finish_reason, "new_tokens": int(len(result.tokens)),
            "trimmed": item.trimmed})
    if bar is not None:
      bar.update(read)
  if bar is not None:
    bar.close()
  records.sort(key=lambda r: r["index"])
  reasons: Dict[str, int] = {}
  for s in skipped:
    reasons[s.reason] = reasons.get(s.reason, 0) + 1
  counts = {"scored": len(records), "skipped": sum(reasons.values()),
            "skipped_by_reason": reasons,
            "first_skipped": [s.describe() for s in skipped[:FIRST_SKIPPED]],
            "trimmed_to_30s": sum(r["trimmed"] for r in records)}
  return records, counts


def write_predictions(records: Sequence[Dict[str, Any]], path: str) -> None:
  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
  with epath.Path(path).open("w") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_predictions(path: str) -> List[Dict[str, Any]]:
  """Records of a predictions.jsonl; ValueError naming the line of a broken one."""
  records = []
  with epath.Path(path).open() as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_number}: invalid JSON ({e})") from None
      missing = [k for k in ("reference", "prediction", "language") if k not in record]
      if missing:
        raise ValueError(f"{path}:{line_number}: record lacks {missing}")
      records.append(record)
  return records


def report(c: ml_collections.ConfigDict, records: Sequence[Dict[str, Any]],
           counts: Dict[str, Any], **extra) -> Dict[str, Any]:
  """The report: metrics (and those that could not be computed, with why), counts, config."""
  scores, errors = scoring.score(c, records)
  name, value = scoring.headline(c, scores)
  out = {"benchmark": c.name, "task": c.task, "metric": c.metric, "headline": {name: value},
         "metrics": scores, "unavailable_metrics": errors,
         "published": dict(c.published.to_dict()), "examples": counts}
  out.update(extra)
  out["config"] = c.to_dict()
  return out


def evaluate(c: ml_collections.ConfigDict, generator, tokenizer, output_dir: str, *,
             progress: bool = False, is_main: bool = True, **extra) -> Dict[str, Any]:
  """Predicts, scores and (on the main process) writes predictions.jsonl and report.json."""
  config_lib.validate_eval_config(c)
  started = time.perf_counter()
  records, counts = predict(c, generator, tokenizer, progress=progress and is_main)
  seconds = time.perf_counter() - started
  result = report(c, records, counts, seconds=seconds,
                  programs_compiled=getattr(generator, "num_compiled", None),
                  output_dir=output_dir, **extra)
  if is_main:
    write_predictions(records, os.path.join(output_dir, PREDICTIONS_FILE))
    write_report(result, output_dir)
  return result


def write_report(result: Dict[str, Any], output_dir: str) -> str:
  path = epath.Path(output_dir) / REPORT_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=_jsonable) + "\n")
  return os.fspath(path)


def _jsonable(value):
  if isinstance(value, (np.integer, np.floating)):
    return value.item()
  if isinstance(value, tuple):
    return list(value)
  raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def scalars(result: Dict[str, Any], prefix: str) -> Dict[str, float]:
  """The report's numeric metrics as flat '<prefix>/<name>' scalars (TensorBoard)."""
  out = {}
  for key, value in result["metrics"].items():
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      out[f"{prefix}/{key}"] = float(value)
    elif isinstance(value, dict):
      for sub, v in value.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
          out[f"{prefix}/{key}_{sub}"] = float(v)
  out[f"{prefix}/examples_scored"] = float(result["examples"]["scored"])
  out[f"{prefix}/examples_skipped"] = float(result["examples"]["skipped"])
  return out
