r"""Stage 2 of Qwen-Audio: supervised instruction fine-tuning of the LLM with the encoder frozen.

    python -m qwen_audio_jax.train --config=configs/sft.py:demo --workdir=/tmp/qa_sft
    python -m qwen_audio_jax.train --config=configs/sft.py:qwen_audio --workdir=gs://... \
        --config.init.checkpoint=gs://.../pretrain_run/checkpoints/500000/params

`init.checkpoint` takes a params checkpoint of this project: the output of
`python -m qwen_audio_jax.convert` (e.g. the released Qwen-Audio) or a stage-1 run's
`<workdir>/checkpoints/<step>` (its parameters are read from the saved train state).

Presets:
  demo: the tiny model on the dialogue rows of the bundled demo corpus, CPU, a couple of minutes.
  qwen_audio: the paper's recipe (Qwen-Audio, arXiv:2311.07919, appendix table of training
    hyper-parameters, "supervised fine-tuning" column).
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
    raise ValueError(f"configs/sft.py: unknown preset {arg!r}; expected one of {PRESETS}")
  c = common.base_config("sft")
  if arg == "demo":
    common.demo_overrides(c)
    c.total_steps = 100
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 10
    c.optim.weight_decay = 0.0
    return c
  c.model.preset = "qwen_audio_7b"
  c.model.overrides = common.ml_collections.ConfigDict(dict(
      dtype="bfloat16", param_dtype="float32", remat_policy="dots_with_no_batch_dims"))
  c.total_steps = 8_000  # paper: training steps
  c.data.batch_size = 256  # paper: global batch size
  c.eval_data.batch_size = 64
  c.data.text_buckets = (1024, 2048)
  c.eval_data.text_buckets = (1024, 2048)
  c.loss.chunk_length = 512  # not in the paper: 4 chunks of logits per 2048-token row (memory)
  c.data.worker_count = 8  # grain workers per host (throughput, not from the paper)
  c.optim.learning_rate = 1e-5  # paper: peak learning rate
  c.optim.end_learning_rate_ratio = 0.1  # paper: minimum learning rate 1e-6
  c.optim.schedule = "warmup_cosine"  # paper: cosine decay
  c.optim.warmup_steps = 3000  # paper: warmup steps
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.98, 1e-6  # paper: AdamW betas, epsilon
  c.optim.weight_decay = 0.05  # paper: weight decay
  c.optim.grad_clip_norm = 1.0  # paper: gradient clipping
  c.optim.grad_accum_steps = 8  # paper: gradient accumulation
  c.specaugment.enabled = False
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 2  # paper: model parallel size 2
  c.checkpoint.every_steps = 1000
  c.checkpoint.keep = 3
  c.checkpoint.keep_best_metric = "eval/loss"
  c.log_every = 20
  c.eval_every = 1000
  c.eval_steps = 50
  return c
