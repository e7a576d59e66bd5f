r"""Benchmarks of the Qwen-Audio paper, one config each, for `python -m qwen_audio_jax.evaluate`.

    python -m qwen_audio_jax.evaluate --config=configs/eval.py:librispeech_test_clean \
        --checkpoint ckpt/qwen_audio --config.data.paths=data/eval/librispeech_test_clean.jsonl
    python -m qwen_audio_jax.evaluate --config=configs/eval.py:demo \
        --checkpoint workdir/demo/checkpoints/100

Each entry fixes what the released evaluation (QwenLM/Qwen-Audio, eval_audio/evaluate_*.py)
fixes: the task's prompt (built by `qwen_audio_jax.text.tasks` from each row, e.g. ASR
`<audio>PATH</audio><|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>`),
greedy decoding, the number of new tokens and the metric. Each needs only a local copy of the
data and a manifest, written from the dataset's published layout by
`python -m qwen_audio_jax.evaluate.prepare DATASET --root ROOT --out MANIFEST` (the layout each
converter reads is in the comment of its entry below and in `qwen_audio_jax/evaluate/prepare.py`).
Every key is documented in `qwen_audio_jax/evaluate/config.py` and can be overridden with
`--config.<key>=...`; `published` holds the figures the Qwen-Audio README reports for the
released model, copied into our report for comparison.

Names: librispeech_{dev,test}_{clean,other}, aishell1_{dev,test},
covost2_{en_de,de_en,en_zh,zh_en,es_en,fr_en,it_en}, clotho, vocalsound, cochlscene, clothoaqa,
meld, and demo / demo_{srwt,caption,event,aqa} (the bundled demo corpus's held-out split).
"""

import os

from qwen_audio_jax.data.config import DEMO_DIR
from qwen_audio_jax.evaluate.config import benchmark_config

DATA = "data/eval"  # where the default manifest paths point; override with --config.data.paths

# LibriSpeech (openslr.org/12): LibriSpeech/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
# holds '<utterance id> TRANSCRIPT' lines next to the <utterance id>.flac files.
#   python -m qwen_audio_jax.evaluate.prepare librispeech --root /data/LibriSpeech/test-clean \
#       --out data/eval/librispeech_test_clean.jsonl
# Or the TFDS copy: --config.data.source=tfds --config.data.tfds_name=librispeech
# --config.data.tfds_split=test_clean (dev_clean, dev_other, test_clean, test_other).
# Published (Qwen-Audio README): WER 1.8 / 4.0 / 2.0 / 4.2.
LIBRISPEECH = {"dev_clean": 1.8, "dev_other": 4.0, "test_clean": 2.0, "test_other": 4.2}

# Aishell-1 (openslr.org/33): data_aishell/transcript/aishell_transcript_v0.8.txt
# ('<utterance id> words separated by spaces') and data_aishell/wav/<split>/<speaker>/<id>.wav
# (each speaker's .tar.gz unpacked). Scored per character. Published: CER 1.2 (dev), 1.3 (test).
#   python -m qwen_audio_jax.evaluate.prepare aishell1 --root /data/data_aishell --split test \
#       --out data/eval/aishell1_test.jsonl
AISHELL1 = {"dev": 1.2, "test": 1.3}

# CoVoST 2 (github.com/facebookresearch/covost): the Common Voice 4 release's clips/*.mp3 and
# the covost_v2.<src>_<tgt>.tsv file of the pair (columns path, sentence, translation,
# client_id, split; made by the repo's get_covost_splits.py); the test split is scored.
#   python -m qwen_audio_jax.evaluate.prepare covost2 --root /data/cv4/en \
#       --tsv /data/covost/covost_v2.en_de.tsv --out data/eval/covost2_en_de.jsonl
# Published BLEU (Qwen-Audio README); zh targets use sacrebleu's 'zh' tokenizer.
COVOST2 = {("en", "de"): 25.1, ("de", "en"): 33.9, ("en", "zh"): 41.5, ("zh", "en"): 15.7,
           ("es", "en"): 39.7, ("fr", "en"): 38.5, ("it", "en"): 36.0}


def _librispeech(split: str):
  return benchmark_config(
      f"librispeech_{split}", task="asr", metric="wer", language="en", max_new_tokens=256,
      paths=f"{DATA}/librispeech_{split}.jsonl", published={"wer": LIBRISPEECH[split] / 100})


def _aishell1(split: str):
  return benchmark_config(
      f"aishell1_{split}", task="asr", metric="wer", language="zh", max_new_tokens=256,
      paths=f"{DATA}/aishell1_{split}.jsonl", published={"cer": AISHELL1[split] / 100})


def _covost2(source: str, target: str):
  return benchmark_config(
      f"covost2_{source}_{target}", task="translation", metric="bleu", language=target,
      max_new_tokens=256, paths=f"{DATA}/covost2_{source}_{target}.jsonl",
      published={"bleu": COVOST2[(source, target)]})


def _clotho():
  # Clotho v2.1 (zenodo.org/record/4783391): clotho_captions_evaluation.csv (file_name,
  # caption_1 ... caption_5) and the evaluation/ folder of .wav files. Rows carry the five
  # captions in `references` (scored against all of them) and style 'clotho' (the prompt's
  # <|caption_clotho|>). Which Clotho split the paper scores is not stated there (unverified).
  # SPICE needs Java and the Stanford CoreNLP 3.6.0 jars (see caption_metrics.py).
  #   python -m qwen_audio_jax.evaluate.prepare clotho --root /data/clotho --split evaluation \
  #       --out data/eval/clotho.jsonl
  return benchmark_config(
      "clotho", task="caption", metric="caption", max_new_tokens=30,
      paths=f"{DATA}/clotho.jsonl", published={"cider": 0.441, "spice": 0.136, "spider": 0.288})


def _vocalsound():
  # VocalSound (github.com/YuanGongND/vocalsound): audio_16k/<speaker>_<n>_<label>.wav and the
  # test speakers of meta/te_meta.csv. Labels are written as the released evaluation's
  # references are assumed to be (Laughter, Sigh, Cough, Throat clearing, Sneeze, Sniff;
  # unverified: exact match needs the label strings the model was trained on).
  #   python -m qwen_audio_jax.evaluate.prepare vocalsound --root /data/vocalsound_16k \
  #       --out data/eval/vocalsound.jsonl
  return benchmark_config(
      "vocalsound", task="vocal_sound", metric="accuracy", max_new_tokens=4,
      paths=f"{DATA}/vocalsound.jsonl", published={"accuracy": 0.9289})


def _cochlscene():
  # CochlScene (zenodo.org/records/7080122): CochlScene/Test/<Scene>/<clip>.wav, the label being
  # the folder's name (Bus, Cafe, Car, CrowdedIndoor, ...; unverified against the released
  # references).
  #   python -m qwen_audio_jax.evaluate.prepare cochlscene --root /data/CochlScene \
  #       --out data/eval/cochlscene.jsonl
  return benchmark_config(
      "cochlscene", task="scene", metric="accuracy", max_new_tokens=10,
      paths=f"{DATA}/cochlscene.jsonl", published={"accuracy": 0.795})


def _clothoaqa():
  # Clotho-AQA (zenodo.org/records/6473207): clotho_aqa_test.csv (file_name, QuestionText,
  # answer, confidence; three annotators per question) and audio_files/. One row per question,
  # answered by the annotators' majority (ties: the first answer; unverified against the
  # released references). Scored: accuracy and accuracy on yes/no questions.
  #   python -m qwen_audio_jax.evaluate.prepare clothoaqa --root /data/clotho_aqa \
  #       --out data/eval/clothoaqa.jsonl
  return benchmark_config(
      "clothoaqa", task="aqa", metric="aqa", max_new_tokens=4,
      paths=f"{DATA}/clothoaqa.jsonl", published={"accuracy": 0.579, "yes_no_accuracy": 0.749})


def _meld():
  # MELD (affective-meld.github.io): MELD.Raw/test_sent_emo.csv (Utterance, Emotion,
  # Dialogue_ID, Utterance_ID, ...) and the test videos dia<D>_utt<U>.mp4, whose audio must be
  # extracted first (soundfile reads no mp4): for f in *.mp4; do ffmpeg -i "$f" -ac 1 -ar 16000
  # "${f%.mp4}.wav"; done. Labels are the CSV's (neutral, joy, surprise, anger, sadness,
  # disgust, fear).
  #   python -m qwen_audio_jax.evaluate.prepare meld --root /data/MELD.Raw \
  #       --audio_dir /data/MELD.Raw/test_wav --out data/eval/meld.jsonl
  return benchmark_config(
      "meld", task="emotion", metric="accuracy", max_new_tokens=4,
      paths=f"{DATA}/meld.jsonl", published={"accuracy": 0.557})


# The bundled demo corpus's held-out split (qwen_audio_jax/data/demo/eval.jsonl): one entry per
# multitask family it holds, with the released evaluation's settings of that family.
DEMO_MANIFEST = os.path.join(DEMO_DIR, "eval.jsonl")


def _demo(task: str):
  settings = {
      "asr": dict(metric="wer", language="en", max_new_tokens=256),
      "srwt": dict(metric="srwt", language="en", max_new_tokens=256, response_prefix="<|0.00|>"),
      "caption": dict(metric="caption", max_new_tokens=30, caption_metrics="cider"),
      "event": dict(metric="accuracy", max_new_tokens=10),
      "aqa": dict(metric="aqa", max_new_tokens=4),
  }[task]
  name = "demo" if task == "asr" else f"demo_{task}"
  return benchmark_config(name, task=task, paths=DEMO_MANIFEST, batch_size=4, **settings)


BENCHMARKS = {
    **{f"librispeech_{s}": (_librispeech, s) for s in LIBRISPEECH},
    **{f"aishell1_{s}": (_aishell1, s) for s in AISHELL1},
    **{f"covost2_{a}_{b}": (_covost2, a, b) for a, b in COVOST2},
    "clotho": (_clotho,), "vocalsound": (_vocalsound,), "cochlscene": (_cochlscene,),
    "clothoaqa": (_clothoaqa,), "meld": (_meld,),
    "demo": (_demo, "asr"),
    **{f"demo_{t}": (_demo, t) for t in ("srwt", "caption", "event", "aqa")},
}


def get_config(arg: str = "demo"):
  if arg not in BENCHMARKS:
    raise ValueError(f"configs/eval.py: unknown benchmark {arg!r}; expected one of "
                     f"{sorted(BENCHMARKS)}")
  builder, *args = BENCHMARKS[arg]
  return builder(*args)
