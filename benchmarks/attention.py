"""Attention implementations against each other: forward + backward time of one attention call.

    python benchmarks/attention.py [--shape encoder|llm] [--iters 5] [--blocks 64x128,128x128]
                                   [--dtype float32|bfloat16] [--full]

'encoder': 4 clips x 8 heads x 1,500 frames x 64 (a 30 s clip at Whisper-base width), key
padding (the clips' valid frames 1500, 1000, 500, 250); 'llm': 4 rows x 8 heads (2 KV heads)
x 1,024 tokens x 64, causal within two packed segments per row. --full takes the release's
sizes instead: Whisper-large's 20 heads for 'encoder'; for 'llm' Qwen-7B's 32 heads of 128 (no
grouping) over 2,048 tokens, the segments cut at the same fractions. Every implementation runs
in the same process, interleaved round by round ('cudnn', the fused flash kernel, on GPUs with
bfloat16); prints the median milliseconds of each and its ratio to 'xla' (> 1: faster than
xla), and its largest difference from 'plain' relative to plain's largest magnitude, taken over
the loss (a probe-weighted sum of the outputs) and each of the three gradients.
"""

import argparse
import functools
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from qwen_audio_jax.model import attention
from qwen_audio_jax.model.flash_attention import flash_attention


def inputs(shape: str, full: bool = False, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(0), 4)
  if shape == "encoder":
    batch, length, head_dim = 4, 1500, 64
    heads = kv_heads = 20 if full else 8
    valid = jnp.arange(length)[None] < jnp.asarray([[1500], [1000], [500], [250]])
    mask = attention.key_padding_mask(valid, length)
  else:
    batch, length = 4, (2048 if full else 1024)
    heads, kv_heads, head_dim = (32, 32, 128) if full else (8, 2, 64)
    cuts = jnp.asarray([[700], [512], [300], [1024]]) * length // 1024
    segments = jnp.where(jnp.arange(length)[None] < cuts, 1, 2).astype(jnp.int32)
    index = jnp.broadcast_to(jnp.arange(length), (batch, length))
    mask = attention.causal_segment_mask(segments, segments, index, index)
  q = jax.random.normal(keys[0], (batch, length, heads, head_dim), dtype)
  k = jax.random.normal(keys[1], (batch, length, kv_heads, head_dim), dtype)
  v = jax.random.normal(keys[2], (batch, length, kv_heads, head_dim), dtype)
  return (q, k, v), mask


def relative_difference(a, b) -> float:
  """max |a - b| / max |b| (b: the reference), in float32."""
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shape", choices=("encoder", "llm"), default="encoder")
  parser.add_argument("--iters", type=int, default=5)
  parser.add_argument("--blocks", default="64x128,128x128,128x256",
                      help="flash tile sizes, queries x keys, comma-separated")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--full", action="store_true", help="the release's head counts and sizes")
  args = parser.parse_args(argv)
  dtype = jnp.dtype(args.dtype)
  (q, k, v), mask = inputs(args.shape, args.full, dtype)
  probe = jnp.cos(jnp.arange(q.shape[-1], dtype=jnp.float32))

  def fwd_bwd(fn):
    loss = lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * probe)  # noqa: E731
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))

  names = ["xla", "plain"]
  if jax.devices()[0].platform == "gpu" and dtype.itemsize == 2:
    names.append("cudnn")
  impls = {name: fwd_bwd(functools.partial(attention.attend, mask=mask, impl=name))
           for name in names}
  for tile in args.blocks.split(","):
    try:
      block_q, block_k = (int(n) for n in tile.split("x"))
    except ValueError:
      parser.error(f"--blocks: expected tile sizes like 64x128 (queries x keys), got {tile!r}")
    impls[f"flash/{block_q}x{block_k}"] = fwd_bwd(functools.partial(
        flash_attention, q_segments=mask.q_segments, kv_segments=mask.kv_segments,
        q_index=mask.q_index, kv_index=mask.kv_index, causal=mask.causal,
        scale=q.shape[-1] ** -0.5, block_q=block_q, block_k=block_k))
  results = {name: jax.block_until_ready(fn(q, k, v)) for name, fn in impls.items()}  # compile
  times = {name: [] for name in impls}
  for _ in range(args.iters):
    for name, fn in impls.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(q, k, v))
      times[name].append(time.perf_counter() - start)
  load = os.getloadavg()[0]
  print(f"attention fwd+bwd, {args.shape} shape q {tuple(q.shape)} k {tuple(k.shape)}, "
        f"{args.dtype}, jax {jax.__version__} on {jax.devices()[0].platform} "
        f"({jax.devices()[0].device_kind}), {os.cpu_count()} cores, "
        f"load average {load:.1f}; median of {args.iters} interleaved rounds")
  reference = results["plain"]
  xla = statistics.median(times["xla"])
  for name in impls:
    ms = 1000 * statistics.median(times[name])
    error = max(relative_difference(a, b)
                for a, b in zip(jax.tree.leaves(results[name]), jax.tree.leaves(reference)))
    print(f"  {name:12s} {ms:9.1f} ms   ratio to xla {1000 * xla / ms:5.2f}x   "
          f"max |diff| / max |plain| {error:.1e}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
