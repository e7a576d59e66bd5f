"""Text side of Qwen-Audio: the tokenizer, the multitask tag format (stage 1), ChatML (stage 2)."""
