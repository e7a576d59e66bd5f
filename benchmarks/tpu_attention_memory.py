"""Memory of attention on a TPU slice: the Pallas flash kernel ('tpu_flash') against 'xla'.

No TPU is needed: libtpu describes a virtual slice (`jax.experimental.topologies`) and XLA's TPU
compiler compiles for it. For the encoder (bidirectional, key padding, 1,500 frames) and the LLM
(causal, packed segments) of a model preset, this compiles the attention of one layer, forward
and backward (the gradient of q, k, v, as in training), sharded over the slice's devices in bf16,
once per implementation, and prints XLA's memory analysis per device (temporaries: logits,
probabilities, their gradients) with the ratio xla / tpu_flash, and XLA's FLOP count.

    pip install -e ".[tpu]"
    python benchmarks/tpu_attention_memory.py                  # qwen_audio_7b on v5e:2x2
    python benchmarks/tpu_attention_memory.py --preset qwen2_audio_7b --clips 16 --rows 8
    python benchmarks/tpu_attention_memory.py --train_step     # + the tiny model's whole step

`--train_step` also compiles the whole stage-2 train step (forward, backward, AdamW) of the tiny
model in bf16 with each implementation: `--step_rows` rows of `--length` tokens, one 30 s clip each
(state replicated, batch split over the mesh).
"""

import argparse
import dataclasses
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile for the virtual slice; run nothing
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qwen_audio_jax import sharding  # noqa: E402
from qwen_audio_jax.config import get_preset  # noqa: E402
from qwen_audio_jax.data.batching import batch_spec  # noqa: E402
from qwen_audio_jax.model import attention  # noqa: E402
from qwen_audio_jax.model.params import init_params  # noqa: E402
from qwen_audio_jax.training import optimizer as optimizer_lib  # noqa: E402
from qwen_audio_jax.training import step as step_lib  # noqa: E402

try:  # the training configs' shared keys (packaged, or configs/ of a checkout)
  from qwen_audio_jax.configs import common  # noqa: E402
except ImportError:
  from configs import common  # noqa: E402


def virtual_tpu_devices(topology: str = "v5e:2x2", chips_per_host=(2, 2, 1)):
  """The devices of one virtual TPU slice (libtpu; no TPU attached)."""
  return topologies.get_topology_desc(
      platform="tpu", topology_name=topology, chip_config_name="default",
      chips_per_host_bounds=chips_per_host, num_slices=1).devices


def attention_step(impl: str, mesh, *, batch: int, length: int, heads: int, kv_heads: int,
                   head_dim: int, causal: bool, dtype=jnp.bfloat16):
  """The compiled forward + backward of one attention layer ([batch, length] sharded over the
  mesh's batch axes, heads over 'tensor'), for `attention.attend` with `impl`."""

  def loss(q, k, v, segments):
    with sharding.activation_sharding(mesh):
      if causal:
        index = jnp.broadcast_to(jnp.arange(length), (batch, length))
        mask = attention.causal_segment_mask(segments, segments, index, index)
      else:  # segments > 0 marks a clip's valid frames
        mask = attention.key_padding_mask(segments > 0, length)
      return jnp.sum(attention.attend(q, k, v, mask, impl=impl).astype(jnp.float32))

  def abstract(shape, dtype, logical):
    spec = sharding.logical_to_spec(logical, shape, mesh)
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))

  q = abstract((batch, length, heads, head_dim), dtype, ("act_batch", None, "act_heads", None))
  kv = abstract((batch, length, kv_heads, head_dim), dtype,
                ("act_batch", None, "act_kv_heads", None))
  segments = abstract((batch, length), jnp.int32, ("act_batch", None))
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  return step.lower(q, kv, kv, segments).compile()


def train_step(impl: str, mesh, *, rows: int, length: int):
  """The compiled stage-2 train step of the tiny model in bf16 with attention `impl`."""
  config = common.base_config("sft")
  config.specaugment.enabled = False
  model = dataclasses.replace(get_preset("tiny"), attention_impl=impl, dtype="bfloat16")
  params = jax.eval_shape(lambda: nn.unbox(init_params(model, jax.random.key(0))))
  optimizer = optimizer_lib.make_optimizer(config, params)
  state = jax.eval_shape(lambda p: step_lib.init_train_state(config, p, jax.random.key(1)), params)
  replicated = NamedSharding(mesh, P())
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                       state)
  spec = batch_spec(rows, length, max_clips=1, features="mel", n_mels=model.encoder.n_mels)
  batch = {k: jax.ShapeDtypeStruct(shape, dtype,
                                   sharding=sharding.batch_sharding(mesh, len(shape)))
           for k, (shape, dtype) in spec.items()}
  with sharding.activation_sharding(mesh):
    return jax.jit(step_lib.make_train_step(config, model, optimizer)).lower(state, batch).compile()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--preset", default="qwen_audio_7b")
  parser.add_argument("--topology", default="v5e:2x2", help="libtpu topology, e.g. v5e:2x2")
  parser.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor")
  parser.add_argument("--clips", type=int, default=8, help="encoder batch: 30 s clips")
  parser.add_argument("--rows", type=int, default=4, help="LLM batch: packed rows")
  parser.add_argument("--length", type=int, default=2048, help="LLM tokens per row")
  parser.add_argument("--train_step", action="store_true",
                      help="also the tiny model's whole train step (--step_rows x --length)")
  parser.add_argument("--step_rows", type=int, default=8, help="train step rows")
  args = parser.parse_args()

  model = get_preset(args.preset)
  mesh = sharding.make_mesh([int(x) for x in args.mesh.split(",")],
                            virtual_tpu_devices(args.topology))
  frames = model.encoder.n_ctx
  cases = [
      (f"encoder: {args.clips} clips x {frames} frames, {model.encoder.heads} heads x "
       f"{model.encoder.head_dim}, key padding",
       dict(batch=args.clips, length=frames, heads=model.encoder.heads,
            kv_heads=model.encoder.heads, head_dim=model.encoder.head_dim, causal=False)),
      (f"LLM: {args.rows} rows x {args.length} tokens, {model.llm.heads} heads "
       f"({model.llm.kv_heads} KV) x {model.llm.head_dim}, causal + segments",
       dict(batch=args.rows, length=args.length, heads=model.llm.heads,
            kv_heads=model.llm.kv_heads, head_dim=model.llm.head_dim, causal=True)),
  ]
  print(f"{args.preset}, one attention layer forward + backward, bf16, {args.topology} "
        f"mesh {dict(mesh.shape)}; per device:")
  for name, shape in cases:
    stats = {}
    for impl in ("xla", "tpu_flash"):
      compiled = attention_step(impl, mesh, **shape)
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      stats[impl] = (compiled.memory_analysis().temp_size_in_bytes, cost.get("flops", 0.0))
    (xla_temp, xla_flops), (flash_temp, flash_flops) = stats["xla"], stats["tpu_flash"]
    print(f"  {name}\n    temporaries: xla {xla_temp / 2**20:,.1f} MiB, tpu_flash "
          f"{flash_temp / 2**20:,.1f} MiB: {xla_temp / flash_temp:.1f}x less\n"
          f"    XLA flops: xla {xla_flops / 1e9:,.1f} G, tpu_flash {flash_flops / 1e9:,.1f} G "
          "(outside the kernel only: XLA does not count a Pallas call's flops)")
  if args.train_step:
    temps = {impl: train_step(impl, mesh, rows=args.step_rows, length=args.length
                              ).memory_analysis().temp_size_in_bytes
             for impl in ("xla", "tpu_flash")}
    print(f"  tiny model, whole stage-2 train step, {args.step_rows} rows x {args.length} tokens "
          f"+ one 30 s clip each:\n    temporaries: xla {temps['xla'] / 2**20:,.1f} MiB, tpu_flash "
          f"{temps['tpu_flash'] / 2**20:,.1f} MiB: {temps['xla'] / temps['tpu_flash']:.1f}x less")


if __name__ == "__main__":
  main()
