"""The record format of the ArrayRecord shards: a row's fields plus the bytes of its audio files.

    b"QAR1" | uint32 little-endian header size | header (UTF-8 JSON) | blob 0 | blob 1 | ...

The header is {"row": <manifest row>, "origin": "<manifest>:<line>", "blobs": [[key, size],
...]}. A blob's key is the audio path exactly as it appears in the row, so readers look clips up
by path and the row keeps naming the original files in reports. A blob holds either the original
file's bytes or, when the shard was prepared with `--audio_format flac`, the clip already cut,
mixed down and resampled to 16 kHz (then the row's start/end are removed).
"""

import json
import struct
from typing import Any, Dict, Mapping, Tuple

MAGIC = b"QAR1"
_HEADER_SIZE = struct.Struct("<I")


class RecordError(ValueError):
  """A record that is not in this format (the message says what is wrong)."""


def encode_record(row: Mapping[str, Any], blobs: Mapping[str, bytes], origin: str = "") -> bytes:
  """Serialises a row and its audio blobs into one record."""
  names = list(blobs)
  header = json.dumps({"row": row, "origin": origin,
                       "blobs": [[name, len(blobs[name])] for name in names]},
                      ensure_ascii=False, separators=(",", ":")).encode("utf-8")
  return b"".join([MAGIC, _HEADER_SIZE.pack(len(header)), header] + [blobs[n] for n in names])


def decode_record(record: bytes) -> Tuple[Dict[str, Any], Dict[str, bytes], str]:
  """(row, blobs by path, origin) of a record; raises RecordError on a damaged one."""
  record = bytes(record)
  if record[:4] != MAGIC:
    raise RecordError(f"not a qwen_audio_jax record (starts with {record[:4]!r}, expected "
                      f"{MAGIC!r})")
  if len(record) < 8:
    raise RecordError("record is truncated before its header size")
  (size,) = _HEADER_SIZE.unpack_from(record, 4)
  end = 8 + size
  try:
    header = json.loads(record[8:end].decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise RecordError(f"record header is not valid JSON ({e})") from None
  blobs = {}
  for name, blob_size in header.get("blobs", []):
    blobs[name] = record[end:end + blob_size]
    if len(blobs[name]) != blob_size:
      raise RecordError(f"record is truncated inside the audio of {name!r}")
    end += blob_size
  if end != len(record):
    raise RecordError(f"record has {len(record) - end} unexpected trailing bytes")
  return header["row"], blobs, header.get("origin", "")
