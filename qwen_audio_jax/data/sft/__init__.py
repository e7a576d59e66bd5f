"""Stage-2 dialogue data from labelled stage-1 rows: templates and an optional LLM.

`python -m qwen_audio_jax.data.make_sft` is the command; see qwen_audio_jax/data/README.md.
"""
