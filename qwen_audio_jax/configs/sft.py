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

from qwen_audio_jax.configs import common

PRESETS = common.PRESETS


def get_config(arg: str = "demo"):
  common.check_preset("configs/sft.py", arg)
  c = common.base_config("sft")
  if arg == "demo":
    common.demo_overrides(c)
    c.data.batch_size = 8
    c.data.text_buckets = c.eval_data.text_buckets = (256,)  # every demo dialogue fits
    c.total_steps = 200
    c.optim.learning_rate = 1e-3
    c.eval_every = c.checkpoint.every_steps = 100
    # The run ends with the last checkpoint's answers to held-out dialogues ("What does the
    # speaker say?" about the held-out voice, "Describe the sound.").
    c.report.chat_examples = 24
    return c
  common.full_scale_overrides(c)  # shared by both stages; values from the paper unless marked
  c.total_steps = 8_000  # paper: training steps
  c.data.batch_size = 256  # paper: global batch size
  c.eval_data.batch_size = 64
  c.data.text_buckets = (1024, 2048)
  c.eval_data.text_buckets = (1024, 2048)
  c.optim.learning_rate = 1e-5  # paper: peak learning rate
  c.optim.end_learning_rate_ratio = 0.1  # paper: minimum learning rate 1e-6
  c.optim.warmup_steps = 3000  # paper: warmup steps
  c.optim.grad_accum_steps = 8  # paper: gradient accumulation
  c.specaugment.enabled = False
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 2  # paper: model parallel size 2
  c.checkpoint.every_steps = 1000
  c.log_every = 20
  c.eval_every = 1000
  c.eval_steps = 50
  return c
