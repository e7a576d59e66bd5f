"""Forward and forward+backward time of our model vs the transformers PyTorch reference.

Both sides get the same small Qwen2-Audio-shaped config (default: 4 encoder + 4 LLM layers,
width 512) and the same batch (default: 4 rows, one 30 s clip each, plus a short text prompt),
in one run on this machine's CPU (or whatever JAX / torch find). Prints milliseconds per call
(median of --iters after warm-up) and the ratio reference / ours (> 1: we are faster).

    python benchmarks/forward.py [--layers 4] [--width 512] [--batch 4] [--iters 5]
"""

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch

from qwen_audio_jax.audio import lengths
from qwen_audio_jax.config import EncoderConfig, LLMConfig, QwenAudioConfig
from qwen_audio_jax.model.params import init_params
from qwen_audio_jax.model.qwen_audio import QwenAudio

AUDIO_TOKEN, AUDIO_BOS, AUDIO_EOS = 7, 5, 6


def configs(layers: int, width: int, vocab: int):
  heads = width // 64
  ours = QwenAudioConfig(
      encoder=EncoderConfig(n_mels=128, width=width, depth=layers, heads=heads, mlp_dim=4 * width,
                            output_dim=width, audio_bos_eos=False, cut_mel_to_batch_max=False),
      llm=LLMConfig(vocab_size=vocab, width=width, depth=layers, heads=heads,
                    kv_heads=max(1, heads // 4), head_dim=64, mlp_dim=int(2.75 * width),
                    rms_norm_eps=1e-5, seq_length=8192))
  from transformers import Qwen2AudioConfig
  reference = Qwen2AudioConfig(
      audio_config=dict(num_mel_bins=128, encoder_layers=layers, d_model=width,
                        encoder_attention_heads=heads, encoder_ffn_dim=4 * width),
      text_config=dict(model_type="qwen2", vocab_size=vocab, hidden_size=width,
                       intermediate_size=int(2.75 * width), num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=max(1, heads // 4),
                       rms_norm_eps=1e-5, tie_word_embeddings=False),
      audio_token_id=AUDIO_TOKEN)
  reference._attn_implementation = "sdpa"
  return ours, reference


def make_batch(batch: int, text_tokens: int, vocab: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  n_audio = lengths.audio_tokens(lengths.N_SAMPLES)
  ids = rng.integers(100, vocab, (batch, text_tokens + n_audio + 2)).astype(np.int32)
  ids[:, 1] = AUDIO_BOS
  ids[:, 2:2 + n_audio] = AUDIO_TOKEN
  ids[:, 2 + n_audio] = AUDIO_EOS
  mel = rng.normal(size=(batch, 128, lengths.N_FRAMES)).astype(np.float32)
  return ids, mel


def model_arguments(doc: str, *, text_tokens: int, iters: int) -> argparse.ArgumentParser:
  """The flags of the model-vs-reference benchmarks (this one and train_step.py)."""
  parser = argparse.ArgumentParser(description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--width", type=int, default=512)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--text-tokens", type=int, default=text_tokens)
  parser.add_argument("--vocab", type=int, default=32768)
  parser.add_argument("--iters", type=int, default=iters)
  return parser


def timed(fn, iters: int) -> float:
  """Median milliseconds per call over `iters` calls after one warm-up call."""
  fn()  # compile / warm up
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1000 * statistics.median(times)


def main():
  args = model_arguments(__doc__, text_tokens=48, iters=5).parse_args()

  from transformers import Qwen2AudioForConditionalGeneration
  ours_cfg, ref_cfg = configs(args.layers, args.width, args.vocab)
  ids, mel = make_batch(args.batch, args.text_tokens, args.vocab)

  # ----- ours
  model = QwenAudio(ours_cfg)
  params = jax.jit(lambda: nn.unbox(init_params(ours_cfg, jax.random.key(0))))()
  inputs = dict(
      audio_mel=jnp.asarray(mel[:, None]),
      audio_lengths=jnp.full((args.batch, 1), lengths.N_SAMPLES, jnp.int32),
      audio_starts=jnp.full((args.batch, 1), 1, jnp.int32))
  ids_j = jnp.asarray(ids)

  def loss_fn(p):
    logits = model.apply({"params": p}, ids_j, train=True, **inputs)
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.mean(jnp.take_along_axis(logp, ids_j[:, 1:, None], axis=-1))

  forward = jax.jit(lambda p: model.apply({"params": p}, ids_j, **inputs))
  backward = jax.jit(jax.value_and_grad(loss_fn))
  ours_fwd = timed(lambda: forward(params).block_until_ready(), args.iters)
  ours_bwd = timed(lambda: jax.block_until_ready(backward(params)), args.iters)

  # ----- reference
  torch.manual_seed(0)
  reference = Qwen2AudioForConditionalGeneration(ref_cfg).float()
  ids_t = torch.from_numpy(ids.astype(np.int64))
  mel_t = torch.from_numpy(mel)
  mask_t = torch.ones((args.batch, lengths.N_FRAMES), dtype=torch.long)

  def ref_forward():
    with torch.no_grad():
      reference(input_ids=ids_t, input_features=mel_t, feature_attention_mask=mask_t)

  def ref_backward():
    reference.zero_grad(set_to_none=True)
    out = reference(input_ids=ids_t, input_features=mel_t, feature_attention_mask=mask_t)
    logp = torch.log_softmax(out.logits[:, :-1], dim=-1)
    loss = -logp.gather(-1, ids_t[:, 1:, None]).mean()
    loss.backward()

  reference.eval()
  ref_fwd = timed(ref_forward, args.iters)
  reference.train()
  ref_bwd = timed(ref_backward, args.iters)

  print(f"config: {args.layers}+{args.layers} layers, width {args.width}, vocab {args.vocab}, "
        f"batch {args.batch} x 30 s clips, {ids.shape[1]} tokens; jax {jax.__version__} on "
        f"{jax.devices()[0].platform}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
  print(f"forward          ours {ours_fwd:9.1f} ms   transformers {ref_fwd:9.1f} ms   "
        f"ratio {ref_fwd / ours_fwd:5.2f}x")
  print(f"forward+backward ours {ours_bwd:9.1f} ms   transformers {ref_bwd:9.1f} ms   "
        f"ratio {ref_bwd / ours_bwd:5.2f}x")


if __name__ == "__main__":
  main()
