"""Memory of the train step with the chunked cross-entropy against full logits, from XLA.

The Qwen vocabularies (151,936 / 155,947 / 156,032 entries) make the float32 logits of a
2048-token row 1.2 GiB, and their gradient as much again; `loss.chunk_length` forms them a chunk
of positions at a time. This script compiles the same stage-2 train step (the whole LLM trained)
for a narrow model with the real Qwen-Audio vocabulary and one audio clip per row, once with
full logits and once per chunk length, and prints XLA's memory analysis of each executable
(temporaries: activations, logits, gradients in flight) with the ratio full / chunked, then the
median step time of each on this machine.

    python benchmarks/loss_memory.py                       # 2 rows x 2048 tokens, chunks 512, 256
    python benchmarks/loss_memory.py --rows 1 --length 1024 --chunks 256 --iters 0
"""

import argparse
import dataclasses
import os
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import common  # noqa: E402  (configs/common.py)

from qwen_audio_jax.audio import lengths  # noqa: E402
from qwen_audio_jax.config import get_preset  # noqa: E402
from qwen_audio_jax.data.batching import batch_spec  # noqa: E402
from qwen_audio_jax.model.params import init_params  # noqa: E402
from qwen_audio_jax.training import optimizer as optimizer_lib  # noqa: E402
from qwen_audio_jax.training import step as step_lib  # noqa: E402


def model_config(width: int, layers: int):
  tiny = get_preset("tiny")
  return dataclasses.replace(tiny, llm=dataclasses.replace(
      tiny.llm, width=width, depth=layers, heads=4, kv_heads=4, head_dim=width // 4,
      mlp_dim=2 * width), encoder=dataclasses.replace(tiny.encoder, output_dim=width))


def make_batch(rows: int, length: int, vocab: int, n_mels: int):
  rng = np.random.default_rng(0)
  spec = batch_spec(rows, length, max_clips=1, features="mel", n_mels=n_mels)
  batch = {k: np.zeros(shape, dtype) for k, (shape, dtype) in spec.items()}
  batch["input_ids"] = rng.integers(0, vocab, (rows, length)).astype(np.int32)
  batch["input_ids"][:, 0] = 155163  # <audio>
  span = lengths.audio_span(lengths.N_SAMPLES)
  batch["input_ids"][:, span - 1] = 155164  # </audio>
  batch["target_mask"][:, span:] = True
  batch["segment_ids"][:] = 1
  batch["positions"][:] = np.arange(length)
  batch["audio_lengths"][:] = lengths.N_SAMPLES
  batch["audio_mel"] = rng.normal(size=spec["audio_mel"][0]).astype(np.float32)
  return batch


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--rows", type=int, default=2)
  parser.add_argument("--length", type=int, default=2048)
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--chunks", default="512,256", help="chunk lengths to compare, comma-separated")
  parser.add_argument("--iters", type=int, default=2, help="timed steps per variant (0: none)")
  args = parser.parse_args()

  model = model_config(args.width, args.layers)
  config = common.base_config("sft")
  config.specaugment.enabled = False
  params = jax.jit(lambda: nn.unbox(init_params(model, jax.random.key(0))))()
  batch = {k: jnp.asarray(v) for k, v in make_batch(args.rows, args.length,
                                                      model.llm.vocab_size,
                                                      model.encoder.n_mels).items()}
  print(f"stage-2 step, {args.rows} rows x {args.length} tokens, vocabulary "
        f"{model.llm.vocab_size:,}, LLM {args.layers} layers x {args.width}, on "
        f"{jax.devices()[0].device_kind}")

  results = {}
  for chunk in [0] + [int(c) for c in args.chunks.split(",") if c]:
    config.loss.chunk_length = chunk
    optimizer = optimizer_lib.make_optimizer(config, params)
    state = step_lib.init_train_state(config, params, jax.random.key(1))
    step = jax.jit(step_lib.make_train_step(config, model, optimizer))
    compiled = step.lower(state, batch).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    seconds = []
    for i in range(args.iters + 1 if args.iters else 0):
      start = time.perf_counter()
      _, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)
      if i:  # the first call pays for transfers
        seconds.append(time.perf_counter() - start)
    results[chunk] = (temp, statistics.median(seconds) if seconds else None,
                      float(metrics["loss"]) if args.iters else None)

  full_temp = results[0][0]
  for chunk, (temp, seconds, loss) in results.items():
    name = "full logits" if chunk == 0 else f"chunk {chunk}"
    line = f"{name:>12}: temporaries {temp / 2**20:9,.1f} MiB"
    if chunk:
      line += f"  (full / chunked: {full_temp / temp:.2f}x less memory)"
    if seconds is not None:
      line += f"  step {seconds * 1e3:8,.0f} ms  loss {loss:.6f}"
    print(line)


if __name__ == "__main__":
  main()
