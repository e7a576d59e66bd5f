"""TFDS datasets (prepared locally in the array_record file format) as task sources.

`tfds.data_source` gives random access without tensorflow for datasets whose features decode
with numpy (Tensor, Text, Scalar). Datasets declaring `tfds.features.Audio` (LibriSpeech among
them) need tensorflow importable, because that feature resolves its dtype through tf.
tensorflow-datasets is an optional dependency (`pip install 'qwen_audio_jax[tfds]'`), imported
only when a mixture entry has source='tfds'. An adapter maps one TFDS example (a dict of numpy
values) onto a manifest row plus the clip's samples:

    adapter(example: dict, index: int) -> (row, {audio_key: (samples, sample_rate)})

The row names its clip by `audio_key` (any string, e.g. 'tfds://librispeech/train/1272-128104-
0000'); the samples never touch the file system.
"""

import importlib
from typing import Any, Callable, Dict, Mapping, Tuple

import numpy as np

from qwen_audio_jax.audio import lengths
from qwen_audio_jax.data.sources import SourceExample

Adapter = Callable[[Mapping[str, Any], int], Tuple[Dict[str, Any], Dict[str, Tuple[np.ndarray,
                                                                                  int]]]]


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def pcm16(samples) -> np.ndarray:
  """Integer samples holding 16-bit PCM as int16 (scaled by 2**15 downstream).

  `tfds.features.Audio` stores 16-bit PCM in int64 by default; scaling those by their own dtype
  (2**63) would silence the clip. Float samples are returned unchanged.
  """
  samples = np.asarray(samples)
  if not np.issubdtype(samples.dtype, np.integer) or samples.dtype == np.int16:
    return samples
  if samples.size and (samples.min() < -2**15 or samples.max() >= 2**15):
    raise ValueError(f"integer audio samples exceed the 16-bit range ({samples.min()} ... "
                     f"{samples.max()}); an adapter must scale other integer formats itself")
  return samples.astype(np.int16)


def librispeech_adapter(example: Mapping[str, Any], index: int):
  """TFDS 'librispeech' ({'speech': 16-bit PCM at 16 kHz, 'text', 'id', ...}) -> an English
  ASR row.

  The transcripts are upper case in the corpus; they are lower-cased, as in Qwen-Audio's outputs.
  """
  utterance = _text(example.get("id", index))
  key = f"tfds://librispeech/{utterance}"
  row = {"id": utterance, "task": "asr", "audio": key, "audio_language": "en",
         "text": _text(example["text"]).lower(), "text_language": "en", "itn": False}
  return row, {key: (pcm16(example["speech"]), lengths.SAMPLE_RATE)}


ADAPTERS: Dict[str, Adapter] = {
    "librispeech": librispeech_adapter,
}


def get_adapter(name: str) -> Adapter:
  """A registered adapter, or 'package.module:function'."""
  if name in ADAPTERS:
    return ADAPTERS[name]
  if ":" in name:
    module, function = name.split(":", 1)
    return getattr(importlib.import_module(module), function)
  raise ValueError(f"unknown TFDS adapter {name!r}: expected one of {sorted(ADAPTERS)} or "
                   "'package.module:function'")


def open_data_source(name: str, split: str, data_dir: str):
  """`tfds.data_source(name, split, data_dir)`: random access to a prepared TFDS split."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"TFDS dataset {name!r}: tensorflow-datasets is not installed (pip install "
                      f"'qwen_audio_jax[tfds]'); or write the data as JSONL manifests") from e
  return tfds.data_source(name, split=split, data_dir=data_dir or None)


class TfdsSource:
  """A TFDS split through `tfds.data_source`, each example mapped to a row by an adapter.

  `data_source`: any random-access sequence of example dicts (default: the prepared TFDS split).
  """

  def __init__(self, name: str, *, split: str = "train", data_dir: str = "",
               adapter: str = "librispeech", data_source=None):
    self._name = f"{name}[{split}]"
    self._adapter_name = adapter
    get_adapter(adapter)  # fail early on a bad name
    self._source = (open_data_source(name, split, data_dir) if data_source is None
                    else data_source)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> SourceExample:
    origin = f"tfds:{self._name}[{index}]"
    try:
      example = self._source[index]
      row, arrays = get_adapter(self._adapter_name)(example, index)
    except (KeyError, ValueError, TypeError, OSError) as e:
      return SourceExample(None, origin, error=f"{type(e).__name__}: {e}")
    return SourceExample(row, f"{origin} ({row.get('id', '')})", audio_arrays=arrays)

  def __repr__(self):
    return f"TfdsSource({self._name}, adapter={self._adapter_name!r}, examples={len(self)})"
