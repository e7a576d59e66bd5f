"""Train steps per second: our jitted train step vs a transformers PyTorch Qwen2-Audio step.

Both sides train the whole model (stage-2 style with nothing frozen) on the same small
Qwen2-Audio-shaped config (default: 4 encoder + 4 LLM layers, width 512) and the same batch
(default: 4 rows, one 30 s clip each, ~128 text tokens of which the answer half are targets),
in one run on this machine's CPU, float32 on both sides. One step is forward + backward +
global-norm clipping + AdamW update:

  ours          `qwen_audio_jax.training.step.make_train_step`, jitted with the state donated;
  transformers  Qwen2AudioForConditionalGeneration(labels=...) loss, `.backward()`,
                `clip_grad_norm_`, `torch.optim.AdamW(fused=False)`.

Prints the median step time over --iters steps after one warm-up step (compilation is not
counted), steps/s of each, and the ratio ours / transformers (> 1: we are faster).

    python benchmarks/train_step.py            # the configuration above (a few minutes)
    python benchmarks/train_step.py --small    # 1 + 1 layers, width 128, batch 1: smoke run
"""

import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from forward import configs, make_batch, model_arguments, timed  # noqa: E402  (benchmarks/forward.py)

from qwen_audio_jax.audio import lengths  # noqa: E402
from qwen_audio_jax.model.params import init_params  # noqa: E402
from qwen_audio_jax.training import optimizer as optimizer_lib  # noqa: E402
from qwen_audio_jax.training import step as step_lib  # noqa: E402

LEARNING_RATE, BETAS, EPS, WEIGHT_DECAY, CLIP = 1e-4, (0.9, 0.98), 1e-6, 0.05, 1.0


def train_config() -> ml_collections.ConfigDict:
  """The keys the train step reads: full-model AdamW with clipping, no accumulation."""
  return ml_collections.ConfigDict(dict(
      stage="sft", total_steps=1000, trainable=".", frozen="",
      optim=dict(name="adamw", learning_rate=LEARNING_RATE, schedule="constant", warmup_steps=0,
                 end_learning_rate_ratio=1.0, b1=BETAS[0], b2=BETAS[1], eps=EPS,
                 weight_decay=WEIGHT_DECAY, weight_decay_exclude=r"/(bias|scale)$",
                 grad_clip_norm=CLIP, grad_accum_steps=1),
      lora=dict(rank=0, alpha=16.0, target=""),
      loss=dict(z_loss_weight=0.0, chunk_length=0),
      specaugment=dict(enabled=False),
      data=dict(mixture=[("chat", 1.0)])))


def main():
  parser = model_arguments(__doc__, text_tokens=128, iters=3)
  parser.add_argument("--small", action="store_true",
                      help="1 + 1 layers, width 128, batch 1, 1 timed step: a quick smoke run")
  args = parser.parse_args()
  if args.small:
    args.layers, args.width, args.batch, args.iters = 1, 128, 1, 1

  from transformers import Qwen2AudioForConditionalGeneration
  ours_cfg, ref_cfg = configs(args.layers, args.width, args.vocab)
  ids, mel = make_batch(args.batch, args.text_tokens, args.vocab)
  rows, length = ids.shape
  target = np.zeros((rows, length), bool)
  target[:, length - args.text_tokens // 2:] = True  # the answer: last half of the text

  # ----- ours
  config = train_config()
  params = jax.jit(lambda: nn.unbox(init_params(ours_cfg, jax.random.key(0))))()
  optimizer = optimizer_lib.make_optimizer(config, params)
  state = step_lib.init_train_state(config, params, jax.random.key(1))
  del params
  batch = {
      "input_ids": jnp.asarray(ids), "target_mask": jnp.asarray(target),
      "segment_ids": jnp.ones((rows, length), jnp.int32),
      "positions": jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (rows, length)),
      "task_ids": jnp.zeros((rows, length), jnp.int32),
      "audio_mel": jnp.asarray(mel[:, None]),
      "audio_lengths": jnp.full((rows, 1), lengths.N_SAMPLES, jnp.int32),
      "audio_starts": jnp.ones((rows, 1), jnp.int32),
  }
  train_step = jax.jit(step_lib.make_train_step(config, ours_cfg, optimizer), donate_argnums=0)

  def ours_step():
    nonlocal state
    state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)

  ours = timed(ours_step, args.iters) / 1000
  del state

  # ----- reference
  torch.manual_seed(0)
  reference = Qwen2AudioForConditionalGeneration(ref_cfg).float().train()
  no_decay = [p for n, p in reference.named_parameters() if n.endswith("bias") or "norm" in n]
  decay = [p for n, p in reference.named_parameters() if not (n.endswith("bias") or "norm" in n)]
  adamw = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=LEARNING_RATE, betas=BETAS, eps=EPS, fused=False)
  ids_t = torch.from_numpy(ids.astype(np.int64))
  labels_t = torch.where(torch.from_numpy(target), ids_t, torch.full_like(ids_t, -100))
  mel_t = torch.from_numpy(mel)
  mask_t = torch.ones((rows, lengths.N_FRAMES), dtype=torch.long)

  def reference_step():
    adamw.zero_grad(set_to_none=True)
    out = reference(input_ids=ids_t, input_features=mel_t, feature_attention_mask=mask_t,
                    labels=labels_t)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), CLIP)
    adamw.step()

  theirs = timed(reference_step, args.iters) / 1000

  print(f"config: {args.layers}+{args.layers} layers, width {args.width}, vocab {args.vocab}, "
        f"batch {rows} x 30 s clips, {length} tokens ({int(target.sum())} targets); "
        f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), float32")
  print(f"train step  ours {1000 * ours:9.1f} ms ({1 / ours:6.3f} steps/s)   "
        f"transformers {1000 * theirs:9.1f} ms ({1 / theirs:6.3f} steps/s)   "
        f"ratio {theirs / ours:5.2f}x")


if __name__ == "__main__":
  main()
