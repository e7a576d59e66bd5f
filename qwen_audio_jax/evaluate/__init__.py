"""Evaluation on the paper's benchmarks: metrics, normalisers, the runner and its command line.

  normalizers      text normalisation before WER / CER, named for the released evaluation each
                   reproduces (qwen_audio, qwen2_audio)
  metrics          WER / CER (jiwer), BLEU (sacrebleu), accuracy, AQA accuracy, SRWT timing
  caption_metrics  CIDEr, SPICE, SPIDEr (pycocoevalcap)

`python -m qwen_audio_jax.evaluate --config=configs/eval.py:NAME --checkpoint CKPT` runs one
benchmark (see configs/eval.py).
"""
