"""The built-in dialogue templates: several per task family, follow-up turns, two-clip pairs.

Written in the template schema of `qwen_audio_jax.data.sft.templates` (the same a user's file
follows; `python -m qwen_audio_jax.data.make_sft --list_templates` prints them as JSONL, a
starting point for one's own). They ask about each kind of label the task families carry: what
is said, translate it, describe the sound, which event, how many, which emotion, speaker and song
metadata, and comparisons of two clips. The paper describes its hand-written demonstrations only
in kind (arXiv:2311.07919, "Supervised Fine-tuning"); these phrasings are this package's own.
"""

from typing import List

from qwen_audio_jax.data.sft.templates import Template, check_unique, parse_template

WHAT_SAID = ["What does the speaker say?", "Transcribe the audio.",
             "What is being said in this recording?", "Write down what you hear.",
             "Could you transcribe this clip for me?"]
DESCRIBE = ["Describe the sound.", "What can you hear in this audio?",
            "Describe this recording in one sentence.", "What is going on in this clip?"]
WHICH_LABEL = ["What sound is this?", "Which sound event is in the clip?",
               "Name the sound you hear.", "What kind of sound is this?"]

_BUILTIN = [
    # speech recognition
    {"name": "asr.what_said", "family": "asr",
     "turns": [{"user": WHAT_SAID, "assistant": ["{sentence}", "The speaker says: \"{sentence}\""]}]},
    {"name": "asr.words_followup", "family": "asr",
     "turns": [{"user": WHAT_SAID, "assistant": "{sentence}"},
               {"user": ["How many words is that?", "How many words did the speaker say?"],
                "assistant": ["{n_words} words.", "That is {n_words} words."]}]},
    {"name": "asr.first_last_word", "family": "asr",
     "turns": [{"user": ["What is the first word spoken?", "Which word does the speaker start with?"],
                "assistant": ["\"{first_word}\".", "The first word is \"{first_word}\"."]},
               {"user": ["And the last one?", "Which word ends the sentence?"],
                "assistant": ["\"{last_word}\".", "The last word is \"{last_word}\"."]}]},
    {"name": "asr.language", "family": "asr",
     "turns": [{"user": ["Which language is spoken here?", "What language is this?"],
                "assistant": ["{language}.", "The speaker speaks {language}."]},
               {"user": ["What do they say?", "Please transcribe it."],
                "assistant": "{sentence}"}]},
    # speech recognition with word times
    {"name": "srwt.when_start", "family": "srwt",
     "turns": [{"user": ["When does the speaker start talking?",
                         "At what time does the speech begin?"],
                "assistant": ["At {start_time} seconds.", "The first word starts at {start_time} s."]},
               {"user": ["And when does the speech end?", "When is the last word finished?"],
                "assistant": ["At {end_time} seconds.", "The last word ends at {end_time} s."]}]},
    {"name": "srwt.timed_words", "family": "srwt",
     "turns": [{"user": ["Transcribe the audio with the time of every word.",
                         "Give me each word with its start and end time."],
                "assistant": "{timed_transcript}"}]},
    {"name": "srwt.what_said", "family": "srwt",
     "turns": [{"user": WHAT_SAID, "assistant": "{sentence}"},
               {"user": "When does the first word start?",
                "assistant": "At {start_time} seconds."}]},
    # translation
    {"name": "translation.translate", "family": "translation",
     "turns": [{"user": ["Translate what the speaker says into {target_language}.",
                         "What is said here, in {target_language}?",
                         "Please give me a {target_language} translation of this speech."],
                "assistant": "{translation}"}]},
    # captions
    {"name": "caption.describe", "family": "caption",
     "turns": [{"user": DESCRIBE, "assistant": "{caption}"}]},
    {"name": "music_description.describe", "family": "music_description",
     "turns": [{"user": ["Describe this music.", "What does this piece of music sound like?",
                         "Tell me about the music in this clip."],
                "assistant": "{description}"}]},
    # audio question answering
    {"name": "aqa.question", "family": "aqa",
     "turns": [{"user": "{question}", "assistant": ["{answer}", "The answer is {answer}."]}]},
    {"name": "aqa.choices", "family": "aqa",
     "turns": [{"user": ["{question} Choose from {choices}.", "{question} ({choices})"],
                "assistant": "{answer}"}]},
    {"name": "aqa.count", "family": "aqa",
     "turns": [{"user": ["Count the {count_noun} in this clip.", "{question}"],
                "assistant": ["I count {count}.", "There are {count} {count_noun}."]}]},
    # labels
    {"name": "event.which", "family": "event",
     "turns": [{"user": WHICH_LABEL, "assistant": ["I hear {labels}.", "It is {labels}."]}]},
    {"name": "event.yes_no", "family": "event",
     "turns": [{"user": ["Is there {absent_label} in this clip?", "Do you hear {absent_label}?"],
                "assistant": ["No, I hear {labels}.", "No. The clip contains {labels}."]},
               {"user": ["And is there {label}?", "What about {label}?"],
                "assistant": ["Yes, there is.", "Yes."]}]},
    {"name": "event.how_many", "family": "event",
     "turns": [{"user": WHICH_LABEL, "assistant": "I hear {labels}."},
               {"user": "How many different sound events is that?",
                "assistant": "{n_labels} in all."}]},
    {"name": "scene.where", "family": "scene",
     "turns": [{"user": ["Where was this recorded?", "What kind of place is this?",
                         "Which acoustic scene is this?"],
                "assistant": ["The scene is {labels}.", "It sounds like {labels}."]}]},
    {"name": "emotion.how_feel", "family": "emotion",
     "turns": [{"user": ["How does the speaker feel?", "What emotion does the voice convey?",
                         "Which emotion do you hear in this speech?"],
                "assistant": ["The voice sounds {labels}.", "The speaker sounds {labels}."]}]},
    {"name": "emotion.yes_no", "family": "emotion",
     "turns": [{"user": "Does the speaker sound {absent_label}?",
                "assistant": "No, the speaker sounds {labels}."}]},
    {"name": "vocal_sound.which", "family": "vocal_sound",
     "turns": [{"user": ["What vocal sound is this?", "What sound does the person make?"],
                "assistant": ["The person makes this sound: {labels}.", "It is {labels}."]}]},
    # metadata
    {"name": "speaker_meta.describe", "family": "speaker_meta",
     "turns": [{"user": ["Tell me about the speaker.", "What can you say about the person speaking?",
                         "Describe the speaker's voice."],
                "assistant": "{speaker}"}]},
    {"name": "song_meta.describe", "family": "song_meta",
     "turns": [{"user": ["Tell me about this song.", "What do you know about this song?"],
                "assistant": "{song}"}]},
    # spoken language understanding, named entities
    {"name": "slu.intent", "family": "slu",
     "turns": [{"user": ["What does the speaker want?", "What is the intent of this request?"],
                "assistant": ["Scenario: {scenario}; action: {action}.",
                              "The request is about {scenario}: the action is {action}."]},
               {"user": ["Which entities are mentioned?", "Any names, dates or places in it?"],
                "assistant": "Entities: {entities}."}]},
    {"name": "ner.entities", "family": "ner",
     "turns": [{"user": ["Which named entities are mentioned?",
                         "List the names, places and dates the speaker mentions."],
                "assistant": "Entities: {entities}."},
               {"user": "How many is that?", "assistant": "{n_entities} in all."}]},
    # notes
    {"name": "note_analysis.pitch", "family": "note_analysis",
     "turns": [{"user": ["Which note is played?", "What is the pitch of this note?"],
                "assistant": ["{note} (MIDI pitch {pitch}).", "It is {note}, MIDI {pitch}."]},
               {"user": ["How loud is it played?", "Is it played softly or loudly?"],
                "assistant": "It is played {loudness} (velocity {velocity})."}]},
    {"name": "note_analysis.instrument", "family": "note_analysis",
     "turns": [{"user": ["Which instrument plays this note?", "What instrument is this?"],
                "assistant": "It is played on {instrument}."}]},
    # two clips
    {"name": "pair.which_speech", "family": "pair",
     "where": {"target": {"has_speech": "yes"}, "other": {"has_speech": "no"}},
     "turns": [{"user": ["Which clip contains speech?", "Which of the two recordings has someone "
                         "talking?"],
                "assistant": ["The {target_ordinal} clip.",
                              "The {target_ordinal} one; the {other_ordinal} has no speech."]}]},
    {"name": "pair.transcribe_one", "family": "pair",
     "where": {"target": {"has_speech": "yes"}},
     "turns": [{"user": ["What is said in the {target_ordinal} clip?",
                         "Transcribe audio {target_number}."],
                "assistant": "{target_sentence}"}]},
    {"name": "pair.more_words", "family": "pair", "more": "n_words",
     "turns": [{"user": "In which clip does the speaker say more words?",
                "assistant": "In the {target_ordinal} clip ({target_n_words} words against "
                             "{other_n_words})."}]},
    {"name": "pair.which_event", "family": "pair", "differ": ["label"],
     "where": {"target": {"family": "event"}, "other": {"family": "event"}},
     "turns": [{"user": ["Which clip contains {target_label}?",
                         "In which of the two do you hear {target_label}?"],
                "assistant": ["The {target_ordinal} clip; the {other_ordinal} is {other_labels}.",
                              "Audio {target_number}."]}]},
    {"name": "pair.same_event", "family": "pair", "same": ["labels"],
     "where": {"target": {"family": "event"}, "other": {"family": "event"}},
     "turns": [{"user": ["Are these two the same kind of sound?", "Do both clips contain the "
                         "same sound?"],
                "assistant": "Yes, both are {first_labels}."}]},
    {"name": "pair.different_event", "family": "pair", "differ": ["labels"],
     "where": {"target": {"family": "event"}, "other": {"family": "event"}},
     "turns": [{"user": ["Are these two the same kind of sound?", "Do both clips contain the "
                         "same sound?"],
                "assistant": "No: the first is {first_labels}, the second {second_labels}."}]},
    {"name": "pair.describe_both", "family": "pair", "differ": ["caption"],
     "where": {"target": {"family": "caption"}, "other": {"family": "caption"}},
     "turns": [{"user": ["Describe both clips.", "What do you hear in each recording?"],
                "assistant": "First: {first_caption} Second: {second_caption}"},
               {"user": "Tell me again what the {target_ordinal} one sounds like.",
                "assistant": "{target_caption}"}]},
    {"name": "pair.emotion", "family": "pair", "differ": ["label"],
     "where": {"target": {"family": "emotion"}, "other": {"family": "emotion"}},
     "turns": [{"user": "Which speaker sounds {target_label}?",
                "assistant": "The speaker of the {target_ordinal} clip; the {other_ordinal} "
                             "sounds {other_labels}."}]},
]


def builtin_templates() -> List[Template]:
  templates = [parse_template(obj, f"built-in template #{i}") for i, obj in enumerate(_BUILTIN)]
  check_unique(templates, "built-in templates")
  return templates
