"""Audio files cut short: detected from what their container states, not from what decodes.

A truncated file (an interrupted copy or download) often still decodes: libsndfile then reports
the length of what survived, and a row would train a whole transcript on part of its audio.
Each container gives its own evidence:

* Ogg (Vorbis, Opus): every logical stream ends with a page flagged end-of-stream, and pages
  are whole. `ogg_problem` walks the page headers (27 bytes + a segment table each; the packets
  are skipped, not read): a missing end-of-stream page or a page cut off means truncation.
* WAV / AIFF and relatives: the header states the data chunk's size; libsndfile logs
  `data : <stated> (should be <present>)` (AIFF: `SSND ...`) when fewer bytes are present
  (`pcm_problem`).
* MP3 (Xing / LAME header) and FLAC (STREAMINFO) state their frame count, which libsndfile
  reports as `frames`: `short_read_problem` compares it with the samples actually decoded.
"""

import re
from typing import BinaryIO, Optional

OGG_CAPTURE = b"OggS"
_OGG_HEADER = 27
_OGG_BOS = 0x02  # header flags: beginning / end of a logical stream
_OGG_EOS = 0x04
# libsndfile's log line for a chunk whose stated size exceeds the bytes present.
# The audio chunk is 'data' in RIFF / RF64 / W64 / CAF, 'SSND' in AIFF.
_CHUNK_SIZE_LOG = re.compile(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)",
                             re.MULTILINE)
# Stated sizes that mean "unknown" (streaming writers fill them in later, or never).
_UNKNOWN_SIZES = (0, 0xFFFFFFFF, 0x7FFFFFFF)
_PCM_FORMATS = ("WAV", "WAVEX", "RF64", "W64", "AIFF", "AU", "CAF")
# Decoders and headers disagree by an encoder delay (MP3: ~1,100 samples) or a VBR estimate;
# a file is only called short when it misses more than this share and this many seconds.
SHORT_READ_FRACTION = 0.02
SHORT_READ_SECONDS = 0.05


def is_ogg(fileobj: BinaryIO) -> bool:
  position = fileobj.tell()
  head = fileobj.read(4)
  fileobj.seek(position)
  return head == OGG_CAPTURE


def ogg_problem(fileobj: BinaryIO) -> Optional[str]:
  """Why an Ogg file is incomplete (None when every stream ends properly). Leaves the file
  positioned at its start."""
  size = fileobj.seek(0, 2)
  position, open_streams, streams = 0, set(), 0
  try:
    while position < size:
      fileobj.seek(position)
      header = fileobj.read(_OGG_HEADER)
      if len(header) < _OGG_HEADER or header[:4] != OGG_CAPTURE:
        return f"the file ends inside an Ogg page header at byte {position} of {size}"
      segments = fileobj.read(header[26])
      page_end = position + _OGG_HEADER + header[26] + sum(segments)
      if len(segments) < header[26] or page_end > size:
        return f"the file ends inside the Ogg page at byte {position} of {size}"
      serial = int.from_bytes(header[14:18], "little")
      if header[5] & _OGG_BOS:
        open_streams.add(serial)
        streams += 1
      if header[5] & _OGG_EOS:
        open_streams.discard(serial)
      position = page_end
  finally:
    fileobj.seek(0)
  if open_streams:
    return (f"{len(open_streams)} of {streams} Ogg streams have no end-of-stream page (the "
            f"file stops after {size} bytes)")
  return None


def pcm_problem(sound_format: str, extra_info: str, frame_bytes: int) -> Optional[str]:
  """A PCM container whose data chunk is smaller than its header states (None otherwise)."""
  if sound_format not in _PCM_FORMATS:
    return None
  for match in _CHUNK_SIZE_LOG.finditer(extra_info or ""):
    stated, present = int(match.group(1)), int(match.group(2))
    if stated in _UNKNOWN_SIZES or stated <= present + max(frame_bytes, 1):
      continue
    return (f"its header states {stated} bytes of audio data, {present} are present "
            f"({present / stated:.0%})")
  return None


def short_read_problem(stated_frames: int, decoded_frames: int, sample_rate: int
                       ) -> Optional[str]:
  """Fewer frames decoded than the file states, beyond the codecs' usual disagreement."""
  missing = stated_frames - decoded_frames
  if missing <= max(SHORT_READ_FRACTION * stated_frames, SHORT_READ_SECONDS * sample_rate):
    return None
  return (f"its header states {stated_frames / sample_rate:.2f} s, only "
          f"{decoded_frames / sample_rate:.2f} s decode")
