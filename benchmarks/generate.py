"""Greedy generation throughput: our Generator vs transformers' `generate`, same model, same inputs.

A small Qwen2-Audio-shaped model is built with transformers (random weights), saved and converted
with qwen_audio_jax.convert, so both sides run the very same weights. Each row is one 30 s clip
plus a short text prompt; both sides prefill and generate exactly --new-tokens tokens greedily
(no stop token). Timings alternate ours / transformers for --iters rounds after a warm-up
(compilation), and the medians are compared. Our time runs from waveforms (host log-mel
included); transformers gets its input features precomputed, which favours it.

    python benchmarks/generate.py [--batch-sizes 1,8] [--new-tokens 64] [--iters 5]
"""

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from qwen_audio_jax.audio import lengths
from qwen_audio_jax.convert import convert_checkpoint
from qwen_audio_jax.generate import GenerationConfig, Generator, PreparedRequest

AUDIO_TOKEN, AUDIO_BOS, AUDIO_EOS = 7, 5, 6


def reference_model(args):
  from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration
  heads = max(1, args.encoder_width // 64)
  llm_heads = max(1, args.width // 64)
  config = Qwen2AudioConfig(
      audio_config=dict(num_mel_bins=128, encoder_layers=args.encoder_layers,
                        d_model=args.encoder_width, encoder_attention_heads=heads,
                        encoder_ffn_dim=4 * args.encoder_width),
      text_config=dict(model_type="qwen2", vocab_size=args.vocab, hidden_size=args.width,
                       intermediate_size=int(2.75 * args.width), num_hidden_layers=args.layers,
                       num_attention_heads=llm_heads,
                       num_key_value_heads=max(1, llm_heads // 4), rms_norm_eps=1e-5,
                       tie_word_embeddings=False),
      audio_token_id=AUDIO_TOKEN)
  config._attn_implementation = "sdpa"
  torch.manual_seed(0)
  return Qwen2AudioForConditionalGeneration(config).float().eval()


def inputs(batch, text_tokens, vocab, seed=0):
  """Per row: text, one 30 s clip span, text (ids), and the clip's waveform."""
  rng = np.random.default_rng(seed)
  n_audio = int(lengths.audio_tokens(lengths.N_SAMPLES))
  rows, waves = [], []
  for _ in range(batch):
    ids = rng.integers(100, vocab, text_tokens + n_audio + 2).astype(np.int32)
    ids[1], ids[2:2 + n_audio], ids[2 + n_audio] = AUDIO_BOS, AUDIO_TOKEN, AUDIO_EOS
    rows.append(ids)
    waves.append(rng.uniform(-0.3, 0.3, lengths.N_SAMPLES).astype(np.float32))
  return rows, waves


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch-sizes", default="1,8")
  parser.add_argument("--new-tokens", type=int, default=64)
  parser.add_argument("--iters", type=int, default=5)
  parser.add_argument("--encoder-layers", type=int, default=2)
  parser.add_argument("--encoder-width", type=int, default=128)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--vocab", type=int, default=32768)
  parser.add_argument("--text-tokens", type=int, default=16)
  args = parser.parse_args()

  from transformers import WhisperFeatureExtractor
  reference = reference_model(args)
  with tempfile.TemporaryDirectory() as directory:
    reference.save_pretrained(directory, safe_serialization=True)
    params, config, _ = convert_checkpoint(directory, "qwen2_audio", progress=False)
  generator = Generator(config, params)
  settings = GenerationConfig(max_new_tokens=args.new_tokens, stop_tokens=())
  extractor = WhisperFeatureExtractor(feature_size=128)

  print(f"model: encoder {args.encoder_layers} layers x {args.encoder_width}, LLM {args.layers} "
        f"layers x {args.width}, vocab {args.vocab}; prompt {args.text_tokens} text tokens + one "
        f"30 s clip; {args.new_tokens} new tokens, greedy; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)")
  for batch in [int(b) for b in args.batch_sizes.split(",")]:
    rows, waves = inputs(batch, args.text_tokens, args.vocab)
    prepared = [PreparedRequest(r, np.asarray([1], np.int32), [w], 0, None)
                for r, w in zip(rows, waves)]
    features = extractor(waves, sampling_rate=lengths.SAMPLE_RATE, return_tensors="pt",
                         padding="max_length", return_attention_mask=True)
    ids_t = torch.from_numpy(np.stack(rows).astype(np.int64))

    def ours():
      return np.stack([r.tokens for r in generator.generate_prepared(prepared, settings)])

    def theirs():
      with torch.no_grad():
        out = reference.generate(
            input_ids=ids_t, attention_mask=torch.ones_like(ids_t),
            input_features=features["input_features"],
            feature_attention_mask=features["attention_mask"], max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens, do_sample=False, num_beams=1, pad_token_id=0,
            eos_token_id=None)
      return out[:, ids_t.shape[1]:].numpy()

    same = np.array_equal(ours(), theirs())  # also the warm-up (compilation)
    ours_times, theirs_times = [], []
    for _ in range(args.iters):
      for fn, times in ((ours, ours_times), (theirs, theirs_times)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    ours_s, theirs_s = statistics.median(ours_times), statistics.median(theirs_times)
    tokens = batch * args.new_tokens
    print(f"B={batch}: ours {tokens / ours_s:8.1f} tokens/s ({1000 * ours_s:7.1f} ms)   "
          f"transformers {tokens / theirs_s:8.1f} tokens/s ({1000 * theirs_s:7.1f} ms)   "
          f"ratio {theirs_s / ours_s:5.2f}x   same tokens: {same}")


if __name__ == "__main__":
  main()
