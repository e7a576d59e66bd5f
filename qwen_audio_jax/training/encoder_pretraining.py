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
  frame  the same words read in their whole sentence: each 40 ms audio frame whose centre lies
         inside a word's SRWT times is classified as that word by the same linear layer (the
         other frames are not scored). The cut words teach the encoder what each word sounds
         like; the frames teach it to say so at the frame where the word is spoken, in context,
         which is what the LLM reads: stage 1 of the demo, with this encoder frozen but for its
         layer norm and projection, reached held-out WER 3.8% (18.9% from the encoder trained
         without the frames, the same 2,400 steps);
  event  the `label` of each `event` row (the whole clip);
  aqa    the `answer` of each `aqa` row, one label set per distinct question (e.g. "How many
         clicks are there?": the counts); meant for corpora whose questions have a closed set of
         answers, as the demo's do.

Each label set is its own softmax over its classes. AdamW's learning rate warms up (over 50
steps in a run of 200 or more) and then follows a cosine down to a tenth of its peak
(`LEARNING_RATE_SCHEDULE`). At a constant rate the demo's held-out accuracies were still
swinging at step 800 (click counts 0.69, 0.94 at steps 700, 800; words 0.94); with the decay
they settle (clicks 1.0, words 0.99), measured on a version of the demo corpus with 1,440 extra
counting clips. The frames cost time (each step also encodes `utterance_batch` whole sentences:
185 s for 800 steps on 2 cores against 98 s without) and end at 92% of the held-out voice's
word frames right (99.7% of its cut words). It writes the encoder's parameters as a converted checkpoint (the layout of
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

KINDS_OF_TASK = {"srwt": ("word", "frame"), "event": ("event",), "aqa": ("aqa",)}  # task -> kinds
KINDS = tuple(k for kinds in KINDS_OF_TASK.values() for k in kinds)
WORD_MARGIN_SECONDS = 0.05
MAX_WORD_SECONDS = 1.0
# One audio frame per 40 ms: mel hop 10 ms, the stride-2 conv, the stride-2 average pool.
FRAME_SECONDS = 4 * lengths.HOP_LENGTH / lengths.SAMPLE_RATE


@dataclasses.dataclass
class Examples:
  """Labelled waveforms of one padded length."""
  waves: np.ndarray  # float32 [N, samples], zero-padded
  num_samples: np.ndarray  # int32 [N]
  labels: List[Tuple[str, str]]  # (label set, class) of each example
  origins: List[str]  # 'manifest:line' (and the word) of each example
  # Whole utterances ('frame' kind) only: each example's words as (start s, end s, word); its
  # frames are labelled one by one and `labels` holds its label set with an empty class.
  words: Optional[List[List[Tuple[float, float, str]]]] = None

  def __len__(self) -> int:
    return len(self.labels)


def _pad(pieces: Sequence[np.ndarray], samples: int) -> np.ndarray:
  return np.stack([np.pad(p, (0, samples - len(p))) for p in pieces]).astype(np.float32)


def labelled_examples(path: str, kinds: Sequence[str] = KINDS,
                      skipped: Optional[collections.Counter] = None) -> Dict[str, Examples]:
  """{'word': word cuts, 'utterance': whole srwt clips, 'clip': whole event / aqa clips} of a
  manifest's labelled rows, for `kinds`.

  Words are padded to 1 s, utterances and clips to the longest of their group (rounded up to a
  second). `skipped` (a Counter) receives the count of what could not be used, by reason; rows of
  other tasks (and of kinds not asked for) are not labelled audio and are passed over.
  """
  unknown = sorted(set(kinds) - set(KINDS))
  if unknown:
    raise ValueError(f"unknown label kinds {unknown}; expected some of {KINDS}")
  skipped = collections.Counter() if skipped is None else skipped
  words, clips, utterances = ([], [], []), ([], [], []), ([], [], [], [])
  max_word = int(MAX_WORD_SECONDS * lengths.SAMPLE_RATE)
  for origin, row in manifest_lib.iter_rows(path, strict=True, tasks=tuple(KINDS_OF_TASK)):
    task = row["task"]
    wanted = [k for k in KINDS_OF_TASK[task] if k in kinds]
    if not wanted:
      continue
    try:
      wave = audio_io.load_audio(row["audio"], start=row.get("start"), end=row.get("end"))
    except audio_io.AudioError as e:
      skipped["unreadable audio"] += 1
      logging.warning("%s: skipped, unreadable audio: %s", origin, e)
      continue
    if task != "srwt" or "frame" in wanted:
      if len(wave) > lengths.N_SAMPLES:
        raise ValueError(f"{origin}: the clip is {len(wave) / lengths.SAMPLE_RATE:.1f} s; the "
                         f"encoder takes at most {lengths.N_SAMPLES // lengths.SAMPLE_RATE} s")
    if "word" in wanted:
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
    if "frame" in wanted:
      utterances[0].append(wave)
      utterances[1].append(("word", ""))
      utterances[2].append(origin)
      utterances[3].append([(float(w["start"]), float(w["end"]), w["word"]) for w in row["words"]])
    if task != "srwt":
      clips[0].append(wave)
      clips[1].append(("event", str(row["label"])) if task == "event"
                      else (f"aqa: {row['question']}", str(row["answer"])))
      clips[2].append(origin)
  out = {}
  if words[0]:
    out["word"] = Examples(_pad(words[0], max_word), np.asarray([len(w) for w in words[0]], np.int32),
                           words[1], words[2])
  for group, (waves, labels, origins, *spans) in (("utterance", utterances), ("clip", clips)):
    if waves:
      longest = max(len(w) for w in waves)
      samples = int(np.ceil(longest / lengths.SAMPLE_RATE) * lengths.SAMPLE_RATE)
      out[group] = Examples(_pad(waves, samples), np.asarray([len(w) for w in waves], np.int32),
                            labels, origins, spans[0] if spans else None)
  if not out:
    raise ValueError(f"{path}: no labelled audio of kinds {list(kinds)} (srwt rows with word "
                     f"times, event rows, aqa rows)")
  return out


def frame_labels(examples: Examples) -> List[List[str]]:
  """The word each of an utterance's audio frames (40 ms, `lengths.audio_tokens`) lies in: the
  frame whose centre falls inside a word's times gets it, the others '' (not scored)."""
  out = []
  for spans, num_samples in zip(examples.words, examples.num_samples):
    n = int(lengths.audio_tokens(int(num_samples)))
    centres = (np.arange(n) + 0.5) * FRAME_SECONDS
    labels = [""] * n
    for start, end, word in spans:
      for i in np.flatnonzero((centres >= start) & (centres < end)):
        labels[i] = word
    out.append(labels)
  return out


class EncoderClassifier(nn.Module):
  """The model's audio encoder, a mean over each clip's valid frames, one linear layer over
  every class of every label set (each row's softmax is restricted to its own set).

  per_frame: the linear layer on each frame instead ([B, frames, classes]): the same readout,
  so a word is read from each of its frames in context as from the mean of its cut."""
  config: model_config_lib.QwenAudioConfig
  num_classes: int

  @nn.compact
  def __call__(self, mel, num_samples, per_frame: bool = False):
    frames, counts = AudioEncoder(self.config, name="audio_encoder")(mel, num_samples)
    readout = nn.Dense(self.num_classes, name="classes")
    if per_frame:
      return readout(frames)
    valid = (jnp.arange(frames.shape[1])[None, :] < counts[:, None])[..., None]
    pooled = jnp.sum(frames * valid, axis=1) / jnp.maximum(jnp.sum(valid, axis=1), 1)
    return readout(pooled)


@dataclasses.dataclass
class Classes:
  """Every (label set, class) of the training split, and each set's member mask."""
  names: List[Tuple[str, str]]
  sets: List[str]

  @classmethod
  def of(cls, groups: Dict[str, Examples]) -> "Classes":
    names = set()
    for examples in groups.values():
      if examples.words is None:
        names.update(examples.labels)
      else:
        names.update((s, word) for (s, _), spans in zip(examples.labels, examples.words)
                     for _, _, word in spans)
    names = sorted(names)
    return cls(names, sorted({s for s, _ in names}))

  def encode(self, examples: Examples, skipped: collections.Counter, split: str):
    """(class index, set index) arrays of `examples`; classes unknown here are counted, -1.

    Utterances get a class index per audio frame ([N, frames]), -1 where no word is."""
    index = {name: i for i, name in enumerate(self.names)}
    sets = np.asarray([self.sets.index(s) if s in self.sets else -1 for s, _ in examples.labels],
                      np.int32)
    if examples.words is None:
      ids = np.asarray([index.get(label, -1) for label in examples.labels], np.int32)
      skipped[f"{split}: class never seen in training"] += int(np.sum(ids < 0))
      return ids, sets
    ids = np.full((len(examples), int(lengths.audio_tokens(examples.waves.shape[1]))), -1, np.int32)
    unseen = 0
    for row, ((label_set, _), words) in enumerate(zip(examples.labels, frame_labels(examples))):
      for frame, word in enumerate(words):
        if word:
          ids[row, frame] = index.get((label_set, word), -1)
          unseen += int(ids[row, frame] < 0)
    skipped[f"{split}: frame of a word never seen in training"] += unseen
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
             word_batch: int = 32, clip_batch: int = 16, utterance_batch: int = 16,
             learning_rate: float = 3e-3,
             seed: int = 0, log_every: int = 100, skipped: Optional[collections.Counter] = None,
             log=print):
  """Trains the classifier; returns (the audio encoder's parameters, [(step, {set: held-out
  accuracy})], the classes). Each step draws `word_batch` words, `clip_batch` clips and
  `utterance_batch` utterances (each of their labelled frames weighs as one example of a batch
  of that many frames); held-out frames are scored as '<set> (frames)'."""
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
    keep = (ids >= 0).reshape(len(ids), -1).any(axis=-1)
    if keep.any():
      evals[group] = (_features(examples, n_mels)[keep], examples.num_samples[keep], ids[keep],
                      sets[keep])
  batch_sizes = {"word": word_batch, "clip": clip_batch, "utterance": utterance_batch}
  model = EncoderClassifier(model_config, len(classes.names))
  init_rng = jax.random.key(seed)
  mel0, samples0 = next(iter(data.values()))[:2]
  params = nn.unbox(model.init(init_rng, mel0[:1], samples0[:1]))["params"]
  schedule = learning_rate_schedule(learning_rate, steps)
  optimizer = optax.adamw(schedule, b2=0.98, weight_decay=0.0)
  opt_state = optimizer.init(params)
  member = jnp.asarray(classes.set_mask())

  def logits(p, mel, samples, sets, per_frame=False):
    out = model.apply({"params": p}, mel, samples, per_frame)
    return jnp.where(member[sets][:, None] if per_frame else member[sets], out, -1e9)

  def mean_loss(p, mel, samples, ids, sets):
    per_frame = ids.ndim == 2
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits(p, mel, samples, sets, per_frame), jnp.maximum(ids, 0))
    scored = ids >= 0
    return jnp.sum(losses * scored) / jnp.maximum(jnp.sum(scored), 1)

  @jax.jit
  def step(p, state, batches):
    def loss_fn(p):
      return sum(mean_loss(p, *batch) for batch in batches)
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, state = optimizer.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss

  predict = jax.jit(lambda p, mel, samples, sets, per_frame: jnp.argmax(
      logits(p, mel, samples, sets, per_frame), -1), static_argnums=4)

  def accuracy(p) -> Dict[str, float]:
    hits, totals = collections.Counter(), collections.Counter()
    for mel, samples, ids, sets in evals.values():
      per_frame = ids.ndim == 2
      predicted = np.concatenate([np.asarray(predict(p, mel[i:i + 128], samples[i:i + 128],
                                                     sets[i:i + 128], per_frame))
                                  for i in range(0, len(ids), 128)])
      for s, row_ids, row_predicted in zip(sets, ids, predicted):
        name = classes.sets[s] + (" (frames)" if per_frame else "")
        scored = np.asarray(row_ids) >= 0
        hits[name] += int(np.sum((np.asarray(row_predicted) == row_ids) & scored))
        totals[name] += int(np.sum(scored))
    return {s: hits[s] / totals[s] for s in sorted(totals) if totals[s]}

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
  parser.add_argument("--utterance-batch", type=int, default=16,
                      help="whole srwt clips per step whose frames are labelled ('frame' kind)")
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
      clip_batch=args.clip_batch, utterance_batch=args.utterance_batch,
      learning_rate=args.learning_rate, seed=args.seed,
      skipped=skipped)
  for reason, count in sorted(skipped.items()):
    if count:
      print(f"not used: {count} x {reason}")
  info = {"made_by": "qwen_audio_jax.training.encoder_pretraining", "model": args.model,
          "train": os.path.basename(args.train), "eval": os.path.basename(args.eval or ""),
          "kinds": kinds, "steps": args.steps, "word_batch": args.word_batch,
          "clip_batch": args.clip_batch, "utterance_batch": args.utterance_batch,
          "learning_rate": args.learning_rate,
          "learning_rate_schedule": LEARNING_RATE_SCHEDULE, "seed": args.seed,
          "label_sets": {s: sum(n[0] == s for n in classes.names) for s in classes.sets},
          "held_out_accuracy": history[-1][1] if history else {},
          "not_used": dict(skipped)}
  print(f"wrote {save(args.out, encoder, model_config, info)}: {json.dumps(info['held_out_accuracy'])}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
