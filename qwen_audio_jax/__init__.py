"""qwen_audio_jax: Qwen-Audio / Qwen2-Audio in JAX and Flax."""

__version__ = "0.1.0"
