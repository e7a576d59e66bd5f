"""Keys shared by both training stages (see the per-stage files for the recipes).

Every key of a training config is created here, so `--config.<key>=value` can override any of
them; `qwen_audio_jax.training.validation` checks the whole config before anything compiles.
"""

import importlib.util
import os

import ml_collections

from qwen_audio_jax.data.config import get_data_config
from qwen_audio_jax.training.initialization import model_overrides

# The data config of each training stage: stage 2 trains on dialogues.
DATA_STAGE = {"pretrain": "pretrain", "sft": "chat"}


def base_config(stage: str) -> ml_collections.ConfigDict:
  """Defaults of one stage ('pretrain' or 'sft'); presets change what differs."""
  c = ml_collections.ConfigDict()
  c.stage = stage
  # Model: a preset of qwen_audio_jax.config plus field overrides: every field and `encoder.*` /
  # `llm.*` sub-field is there, typed, None keeping the preset's value
  # (--config.model.overrides.llm.depth=4).
  c.model = ml_collections.ConfigDict(dict(preset="tiny", overrides=model_overrides()))
  c.seed = 0
  c.total_steps = 1000

  c.optim = ml_collections.ConfigDict(dict(
      name="adamw",  # 'adamw' | 'adafactor' | 'sgd'
      learning_rate=1e-4,  # peak
      schedule="warmup_cosine",  # 'warmup_cosine' | 'warmup_linear' | 'constant'
      warmup_steps=100,
      end_learning_rate_ratio=0.1,  # final / peak learning rate
      b1=0.9, b2=0.98, eps=1e-6,
      weight_decay=0.05,
      # No decay for norm scales, biases and the audio bos/eos rows.
      weight_decay_exclude=r"/(bias|scale)$|^audio_bos_eos$",
      grad_clip_norm=1.0,
      grad_accum_steps=1,
  ))
  # Stage 1 trains the audio encoder (with its projection) and the audio bos/eos rows with the
  # LLM frozen; stage 2 trains the LLM with the encoder frozen.
  c.trainable = r"^audio_encoder/|^audio_bos_eos" if stage == "pretrain" else r"^llm/"
  # Stage 1 may train the LLM too only when asked: the paper's stage 1 keeps it frozen, but a
  # model without a pretrained LLM (the demo) has to learn to write as well as to listen.
  c.train_llm_in_pretrain = False
  # Whisper's positional embedding is a fixed sinusoid (a buffer in the reference models): it is
  # stored with the parameters but never trained.
  c.frozen = r"^audio_encoder/positional_embedding$"
  c.lora = ml_collections.ConfigDict(dict(
      rank=0, alpha=16.0, target=r"^llm/.*/(query|key|value|out)/kernel$"))
  # chunk_length > 0: logits of the target positions only, that many per row at a time
  # (memory: one chunk of [rows, chunk_length, vocab] float32 logits; chunks without targets
  # are skipped). 0: logits of every position at once.
  # output_vocab: 'full', or 'data': logits only for the tokens the training targets contain,
  # the other head columns held at zero (exact; qwen_audio_jax/training/output_vocab.py).
  c.loss = ml_collections.ConfigDict(dict(z_loss_weight=0.0, chunk_length=128,
                                          output_vocab="full"))
  c.nonfinite = "skip"  # 'skip' the update (counted) or 'halt' the run
  c.specaugment = ml_collections.ConfigDict(dict(
      enabled=stage == "pretrain", num_freq_masks=2, max_freq_width=27, num_time_masks=2,
      max_time_width=100, time_masks_per_frame=0.0, max_time_width_ratio=1.0, max_time_warp=0,
      mask_value="mean"))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1))

  c.data = get_data_config(DATA_STAGE[stage], "train")
  c.eval_data = get_data_config(DATA_STAGE[stage], "eval")

  c.init = ml_collections.ConfigDict(dict(checkpoint="", whisper="", llm=""))
  c.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=500, keep=3, keep_best_metric="", async_save=True))

  c.log_every = 10
  c.eval_every = 500
  c.eval_steps = 0  # batches per evaluation; 0 = one full pass over eval_data
  # Decoding evaluations (WER, accuracy, ... with generation), big_vision style: name ->
  # a configs/eval.py benchmark with its `every_steps`; see qwen_audio_jax/evaluate/in_training.py.
  c.evals = ml_collections.ConfigDict()
  # What the run prints when it ends (qwen_audio_jax/training/report.py): targets of decoding
  # evaluations by name ('<=0.1', '>=0.9'), how many predictions to show, and (stage 2) how many
  # held-out dialogues of eval_data to answer from the last checkpoint (0: none).
  c.report = ml_collections.ConfigDict(dict(
      targets=ml_collections.ConfigDict(), examples=4, chat_examples=0))
  c.tensorboard = True
  c.wandb = False
  c.wandb_project = "qwen_audio_jax"
  c.compilation_cache_dir = ""  # '' = .jax_cache next to the workdir, on its filesystem
  return c


def demo_overrides(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """CPU demo on the bundled corpus: the tiny model, small batches, a couple of minutes."""
  c.model.preset = "tiny"
  c.data.batch_size = 2
  c.eval_data.batch_size = 4
  c.data.text_buckets = (128, 256)
  c.data.length_group_window = 16  # batches of similar audio and text lengths
  # Every demo clip (0.8-6.6 s) fits a 7 s bucket: one compiled step per text bucket.
  c.data.audio_buckets = c.eval_data.audio_buckets = (7.0, 30.0)
  c.eval_data.text_buckets = (128, 256)
  c.log_every = 10
  c.checkpoint.every_steps = 50
  c.checkpoint.keep = 2
  c.checkpoint.keep_best_metric = "eval/loss"
  c.eval_every = 50
  c.eval_steps = 4
  c.total_steps = 100
  c.optim.warmup_steps = 10
  c.optim.weight_decay = 0.0
  # The demo corpus's targets use ~650 of the 155,947 tokens: project onto those only (exact,
  # see qwen_audio_jax/training/output_vocab.py), the targets of a row at a time.
  c.loss.output_vocab = "data"
  c.loss.chunk_length = 32
  return c


def benchmark(name: str) -> ml_collections.ConfigDict:
  """configs/eval.py's benchmark `name`, for a training config's decoding evaluations:
  `c.evals.demo = common.benchmark('demo')`."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "eval.py")
  spec = importlib.util.spec_from_file_location("qwen_audio_jax_configs_eval", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(name)


PRESETS = ("demo", "qwen_audio")


def check_preset(config_file: str, arg: str) -> None:
  if arg not in PRESETS:
    raise ValueError(f"{config_file}: unknown preset {arg!r}; expected one of {PRESETS}")


def full_scale_overrides(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """What both stages of the paper's recipe share: Qwen-Audio at full size in bf16, AdamW with
  warmup and cosine decay; the stage files set what differs (steps, batch, learning rates)."""
  c.model.preset = "qwen_audio_7b"
  c.model.overrides = model_overrides(
      dtype="bfloat16", param_dtype="float32", remat_policy="dots_with_no_batch_dims")
  c.loss.chunk_length = 512  # not in the paper: 4 chunks of logits per 2048-token row (memory)
  c.data.worker_count = 8  # grain workers per host (throughput, not from the paper)
  c.optim.schedule = "warmup_cosine"  # paper: cosine decay
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.98, 1e-6  # paper: AdamW betas, epsilon
  c.optim.weight_decay = 0.05  # paper: weight decay
  c.optim.grad_clip_norm = 1.0  # paper: gradient clipping
  c.checkpoint.keep = 3
  c.checkpoint.keep_best_metric = "eval/loss"
  return c
