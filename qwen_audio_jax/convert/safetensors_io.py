"""Reading and writing safetensors checkpoints one tensor at a time.

A released 7-8B checkpoint does not fit in host memory twice, so the reader never loads a whole
file: it opens every file with `safetensors.safe_open` (which validates the header against the
file size) and hands out one tensor per call. numpy has no bfloat16 / float8 types, so those
tensors are read from their byte range (located through the same validated header) and viewed
with the `ml_dtypes` types that jax uses. Pickled `.bin` checkpoints are never read.

The writer lays tensors out in shards the way `transformers.save_pretrained` does
(`model.safetensors`, or `model-0000k-of-0000n.safetensors` plus `model.safetensors.index.json`)
and holds at most one shard in memory.
"""

import json
import os
import struct
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from qwen_audio_jax.errors import CheckpointError  # pylint: disable=unused-import (re-exported)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# safetensors dtype codes that numpy lacks, read through their byte range.
RAW_FLOAT_DTYPES = {
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
_NUMPY_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def numpy_dtype(code: str) -> np.dtype:
  """numpy dtype of a safetensors dtype code ('F32', 'BF16', ...)."""
  if code in RAW_FLOAT_DTYPES:
    return RAW_FLOAT_DTYPES[code]
  if code in _NUMPY_DTYPES:
    return np.dtype(_NUMPY_DTYPES[code])
  raise CheckpointError(f"safetensors dtype {code!r} is not supported")


def _read_header(path: str) -> Tuple[dict, int]:
  """(header dict, byte offset of the data section) of a safetensors file."""
  with open(path, "rb") as f:
    (length,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(length))
  return header, 8 + length


class SafetensorsReader:
  """All tensors of a checkpoint directory (single file or sharded with an index), lazily.

  Use as a context manager; `read(name)` returns one tensor as a numpy array.
  """

  def __init__(self, directory: str):
    self.directory = os.fspath(directory)
    if not os.path.isdir(self.directory):
      raise CheckpointError(f"checkpoint directory {self.directory!r} does not exist")
    self._handles: Dict[str, object] = {}
    self._headers: Dict[str, Tuple[dict, int]] = {}
    index_path = os.path.join(self.directory, INDEX_FILE)
    if os.path.exists(index_path):
      self._weight_map = self._read_index(index_path)
      self._indexed = True
    else:
      files = sorted(f for f in os.listdir(self.directory) if f.endswith(".safetensors"))
      if not files:
        raise CheckpointError(
            f"no safetensors checkpoint in {self.directory!r}: expected {SINGLE_FILE} or "
            f"{INDEX_FILE} with its shards (pickled .bin checkpoints are not read)")
      self._indexed = False
      self._weight_map = {}
      for file in files:
        for name in self._open(file).keys():
          if name in self._weight_map:
            raise CheckpointError(f"tensor {name!r} appears in both {self._weight_map[name]!r} "
                                  f"and {file!r} in {self.directory!r}")
          self._weight_map[name] = file

  def _read_index(self, index_path: str) -> Dict[str, str]:
    try:
      with open(index_path, encoding="utf-8") as f:
        index = json.load(f)
      weight_map = dict(index["weight_map"])
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise CheckpointError(f"{index_path}: not a valid safetensors index ({e})") from e
    for file in sorted(set(weight_map.values())):
      if not os.path.exists(os.path.join(self.directory, file)):
        raise CheckpointError(f"{index_path} lists shard {file!r}, which does not exist in "
                              f"{self.directory!r}")
    return weight_map

  def _open(self, file: str):
    if file not in self._handles:
      path = os.path.join(self.directory, file)
      try:
        handle = safe_open(path, framework="np")
        keys = set(handle.keys())
      except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path}: cannot read safetensors file ({e})") from e
      if getattr(self, "_indexed", False):
        listed = {n for n, f in self._weight_map.items() if f == file}
        missing = sorted(listed - keys)
        if missing:
          raise CheckpointError(f"{INDEX_FILE} places tensor {missing[0]!r} in {path}, which does "
                                f"not contain it")
        extra = sorted(keys - listed)
        if extra:
          raise CheckpointError(f"{path} holds tensor {extra[0]!r}, which {INDEX_FILE} does not "
                                f"list")
      self._handles[file] = handle
    return self._handles[file]

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def close(self):
    self._handles.clear()

  def names(self) -> List[str]:
    return sorted(self._weight_map)

  def file_of(self, name: str) -> str:
    return os.path.join(self.directory, self._weight_map[name])

  def __contains__(self, name: str) -> bool:
    return name in self._weight_map

  def _slice(self, name: str):
    if name not in self._weight_map:
      raise CheckpointError(f"tensor {name!r} is missing from the checkpoint in "
                            f"{self.directory!r}")
    return self._open(self._weight_map[name]).get_slice(name)

  def shape(self, name: str) -> Tuple[int, ...]:
    return tuple(self._slice(name).get_shape())

  def dtype_code(self, name: str) -> str:
    return self._slice(name).get_dtype()

  def read(self, name: str) -> np.ndarray:
    """The tensor `name` as a numpy array (bfloat16 as ml_dtypes.bfloat16)."""
    code = self.dtype_code(name)
    file = self._weight_map[name]
    path = os.path.join(self.directory, file)
    try:
      if code in RAW_FLOAT_DTYPES:
        return self._read_raw(file, name, RAW_FLOAT_DTYPES[code])
      numpy_dtype(code)
      return self._open(file).get_tensor(name)
    except CheckpointError:
      raise
    except Exception as e:
      raise CheckpointError(f"{path}: cannot read tensor {name!r} ({e})") from e

  def _read_raw(self, file: str, name: str, dtype: np.dtype) -> np.ndarray:
    path = os.path.join(self.directory, file)
    if file not in self._headers:
      self._headers[file] = _read_header(path)
    header, data_start = self._headers[file]
    entry = header[name]
    begin, end = entry["data_offsets"]
    shape = tuple(entry["shape"])
    count = int(np.prod(shape, dtype=np.int64))
    if end - begin != count * dtype.itemsize:
      raise CheckpointError(f"{path}: tensor {name!r} has {end - begin} bytes, its shape {shape} "
                            f"needs {count * dtype.itemsize}")
    data = np.fromfile(path, dtype=np.uint8, count=end - begin, offset=data_start + begin)
    if data.size != end - begin:
      raise CheckpointError(f"{path}: tensor {name!r} is truncated")
    return data.view(dtype).reshape(shape)


def safetensors_dtype_code(dtype) -> str:
  """The safetensors dtype code of a numpy dtype."""
  dtype = np.dtype(dtype)
  for code, d in RAW_FLOAT_DTYPES.items():
    if d == dtype:
      return code
  for code, d in _NUMPY_DTYPES.items():
    if np.dtype(d) == dtype:
      return code
  raise CheckpointError(f"dtype {dtype} cannot be written to safetensors")


def parse_size(size) -> int:
  """Bytes of a size given as an int or a string such as '5GB', '500MB', '20KB' (powers of 1000
  as transformers counts them; 'GiB' / 'MiB' / 'KiB' are powers of 1024)."""
  if isinstance(size, (int, np.integer)):
    return int(size)
  text = str(size).strip().upper()
  units = [("GIB", 2**30), ("MIB", 2**20), ("KIB", 2**10), ("GB", 10**9), ("MB", 10**6),
           ("KB", 10**3), ("B", 1)]
  for unit, factor in units:
    if text.endswith(unit):
      number = text[:-len(unit)].strip()
      try:
        return int(float(number) * factor)
      except ValueError:
        break
  try:
    return int(text)
  except ValueError:
    raise ValueError(f"cannot read size {size!r}: expected bytes or e.g. '5GB', '500MB'") from None


class ShardedWriter:
  """Writes tensors into shards planned up front, keeping at most one shard in memory.

  `plan` gives every tensor's name and size in bytes in the order they will be added; a new shard
  starts when the next tensor would push the current one past `max_shard_size`.
  """

  def __init__(self, out_dir: str, plan: Sequence[Tuple[str, int]], max_shard_size: int,
               metadata: Optional[Dict[str, str]] = None):
    self.out_dir = os.fspath(out_dir)
    self.metadata = dict(metadata or {"format": "pt"})
    shards: List[List[str]] = [[]]
    size = 0
    for name, nbytes in plan:
      if shards[-1] and size + nbytes > max_shard_size:
        shards.append([])
        size = 0
      shards[-1].append(name)
      size += nbytes
    count = len(shards)
    self.files = ([SINGLE_FILE] if count == 1 else
                  [f"model-{k + 1:05d}-of-{count:05d}.safetensors" for k in range(count)])
    self._shard_of = {name: k for k, names in enumerate(shards) for name in names}
    self._pending = [set(names) for names in shards]
    self._buffers: List[Dict[str, np.ndarray]] = [dict() for _ in shards]
    self._total = int(sum(n for _, n in plan))
    os.makedirs(self.out_dir, exist_ok=True)

  def add(self, name: str, array: np.ndarray):
    if name not in self._shard_of:
      raise ValueError(f"tensor {name!r} was not planned for this checkpoint")
    k = self._shard_of[name]
    if name not in self._pending[k]:
      raise ValueError(f"tensor {name!r} was already written")
    self._buffers[k][name] = np.ascontiguousarray(array)
    self._pending[k].discard(name)
    if not self._pending[k]:
      save_file(self._buffers[k], os.path.join(self.out_dir, self.files[k]),
                metadata=self.metadata)
      self._buffers[k] = {}

  def close(self) -> List[str]:
    """Checks every planned tensor arrived, writes the index; returns the files written."""
    missing = sorted(n for pending in self._pending for n in pending)
    if missing:
      raise ValueError(f"tensor {missing[0]!r} was planned but never written")
    if len(self.files) > 1:
      index = {"metadata": {"total_size": self._total},
               "weight_map": {n: self.files[k] for n, k in sorted(self._shard_of.items())}}
      with open(os.path.join(self.out_dir, INDEX_FILE), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")
    return list(self.files)


def write_safetensors(out_dir: str, tensors: Iterable[Tuple[str, np.ndarray]],
                      max_shard_size="5GB") -> List[str]:
  """Writes (name, array) pairs (all held in memory) in HF's sharded layout."""
  tensors = list(tensors)
  writer = ShardedWriter(out_dir, [(n, a.nbytes) for n, a in tensors], parse_size(max_shard_size))
  for name, array in tensors:
    writer.add(name, array)
  return writer.close()
