r"""Supervised pretraining of the audio encoder on a corpus's labelled audio: the demo's Whisper.

    python -m qwen_audio_jax.training.encoder_pretraining \
        --train qwen_audio_jax/data/demo/train.jsonl --eval qwen_audio_jax/data/demo/eval.jsonl \
        --out qwen_audio_jax/data/demo_encoder

Stage 1 of Qwen-Audio starts from Whisper-large-v2's encoder, which already turns speech into
frames that say which words were spoken; the LLM then only has to learn where to look. A model
trained from scratch has to learn both at once, and each half waits for the other: the encoder
learns the words only through an LLM that already looks at the right frames, and the LLM learns
where to look only from frames that carry the words (`benchmarks/demo_probe.py`). This job gives
a small model what Whisper gives the real one: it trains the model preset's audio encoder (the
same module and sizes, its projection included) with a mean over each clip's valid frames and
one linear layer, as a classifier of

  word   every word of the manifest's `srwt` rows, cut out at its word times (+-50 ms, at most
         1 s; longer words are cut to 1 s and counted);
  event  the `label` of each `event` row (the whole clip);
  aqa    the `answer` of each `aqa` row, one label set per distinct question (e.g. "How many
         clicks are there?": the counts); meant for corpora whose questions have a closed set of
         answers, as the demo's do.

Each label set is its own softmax over its classes. AdamW's learning rate warms up (over 50
steps in a run of 200 or more) and then follows a cosine down to a tenth of its peak
(`LEARNING_RATE_SCHEDULE`). At a constant rate the demo's held-out accuracies were still
swinging at step 800 (click counts 0.69, 0.94 at steps 700, 800; words 0.94); with the decay
they settle (clicks 1.0, words 0.99), measured on a version of the demo corpus with 1,440 extra
counting clips. It writes the encoder's parameters as a converted checkpoint (the layout of
`python -m qwen_audio_jax.convert`'s Whisper import) for `config.init.whisper`, with what it was
trained on and its held-out accuracy per label set in conversion.json. Rows it cannot use
(another task, no word times, a class the training split never has) are counted and printed,
never dropped silently.
"""

import argparse
import collections
import dataclasses
import json
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from qwen_audio_jax import config as model_config_lib
from qwen_audio_jax.audio import io as audio_io
from qwen_audio_jax.audio import lengths
from qwen_audio_jax.audio.mel import log_mel_spectrogram
from qwen_audio_jax.data import manifest as manifest_lib
from qwen_audio_jax.model.encoder import AudioEncoder

KIND_OF_TASK = {"srwt": "word", "event": "event", "aqa": "aqa"}  # manifest task -> label kind
KINDS = tuple(KIND_OF_TASK.values())
WORD_MARGIN_SECONDS = 0.05
MAX_WORD_SECONDS = 1.0


@dataclasses.dataclass
class Examples:
  """Labelled waveforms of one padded length."""
  waves: np.ndarray  # float32 [N, samples], zero-padded
  num_samples: np.ndarray  # int32 [N]
  labels: List[Tuple[str, str]]  # (label set, class) of each example
  origins: List[str]  # 'manifest:line' (and the word) of each example

  def __len__(self) -> int:
    return len(self.labels)


def _pad(pieces: Sequence[np.ndarray], samples: int) -> np.ndarray:
  return np.stack([np.pad(p, (0, samples - len(p))) for p in pieces]).astype(np.float32)


def labelled_examples(path: str, kinds: Sequence[str] = KINDS,
                      skipped: Optional[collections.Counter] = None) -> Dict[str, Examples]:
  """{'word': word cuts, 'clip': whole clips} of a manifest's labelled rows, for `kinds`.

  Words are padded to 1 s, whole clips to the manifest's longest labelled clip. `skipped`
  (a Counter) receives the count of what could not be used, by reason; rows of other tasks (and
  of kinds not asked for) are not labelled audio and are passed over.
  """
  unknown = sorted(set(kinds) - set(KINDS))
  if unknown:
    raise ValueError(f"unknown label kinds {unknown}; expected some of {KINDS}")
  skipped = collections.Counter() if skipped is None else skipped
  words, clips = ([], [], []), ([], [], [])
  max_word = int(MAX_WORD_SECONDS * lengths.SAMPLE_RATE)
  for origin, row in manifest_lib.iter_rows(path, strict=True, tasks=tuple(KIND_OF_TASK)):
    task = row["task"]
    if KIND_OF_TASK[task] not in kinds:
      continue
    try:
      wave = audio_io.load_audio(row["audio"], start=row.get("start"), end=row.get("end"))
    except audio_io.AudioError as e:
      skipped["unreadable audio"] += 1
      logging.warning("%s: skipped, unreadable audio: %s", origin, e)
      continue
    if task == "srwt":
      for word in row["words"]:  # a non-empty list (validated with the row)
        start = max(0, int((word["start"] - WORD_MARGIN_SECONDS) * lengths.SAMPLE_RATE))
        end = min(len(wave), int((word["end"] + WORD_MARGIN_SECONDS) * lengths.SAMPLE_RATE))
        if end - start < lengths.HOP_LENGTH * 4:
          skipped["word shorter than 40 ms"] += 1
          continue
        if end - start > max_word:
          skipped["word cut to 1 s"] += 1
        words[0].append(wave[start:end][:max_word])
        words[1].append(("word", word["word"]))
        words[2].append(f"{origin} ({word['word']!r})")
    else:
      if len(wave) > lengths.N_SAMPLES:
        raise ValueError(f"{origin}: the clip is {len(wave) / lengths.SAMPLE_RATE:.1f} s; the "
                         f"encoder takes at most {lengths.N_SAMPLES // lengths.SAMPLE_RATE} s")
      clips[0].append(wave)
      clips[1].append(("event", str(row["label"])) if task == "event"
                      else (f"aqa: {row['question']}", str(row["answer"])))
      clips[2].append(origin)
  out = {}
  if words[0]:
    out["word"] = Examples(_pad(words[0], max_word), np.asarray([len(w) for w in words[0]], np.int32),
                           words[1], words[2])
  if clips[0]:
    longest = max(len(w) for w in clips[0])
    samples = int(np.ceil(longest / lengths.SAMPLE_RATE) * lengths.SAMPLE_RATE)
    out["clip"] = Examples(_pad(clips[0], samples), np.asarray([len(w) for w in clips[0]], np.int32),
                           clips[1], clips[2])
  if not out:
    raise ValueError(f"{path}: no labelled audio of kinds {list(kinds)} (srwt rows with word "
                     f"times, event rows, aqa rows)")
  return out


class EncoderClassifier(nn.Module):
  """The model's audio encoder, a mean over each clip's valid frames, one linear layer over
  every class of every label set (each row's softmax is restricted to its own set)."""
  config: model_config_lib.QwenAudioConfig
  num_classes: int

  @nn.compact
  def __call__(self, mel, num_samples):
    frames, counts = AudioEncoder(self.config, name="audio_encoder")(mel, num_samples)
    valid = (jnp.arange(frames.shape[1])[None, :] < counts[:, None])[..., None]
    pooled = jnp.sum(frames * valid, axis=1) / jnp.maximum(jnp.sum(valid, axis=1), 1)
    return nn.Dense(self.num_classes, name="classes")(pooled)


@dataclasses.dataclass
class Classes:
  """Every (label set, class) of the training split, and each set's member mask."""
  names: List[Tuple[str, str]]
  sets: List[str]

  @classmethod
  def of(cls, groups: Dict[str, Examples]) -> "Classes":
    names = sorted({label for examples in groups.values() for label in examples.labels})
    return cls(names, sorted({s for s, _ in names}))

  def encode(self, examples: Examples, skipped: collections.Counter, split: str):
    """(class index, set index) arrays of `examples`; classes unknown here are counted, -1."""
    index = {name: i for i, name in enumerate(self.names)}
    ids = np.asarray([index.get(label, -1) for label in examples.labels], np.int32)
    skipped[f"{split}: class never seen in training"] += int(np.sum(ids < 0))
    sets = np.asarray([self.sets.index(s) if s in self.sets else -1 for s, _ in examples.labels],
                      np.int32)
    return ids, sets

  def set_mask(self) -> np.ndarray:
    return np.asarray([[s == name[0] for name in self.names] for s in self.sets])


def _features(examples: Examples, n_mels: int) -> np.ndarray:
  frames = lengths.mel_frames(examples.waves.shape[1])
  return np.stack([log_mel_spectrogram(w, n_mels, frames) for w in examples.waves])


LEARNING_RATE_SCHEDULE = "warmup min(50, steps / 4) steps, cosine to 0.1 x peak"


def learning_rate_schedule(peak: float, steps: int) -> optax.Schedule:
  """LEARNING_RATE_SCHEDULE: a linear warmup over min(50, steps // 4) steps, then a cosine decay
  to a tenth of `peak` at `steps` (short runs keep most of their steps for the decay)."""
  warmup = min(50, steps // 4)
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(steps, warmup + 1),
                                            end_value=0.1 * peak)


def pretrain(model_config: model_config_lib.QwenAudioConfig, train: Dict[str, Examples],
             held_out: Optional[Dict[str, Examples]] = None, *, steps: int = 800,
             word_batch: int = 32, clip_batch: int = 16, learning_rate: float = 3e-3,
             seed: int = 0, log_every: int = 100, skipped: Optional[collections.Counter] = None,
             log=print):
  """Trains the classifier; returns (the audio encoder's parameters, [(step, {set: held-out
  accuracy})], the classes). Each step draws `word_batch` words and `clip_batch` clips."""
  skipped = collections.Counter() if skipped is None else skipped
  classes = Classes.of(train)
  n_mels = model_config.encoder.n_mels
  data = {}
  for group, examples in train.items():
    ids, sets = classes.encode(examples, skipped, "train")
    data[group] = (_features(examples, n_mels), examples.num_samples, ids, sets)
  evals = {}
  for group, examples in (held_out or {}).items():
    ids, sets = classes.encode(examples, skipped, "held-out")
    keep = ids >= 0
    if keep.any():
      evals[group] = (_features(examples, n_mels)[keep], examples.num_samples[keep], ids[keep],
                      sets[keep])
  batch_sizes = {"word": word_batch, "clip": clip_batch}
  model = EncoderClassifier(model_config, len(classes.names))
  init_rng = jax.random.key(seed)
  mel0, samples0 = next(iter(data.values()))[:2]
  params = nn.unbox(model.init(init_rng, mel0[:1], samples0[:1]))["params"]
  schedule = learning_rate_schedule(learning_rate, steps)
  optimizer = optax.adamw(schedule, b2=0.98, weight_decay=0.0)
  opt_state = optimizer.init(params)
  member = jnp.asarray(classes.set_mask())

  def logits(p, mel, samples, sets):
    return jnp.where(member[sets], model.apply({"params": p}, mel, samples), -1e9)

  @jax.jit
  def step(p, state, batches):
    def loss_fn(p):
      return sum(optax.softmax_cross_entropy_with_integer_labels(
          logits(p, mel, samples, sets), ids).mean() for mel, samples, ids, sets in batches)
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, state = optimizer.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss

  predict = jax.jit(lambda p, mel, samples, sets: jnp.argmax(logits(p, mel, samples, sets), -1))

  def accuracy(p) -> Dict[str, float]:
    hits, totals = collections.Counter(), collections.Counter()
    for mel, samples, ids, sets in evals.values():
      predicted = np.concatenate([np.asarray(predict(p, mel[i:i + 128], samples[i:i + 128],
                                                     sets[i:i + 128]))
                                  for i in range(0, len(ids), 128)])
      for s, ok in zip(sets, predicted == ids):
        hits[classes.sets[s]] += int(ok)
        totals[classes.sets[s]] += 1
    return {s: hits[s] / totals[s] for s in sorted(totals)}

  draw = np.random.default_rng(seed)
  history, losses, start = [], [], time.time()
  for i in range(1, steps + 1):
    batches = []
    for group, (mel, samples, ids, sets) in data.items():
      rows = draw.integers(0, len(ids), batch_sizes[group])
      batches.append((mel[rows], samples[rows], ids[rows], sets[rows]))
    params, opt_state, loss = step(params, opt_state, batches)
    losses.append(float(loss))
    if i % log_every == 0 or i == steps:
      scores = accuracy(params) if evals else {}
      history.append((i, scores))
      log(f"step {i:5d} | loss {np.mean(losses):.3f} | held-out accuracy "
          + (", ".join(f"{s} {a:.3f}" for s, a in scores.items()) or "n/a")
          + f" | {time.time() - start:.0f} s")
      losses = []
  return params["audio_encoder"], history, classes


def save(out_dir: str, encoder_params, model_config: model_config_lib.QwenAudioConfig,
         info: Dict) -> str:
  """Writes the encoder as a converted checkpoint that `config.init.whisper` loads."""
  from qwen_audio_jax import convert  # pylint: disable=g-import-not-at-top
  return convert.save_checkpoint(out_dir, {"audio_encoder": jax.device_get(encoder_params)},
                                 model_config, info=info, overwrite=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  from qwen_audio_jax.data.config import DEMO_DIR  # pylint: disable=g-import-not-at-top
  parser.add_argument("--train", default=os.path.join(DEMO_DIR, "train.jsonl"))
  parser.add_argument("--eval", default=os.path.join(DEMO_DIR, "eval.jsonl"),
                      help="held-out manifest scored every --log-every steps ('' for none)")
  parser.add_argument("--out", required=True, help="checkpoint directory to write")
  parser.add_argument("--model", default="tiny", choices=sorted(model_config_lib.PRESETS),
                      help="model preset whose encoder is trained")
  parser.add_argument("--kinds", default=",".join(KINDS), help=f"labels to learn, of {KINDS}")
  parser.add_argument("--steps", type=int, default=800)
  parser.add_argument("--word-batch", type=int, default=32)
  parser.add_argument("--clip-batch", type=int, default=16)
  parser.add_argument("--learning-rate", type=float, default=3e-3,
                      help=f"peak learning rate ({LEARNING_RATE_SCHEDULE})")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  kinds = [k for k in args.kinds.split(",") if k]
  model_config = model_config_lib.get_preset(args.model, scan_layers=True)
  skipped = collections.Counter()
  start = time.time()
  train = labelled_examples(args.train, kinds, skipped)
  held_out = labelled_examples(args.eval, kinds, collections.Counter()) if args.eval else None
  print(f"{args.train}: " + ", ".join(f"{len(e)} {g}s" for g, e in train.items())
        + f"; read in {time.time() - start:.1f} s")
  encoder, history, classes = pretrain(
      model_config, train, held_out, steps=args.steps, word_batch=args.word_batch,
      clip_batch=args.clip_batch, learning_rate=args.learning_rate, seed=args.seed,
      skipped=skipped)
  for reason, count in sorted(skipped.items()):
    if count:
      print(f"not used: {count} x {reason}")
  info = {"made_by": "qwen_audio_jax.training.encoder_pretraining", "model": args.model,
          "train": os.path.basename(args.train), "eval": os.path.basename(args.eval or ""),
          "kinds": kinds, "steps": args.steps, "word_batch": args.word_batch,
          "clip_batch": args.clip_batch, "learning_rate": args.learning_rate,
          "learning_rate_schedule": LEARNING_RATE_SCHEDULE, "seed": args.seed,
          "label_sets": {s: sum(n[0] == s for n in classes.names) for s in classes.sets},
          "held_out_accuracy": history[-1][1] if history else {},
          "not_used": dict(skipped)}
  print(f"wrote {save(args.out, encoder, model_config, info)}: {json.dumps(info['held_out_accuracy'])}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
