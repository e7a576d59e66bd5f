"""What holds the demo's speech recognition back: two probes on the bundled demo corpus.

    python benchmarks/demo_probe.py words [--steps 400] [--batch 32] [--lr 3e-3] [--train-words N]
    python benchmarks/demo_probe.py reliance --checkpoint workdir/demo/checkpoints/1600

words     The tiny preset's audio encoder trained alone as a classifier of the corpus's words
          (qwen_audio_jax/training/encoder_pretraining.py with words only): each word cut out of
          a training sentence at its SRWT word times (+-50 ms), the held-out words cut out of
          the held-out sentences (a voice and speed training never uses). It prints held-out
          accuracy every 100 steps: how fast the encoder learns the words when it gets a direct
          signal.
reliance  A trained checkpoint's teacher-forced loss and token accuracy on the held-out split,
          per task, once with each row's own audio and once with the audio of the next row of
          its batch (each row keeps its own length, so only the content is wrong), then its ASR
          token accuracy by target position (0 = the first transcript token). A task whose loss
          does not rise without its audio is answered from the text prompt alone.
"""

import argparse
import collections
import os

import jax
import jax.numpy as jnp
import numpy as np

from qwen_audio_jax.config import get_preset
from qwen_audio_jax.data.config import DEMO_DIR
from qwen_audio_jax.training import encoder_pretraining

OWN, NEXT = "own audio", "next row's audio"  # the two conditions of `reliance`


def probe_words(args):
  """Trains the classifier on words alone; prints and returns [(step, {'word': held-out
  accuracy})]."""
  train = encoder_pretraining.labelled_examples(os.path.join(DEMO_DIR, "train.jsonl"), ["word"])
  held_out = encoder_pretraining.labelled_examples(os.path.join(DEMO_DIR, "eval.jsonl"), ["word"])
  words = train["word"]
  if args.train_words:  # the first N words: a quicker, weaker probe
    n = args.train_words
    train["word"] = encoder_pretraining.Examples(words.waves[:n], words.num_samples[:n],
                                                 words.labels[:n], words.origins[:n])
  print(f"{len(train['word'])} training words, {len(held_out['word'])} held-out words")
  _, history, _ = encoder_pretraining.pretrain(
      get_preset("tiny"), train, held_out, steps=args.steps, word_batch=args.batch,
      learning_rate=args.lr)
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
