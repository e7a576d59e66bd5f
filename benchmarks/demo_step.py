"""The demo's own train step, one config against another, interleaved in one process.

    python benchmarks/demo_step.py [--rounds 3] [--steps 12] [--preset pretrain]
                                   [--a optim.vocab_rows=data] [--b optim.vocab_rows=all]

Builds the `demo` preset of configs/<preset>.py twice, side `a` and side `b`, each with its
`key=value` overrides (comma-separated; values are Python literals or plain strings), on the
same initial parameters (drawn from the same key for each side when the model configs differ,
e.g. `model.overrides.scan_layers=True`) and on batches of the demo corpus from the real input
pipeline, each side's from its own data config (the same batches when the data configs agree).
Both steps are compiled first; then each round runs --steps steps of a, then of b (a fresh train
state each round, so both always start from step 0), and the medians over the rounds' per-step
times are printed with their ratio (> 1: side a is faster).

The default compares the demo's compact tables (`optim.vocab_rows='data'`,
qwen_audio_jax/training/vocab_rows.py) with training the full 155,947-row tables. The step is
waited for each time, as the trainer does on CPU.
"""

import argparse
import ast
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from qwen_audio_jax.configs import pretrain, sft  # noqa: E402
from qwen_audio_jax.data import DataPipeline  # noqa: E402
from qwen_audio_jax.training import initialization  # noqa: E402
from qwen_audio_jax.training import optimizer as optimizer_lib  # noqa: E402
from qwen_audio_jax.training import step as step_lib  # noqa: E402
from qwen_audio_jax.training.layout import build_mesh  # noqa: E402

PRESETS = {"pretrain": pretrain, "sft": sft}


def split_top_level(text: str):
  """'a=1,b=(2, 3)' -> ['a=1', 'b=(2, 3)']: commas inside brackets stay in their value."""
  parts, depth, start = [], 0, 0
  for i, char in enumerate(text):
    depth += char in "([{"
    depth -= char in ")]}"
    if char == "," and depth == 0:
      parts.append(text[start:i])
      start = i + 1
  return parts + [text[start:]]


def parse_overrides(text: str):
  """'a.b=1,c=data,d=(5.0, 30.0)' -> [('a.b', 1), ('c', 'data'), ('d', (5.0, 30.0))]."""
  out = []
  for item in filter(None, (part.strip() for part in split_top_level(text))):
    if "=" not in item:
      raise SystemExit(f"override {item!r}: expected key=value")
    key, value = item.split("=", 1)
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass  # a plain string
    out.append((key, value))
  return out


def make_config(preset: str, overrides):
  config = PRESETS[preset].get_config("demo")
  for key, value in overrides:
    node = config
    *parents, leaf = key.split(".")
    for name in parents:
      node = node[name]
    if leaf not in node:
      raise SystemExit(f"override {key}: no such config field")
    node[leaf] = value
  return config


class Side:
  """One config's compiled step, started afresh from the shared initial parameters."""

  def __init__(self, name, config, params, batch):
    self.name, self.config, self.params = name, config, params
    self.model_config = initialization.model_config_from(config)
    self.optimizer = optimizer_lib.make_optimizer(config, params)
    step = jax.jit(step_lib.make_train_step(config, self.model_config, self.optimizer),
                   donate_argnums=0)
    self.compiled = step.lower(self.fresh_state(), batch).compile()

  def fresh_state(self):
    """Step 0 on copies of the shared parameters (the step donates its state)."""
    params = jax.tree.map(jnp.array, self.params)
    return step_lib.init_train_state(self.config, params, jax.random.key(1))

  def run(self, batches, steps):
    """Seconds per step over `steps` steps from a fresh state."""
    state = self.fresh_state()
    jax.block_until_ready(state)
    times = []
    for i in range(steps):
      start = time.perf_counter()
      state, metrics = self.compiled(state, batches[i % len(batches)])
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
    return times[1:] if steps > 1 else times  # the first step of a fresh state warms caches


def shape_of(batch):
  return tuple(sorted((k, v.shape) for k, v in batch.items()))


def demo_batches(config, count):
  """The first `count` batches of a side's own data config (its batch size, buckets, ...) that
  share the first one's shape (one compiled step); equal data configs give equal batches."""
  iterator = DataPipeline(config.data).iterator()
  batches = [jax.tree.map(np.asarray, next(iterator)) for _ in range(count)]
  return [b for b in batches if shape_of(b) == shape_of(batches[0])]


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="pretrain", choices=sorted(PRESETS))
  parser.add_argument("--a", default="optim.vocab_rows=data")
  parser.add_argument("--b", default="optim.vocab_rows=all")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=12)
  args = parser.parse_args()

  configs = {name: make_config(args.preset, parse_overrides(text))
             for name, text in (("a", args.a), ("b", args.b))}
  base = configs["a"]
  mesh = build_mesh(base)
  model_config = initialization.model_config_from(base)
  params, _ = initialization.initial_params(base, model_config, mesh, jax.random.key(0))
  batches = {name: demo_batches(configs[name], args.steps + 2) for name in configs}
  sides = []
  for name in ("a", "b"):
    own = params
    if initialization.model_config_from(configs[name]) != model_config:  # e.g. scan_layers
      own, _ = initialization.initial_params(configs[name], initialization.model_config_from(
          configs[name]), mesh, jax.random.key(0))
    sides.append(Side(name, configs[name], own, batches[name][0]))

  times = {side.name: [] for side in sides}
  for _ in range(args.rounds):
    for side in sides:
      times[side.name].extend(side.run(batches[side.name], args.steps))
  medians = {name: statistics.median(values) for name, values in times.items()}
  shapes = " / ".join(str(tuple(batches[n][0]["input_ids"].shape)) for n in ("a", "b"))
  print(f"demo {args.preset} train step, batch {shapes}, "
        f"{args.rounds} rounds x {args.steps} steps per side, interleaved; jax {jax.__version__} "
        f"on {jax.devices()[0].platform}, load average {os.getloadavg()[0]:.1f}")
  for side, text in zip(sides, (args.a, args.b)):
    print(f"  {side.name}: {1000 * medians[side.name]:8.1f} ms per step   ({text or 'the preset'})")
  print(f"  ratio b / a: {medians['b'] / medians['a']:.2f}x")


if __name__ == "__main__":
  main()
