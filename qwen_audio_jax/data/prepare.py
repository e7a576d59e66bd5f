"""Packs JSONL manifests (rows + the bytes of their audio) into ArrayRecord shards.

    python -m qwen_audio_jax.data.prepare --manifest train.jsonl --output_dir shards/ \
        --examples_per_shard 2000 --split_by_task --audio_format flac

Training hosts then read a handful of large shard files with random access (grain's
ArrayRecordDataSource) instead of many small audio files: the recommended path for TPU hosts
reading from cloud storage. `--audio_format original` stores the files' bytes unchanged (fast);
`flac` stores each clip already cut to its segment, mixed down and resampled to 16 kHz (24-bit
FLAC), so training skips the resampling and every clip is known to decode. Rows or audio that
cannot be used are skipped, counted and listed in `<output_dir>/prepare_report.json`; past
--max_bad_fraction the command fails.
"""

import argparse
import collections
import concurrent.futures
import io as io_lib
import json
import math
import os
import shutil
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from etils import epath

from qwen_audio_jax.audio import lengths
from qwen_audio_jax.data import manifest as manifest_lib
from qwen_audio_jax.data import records
from qwen_audio_jax.data.sources import expand_paths


def _flac_bytes(wave: np.ndarray) -> bytes:
  import soundfile  # pylint: disable=g-import-not-at-top
  buffer = io_lib.BytesIO()
  soundfile.write(buffer, wave, lengths.SAMPLE_RATE, format="FLAC", subtype="PCM_24")
  return buffer.getvalue()


def _clip_key(ref: manifest_lib.ClipRef, audio_format: str) -> str:
  if audio_format == "original" or (ref.start is None and ref.end is None):
    return ref.path
  start = "" if ref.start is None else f"{ref.start:g}"
  end = "" if ref.end is None else f"{ref.end:g}"
  return f"{ref.path}#{start}-{end}"


def pack_row(row: Dict[str, Any], origin: str, audio_format: str = "original",
             verify: bool = False) -> bytes:
  """One record for a validated row (paths resolved); raises ValueError / OSError when unusable.

  With audio_format='flac' the row's clips are renamed '<path>#<start>-<end>' when they had a
  segment (the segment is applied once, here) and start/end are removed.
  """
  from qwen_audio_jax.audio import io  # pylint: disable=g-import-not-at-top
  blobs: Dict[str, bytes] = {}
  refs = manifest_lib.clip_refs(row)
  for ref in refs:
    key = _clip_key(ref, audio_format)
    if key in blobs:
      continue
    if audio_format == "original":
      data = epath.Path(ref.path).read_bytes()
      if verify:
        wave = io.decode_audio(data, name=ref.path, start=ref.start, end=ref.end,
                               sample_rate=lengths.SAMPLE_RATE)
        _check_wave(wave, ref.path)
    else:
      wave = io.load_audio(ref.path, start=ref.start, end=ref.end,
                           sample_rate=lengths.SAMPLE_RATE)
      _check_wave(wave, ref.path)
      data = _flac_bytes(np.clip(wave, -1.0, 1.0))
    blobs[key] = data
  if audio_format == "flac":
    row = _strip_segments(row)
  return records.encode_record(row, blobs, origin)


def _check_wave(wave: np.ndarray, path: str) -> None:
  if wave.size == 0:
    raise ValueError(f"{path}: no samples")
  if not np.isfinite(wave).all():
    raise ValueError(f"{path}: NaN or infinite samples")


def _strip_segments(row: Dict[str, Any]) -> Dict[str, Any]:
  """Row whose clips point at their cut '<path>#<start>-<end>' blobs, without start/end."""
  row = dict(row)
  if row["task"] == manifest_lib.CHAT_TASK:
    messages = []
    for message in row["messages"]:
      message = dict(message)
      if isinstance(message.get("content"), list):
        content = []
        for item in message["content"]:
          if "audio" in item:
            ref = manifest_lib.ClipRef(item["audio"], item.get("start"), item.get("end"))
            item = {k: v for k, v in item.items() if k not in ("start", "end")}
            item["audio"] = _clip_key(ref, "flac")
          content.append(item)
        message["content"] = content
      messages.append(message)
    row["messages"] = messages
  else:
    ref = manifest_lib.ClipRef(row["audio"], row.get("start"), row.get("end"))
    row.pop("start", None)
    row.pop("end", None)
    row["audio"] = _clip_key(ref, "flac")
  return row


def _ordered_map(pool: concurrent.futures.Executor, fn, items, window: int):
  """pool.map with at most `window` results pending: a shard's packed audio is never all held
  in memory at once. Results come in input order."""
  pending: collections.deque = collections.deque()
  for item in items:
    pending.append(pool.submit(fn, item))
    if len(pending) >= window:
      yield pending.popleft().result()
  while pending:
    yield pending.popleft().result()


def shard_names(group: str, num_shards: int) -> List[str]:
  """<group>-00000-of-000NN.array_record, ..."""
  return [f"{group}-{i:05d}-of-{num_shards:05d}.array_record" for i in range(num_shards)]


def _num_shards(count: int, examples_per_shard: int, num_shards: Optional[int]) -> int:
  if num_shards:
    return max(1, min(num_shards, count))
  return max(1, math.ceil(count / examples_per_shard))


def prepare(manifests: Sequence[str], output_dir: str, *, examples_per_shard: int = 1000,
            num_shards: Optional[int] = None, split_by_task: bool = False,
            tasks: Optional[Sequence[str]] = None, audio_format: str = "original",
            verify: bool = False, max_bad_fraction: float = 0.05, prefix: str = "data",
            threads: int = 4, progress: bool = True) -> Dict[str, Any]:
  """Writes the shards and returns the report (also written as prepare_report.json)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top
  if audio_format not in ("original", "flac"):
    raise ValueError(f"--audio_format must be 'original' or 'flac', got {audio_format!r}")
  scanned = [manifest_lib.read_manifest(p, tasks=tasks) for p in manifests]
  skipped: List[Dict[str, str]] = [{"origin": r.origin, "reason": r.reason, "detail": r.detail}
                                   for m in scanned for r in m.rejections]
  total_rows = sum(m.total_rows for m in scanned)
  groups: Dict[str, List[Tuple[int, int]]] = collections.defaultdict(list)
  for which, m in enumerate(scanned):
    for i, task in enumerate(m.tasks):
      groups[task if split_by_task else prefix].append((which, i))

  remote = manifest_lib.is_uri(output_dir)
  local_dir = tempfile.mkdtemp(prefix="prepare-") if remote else output_dir
  os.makedirs(local_dir, exist_ok=True)
  written: Dict[str, int] = {}
  files = [epath.Path(m.path).open("rb") for m in scanned]

  def read(key: Tuple[int, int]):
    which, i = key
    origin = f"{scanned[which].path}:{int(scanned[which].line_numbers[i])}"
    return origin, manifest_lib.read_row(files[which], scanned[which], i)

  def pack(item: Tuple[str, Dict[str, Any]]):
    origin, row = item
    try:
      return origin, pack_row(row, origin, audio_format, verify), None
    except (ValueError, OSError, EOFError) as e:
      return origin, None, str(e)

  bar = tqdm.tqdm(total=sum(len(v) for v in groups.values()), unit="ex", disable=not progress,
                  desc="packing")
  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    for group in sorted(groups):
      keys = groups[group]
      n_shards = _num_shards(len(keys), examples_per_shard, num_shards)
      bounds = np.linspace(0, len(keys), n_shards + 1).astype(int)
      for name, lo, hi in zip(shard_names(group, n_shards), bounds[:-1], bounds[1:]):
        rows = [read(key) for key in keys[lo:hi]]  # file handles are read by this thread only
        writer = array_record_module.ArrayRecordWriter(os.path.join(local_dir, name),
                                                       "group_size:1")
        count = 0
        for origin, record, error in _ordered_map(pool, pack, rows, 4 * max(1, threads)):
          bar.update(1)
          if record is None:
            skipped.append({"origin": origin, "reason": "unusable audio", "detail": error})
            continue
          writer.write(record)
          count += 1
        writer.close()
        written[name] = count
  bar.close()
  for f in files:
    f.close()

  report = {"manifests": list(manifests), "rows": total_rows,
            "examples": sum(written.values()), "skipped": len(skipped), "shards": written,
            "audio_format": audio_format, "skipped_rows": skipped}
  (epath.Path(local_dir) / "prepare_report.json").write_text(json.dumps(report, indent=1))
  if remote:
    epath.Path(output_dir).mkdir(parents=True, exist_ok=True)
    for name in list(written) + ["prepare_report.json"]:
      (epath.Path(local_dir) / name).copy(epath.Path(output_dir) / name, overwrite=True)
    shutil.rmtree(local_dir)
  if total_rows and len(skipped) / total_rows > max_bad_fraction:
    first = "; ".join(f"{s['origin']} ({s['detail']})" for s in skipped[:10])
    raise RuntimeError(f"{len(skipped)} of {total_rows} rows could not be packed (limit "
                       f"{max_bad_fraction:.2%}); first: {first}")
  return report


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m qwen_audio_jax.data.prepare",
      description="Pack JSONL manifests and their audio into ArrayRecord shards.")
  parser.add_argument("--manifest", action="append", required=True,
                      help="manifest file or glob (repeatable, or comma-separated)")
  parser.add_argument("--output_dir", required=True, help="local directory or epath URI")
  parser.add_argument("--examples_per_shard", type=int, default=1000)
  parser.add_argument("--num_shards", type=int, default=0,
                      help="shards per group (overrides --examples_per_shard)")
  parser.add_argument("--split_by_task", action="store_true",
                      help="one set of shards per task: <task>-00000-of-000NN.array_record")
  parser.add_argument("--tasks", default="", help="comma-separated tasks to keep ('' = all)")
  parser.add_argument("--audio_format", choices=("original", "flac"), default="original")
  parser.add_argument("--verify", action="store_true",
                      help="decode every clip (always done with --audio_format flac)")
  parser.add_argument("--max_bad_fraction", type=float, default=0.05)
  parser.add_argument("--prefix", default="data", help="shard name prefix without --split_by_task")
  parser.add_argument("--threads", type=int, default=4)
  args = parser.parse_args(argv)
  manifests = [p for spec in args.manifest for p in expand_paths(spec, "--manifest")]
  tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] or None
  report = prepare(manifests, args.output_dir, examples_per_shard=args.examples_per_shard,
                   num_shards=args.num_shards or None, split_by_task=args.split_by_task,
                   tasks=tasks, audio_format=args.audio_format, verify=args.verify,
                   max_bad_fraction=args.max_bad_fraction, prefix=args.prefix,
                   threads=args.threads)
  print(f"{report['examples']} examples in {len(report['shards'])} shards under "
        f"{args.output_dir}; {report['skipped']} of {report['rows']} rows skipped "
        f"(see prepare_report.json)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
