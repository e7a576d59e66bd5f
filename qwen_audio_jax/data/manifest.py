"""JSONL manifests: one training example per line, validated when read.

The schema is documented in `qwen_audio_jax/data/README.md`. Reading a manifest scans it once,
validates every row and remembers only the byte offsets of the good ones: the rows themselves are
re-read on demand (in the worker processes), so a manifest of millions of rows costs a few bytes
per row of memory and pickles small. Refused rows are returned as `Rejection`s carrying
'file:line' so that the caller can count them and name them in reports.
"""

import dataclasses
import json
import math
import sys
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from etils import epath

from qwen_audio_jax.data.stats import Rejection

CHAT_TASK = "chat"
_COMMON_OPTIONAL = {"id": (str, int), "audio_language": (str,)}


class ManifestError(ValueError):
  """A manifest row that does not follow the schema (the message names file, line and field)."""


@dataclasses.dataclass(frozen=True)
class ClipRef:
  """One clip an example needs: a path (or URI) and an optional segment in seconds."""
  path: str
  start: Optional[float] = None
  end: Optional[float] = None


def is_uri(path: str) -> bool:
  return "://" in path


def resolve_path(path: str, base_dir: Optional[str]) -> str:
  """Absolute paths and URIs are kept; relative paths are taken relative to `base_dir`."""
  if is_uri(path) or base_dir is None or path.startswith("/"):
    return path
  return str(epath.Path(base_dir) / path)


def _number(row: Mapping[str, Any], key: str, where: str) -> Optional[float]:
  value = row.get(key)
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise ManifestError(f"{where}: field {key!r} must be a finite number of seconds, got "
                        f"{value!r}")
  if value < 0:
    raise ManifestError(f"{where}: field {key!r} must be >= 0, got {value}")
  return float(value)


def _segment(item: Mapping[str, Any], where: str) -> Tuple[Optional[float], Optional[float]]:
  start, end = _number(item, "start", where), _number(item, "end", where)
  if start is not None and end is not None and end <= start:
    raise ManifestError(f"{where}: field 'end' ({end}) must be greater than 'start' ({start})")
  return start, end


def _chat_audio_items(row: Mapping[str, Any], where: str) -> List[Dict[str, Any]]:
  messages = row.get("messages")
  if not isinstance(messages, list) or not messages:
    raise ManifestError(f"{where}: a 'chat' row needs a non-empty list 'messages'")
  items = []
  for m, message in enumerate(messages):
    if not isinstance(message, dict):
      raise ManifestError(f"{where}: messages[{m}] must be an object")
    if message.get("role") not in ("system", "user", "assistant"):
      raise ManifestError(f"{where}: messages[{m}].role must be 'system', 'user' or "
                          f"'assistant', got {message.get('role')!r}")
    content = message.get("content")
    if isinstance(content, str):
      continue
    if not isinstance(content, list):
      raise ManifestError(f"{where}: messages[{m}].content must be a string or a list of items")
    for i, item in enumerate(content):
      if not isinstance(item, dict) or not ({"text", "audio"} & set(item)):
        raise ManifestError(f"{where}: messages[{m}].content[{i}] must be an object with "
                            "'text' or 'audio'")
      if "audio" in item:
        if not isinstance(item["audio"], str) or not item["audio"]:
          raise ManifestError(f"{where}: messages[{m}].content[{i}].audio must be a non-empty "
                              "path")
        _segment(item, f"{where}: messages[{m}].content[{i}]")
        items.append(item)
  return items


def clip_refs(row: Mapping[str, Any]) -> List[ClipRef]:
  """The clips of a (validated) row in the order the encoder receives them."""
  if row.get("task") == CHAT_TASK:
    return [ClipRef(item["audio"], item.get("start"), item.get("end"))
            for item in _chat_audio_items(row, "row")]
  return [ClipRef(row["audio"], row.get("start"), row.get("end"))]


def map_audio_paths(row: Dict[str, Any], fn) -> Dict[str, Any]:
  """A copy of `row` with every audio path replaced by fn(path)."""
  row = dict(row)
  if row.get("task") == CHAT_TASK:
    messages = []
    for message in row["messages"]:
      message = dict(message)
      if isinstance(message.get("content"), list):
        message["content"] = [dict(item, audio=fn(item["audio"])) if "audio" in item else item
                              for item in message["content"]]
      messages.append(message)
    row["messages"] = messages
  elif "audio" in row:
    row["audio"] = fn(row["audio"])
  return row


def validate_row(row: Any, where: str, known_tasks: Optional[Iterable[str]] = None) -> None:
  """Checks the common schema and the task's own fields; raises ManifestError naming them."""
  if not isinstance(row, dict):
    raise ManifestError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
  task = row.get("task")
  if not isinstance(task, str) or not task:
    raise ManifestError(f"{where}: field 'task' is missing or not a string")
  if known_tasks is not None and task not in known_tasks:
    raise ManifestError(f"{where}: field 'task' is {task!r}, expected one of "
                        f"{sorted(known_tasks)}")
  for key, kind in _COMMON_OPTIONAL.items():
    if key in row and (not isinstance(row[key], kind) or isinstance(row[key], bool)):
      raise ManifestError(f"{where}: field {key!r} must be a "
                          f"{' or '.join(k.__name__ for k in kind)}")
  if task == CHAT_TASK:
    _chat_audio_items(row, where)
  else:
    if not isinstance(row.get("audio"), str) or not row["audio"]:
      raise ManifestError(f"{where}: field 'audio' (the clip's path) is missing or empty")
    _segment(row, where)
  try:
    validate_task_fields(row)
  except ManifestError:
    raise
  except ValueError as e:
    raise ManifestError(f"{where}: {e}") from None


def validate_task_fields(row: Mapping[str, Any]) -> None:
  """Task-specific fields, checked by the task definitions in qwen_audio_jax.text (dialogues:
  roles alternating, audio in user turns only, ending with an assistant turn)."""
  if row["task"] == CHAT_TASK:
    from qwen_audio_jax.text import chat  # pylint: disable=g-import-not-at-top
    chat.dialogue_pieces(row["messages"])
    return
  from qwen_audio_jax.text import tasks  # pylint: disable=g-import-not-at-top
  tasks.get_task(row["task"]).validate(row)


def known_task_names() -> List[str]:
  from qwen_audio_jax.text import tasks  # pylint: disable=g-import-not-at-top
  return sorted(set(tasks.TASKS) | {CHAT_TASK})


@dataclasses.dataclass
class Manifest:
  """The good rows of one manifest file, by byte offset, and the rows refused while reading."""
  path: str
  offsets: np.ndarray  # int64 [n]: byte offset of each kept row
  line_numbers: np.ndarray  # int64 [n]: 1-based line of each kept row
  tasks: List[str]  # task name of each kept row
  rejections: List[Rejection]
  total_rows: int  # rows considered: kept + refused (rows of other tasks are not counted)
  # Of the refused rows, those no task filter could select (not JSON, not an object, no or an
  # unknown task); counted only when `count_unowned` was set.
  unowned_rows: int = 0

  def __len__(self) -> int:
    return len(self.offsets)


def _owner_task(row: Any, known: Iterable[str]) -> Optional[str]:
  """The row's task when it names a known one; None for rows no task filter can select."""
  task = row.get("task") if isinstance(row, dict) else None
  return task if isinstance(task, str) and task in known else None


def read_manifest(path: str, *, tasks: Optional[Sequence[str]] = None,
                  known_tasks: Optional[Iterable[str]] = None, task_id: int = 0,
                  strict: bool = False, count_unowned: bool = True) -> Manifest:
  """Scans and validates a manifest.

  A row of another task than `tasks` is skipped uncounted (another mixture entry reads it). A
  row that no entry can own (invalid JSON, not an object, no task or an unknown one) is refused
  and counted, under this entry, when `count_unowned` is set; a pipeline whose entries share a
  file sets it for the first entry only, so that each physical row is counted once.

  Args:
    path: local path or etils.epath URI of the .jsonl file.
    tasks: keep only rows with these task names (None = all).
    known_tasks: accepted task names (default: the tasks of qwen_audio_jax.text plus 'chat').
    task_id: the mixture task the refused rows are counted under.
    strict: raise ManifestError at the first bad row instead of collecting it.
    count_unowned: count the rows no entry can own here (else skip them silently).
  """
  known = set(known_tasks) if known_tasks is not None else set(known_task_names())
  wanted = set(tasks) if tasks else None
  if wanted and not wanted <= known:
    raise ManifestError(f"{path}: unknown task filter {sorted(wanted - known)}; expected names "
                        f"from {sorted(known)}")
  file = epath.Path(path)
  if not file.exists():
    raise FileNotFoundError(f"manifest {path} does not exist")
  offsets, line_numbers, row_tasks, rejections = [], [], [], []
  total = unowned = 0
  offset = 0
  with file.open("rb") as f:
    for line_number, line in enumerate(f, start=1):
      start, offset = offset, offset + len(line)
      if not line.strip():
        continue
      where = f"{path}:{line_number}"
      try:
        try:
          row = json.loads(line)
          owner = _owner_task(row, known)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
          row, owner, error = None, None, f"{where}: invalid JSON ({e})"
        else:
          error = None
        if owner is not None and wanted is not None and owner not in wanted:
          continue  # another task's row: not an error, not counted
        if owner is None and not count_unowned:
          continue  # no entry can own it; counted by the first entry that reads this file
        total += 1
        unowned += owner is None
        if error is not None:
          raise ManifestError(error)
        validate_row(row, where, known)
      except ManifestError as e:
        if strict:
          raise
        rejections.append(Rejection(task_id, "malformed", where, str(e).split(": ", 1)[-1]))
        continue
      offsets.append(start)
      line_numbers.append(line_number)
      row_tasks.append(sys.intern(row["task"]))
  return Manifest(str(path), np.asarray(offsets, np.int64), np.asarray(line_numbers, np.int64),
                  row_tasks, rejections, total, unowned)


def read_row(file, manifest: Manifest, index: int) -> Dict[str, Any]:
  """Row `index` of a scanned manifest from an open binary file, audio paths resolved."""
  file.seek(int(manifest.offsets[index]))
  row = json.loads(file.readline())
  base_dir = str(epath.Path(manifest.path).parent)
  return map_audio_paths(row, lambda p: resolve_path(p, base_dir))


def iter_rows(path: str, *, strict: bool = True, tasks: Optional[Sequence[str]] = None,
              known_tasks: Optional[Iterable[str]] = None):
  """Yields (origin 'file:line', row with resolved paths) for every good row of a manifest."""
  manifest = read_manifest(path, tasks=tasks, known_tasks=known_tasks, strict=strict)
  with epath.Path(path).open("rb") as f:
    for i, line_number in enumerate(manifest.line_numbers):
      yield f"{path}:{int(line_number)}", read_row(f, manifest, i)
