"""Text side of Qwen-Audio: the tokenizer, the multitask tag format (stage 1), ChatML (stage 2).

  tokenizer   QwenAudioTokenizer (qwen.tiktoken + special tokens; `<audio>PATH</audio>` spans
              sized to their clips), HFAudioTokenizer (Qwen2-Audio transformers tokenizers)
  specials    the special-token table and its ids
  tasks       one spec per task family (TASKS, get_task), encode_example / encode_prompt,
              parse_output, official_asr_prompt
  chat        ChatML dialogues: encode_dialogue (training), encode_chat_prompt (generation)
  timestamps  seconds <-> `<|s.ss|>` tokens (quantisation, clamping)
  parsers     generated text -> words with times, labels, tagged fields
"""
