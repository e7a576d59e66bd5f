"""Keys shared by both training stages (see the per-stage files for the recipes).

Every key of a training config is created here, so `--config.<key>=value` can override any of
them; `qwen_audio_jax.training.validation` checks the whole config before anything compiles.
"""

import importlib.util
import os

import ml_collections
from ml_collections.config_dict import placeholder

from qwen_audio_jax import sharding
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
      # Layer-wise learning-rate decay of the audio encoder (qwen_audio_jax/training/
      # layer_decay.py): block i of depth gets decay^(depth-1-i) of the rate; 1.0 = off.
      encoder_layer_decay=1.0,
      # 'all', or 'data': with loss.output_vocab='data', the optimizer trains compact tables,
      # the embedding rows of the tokens the training rows contain and the head's kept columns
      # (exact for AdamW / SGD; qwen_audio_jax/training/vocab_rows.py).
      vocab_rows="all",
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
  # the other head columns tied to one shared logit (exact; qwen_audio_jax/training/output_vocab.py).
  c.loss = ml_collections.ConfigDict(dict(z_loss_weight=0.0, chunk_length=128,
                                          output_vocab="full"))
  c.nonfinite = "skip"  # 'skip' the update (counted) or 'halt' the run
  # SpecAugment on the encoder input (qwen_audio_jax/audio/specaugment.py): a named policy of
  # Park et al. 2019, Table 1 ('LB' LibriSpeech basic, 'LD' LibriSpeech double) or 'custom'. A
  # field set here overrides the policy's value; None keeps it ('custom' with nothing set: 2
  # frequency masks of up to 27 bins, 2 time masks of up to 100 frames, no time warp).
  c.specaugment = ml_collections.ConfigDict(dict(
      enabled=stage == "pretrain", policy="custom", num_freq_masks=placeholder(int),
      max_freq_width=placeholder(int), num_time_masks=placeholder(int),
      max_time_width=placeholder(int), time_masks_per_frame=placeholder(float),
      max_time_width_ratio=placeholder(float), max_time_warp=placeholder(int),
      mask_value=placeholder(str)))
  # Device mesh sizes (one ICI axis may be -1: the rest) and the logical-axis rules mapping the
  # model's axis names onto it, e.g. --config.mesh.logical_axis_rules="(('embed', 'fsdp'), ...)"
  # (the whole table; a mesh axis that does not divide a dimension is dropped for it).
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1,
                                          logical_axis_rules=sharding.LOGICAL_AXIS_RULES))

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
  # Which train step compiles before step 1: 'largest' (the largest text x audio bucket pair,
  # the worst case for memory, so a run that cannot fit fails at once, before any data is
  # read) or 'first_batch' (the first batch's shape; a run whose clips never fill the largest
  # bucket then never compiles it). Other shapes compile on first use either way (logged).
  c.precompile = "largest"
  return c


def demo_overrides(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """CPU demo on the bundled corpus: the tiny model, small batches, a couple of minutes."""
  c.model.preset = "tiny"
  # Two layers each: unrolled blocks compile in seconds and make the step 1.2x faster on CPU than
  # nn.scan (285 -> 234 ms; the scan's stacked residuals and their dynamic slices in the
  # backward cost more than the layers themselves at this size).
  c.model.overrides.scan_layers = False
  c.data.batch_size = 2
  c.eval_data.batch_size = 4
  c.data.text_buckets = (128, 256)
  c.data.length_group_window = 16  # batches of similar audio and text lengths
  # Every clip's features stay in memory after its first read (~160 MB of log-mel for the train
  # split's 4,961 s): each is read ~10 times in a run, and decoding + mel were ~90 ms per batch.
  c.data.feature_cache_mb = c.eval_data.feature_cache_mb = 512
  # Every demo clip (0.8-6.6 s) fits a 7 s bucket: one compiled step per text bucket.
  c.data.audio_buckets = c.eval_data.audio_buckets = (7.0, 30.0)
  c.eval_data.text_buckets = (128, 256)
  c.log_every = 10
  c.precompile = "first_batch"  # no demo clip needs the 30 s bucket: never compile it
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
  # ... and train only those head columns and the embedding rows of the ~700 tokens the demo rows
  # hold (exact: weight decay is 0; qwen_audio_jax/training/vocab_rows.py).
  c.optim.vocab_rows = "data"
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


# Where each number of the `qwen_audio` presets comes from, marked on its line:
#   "quoted:"              a row of the training hyper-parameter table in the appendix of the
#                          Qwen-Audio paper (arXiv:2311.07919) as a user quotes it in
#                          https://github.com/QwenLM/Qwen-Audio/issues/51 (the quote was read,
#                          the table itself was not);
#   "unverified:"          said to be the paper's, not checked against the paper;
#   "not from the paper:"  this project's choice.


def full_scale_overrides(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """What both stages of the paper's recipe share: Qwen-Audio at full size in bf16, AdamW with
  warmup and cosine decay, SpecAugment LB; the stage files set what differs (steps, batch,
  learning rates). Provenance marks as described above."""
  c.model.preset = "qwen_audio_7b"
  c.model.overrides = model_overrides(
      dtype="bfloat16", param_dtype="float32", remat_policy="dots_with_no_batch_dims")
  c.loss.chunk_length = 512  # not from the paper: 4 chunks of logits per 2048-token row (memory)
  c.data.worker_count = 8  # grain workers per host (throughput, not from the paper)
  c.optim.schedule = "warmup_cosine"  # unverified: cosine decay
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.98, 1e-6  # unverified: AdamW betas, epsilon
  c.optim.weight_decay = 0.05  # unverified: weight decay
  c.optim.grad_clip_norm = 1.0  # unverified: gradient clipping
  # quoted: "SpecAugment Policy: LibriSpeech Basic" in both stages (Park et al. 2019's LB).
  c.specaugment.enabled = True
  c.specaugment.policy = "LB"
  c.checkpoint.keep = 3
  c.checkpoint.keep_best_metric = "eval/loss"
  return c
