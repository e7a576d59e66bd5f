"""Two-stage training: optimizer, freezing and LoRA, loss, train step, loop services.

The entry point is `python -m qwen_audio_jax.train` (qwen_audio_jax/train.py).
"""
