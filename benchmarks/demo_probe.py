"""What holds the demo's speech recognition back: two probes on the bundled demo corpus.

    python benchmarks/demo_probe.py words [--steps 400] [--batch 32] [--lr 3e-3] [--train-words N]
    python benchmarks/demo_probe.py reliance --checkpoint workdir/demo/checkpoints/1400

words     The tiny preset's audio encoder (the module and sizes the demo trains) with a mean over
          its valid frames and one linear layer, trained alone as a classifier of the corpus's
          words: each word cut out of a training sentence at its SRWT word times (+-50 ms), the
          held-out words cut out of the held-out sentences (a voice and speed training never
          uses). It prints train and held-out accuracy every 100 steps: how fast the encoder
          learns the words when it gets a direct signal.
reliance  A trained checkpoint's teacher-forced loss and token accuracy on the held-out split,
          per task, once with each row's own audio and once with the audio of the next row of
          its batch (each row keeps its own length, so only the content is wrong), then its ASR
          token accuracy by target position (0 = the first transcript token). A task whose loss
          does not rise without its audio is answered from the text prompt alone.
"""

import argparse
import collections
import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from qwen_audio_jax.audio import io as audio_io
from qwen_audio_jax.audio import lengths
from qwen_audio_jax.audio.mel import log_mel_spectrogram
from qwen_audio_jax.config import get_preset
from qwen_audio_jax.data.config import DEMO_DIR
from qwen_audio_jax.model.encoder import AudioEncoder

MARGIN_SECONDS = 0.05
MAX_WORD_SECONDS = 1.0
OWN, NEXT = "own audio", "next row's audio"  # the two conditions of `reliance`


def word_clips(split: str):
  """(waves [N, 16000] zero-padded, lengths [N], words [N]) of every word of the split's SRWT
  rows, cut at its word times."""
  waves, sizes, words = [], [], []
  max_samples = int(MAX_WORD_SECONDS * lengths.SAMPLE_RATE)
  with open(os.path.join(DEMO_DIR, f"{split}.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  for row in rows:
    if row["task"] != "srwt":
      continue
    wave = audio_io.load_audio(os.path.join(DEMO_DIR, row["audio"]))
    for word in row["words"]:
      start = max(0, int((word["start"] - MARGIN_SECONDS) * lengths.SAMPLE_RATE))
      end = min(len(wave), int((word["end"] + MARGIN_SECONDS) * lengths.SAMPLE_RATE))
      piece = wave[start:end][:max_samples]
      waves.append(np.pad(piece, (0, max_samples - len(piece))))
      sizes.append(len(piece))
      words.append(word["word"])
  if not words:
    raise SystemExit(f"{DEMO_DIR}/{split}.jsonl: no srwt rows with word times")
  return np.stack(waves).astype(np.float32), np.asarray(sizes, np.int32), words


class WordClassifier(nn.Module):
  """The demo's audio encoder, a mean over each clip's valid frames, one linear layer."""
  num_words: int

  @nn.compact
  def __call__(self, mel, num_samples):
    frames, counts = AudioEncoder(get_preset("tiny"))(mel, num_samples)
    valid = (jnp.arange(frames.shape[1])[None, :] < counts[:, None])[..., None]
    pooled = jnp.sum(frames * valid, axis=1) / jnp.maximum(jnp.sum(valid, axis=1), 1)
    return nn.Dense(self.num_words)(pooled)


def probe_words(args):
  """Trains the classifier; prints and returns [(step, train accuracy, held-out accuracy)]."""
  start = time.time()
  train_waves, train_sizes, train_words = word_clips("train")
  if args.train_words:  # the first N words: a quicker, weaker probe
    train_waves, train_sizes = train_waves[:args.train_words], train_sizes[:args.train_words]
    train_words = train_words[:args.train_words]
  eval_waves, eval_sizes, eval_words = word_clips("eval")
  vocab = sorted(set(train_words))
  index = {w: i for i, w in enumerate(vocab)}
  unknown = sorted(set(eval_words) - set(vocab))
  if unknown:
    raise SystemExit(f"held-out words never spoken in training: {unknown}")
  frames = lengths.mel_frames(int(MAX_WORD_SECONDS * lengths.SAMPLE_RATE))
  mel = lambda waves: np.stack([log_mel_spectrogram(w, 80, frames) for w in waves])  # noqa: E731
  train_mel, eval_mel = mel(train_waves), mel(eval_waves)
  train_y = np.asarray([index[w] for w in train_words])
  eval_y = np.asarray([index[w] for w in eval_words])
  print(f"{len(train_y)} training words ({len(vocab)} distinct), {len(eval_y)} held-out words; "
        f"features in {time.time() - start:.1f} s")

  model = WordClassifier(len(vocab))
  params = nn.unbox(model.init(jax.random.key(0), train_mel[:2], train_sizes[:2]))
  tx = optax.adamw(args.lr, b2=0.98, weight_decay=0.0)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, mel, sizes, labels):
    def loss_fn(p):
      logits = model.apply(p, mel, sizes)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, jnp.mean(jnp.argmax(logits, -1) == labels)
    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, accuracy

  predict = jax.jit(lambda p, mel, sizes: jnp.argmax(model.apply(p, mel, sizes), -1))
  rng = np.random.default_rng(0)
  window, history = [], []
  for i in range(1, args.steps + 1):
    rows = rng.integers(0, len(train_y), args.batch)
    params, opt_state, loss, accuracy = step(params, opt_state, train_mel[rows],
                                             train_sizes[rows], train_y[rows])
    window.append((float(loss), float(accuracy)))
    if i % 100 == 0 or i == args.steps:
      held_out = np.concatenate([
          np.asarray(predict(params, eval_mel[j:j + 256], eval_sizes[j:j + 256]))
          for j in range(0, len(eval_y), 256)])
      loss, accuracy = np.mean(window, axis=0)
      window = []
      history.append((i, float(accuracy), float(np.mean(held_out == eval_y))))
      print(f"step {i:5d} | train loss {loss:.3f} | train accuracy {accuracy:.3f} | held-out "
            f"accuracy {np.mean(held_out == eval_y):.3f} ({len(eval_y)} words)")
  return history


def reliance(params, model_config, config, batches):
  """Teacher-forced sums of `batches` (eval batches of `config`) with each row's own audio and
  with the next row's: ({condition: summarize_eval dict}, {target position: [correct, ...]})."""
  # Imported here: the trainer's module defines command-line flags.
  from qwen_audio_jax.data.config import task_names  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.model.llm import output_head, project_to_vocab  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.model.qwen_audio import QwenAudio  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.train import summarize_eval  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top

  names = task_names(config.eval_data)
  eval_step = jax.jit(step_lib.make_eval_step(config, model_config))
  model = QwenAudio(model_config)

  @jax.jit
  def predictions(params, batch, rows, positions):
    """The greedy token at each (row, position): logits of those positions only."""
    mel = step_lib.audio_features(batch, model_config.encoder.n_mels, None)
    hidden = model.apply({"params": params}, batch["input_ids"], positions=batch["positions"],
                         segment_ids=batch["segment_ids"], audio_mel=mel,
                         audio_lengths=batch["audio_lengths"], audio_starts=batch["audio_starts"],
                         return_hidden=True)
    head = output_head(params["llm"], model_config)
    return jnp.argmax(project_to_vocab(hidden[rows, positions][None], head)[0], -1)

  asr = names.index("asr") if "asr" in names else None
  totals = {OWN: None, NEXT: None}
  by_position = collections.defaultdict(list)
  for batch in batches:
    audio_key = "audio_wave" if "audio_wave" in batch else "audio_mel"
    rolled = dict(batch)
    rolled[audio_key] = np.roll(np.asarray(batch[audio_key]), 1, axis=0)
    for name, b in ((OWN, batch), (NEXT, rolled)):
      sums = jax.device_get(eval_step(params, b))
      totals[name] = sums if totals[name] is None else jax.tree.map(np.add, totals[name], sums)
    if asr is not None:
      rows, targets = np.nonzero(np.asarray(batch["target_mask"])
                                 & (np.asarray(batch["task_ids"]) == asr))
      if len(rows):  # target token t is predicted at position t - 1
        # Indices padded to a power of two: a few compiled programs, not one per batch.
        padded = 1 << (len(rows) - 1).bit_length()
        pad = lambda x: np.pad(x, (0, padded - len(x)))  # noqa: E731
        predicted = np.asarray(
            predictions(params, batch, pad(rows), pad(targets - 1)))[:len(rows)]
        correct = predicted == np.asarray(batch["input_ids"])[rows, targets]
        for r in np.unique(rows):
          for k, ok in enumerate(correct[rows == r]):
            by_position[min(k, 9)].append(bool(ok))
  if totals[OWN] is None:
    raise SystemExit("the eval data produced no batch")
  return {name: summarize_eval(t, names) for name, t in totals.items()}, dict(by_position)


def probe_reliance(args) -> None:
  from qwen_audio_jax.checkpoints import load_model  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.data.pipeline import DataPipeline  # pylint: disable=g-import-not-at-top

  loaded = load_model(args.checkpoint)
  config = loaded.run_config
  if config is None:
    raise SystemExit(f"{args.checkpoint}: not a training run's checkpoint (needs its config)")
  summaries, by_position = reliance(loaded.params, loaded.model_config, config,
                                    DataPipeline(config.eval_data).iterator())
  print(f"{args.checkpoint}: held-out split, teacher-forced, per task (loss / token accuracy)")
  print(f"  {'task':10s} {OWN:>16s} {NEXT:>18s}")
  for key in sorted(k for k in summaries[OWN] if k.endswith("/loss") and k != "eval/loss"):
    task = key.split("/")[1]
    cells = [f"{summaries[c][key]:7.3f} / {summaries[c][f'eval/{task}/accuracy']:.2f}"
             for c in (OWN, NEXT)]
    print(f"  {task:10s} {cells[0]:>16s} {cells[1]:>18s}")
  if by_position:
    print("ASR token accuracy by target position (9 = 9 and later): " + "  ".join(
        f"{k}: {np.mean(v):.2f}" for k, v in sorted(by_position.items())))


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="probe", required=True)
  words = sub.add_parser("words", help="the encoder alone as a word classifier")
  words.add_argument("--steps", type=int, default=400)
  words.add_argument("--batch", type=int, default=32)
  words.add_argument("--lr", type=float, default=3e-3)
  words.add_argument("--train-words", type=int, default=0, help="first N training words only")
  reliance = sub.add_parser("reliance", help="what a checkpoint takes from the audio")
  reliance.add_argument("--checkpoint", required=True)
  args = parser.parse_args()
  probe_words(args) if args.probe == "words" else probe_reliance(args)


if __name__ == "__main__":
  main()
