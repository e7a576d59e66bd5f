"""The command lines, by name: `qwen-audio-<name>` runs `python -m <module>` (underscores in a
name become dashes in the script's name: make_sft -> qwen-audio-make-sft).

`COMMANDS` is the one list: setup.py installs a console script for every entry whose module
exists, and each script runs its module exactly as `python -m` does (same flags, same exit
status). Adding a command is one line here. This file imports nothing of the package, so
setup.py can read it without the package's dependencies.
"""

import runpy

COMMANDS = {
    "train": "qwen_audio_jax.train",
    "convert": "qwen_audio_jax.convert",
    "prepare": "qwen_audio_jax.data.prepare",
    "make_sft": "qwen_audio_jax.data.make_sft",
    "infer": "qwen_audio_jax.infer",
    "chat": "qwen_audio_jax.chat",
    "evaluate": "qwen_audio_jax.evaluate",
    "plan": "qwen_audio_jax.plan",
    "pretrain_encoder": "qwen_audio_jax.training.encoder_pretraining",
}
SCRIPT_PREFIX = "qwen-audio-"


def run(name: str) -> None:
  """Runs command `name` with the process's arguments (sys.argv), as `python -m` would."""
  runpy.run_module(COMMANDS[name], run_name="__main__", alter_sys=True)


def __getattr__(name: str):
  """`qwen_audio_jax.cli:train` etc., the console scripts' entry points."""
  if name in COMMANDS:
    return lambda: run(name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
