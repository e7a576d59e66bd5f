"""What an evaluation config means: one benchmark = data + task prompt + decoding + metric.

`benchmark_config(...)` builds the ConfigDict that `configs/eval.py` entries return and that
`python -m qwen_audio_jax.evaluate` and the decoding evaluations inside training (`config.evals`)
run; `validate_eval_config` checks it before anything loads, naming the key. Keys:

  name              the benchmark's name (report, output folder, TensorBoard prefix)
  task              the row task whose released prompt is generated from (`text.tasks`); rows
                    of other tasks in the source are not read
  metric            'wer' (WER, or CER for zh / ja), 'bleu', 'caption' (CIDEr / SPICE /
                    SPIDEr), 'accuracy' (exact match), 'aqa' (accuracy + yes/no accuracy),
                    'srwt' (word timing error + WER)
  data              where the rows are: a `data.config.mixture_entry` (source 'jsonl' /
                    'array_record' / 'tfds', paths, tfds_* keys; its weight is not used)
  language          the scoring language ('' = the rows' text language, which must be one):
                    WER per character for zh / ja, BLEU's tokenizer for the target language
  normalizer        'qwen_audio' or 'qwen2_audio' (`normalizers.py`), for 'wer' and 'srwt'
  generation        a generation preset ('greedy', as the released evaluation decodes)
  max_new_tokens    the released evaluation's budget per task
  response_prefix   text appended to the prompt and prepended to the generated text before
                    parsing ('<|0.00|>' for SRWT, as released)
  batch_size        requests per generation call (over all processes)
  max_examples      0 = every row; k = the first k rows of the source (a quick look)
  long_audio        clips over 30 s: 'trim' to the encoder's 30 s window (what the released
                    scripts' Whisper front-end does; counted) or 'skip' (counted)
  caption_metrics   for 'caption': comma-separated subset of cider,spice,spider
  caption_tokenizer for 'caption': 'auto', 'ptb' (needs Java) or 'simple'
  mesh              data / fsdp / tensor sizes of the device mesh (-1 fills)
  output_dir        report and predictions ('' = <checkpoint>/eval/<name>; inside training,
                    <workdir>/eval/<name>/<step>)
  published         {metric: value} the paper / README reports for the released model
                    (copied into the report next to ours; {} when there is none)
  every_steps       inside training only: run every N steps (0 = only at the end)
"""

from typing import Dict, Optional

import ml_collections

from qwen_audio_jax.data import config as data_config_lib

METRICS = ("wer", "bleu", "caption", "accuracy", "aqa", "srwt")
# The row tasks each metric can score.
METRIC_TASKS = {
    "wer": ("asr",),
    "bleu": ("translation",),
    "caption": ("caption", "music_description"),
    "accuracy": ("scene", "emotion", "vocal_sound", "event", "speaker_meta", "song_meta"),
    "aqa": ("aqa",),
    "srwt": ("srwt",),
}
# The value a report leads with (and the scalar in TensorBoard) per metric.
HEADLINE = {"wer": "wer", "bleu": "bleu", "caption": "spider", "accuracy": "accuracy",
            "aqa": "accuracy", "srwt": "boundary_mae_ms"}
LONG_AUDIO = ("trim", "skip")


def benchmark_config(name: str, *, task: str, metric: str, paths: str = "", source: str = "jsonl",
                     language: str = "", max_new_tokens: int = 256, response_prefix: str = "",
                     normalizer: str = "qwen_audio", batch_size: int = 8,
                     published: Optional[Dict[str, float]] = None,
                     caption_metrics: str = "cider,spice,spider", **data_keys
                     ) -> ml_collections.ConfigDict:
  """One benchmark's config (every key documented in the module docstring)."""
  c = ml_collections.ConfigDict()
  c.name = name
  c.task = task
  c.metric = metric
  c.data = data_config_lib.mixture_entry(source=source, paths=paths, tasks=task, **data_keys)
  if source != "jsonl":
    c.data.tasks = ""
  c.language = language
  c.normalizer = normalizer
  c.generation = "greedy"
  c.max_new_tokens = max_new_tokens
  c.response_prefix = response_prefix
  c.batch_size = batch_size
  c.max_examples = 0
  c.long_audio = "trim"
  c.caption_metrics = caption_metrics
  c.caption_tokenizer = "auto"
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.output_dir = ""
  c.published = ml_collections.ConfigDict(dict(published or {}))
  c.every_steps = 0
  return c


def validate_eval_config(c: ml_collections.ConfigDict, where: str = "config") -> None:
  """Raises ValueError naming the key when the benchmark cannot run."""
  from qwen_audio_jax.evaluate import caption_metrics, normalizers  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.generate import config as generation_config  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.text import specials, tasks  # pylint: disable=g-import-not-at-top

  def need(ok, key, message):
    if not ok:
      raise ValueError(f"{where}.{key}={c.get(key)!r}: {message}")

  need(isinstance(c.name, str) and c.name and "/" not in c.name, "name",
       "must be a non-empty name without '/'")
  need(c.metric in METRICS, "metric", f"expected one of {METRICS}")
  need(c.task in tasks.TASKS, "task", f"expected one of {sorted(tasks.TASKS)}")
  need(c.task in METRIC_TASKS[c.metric], "task",
       f"metric {c.metric!r} scores the tasks {METRIC_TASKS[c.metric]}")
  try:
    data_config_lib.validate_data_config(ml_collections.ConfigDict(dict(
        data_config_lib.get_data_config().to_dict(), mixture={c.name: c.data.to_dict()})))
  except ValueError as e:
    raise ValueError(f"{where}.data: {str(e).split(f'mixture.{c.name}.', 1)[-1]}") from None
  need(c.language == "" or c.language in specials.LANGUAGES, "language",
       f"expected '' (from the rows) or one of {specials.LANGUAGES}")
  need(c.normalizer in normalizers.NORMALIZERS, "normalizer",
       f"expected one of {sorted(normalizers.NORMALIZERS)}")
  need(c.generation in generation_config.PRESETS, "generation",
       f"expected one of {sorted(generation_config.PRESETS)}")
  need(isinstance(c.max_new_tokens, int) and c.max_new_tokens >= 1, "max_new_tokens",
       "must be an int >= 1")
  need(isinstance(c.response_prefix, str), "response_prefix", "must be a string")
  need(isinstance(c.batch_size, int) and c.batch_size >= 1, "batch_size", "must be an int >= 1")
  need(isinstance(c.max_examples, int) and c.max_examples >= 0, "max_examples",
       "must be an int >= 0 (0 = all)")
  need(c.long_audio in LONG_AUDIO, "long_audio", f"expected one of {LONG_AUDIO}")
  wanted = [m.strip() for m in c.caption_metrics.split(",") if m.strip()]
  need(c.metric != "caption" or (wanted and set(wanted) <= set(caption_metrics.CAPTION_METRICS)),
       "caption_metrics", f"expected a comma-separated subset of "
       f"{caption_metrics.CAPTION_METRICS}")
  need(c.caption_tokenizer in caption_metrics.TOKENIZERS, "caption_tokenizer",
       f"expected one of {caption_metrics.TOKENIZERS}")
  for axis in ("data", "fsdp", "tensor"):
    size = c.mesh[axis]
    if not isinstance(size, int) or (size != -1 and size < 1):
      raise ValueError(f"{where}.mesh.{axis}={size!r}: must be a positive int or -1 (fill)")
  need(isinstance(c.every_steps, int) and c.every_steps >= 0, "every_steps",
       "must be an int >= 0 (0 = at the end of training only)")


def check_data_paths(c: ml_collections.ConfigDict, where: str = "config") -> None:
  """FileNotFoundError naming `<where>.data.paths` when a manifest or shard does not exist
  (checked before a model is loaded)."""
  from qwen_audio_jax.data.sources import expand_paths  # pylint: disable=g-import-not-at-top
  if c.data.source != "tfds":
    expand_paths(c.data.paths, f"{where}.data.paths")


def caption_metric_names(c: ml_collections.ConfigDict):
  return tuple(m.strip() for m in c.caption_metrics.split(",") if m.strip())
