"""qwen_audio_jax: a JAX/Flax training stack for Qwen-Audio and Qwen2-Audio."""

from setuptools import find_packages, setup

setup(
    name="qwen_audio_jax",
    version="0.1.0",
    description="JAX/Flax training stack for Qwen-Audio audio-language models",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["qwen_audio_jax", "qwen_audio_jax.*"]),
    include_package_data=True,
    package_data={"qwen_audio_jax": ["data/demo/**/*", "data/demo/*"]},
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
    ],
    extras_require={
        "test": [
            "pytest>=8.0",
            "pytest-xdist>=3.8.0",
            "hypothesis>=6.170.0",
            "transformers>=5.24.0",
            "torch==2.13.0",
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
