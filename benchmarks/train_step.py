"""Train steps per second: our jitted train step vs a transformers PyTorch Qwen2-Audio step.

Both sides train the whole model (stage-2 style with nothing frozen) on the same small
Qwen2-Audio-shaped config (default: 4 encoder + 4 LLM layers, width 512) and the same batches
(default: 4 rows, one clip each, ~128 text tokens of which the answer half are targets), in one
run on one device: this machine's CPU, or a GPU when JAX and torch both see one (torch's model
and batches are moved there; each of its steps ends with `torch.cuda.synchronize()`). --dtype
float32 (default) or bfloat16 compute on both sides, parameters and optimizer state float32 on
both (ours: the model's `dtype`; torch: `torch.autocast`). float32 on a GPU lets both sides'
matrix products use TF32 (`jax_default_matmul_precision='tensorfloat32'`,
`torch.backends.cuda.matmul.allow_tf32`). One step is forward + backward + global-norm clipping +
AdamW update:

  ours          `qwen_audio_jax.training.step.make_train_step`, jitted with the state donated;
                each batch padded to its audio bucket (`audio.buckets`) and text bucket, the
                loss projecting only the target positions (`loss.chunk_length`), attention per
                the model's default ('auto');
  transformers  Qwen2AudioForConditionalGeneration(labels=...) loss, `.backward()`,
                `clip_grad_norm_`, `torch.optim.AdamW(fused=False)`; the mel padded to 30 s as
                its feature extractor does (`feature_attention_mask` marks the valid frames).

--lengths picks the clips: '30s' (every clip 30 s), 'librispeech' (a LibriSpeech-like
distribution: gamma-distributed, mean ~12.4 s, most between 2 and 20 s, cut to 1-30 s) or 'demo'
(uniform over the bundled demo corpus's 0.8-6.6 s). --batches different batches are drawn; after
one warm-up pass (compilation is not counted) each round runs every batch once on each side,
ours and transformers alternating batch by batch, so load on a shared machine hits both alike.
Prints the median per-step time of each side over all rounds and batches, steps/s, the ratio
transformers / ours (> 1: we are faster), the load average, and how many cores each side kept
busy (process CPU time over wall time: a side that does more work on as many cores, or the same
work on fewer, tells itself apart here), and each side's model FLOP utilisation where the
device's peak rate is known (`--peak-tflops`, or `peak_tflops`): model FLOPs are the matrix
products the step needs at the clips' own lengths (the encoder over each clip's frames, the LLM
over each row's real tokens, the vocabulary projection over the target positions; backward
counted as twice forward; `model_flops`), the same number for both sides, so padding and
recomputation count as lost time. (The trainer's MFU, `training/flops.py`, counts the padded
shapes its step computes instead.)

    python benchmarks/train_step.py --lengths librispeech      # a few minutes
    python benchmarks/train_step.py --small                     # 1 + 1 layers, width 128: smoke
    python benchmarks/train_step.py --dtype bfloat16 --layers 8 --width 1280 --batch 8  # a GPU
"""

import dataclasses
import os
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from forward import AUDIO_BOS, AUDIO_EOS, AUDIO_TOKEN, configs, model_arguments  # noqa: E402

from qwen_audio_jax.audio import buckets as audio_buckets  # noqa: E402
from qwen_audio_jax.audio import lengths  # noqa: E402
from qwen_audio_jax.configs import common  # noqa: E402
from qwen_audio_jax.data.batching import bucket_for  # noqa: E402
from qwen_audio_jax.model.params import init_params  # noqa: E402
from qwen_audio_jax.training import flops as flops_lib  # noqa: E402
from qwen_audio_jax.training import optimizer as optimizer_lib  # noqa: E402
from qwen_audio_jax.training import step as step_lib  # noqa: E402

LEARNING_RATE, BETAS, EPS, WEIGHT_DECAY, CLIP = 1e-4, (0.9, 0.98), 1e-6, 0.05, 1.0
TEXT_BUCKETS = (256, 512, 1024)


def train_config(chunk_length: int) -> ml_collections.ConfigDict:
  """The stage-2 trainer's defaults, changed to full-model AdamW with clipping, a constant
  learning rate, no accumulation and no augmentation (built from `configs/common.py`, so every
  key the train step reads is there)."""
  c = common.base_config("sft")
  c.trainable, c.frozen = ".", ""
  c.optim.update(learning_rate=LEARNING_RATE, schedule="constant", warmup_steps=0,
                 end_learning_rate_ratio=1.0, b1=BETAS[0], b2=BETAS[1], eps=EPS,
                 weight_decay=WEIGHT_DECAY, weight_decay_exclude=r"/(bias|scale)$",
                 grad_clip_norm=CLIP, grad_accum_steps=1, encoder_layer_decay=1.0)
  c.loss.update(z_loss_weight=0.0, chunk_length=chunk_length, output_vocab="full")
  c.specaugment.enabled = False
  return c


def clip_lengths(kind: str, count: int, rng) -> np.ndarray:
  """Clip lengths in samples."""
  if kind == "30s":
    seconds = np.full(count, float(lengths.CHUNK_SECONDS))
  elif kind == "librispeech":
    seconds = np.clip(rng.gamma(5.0, 12.4 / 5.0, count), 1.0, lengths.CHUNK_SECONDS)
  elif kind == "demo":
    seconds = rng.uniform(0.8, 6.6, count)
  else:
    raise ValueError(f"--lengths: expected 30s, librispeech or demo, got {kind!r}")
  return np.minimum((seconds * lengths.SAMPLE_RATE).astype(np.int64), lengths.N_SAMPLES)


def with_dtype(cfg, dtype: str):
  """`cfg` computing in `dtype`; float32 on a GPU uses TF32 matrix products from here on (as
  torch does with `allow_tf32`, set by `main` for the reference)."""
  if jax.devices()[0].platform == "gpu" and dtype == "float32":
    jax.config.update("jax_default_matmul_precision", "tensorfloat32")
  return dataclasses.replace(cfg, dtype=dtype)


def model_flops(cfg, batch) -> float:
  """Matrix-product FLOPs of one train step on `batch` (a `make_batches` entry) at the clips' own
  lengths, everything trained (forward once, backward twice): the trainer's count
  (`training/flops.py`) per clip at its own mel frames for the encoder, and per row of L real
  tokens for the LLM blocks, with causal attention counted as 2 L^2 * heads * head_dim (the
  half that is computed) and the vocabulary projection over the target positions only (all the
  loss reads)."""
  llm = cfg.llm
  everything = flops_lib.TrainedParts(audio=True, encoder_body=True, llm=True)
  flops = sum(flops_lib.step_flops(cfg, rows=1, text_length=0, audio_slots=1, trained=everything,
                                   audio_frames=int(lengths.mel_frames(int(n))))["encoder"]
              for n in batch["samples"])
  blocks = flops_lib.llm_weight_entries(cfg) - llm.width * llm.vocab_size
  for row in batch["real"]:
    tokens = float(row.sum())
    flops += 3 * (2 * tokens * blocks + llm.depth * 2 * tokens ** 2 * llm.heads * llm.head_dim)
  return flops + 3 * 2 * float(batch["target"].sum()) * llm.width * llm.vocab_size


def peak_tflops(device_kind: str, dtype: str, override: float):
  """--peak-tflops, else the datasheet's dense bf16 rate of the device (`training/flops.py`),
  halved for float32: on the GPUs listed there TF32 matrix products run at half the bf16 rate.
  None on CPUs."""
  if override > 0:
    return override
  peak = flops_lib.peak_flops(device_kind)
  if peak is None:
    return None
  return peak / 1e12 / (2 if dtype == "float32" else 1)


def make_batches(kind: str, count: int, rows: int, text_tokens: int, vocab: int, seed: int = 0):
  """Per batch: rows of [bos] prompt <audio> xn </audio> answer, clip lengths, 30 s mel."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(count):
    samples = clip_lengths(kind, rows, rng)
    spans = [int(lengths.audio_tokens(int(n))) for n in samples]
    length = max(spans) + text_tokens + 2
    ids = rng.integers(100, vocab, (rows, length)).astype(np.int32)
    real = np.zeros((rows, length), bool)
    target = np.zeros((rows, length), bool)
    for r, n_audio in enumerate(spans):
      ids[r, 1], ids[r, 2 + n_audio] = AUDIO_BOS, AUDIO_EOS
      ids[r, 2:2 + n_audio] = AUDIO_TOKEN
      end = n_audio + 2 + text_tokens
      real[r, :end] = True
      target[r, end - text_tokens // 2:end] = True  # the answer: last half of the text
    mel = rng.normal(size=(rows, 128, lengths.N_FRAMES)).astype(np.float32)
    out.append(dict(ids=ids, real=real, target=target, samples=samples, mel=mel))
  return out


def ours_batch(b, text_buckets, audio_bucket_samples):
  rows, length = b["ids"].shape
  text_length = bucket_for(length, text_buckets)
  pad = lambda x: np.pad(x, ((0, 0), (0, text_length - length)))  # noqa: E731
  bucket = audio_buckets.batch_bucket(b["samples"], audio_bucket_samples)
  segments = b["real"].astype(np.int32)
  return {
      "input_ids": jnp.asarray(pad(b["ids"] * b["real"])),
      "target_mask": jnp.asarray(pad(b["target"])),
      "segment_ids": jnp.asarray(pad(segments)),
      "positions": jnp.asarray(pad(np.cumsum(segments, axis=1) - segments)),
      "task_ids": jnp.asarray(pad(np.zeros_like(segments))),
      "audio_mel": jnp.asarray(b["mel"][:, None, :, :bucket // lengths.HOP_LENGTH]),
      "audio_lengths": jnp.asarray(b["samples"][:, None].astype(np.int32)),
      "audio_starts": jnp.ones((rows, 1), jnp.int32),
  }


def main():
  parser = model_arguments(__doc__, text_tokens=128, iters=3)
  parser.add_argument("--lengths", default="librispeech", choices=("30s", "librispeech", "demo"))
  parser.add_argument("--batches", type=int, default=2, help="different batches per round")
  parser.add_argument("--chunk", type=int, default=128,
                      help="our loss.chunk_length (0: full logits, as before)")
  parser.add_argument("--audio-buckets", default=",".join(
      f"{s:g}" for s in audio_buckets.DEFAULT_SECONDS), help="ours, seconds ('30': no buckets)")
  parser.add_argument("--small", action="store_true",
                      help="1 + 1 layers, width 128, batch 1, 1 round: a quick smoke run")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="compute dtype of both sides (parameters stay float32)")
  parser.add_argument("--peak-tflops", type=float, default=0.0,
                      help="the device's peak rate for --dtype, for MFU (0: by device name)")
  args = parser.parse_args()
  if args.small:
    args.layers, args.width, args.batch, args.iters, args.batches = 1, 128, 1, 1, 1

  from transformers import Qwen2AudioForConditionalGeneration
  ours_cfg, ref_cfg = configs(args.layers, args.width, args.vocab)
  ours_cfg = with_dtype(ours_cfg, args.dtype)
  platform = jax.devices()[0].platform
  on_gpu = platform == "gpu" and torch.cuda.is_available()
  device = torch.device("cuda" if on_gpu else "cpu")
  if on_gpu and args.dtype == "float32":  # TF32 matrix products, as ours (`with_dtype`)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
  autocast_dtype = torch.bfloat16 if args.dtype == "bfloat16" else None
  batches = make_batches(args.lengths, args.batches, args.batch, args.text_tokens, args.vocab)
  bucket_samples = audio_buckets.bucket_samples(float(s) for s in args.audio_buckets.split(","))

  # ----- ours
  config = train_config(args.chunk)
  params = jax.jit(lambda: nn.unbox(init_params(ours_cfg, jax.random.key(0))))()
  optimizer = optimizer_lib.make_optimizer(config, params)
  state = step_lib.init_train_state(config, params, jax.random.key(1))
  del params
  ours_batches = [ours_batch(b, TEXT_BUCKETS, bucket_samples) for b in batches]
  train_step = jax.jit(step_lib.make_train_step(config, ours_cfg, optimizer), donate_argnums=0)

  def ours_step(i):
    nonlocal state
    state, metrics = train_step(state, ours_batches[i])
    jax.block_until_ready(metrics)

  # ----- reference
  torch.manual_seed(0)
  reference = Qwen2AudioForConditionalGeneration(ref_cfg).float().to(device).train()
  no_decay = [p for n, p in reference.named_parameters() if n.endswith("bias") or "norm" in n]
  decay = [p for n, p in reference.named_parameters() if not (n.endswith("bias") or "norm" in n)]
  adamw = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=LEARNING_RATE, betas=BETAS, eps=EPS, fused=False)
  ref_inputs = []
  for b in batches:
    ids_t = torch.from_numpy((b["ids"] * b["real"]).astype(np.int64))
    labels = torch.where(torch.from_numpy(b["target"]), ids_t, torch.full_like(ids_t, -100))
    frames = torch.arange(lengths.N_FRAMES)[None] < torch.from_numpy(
        lengths.mel_frames(b["samples"]))[:, None]
    inputs = dict(input_ids=ids_t, attention_mask=torch.from_numpy(b["real"]).long(),
                  input_features=torch.from_numpy(b["mel"]), feature_attention_mask=frames.long(),
                  labels=labels)
    ref_inputs.append({k: v.to(device) for k, v in inputs.items()})

  def reference_step(i):
    adamw.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
      loss = reference(**ref_inputs[i]).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), CLIP)
    adamw.step()
    if on_gpu:
      torch.cuda.synchronize()

  for i in range(len(batches)):  # warm-up: compile every shape, first torch allocations
    ours_step(i)
    reference_step(i)
  ours_times, ref_times = [], []
  busy = {"ours": [], "transformers": []}  # process CPU seconds per wall second of a step
  loads = [os.getloadavg()[0]]
  for _ in range(args.iters):
    for i in range(len(batches)):
      for name, fn, times in (("ours", ours_step, ours_times),
                              ("transformers", reference_step, ref_times)):
        cpu, start = time.process_time(), time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
        busy[name].append((time.process_time() - cpu) / times[-1])
    loads.append(os.getloadavg()[0])
  ours, theirs = statistics.median(ours_times), statistics.median(ref_times)

  seconds = np.concatenate([b["samples"] for b in batches]) / lengths.SAMPLE_RATE
  used = ", ".join(f"{s:g}" for s in sorted(
      {int(b["audio_mel"].shape[-1]) * lengths.HOP_LENGTH / lengths.SAMPLE_RATE
       for b in ours_batches}))
  device_name = jax.devices()[0].device_kind
  print(f"config: {args.layers}+{args.layers} layers, width {args.width}, vocab {args.vocab}, "
        f"{args.batches} batches of {args.batch} rows, clips '{args.lengths}' (mean "
        f"{seconds.mean():.1f} s, max {seconds.max():.1f} s; our audio buckets [{used}] s), "
        f"{args.text_tokens} text tokens per row; jax {jax.__version__} on {platform} "
        f"({device_name}), torch {torch.__version__} on {device.type} "
        f"({torch.get_num_threads()} threads), {args.dtype}; load average "
        f"{min(loads):.1f}-{max(loads):.1f}")
  print(f"train step  ours {1000 * ours:9.1f} ms ({1 / ours:6.3f} steps/s)   "
        f"transformers {1000 * theirs:9.1f} ms ({1 / theirs:6.3f} steps/s)   "
        f"ratio {theirs / ours:5.2f}x")
  print(f"cores busy (process CPU time / wall time, median)  ours "
        f"{statistics.median(busy['ours']):.2f}   transformers "
        f"{statistics.median(busy['transformers']):.2f}")
  flops = statistics.mean(model_flops(ours_cfg, b) for b in batches)
  peak = peak_tflops(device_name, args.dtype, args.peak_tflops)
  line = f"model FLOPs per step {flops / 1e12:.3f} TFLOP: ours {flops / ours / 1e12:.2f} TFLOP/s, " \
         f"transformers {flops / theirs / 1e12:.2f} TFLOP/s"
  if peak:
    line += (f"; MFU against {peak:g} TFLOP/s ours {100 * flops / ours / 1e12 / peak:.1f}%, "
             f"transformers {100 * flops / theirs / 1e12 / peak:.1f}%")
  print(line)


if __name__ == "__main__":
  main()
