"""The special tokens of the Qwen-Audio vocabulary, in id order.

Ids follow the 151,643 ranks of `qwen.tiktoken`: first `<|endoftext|>`, `<|im_start|>`,
`<|im_end|>` and 205 reserved `<|extra_N|>`, then the audio vocabulary, whose first token is the
audio pad token `[[[AUDIO:modality]]]` (151851) and whose last two are `<audio>` (155163) and
`</audio>` (155164).
"""

from typing import Dict, List

NUM_BPE_RANKS = 151_643

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
AUDIO_PAD = "[[[AUDIO:modality]]]"
AUDIO_START = "<audio>"
AUDIO_END = "</audio>"

LANGUAGES = ("en", "zh", "de", "es", "ko", "fr", "ja", "it", "zh_tr")
UNKNOWN_LANGUAGE = "unknown"

# Timestamps: <|0.00|> ... <|30.00|>, one per 0.01 s.
TIMESTAMP_STEPS = 3001
TIMESTAMP_RESOLUTION = 0.01


def timestamp_token(centiseconds: int) -> str:
  """`<|s.ss|>` for a time in hundredths of a second (0 ... 3000)."""
  return f"<|{centiseconds // 100}.{centiseconds % 100:02d}|>"


def _audio_tokens() -> List[str]:
  tokens = [AUDIO_PAD, "<|startoftranscript|>", "<|startofanalysis|>", "<|translate|>",
            "<|transcribe|>", "<|caption|>", "<|keyword|>", "<|unknown|>"]
  tokens += [f"<|{lang}|>" for lang in LANGUAGES]
  tokens += ["<|notimestamps|>", "<|sil|>", "<|timestamps|>"]
  tokens += [timestamp_token(i) for i in range(TIMESTAMP_STEPS)]
  tokens += ["<|caption_audiocaps|>", "<|caption_clotho|>", "<|audioset_ontology|>",
             "<|caption_plain|>", "<|itn|>", "<|wo_itn|>", "<|startofentityvalue|>",
             "<|endofentityvalue|>", "<|startofentitytype|>", "<|endofentitytype|>",
             "<|named_entity_recognition|>", "<|audio_grounding|>", "<|startofword|>",
             "<|endofword|>", "<|delim|>", "<|emotion_recognition|>", "<|music_description|>",
             "<|note_analysis|>", "<|pitch|>"]
  tokens += [f"<|midi_pitch_{i}|>" for i in range(128)]
  tokens += ["<|velocity|>"]
  tokens += [f"<|midi_velocity_{i}|>" for i in range(128)]
  tokens += ["<|sonic|>", "<|instrument|>", "<|speaker_meta|>", "<|song_meta|>", "<|question|>",
             "<|answer|>", "<|choice|>", "<|scene|>", "<|event|>", "<|vocal_classification|>",
             "<|speech_understanding|>", "<|scenario|>", "<|action|>", "<|entities|>",
             "<|speech_edit|>", AUDIO_START, AUDIO_END]
  return tokens


AUDIO_SPECIAL_TOKENS: List[str] = _audio_tokens()
SPECIAL_TOKENS: List[str] = (
    [ENDOFTEXT, IM_START, IM_END] + [f"<|extra_{i}|>" for i in range(205)] + AUDIO_SPECIAL_TOKENS)

SPECIAL_IDS: Dict[str, int] = {tok: NUM_BPE_RANKS + i for i, tok in enumerate(SPECIAL_TOKENS)}
assert len(SPECIAL_IDS) == len(SPECIAL_TOKENS), "special tokens must be unique"
