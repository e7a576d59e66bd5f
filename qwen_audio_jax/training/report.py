"""The report a run ends with: its decoding evaluations at the last step, against their targets.

The decoding evaluations (`config.evals`, qwen_audio_jax/evaluate/in_training.py) write
`<workdir>/eval/<step>/<name>/report.json` and `predictions.jsonl` at the last step (and every
`every_steps`); this module reads them back and prints, per evaluation, its headline figure and
the target `config.report.targets` sets for it (met or MISSED, said plainly), a few predictions
next to their references, and the `infer` command that reproduces the first of them from the
run's last checkpoint. A run with no decoding evaluation prints nothing.
"""

import json
import operator
import os
import shlex
from typing import Dict, List, Optional, Tuple

import ml_collections
from etils import epath

from qwen_audio_jax.evaluate import runner, scoring

COMPARISONS = {"<=": operator.le, ">=": operator.ge}
# `python -m qwen_audio_jax.infer --task` of a benchmark's task (the reproducing command).
INFER_TASKS = ("asr", "srwt", "caption", "event", "aqa")


def parse_target(name: str, text: str) -> Tuple[str, float]:
  """'<=0.10' -> ('<=', 0.10); ValueError naming config.report.targets.<name> otherwise."""
  text = str(text).strip()
  for sign in COMPARISONS:
    if text.startswith(sign):
      try:
        return sign, float(text[len(sign):])
      except ValueError:
        break
  raise ValueError(f"config.report.targets.{name}={text!r}: expected '<=NUMBER' or '>=NUMBER'")


def validate(config: ml_collections.ConfigDict) -> None:
  """Every target parses; chat examples need held-out dialogues."""
  report_config = config.get("report", {})
  chat_examples = report_config.get("chat_examples", 0)
  if chat_examples < 0:
    raise ValueError(f"config.report.chat_examples={chat_examples}: must be >= 0")
  if chat_examples and "chat" not in config.eval_data.mixture:
    raise ValueError("config.report.chat_examples > 0 answers held-out dialogues: "
                     "config.eval_data.mixture needs a 'chat' entry")
  targets = report_config.get("targets", {})
  for name in targets.keys():  # a target of an evaluation the run does not have is not reported
    parse_target(name, targets[name])


def _percent(metric: str, value: float) -> str:
  return f"{100 * value:.1f}%" if metric in ("wer", "cer", "accuracy") else f"{value:.4f}"


def _reproduce(workdir: str, step: int, c: ml_collections.ConfigDict, record: Dict) -> str:
  audio = record["prompt"].split("<audio>", 1)[-1].split("</audio>", 1)[0]
  command = ["python", "-m", "qwen_audio_jax.infer", "--checkpoint",
             os.path.join(workdir, "checkpoints", str(step)), "--audio", audio]
  if c.task in INFER_TASKS:
    command += ["--task", c.task]
  if c.task == "aqa" and "question" in record:
    command += ["--question", record["question"]]
  return " ".join(shlex.quote(p) for p in command)


def final_report(config: ml_collections.ConfigDict, workdir: str, step: int,
                 examples: Optional[int] = None) -> Tuple[str, bool]:
  """(text of the report, whether every target was met); ('', True) with nothing to report."""
  report_config = config.get("report", ml_collections.ConfigDict())
  chat_text = ""
  if report_config.get("chat_examples", 0):
    chat_text = chat_answers(config, workdir, step, report_config.chat_examples)
  evals = config.get("evals", {})
  if not evals:
    return chat_text, True
  text, met = _decoding_report(config, report_config, workdir, step, examples)
  return "\n".join(t for t in (text, chat_text) if t), met


def _decoding_report(config, report_config, workdir, step, examples):
  evals = config.evals
  targets = report_config.get("targets", {})
  examples = report_config.get("examples", 4) if examples is None else examples
  workdir = os.fspath(workdir)
  lines = [f"Held-out report at step {step} (generation, greedy; "
           f"{os.path.join(workdir, 'eval', str(step))}):"]
  missed: List[str] = []
  shown: List[Tuple[str, List[Dict]]] = []
  for name in evals.keys():
    c = evals[name]
    folder = epath.Path(workdir) / "eval" / str(step) / name
    path = folder / runner.REPORT_FILE
    if not path.exists():
      lines.append(f"  {name}: no report at {path} (did the evaluation run at step {step}?)")
      missed.append(name)
      continue
    result = json.loads(path.read_text())
    metric, value = scoring.headline(c, result["metrics"])
    line = f"  {name:<14} {c.task:<8} {metric:<9} "
    line += _percent(metric, value) if isinstance(value, (int, float)) else "n/a"
    line += f"  ({result['examples']['scored']} rows"
    line += f", {result['examples']['skipped']} skipped)" if result["examples"]["skipped"] else ")"
    if name in targets:
      sign, bound = parse_target(name, targets[name])
      met = isinstance(value, (int, float)) and COMPARISONS[sign](value, bound)
      line += f"  target {sign} {_percent(metric, bound)}: {'met' if met else 'MISSED'}"
      if not met:
        missed.append(name)
    lines.append(line)
    records = runner.read_predictions(os.fspath(folder / runner.PREDICTIONS_FILE))
    shown.append((name, records))
  for name, records in shown[:1]:
    lines.append(f"First {min(examples, len(records))} of {name} (reference | prediction):")
    for record in records[:examples]:
      lines.append(f"  {record['reference']!s:<48} | {record['prediction']}")
    if records:
      lines.append("Reproduce the first one from the last checkpoint:")
      lines.append("  " + _reproduce(workdir, step, evals[name], records[0]))
  if targets:
    lines.append("All targets met." if not missed else
                 f"Targets MISSED: {', '.join(missed)} (this run did not reach them).")
  return "\n".join(lines), not missed


SPEECH_QUESTION = "What does the speaker say?"


def held_out_dialogues(config: ml_collections.ConfigDict, limit: int) -> List[Dict]:
  """The first `limit` single-clip held-out dialogues of eval_data's 'chat' entry: the opening
  user turn (a clip and a question) and the reference answer."""
  from qwen_audio_jax.data import manifest as manifest_lib  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.data.sources import expand_paths  # pylint: disable=g-import-not-at-top
  entry = config.eval_data.mixture["chat"]
  out = []
  for path in expand_paths(entry.paths, "config.eval_data.mixture.chat.paths"):
    for _, row in manifest_lib.iter_rows(path, strict=False, tasks=["chat"]):
      messages = row["messages"]
      if (len(messages) >= 2 and messages[0]["role"] == "user"
          and isinstance(messages[0]["content"], list) and messages[1]["role"] == "assistant"
          and len(manifest_lib.clip_refs(row)) == 1):
        question = " ".join(item.get("text", "") for item in messages[0]["content"]).strip()
        out.append({"id": row.get("id", ""), "messages": messages[:1], "question": question,
                    "reference": messages[1]["content"]})
      if len(out) >= limit:
        return out
  return out


def chat_answers(config: ml_collections.ConfigDict, workdir: str, step: int, limit: int) -> str:
  """Answers of the run's last checkpoint to held-out dialogues, next to the references, and
  the WER of the answers to "What does the speaker say?" against the transcripts."""
  from qwen_audio_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.evaluate import metrics  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.generate import Generator, Request  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.generate.config import get_generation_config  # pylint: disable=g-import-not-at-top
  dialogues = held_out_dialogues(config, limit)
  if not dialogues:
    return "No held-out single-clip dialogue in config.eval_data.mixture.chat."
  loaded = checkpoints.load_model(os.path.join(os.fspath(workdir), "checkpoints", str(step)))
  generator = Generator(loaded.model_config, loaded.params, loaded.tokenizer)
  gen_config = get_generation_config("greedy").replace(
      max_new_tokens=48, stop_tokens=get_generation_config("qwen_audio_chat").stop_tokens)
  results = generator.generate([Request(messages=d["messages"], id=d["id"]) for d in dialogues],
                               gen_config)
  lines = [f"Held-out dialogues at step {step} (greedy; reference | answer):"]
  speech = []
  for d, result in zip(dialogues, results):
    answer = result.text.strip()
    lines.append(f"  {d['question']:<28} {d['reference']!s:<44} | {answer}")
    if d["question"] == SPEECH_QUESTION:
      speech.append((d["reference"], answer))
  if speech:
    wer = metrics.error_rate([r for r, _ in speech], [a for _, a in speech], language="en")["wer"]
    lines.append(f"  WER of the {len(speech)} answers to {SPEECH_QUESTION!r}: {100 * wer:.1f}%")
  return "\n".join(lines)
