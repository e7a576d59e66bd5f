"""qwen_audio_jax: a JAX/Flax training stack for Qwen-Audio and Qwen2-Audio."""

import ast
import os

from setuptools import find_packages, setup

EVAL_REQUIRES = [
    "jiwer>=4.0.0",
    "sacrebleu>=2.6.0",
    "whisper-normalizer>=0.1.15",
    "pycocoevalcap>=1.2",
]

HERE = os.path.dirname(os.path.abspath(__file__))


def console_scripts():
  """`qwen-audio-<name>` for every command of qwen_audio_jax/cli.py whose module exists (read
  without importing the package, whose dependencies may not be installed yet)."""
  with open(os.path.join(HERE, "qwen_audio_jax", "cli.py"), encoding="utf-8") as f:
    tree = ast.parse(f.read())
  values = {t.id: ast.literal_eval(node.value) for node in tree.body
            if isinstance(node, ast.Assign) for t in node.targets
            if isinstance(t, ast.Name) and t.id in ("COMMANDS", "SCRIPT_PREFIX")}
  scripts = []
  for name, module in values["COMMANDS"].items():
    path = os.path.join(HERE, *module.split("."))
    if os.path.exists(path + ".py") or os.path.exists(os.path.join(path, "__main__.py")):
      script = values["SCRIPT_PREFIX"] + name.replace("_", "-")  # as cli.script_name
      scripts.append(f"{script} = qwen_audio_jax.cli:{name}")
  return scripts


setup(
    name="qwen_audio_jax",
    version="0.1.0",
    description="JAX/Flax training stack for Qwen-Audio audio-language models",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["qwen_audio_jax", "qwen_audio_jax.*"]),
    include_package_data=True,
    package_data={"qwen_audio_jax": ["data/demo/**/*", "data/demo/*", "data/demo_encoder/**/*",
                                     "data/demo_encoder/*"]},
    entry_points={"console_scripts": console_scripts()},
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "grain>=0.2.18",
        "numpy>=2.0",
        "soundfile>=0.14.0",
        "soxr>=1.1.0",
        "ml-collections>=1.1.0",
        "tiktoken>=0.14.0",
        "safetensors>=0.8.0",
        "tqdm>=4.70.0",
        "absl-py>=2.5.0",
        "etils>=1.15.0",
        "tensorboardX>=2.6.5",
        # Ships qwen.tiktoken, the Qwen BPE vocabulary, used when no checkpoint directory
        # provides one (the demo, tests).
        "dashscope>=2.0.2",
        # WER of the demo's held-out report (and of every ASR evaluation).
        "jiwer>=4.0.0",
    ],
    extras_require={
        # Metrics of `python -m qwen_audio_jax.evaluate` and of decoding evaluations in training:
        # WER (jiwer), BLEU (sacrebleu), the Whisper text normalisers, CIDEr / SPICE
        # (pycocoevalcap; its PTB tokenizer and SPICE also need Java). Japanese BLEU targets
        # need sacrebleu[ja].
        "eval": EVAL_REQUIRES,
        "test": EVAL_REQUIRES + [
            "pytest>=8.0",
            "pytest-xdist>=3.8.0",
            "hypothesis>=6.170.0",
            "transformers>=5.24.0",
            "torch==2.13.0",
            # References of the export and chat tests: PEFT's LoRA loader, jinja2 for
            # transformers' Qwen2-Audio chat template.
            "peft>=0.21.2",
            "jinja2>=3.1.6",
            # make_sft's LLM path (tested against a loopback server)
            "openai>=3.57.0",
            "jsonschema>=4.26.0",
            # Compiling for virtual TPU slices (TPU flash attention, the planner), and the
            # notebooks executed headless.
            "libtpu==0.0.42.*",
            "nbclient>=0.11.0",
            "nbformat>=5.11.1",
            "ipykernel>=7.4.0",
        ],
        # TFDS mixture entries (source='tfds'); datasets with tfds.features.Audio also need
        # tensorflow.
        "tfds": ["tensorflow-datasets>=4.9.10"],
        # LLM-written dialogues in `python -m qwen_audio_jax.data.make_sft --llm`.
        "sft": ["openai>=3.57.0", "jsonschema>=4.26.0"],
        # TPU hosts, and ahead-of-time compilation for TPU slices on any machine (the planner):
        # the libtpu that jax[tpu]==0.10.2 pins.
        "tpu": ["libtpu==0.0.42.*"],
    },
)
