r"""Stage 1 of Qwen-Audio: multitask pretraining of the audio encoder with the LLM frozen.

    python -m qwen_audio_jax.train --config=configs/pretrain.py:demo --workdir=/tmp/qa_pretrain
    python -m qwen_audio_jax.train --config=configs/pretrain.py:qwen_audio --workdir=gs://... \
        --config.init.whisper=ckpt/whisper_large_v2 --config.init.llm=ckpt/qwen_7b \
        --config.data.mixture.asr.paths='gs://bucket/shards/asr-*.array_record' ...

Presets:
  demo: the tiny model on the bundled demo corpus, CPU, a couple of minutes on 2 cores.
  qwen_audio: the paper's recipe (Qwen-Audio, arXiv:2311.07919, appendix table of training
    hyper-parameters, "multi-task pretraining" column) for TPU / GPU pods; point the mixture
    entries at the real task shards.
"""

import importlib.util
import os


def _load_common():
  """configs/common.py, loaded by path (config files are loaded by path, not as a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py")
  spec = importlib.util.spec_from_file_location("qwen_audio_jax_configs_common", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


common = _load_common()

PRESETS = ("demo", "qwen_audio")


def get_config(arg: str = "demo"):
  if arg not in PRESETS:
    raise ValueError(f"configs/pretrain.py: unknown preset {arg!r}; expected one of {PRESETS}")
  c = common.base_config("pretrain")
  if arg == "demo":
    common.demo_overrides(c)
    c.total_steps = 100
    # The frozen LLM is random in the demo: only the audio side learns, so it gets a large step.
    c.optim.learning_rate = 1e-2
    c.optim.warmup_steps = 10
    c.optim.weight_decay = 0.0
    return c
  # The full recipe. Values from the paper's appendix table unless marked otherwise.
  c.model.preset = "qwen_audio_7b"
  c.model.overrides = common.ml_collections.ConfigDict(dict(
      dtype="bfloat16", param_dtype="float32", remat_policy="dots_with_no_batch_dims"))
  c.total_steps = 500_000  # paper: training steps
  c.data.batch_size = 2048  # paper: global batch size
  c.eval_data.batch_size = 256
  c.data.packing = True  # not in the paper: fills the 2048-token rows (the LLM's seq_length)
  c.data.text_buckets = (2048,)
  c.eval_data.text_buckets = (1024, 2048)
  c.loss.chunk_length = 512  # not in the paper: 4 chunks of logits per 2048-token row (memory)
  c.data.worker_count = 8  # grain workers per host (throughput, not from the paper)
  c.optim.learning_rate = 5e-5  # paper: peak learning rate
  c.optim.end_learning_rate_ratio = 0.2  # paper: minimum learning rate 1e-5
  c.optim.schedule = "warmup_cosine"  # paper: cosine decay
  c.optim.warmup_steps = 2000  # paper: warmup steps
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.98, 1e-6  # paper: AdamW betas, epsilon
  c.optim.weight_decay = 0.05  # paper: weight decay
  c.optim.grad_clip_norm = 1.0  # paper: gradient clipping
  c.specaugment.enabled = True  # paper: SpecAugment on the encoder input (LD policy here)
  c.mesh.data, c.mesh.fsdp = 1, -1  # ZeRO-style optimizer sharding as in the paper: FSDP
  c.checkpoint.every_steps = 2000
  c.checkpoint.keep = 3
  c.checkpoint.keep_best_metric = "eval/loss"
  c.log_every = 50
  c.eval_every = 5000
  c.eval_steps = 100
  return c
