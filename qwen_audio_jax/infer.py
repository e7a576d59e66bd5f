"""Command line: run a model on audio files, one result per file.

    python -m qwen_audio_jax.infer --checkpoint CKPT --audio a.wav b.flac --task asr
    python -m qwen_audio_jax.infer --checkpoint CKPT --audio talk.wav --task srwt --json
    python -m qwen_audio_jax.infer --checkpoint CKPT --audio a.wav --task aqa \
        --question "What is the dog doing?"

CKPT is a converted checkpoint directory (`python -m qwen_audio_jax.convert`) or a training
run's `<workdir>/checkpoints/<step>` (LoRA factors merged). Prompts are the released evaluation
prompts of each task (`qwen_audio_jax.text.tasks`); SRWT prompts end with `<|0.00|>` as the
released evaluation does. All files (and all 30 s windows of longer ones) are decoded in one
batched call. Recordings longer than 30 s are windowed for the sequence tasks (asr, srwt,
translation; see `generate.longform`), and refused for the others.
"""

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from qwen_audio_jax.audio import lengths
from qwen_audio_jax.text import specials

# The released evaluation's max new tokens per task (eval_audio/ of QwenLM/Qwen-Audio).
MAX_NEW_TOKENS = {"asr": 256, "srwt": 256, "translation": 256, "caption": 30, "scene": 10,
                  "emotion": 4, "vocal_sound": 4, "aqa": 4}
DEFAULT_MAX_NEW_TOKENS = 256
WINDOWED_TASKS = ("asr", "srwt", "translation")
TASK_ALIASES = {"translate": "translation"}
SRWT_PREFIX = "<|0.00|>"
UNSPACED = ("zh", "ja", "zh_tr")


class UsageError(ValueError):
  """A flag or file the command cannot use; the message names it."""


def _parser() -> argparse.ArgumentParser:
  from qwen_audio_jax.text import tasks  # pylint: disable=g-import-not-at-top
  names = sorted(set(tasks.TASKS) | set(TASK_ALIASES))
  parser = argparse.ArgumentParser(
      prog="python -m qwen_audio_jax.infer",
      description="Transcribe, translate, caption, classify or answer questions about audio "
      "files with a Qwen-Audio model.",
      epilog="CKPT: a converted checkpoint directory or a run's checkpoints/<step>. "
      "Generation presets: greedy (the released evaluation), qwen_audio_base (the release's "
      "sampling defaults).")
  parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="model to run")
  parser.add_argument("--audio", required=True, nargs="+", metavar="FILE",
                      help="audio files (any libsndfile format; resampled to 16 kHz)")
  parser.add_argument("--task", default="asr", choices=names, help="task (default asr)")
  parser.add_argument("--language", default="en", help="spoken language of the audio "
                      f"({', '.join(specials.LANGUAGES)}; default en)")
  parser.add_argument("--target-language", default=None,
                      help="output language of --task translation (e.g. de)")
  parser.add_argument("--question", default=None, help="the question of --task aqa")
  parser.add_argument("--caption-style", default="clotho", choices=("audiocaps", "clotho",
                                                                    "plain"),
                      help="caption style tag (default clotho, as the released evaluation)")
  parser.add_argument("--generation", default="greedy", choices=("greedy", "qwen_audio_base"),
                      help="decoding preset (default greedy)")
  parser.add_argument("--max-new-tokens", type=int, default=None,
                      help="new tokens per file / window (default: the released evaluation's "
                      "for the task, else 256)")
  parser.add_argument("--num-beams", type=int, default=1, help="beam search with N beams")
  parser.add_argument("--seed", type=int, default=0, help="seed of sampling presets")
  parser.add_argument("--window-seconds", type=float, default=float(lengths.CHUNK_SECONDS),
                      help="window length for recordings longer than 30 s (default 30)")
  parser.add_argument("--overlap-seconds", type=float, default=None,
                      help="overlap of consecutive windows (default 5 for srwt, 0 otherwise; "
                      "only srwt, whose word times locate the overlap, may overlap)")
  parser.add_argument("--tokenizer", default=None,
                      help="vocabulary file or tokenizer directory overriding the checkpoint's")
  parser.add_argument("--mesh", default=None, metavar="DATA,FSDP,TENSOR",
                      help="device mesh like training's (e.g. 1,1,-1: tensor parallel over all "
                      "devices); default one device")
  parser.add_argument("--json", action="store_true", help="print one JSON object per file")
  return parser


def _row(args, path: str) -> Dict[str, Any]:
  from qwen_audio_jax.text import tasks  # pylint: disable=g-import-not-at-top
  row: Dict[str, Any] = {"task": args.task, "audio": path}
  task = tasks.get_task(args.task)
  if task.speech or task.default_audio_language != specials.UNKNOWN_LANGUAGE:
    row["audio_language"] = args.language  # speech tasks, and those whose prompt names it
  if args.task == "translation":
    if not args.target_language:
      raise UsageError("--target-language is required for --task translation (e.g. de)")
    row["text_language"] = args.target_language
  if args.task == "aqa":
    if not args.question:
      raise UsageError("--question is required for --task aqa")
    row["question"] = args.question
  if args.task == "caption":
    row["style"] = args.caption_style
  return row


def _prompt(args, path: str) -> str:
  from qwen_audio_jax.text import tasks  # pylint: disable=g-import-not-at-top
  row = _row(args, path)
  try:
    text = tasks.prompt(row)
  except ValueError as e:  # a field of the row: name the flag it came from
    message = str(e).replace("field 'audio_language'", "--language").replace(
        "field 'text_language'", "--target-language").replace("field 'question'", "--question")
    raise UsageError(message) from None
  return text + (SRWT_PREFIX if args.task == "srwt" else "")


def _check_args(args) -> None:
  args.task = TASK_ALIASES.get(args.task, args.task)
  if args.language not in specials.LANGUAGES + (specials.UNKNOWN_LANGUAGE,):
    raise UsageError(f"--language {args.language!r} is not one of "
                     f"{list(specials.LANGUAGES) + [specials.UNKNOWN_LANGUAGE]}")
  if args.max_new_tokens is not None and args.max_new_tokens < 1:
    raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
  if args.num_beams < 1:
    raise UsageError(f"--num-beams must be >= 1, got {args.num_beams}")
  if args.num_beams > 1 and args.generation != "greedy":
    raise UsageError("--num-beams > 1 needs --generation greedy (beam search does not sample)")
  if not 0 < args.window_seconds <= lengths.CHUNK_SECONDS:
    raise UsageError(f"--window-seconds must be in (0, {lengths.CHUNK_SECONDS}], got "
                     f"{args.window_seconds}")
  if args.overlap_seconds is None:
    args.overlap_seconds = 5.0 if args.task == "srwt" else 0.0
  if args.overlap_seconds and args.task != "srwt":
    raise UsageError("--overlap-seconds needs --task srwt (word times decide which window keeps "
                     "a word heard twice)")
  if not 0 <= args.overlap_seconds < args.window_seconds / 2:
    raise UsageError(f"--overlap-seconds must be in [0, --window-seconds / 2), got "
                     f"{args.overlap_seconds}")
  if args.mesh is not None:
    try:
      args.mesh = tuple(int(x) for x in args.mesh.split(","))
    except ValueError:
      raise UsageError(f"--mesh must be three integers DATA,FSDP,TENSOR, got {args.mesh!r}"
                       ) from None
    if len(args.mesh) != 3:
      raise UsageError(f"--mesh must be three integers DATA,FSDP,TENSOR, got {args.mesh}")
  for path in args.audio:
    if not os.path.isfile(path) and "://" not in path:
      raise UsageError(f"--audio: {path} does not exist")
  _prompt(args, args.audio[0])  # task flags checked before the model loads


def _describe(args, path: str, windows, results) -> Dict[str, Any]:
  from qwen_audio_jax.generate import longform  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.text import parsers, tasks  # pylint: disable=g-import-not-at-top
  separator = "" if args.language in UNSPACED and args.task != "translation" else " "
  out: Dict[str, Any] = {"audio": path, "task": args.task, "windows": len(windows),
                         "finish_reason": [r.finish_reason for r in results]}
  if args.task == "srwt":
    window_words = []
    for window, result in zip(windows, results):
      try:
        window_words.append(parsers.parse_words(SRWT_PREFIX + result.text))
      except ValueError as e:
        out.setdefault("errors", []).append(f"window at {window.offset:.2f} s: {e}")
        window_words.append([])
    words = longform.stitch_words(window_words, windows)
    out["words"] = [{"word": w.word, "start": w.start, "end": w.end} for w in words]
    out["text"] = longform.words_text(words, separator)
  elif len(results) > 1:
    out["text"] = longform.join_texts([parsers.strip_specials(r.text) for r in results],
                                      separator)
  else:
    parsed = tasks.parse_output(args.task, results[0].text)
    out.update(parsed)
    out.setdefault("text", parsers.strip_specials(results[0].text))
  out["raw"] = [r.text for r in results]
  return out


def run(args) -> List[Dict[str, Any]]:
  """Loads the model, decodes every file (windowed when long), returns one record per file."""
  from qwen_audio_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.audio import io as audio_io  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.generate import (Generator, Request, get_generation_config,  # pylint: disable=g-import-not-at-top
                                       longform)
  waves = [audio_io.load_audio(path) for path in args.audio]
  plans = []
  for path, wave in zip(args.audio, waves):
    if wave.shape[0] > lengths.N_SAMPLES and args.task not in WINDOWED_TASKS:
      raise UsageError(f"--audio: {path} is {wave.shape[0] / lengths.SAMPLE_RATE:.1f} s long; "
                       f"--task {args.task} takes clips of at most {lengths.CHUNK_SECONDS} s "
                       f"(only {', '.join(WINDOWED_TASKS)} window longer recordings)")
    plans.append(longform.split(wave.shape[0], args.window_seconds, args.overlap_seconds,
                                timestamps=args.task == "srwt"))
  mesh = None
  if args.mesh is not None:
    from qwen_audio_jax import sharding  # pylint: disable=g-import-not-at-top
    mesh = sharding.make_mesh(args.mesh)
  loaded = checkpoints.load_model(args.checkpoint, mesh=mesh, tokenizer_path=args.tokenizer)
  generator = Generator.from_loaded(loaded, mesh=mesh)
  config = get_generation_config(
      args.generation, seed=args.seed, num_beams=args.num_beams,
      max_new_tokens=args.max_new_tokens or MAX_NEW_TOKENS.get(args.task,
                                                               DEFAULT_MAX_NEW_TOKENS))
  requests = [Request(prompt=_prompt(args, path), audio=[wave[w.first:w.last]],
                      id=f"{path}@{w.offset:.2f}")
              for path, wave, windows in zip(args.audio, waves, plans) for w in windows]
  results = iter(generator.generate(requests, config))
  print(f"{len(requests)} window(s) of {len(args.audio)} file(s) decoded; "
        f"{generator.num_compiled} program(s) compiled", file=sys.stderr)
  return [_describe(args, path, windows, [next(results) for _ in windows])
          for path, windows in zip(args.audio, plans)]


def _print(records: Sequence[Dict[str, Any]], as_json: bool) -> None:
  for record in records:
    if as_json:
      print(json.dumps(record, ensure_ascii=False))
    elif "words" in record:
      print(f"{record['audio']}:")
      for w in record["words"]:
        print(f"  {w['start']:7.2f} {w['end']:7.2f}  {w['word']}")
    else:
      value = record.get("answer", record.get("labels", record.get("text")))
      print(f"{record['audio']}: {', '.join(value) if isinstance(value, list) else value}")


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  try:
    _check_args(args)
    records = run(args)
  except UsageError as e:
    parser.error(str(e))
  except (FileNotFoundError, ValueError) as e:  # unreadable audio, missing checkpoint, ...
    print(f"error: {e}", file=sys.stderr)
    return 1
  _print(records, args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())
