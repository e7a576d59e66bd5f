"""Random-access sources of raw examples: JSONL manifests and ArrayRecord shards.

Every source is a grain random-access data source (`__len__`, `__getitem__`) returning a
`SourceExample`: the manifest row plus whatever audio it already carries (file bytes from a
shard, decoded arrays from TFDS). A source never raises for one bad record: it returns the
example with `error` set, and the transform counts it. TFDS sources live in `tfds_source.py`.
"""

import dataclasses
import os
import threading
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
from etils import epath

from qwen_audio_jax.data import manifest as manifest_lib
from qwen_audio_jax.data import records
from qwen_audio_jax.data.stats import Rejection

_GLOB_CHARS = set("*?[")


@dataclasses.dataclass
class SourceExample:
  """A row as read from its source, before any audio is decoded."""
  row: Optional[Dict[str, Any]]  # None when the record could not be read (see error)
  origin: str  # 'manifest.jsonl:12', 'shard.array_record[7] (manifest.jsonl:12)', ...
  audio_bytes: Dict[str, bytes] = dataclasses.field(default_factory=dict)  # path -> file bytes
  # path -> (samples [n] or [n, channels], sample rate): audio that arrives already decoded.
  audio_arrays: Dict[str, Tuple[np.ndarray, int]] = dataclasses.field(default_factory=dict)
  error: str = ""


def expand_paths(spec: str, what: str = "paths") -> List[str]:
  """Comma-separated files or glob patterns (in the last path component) -> sorted paths."""
  out = []
  for pattern in (p.strip() for p in spec.split(",")):
    if not pattern:
      continue
    path = epath.Path(pattern)
    if _GLOB_CHARS & set(path.name):
      matches = sorted(str(p) for p in path.parent.glob(path.name))
      if not matches:
        raise FileNotFoundError(f"{what}: pattern {pattern!r} matches no file")
      out.extend(matches)
    else:
      if not path.exists():
        raise FileNotFoundError(f"{what}: {pattern!r} does not exist")
      out.append(pattern)
  if not out:
    raise ValueError(f"{what}: no file given")
  return out


class JsonlSource:
  """The good rows of one or more JSONL manifests (validated once, re-read by byte offset).

  `counted_files`, shared by the entries of one mixture, holds the manifests whose unowned rows
  (invalid JSON, no or an unknown task) an earlier entry has counted already: each such
  physical row is counted once, by the first entry that reads its file.
  """

  def __init__(self, paths: Sequence[str], *, tasks: Optional[Sequence[str]] = None,
               known_tasks: Optional[Sequence[str]] = None, task_id: int = 0,
               counted_files: Optional[Set[str]] = None):
    counted_files = set() if counted_files is None else counted_files
    self._manifests = []
    for path in paths:
      key = path if "://" in path else os.path.realpath(path)
      self._manifests.append(manifest_lib.read_manifest(
          path, tasks=tasks, known_tasks=known_tasks, task_id=task_id,
          count_unowned=key not in counted_files))
      counted_files.add(key)
    self._ends = np.cumsum([len(m) for m in self._manifests])
    self.rejections: List[Rejection] = [r for m in self._manifests for r in m.rejections]
    self.total_rows = sum(m.total_rows for m in self._manifests)
    self._local = threading.local()

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def _file(self, which: int):
    files = getattr(self._local, "files", None)
    if files is None:
      files = self._local.files = {}
    if which not in files:
      files[which] = epath.Path(self._manifests[which].path).open("rb")
    return files[which]

  def __getitem__(self, index: int) -> SourceExample:
    which = int(np.searchsorted(self._ends, index, side="right"))
    local = index - (int(self._ends[which - 1]) if which else 0)
    manifest = self._manifests[which]
    origin = f"{manifest.path}:{int(manifest.line_numbers[local])}"
    try:
      row = manifest_lib.read_row(self._file(which), manifest, local)
    except (OSError, ValueError) as e:
      return SourceExample(None, origin, error=f"cannot re-read the row ({e})")
    return SourceExample(row, origin)

  def __getstate__(self):
    state = dict(self.__dict__)
    del state["_local"]  # open files stay with their process
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._local = threading.local()

  def __repr__(self):
    return f"JsonlSource({[m.path for m in self._manifests]}, rows={len(self)})"


class ArrayRecordSource:
  """Records written by `python -m qwen_audio_jax.data.prepare` (rows + audio bytes)."""

  def __init__(self, paths: Sequence[str]):
    import grain  # pylint: disable=g-import-not-at-top
    self._paths = list(paths)
    self._source = grain.sources.ArrayRecordDataSource(self._paths)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> SourceExample:
    where = (f"{self._paths[0]}[{index}]" if len(self._paths) == 1 else
             f"record {index} of {len(self._paths)} shards {self._paths[0]}...")
    try:
      row, blobs, origin = records.decode_record(self._source[index])
    except (records.RecordError, OSError) as e:
      return SourceExample(None, where, error=str(e))
    return SourceExample(row, f"{origin} ({where})" if origin else where, audio_bytes=blobs)

  def __repr__(self):
    return f"ArrayRecordSource({len(self._paths)} shards, records={len(self)})"
