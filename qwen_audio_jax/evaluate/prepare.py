r"""Manifests of the paper's benchmarks from each dataset's published layout.

    python -m qwen_audio_jax.evaluate.prepare DATASET --root ROOT --out MANIFEST.jsonl [...]

One converter per dataset; each reads the files the dataset ships (no download), writes one
manifest row per clip in the schema of `qwen_audio_jax/data/README.md` (audio paths absolute),
validates every row as training does, and prints how many rows it wrote and how many clips it
left out because their audio file (or transcript) is missing, the first few by name. The
layouts:

  librispeech  --root LibriSpeech/<split>: <speaker>/<chapter>/<speaker>-<chapter>.trans.txt
               ('<utterance> TRANSCRIPT' lines) next to <utterance>.flac; transcripts
               lower-cased
  aishell1     --root data_aishell --split dev|test: transcript/aishell_transcript_v0.8.txt
               ('<utterance> word word ...', spaces dropped) and wav/<split>/<speaker>/
               <utterance>.wav
  covost2      --root <Common Voice 4 language dir holding clips/> --tsv covost_v2.<src>_<tgt>.tsv
               (columns path, sentence, translation, client_id, split) [--split test]
  clotho       --root <Clotho v2.1> [--split evaluation]: clotho_captions_<split>.csv
               (file_name, caption_1 ... caption_5) and <split>/<file_name>
  vocalsound   --root vocalsound_16k: audio_16k/<speaker>_<n>_<label>.wav; with --speakers FILE
               (e.g. meta/te_meta.csv: the test speakers, first column) only their clips
  cochlscene   --root CochlScene [--split Test]: <split>/<Scene>/<clip>.wav
  clothoaqa    --root <Clotho-AQA> [--split test]: clotho_aqa_<split>.csv (file_name,
               QuestionText, answer, confidence) and audio_files/<file_name>; one row per
               question, answered by the annotators' majority (ties: the first answer given)
  meld         --root MELD.Raw --audio_dir DIR [--split test]: <split>_sent_emo.csv (Utterance,
               Emotion, Dialogue_ID, Utterance_ID, ...) and DIR/dia<D>_utt<U>.wav (audio
               extracted from the videos beforehand, e.g. with ffmpeg -ac 1 -ar 16000)

Label strings (VocalSound's, CochlScene's, MELD's) are written as the datasets spell them, with
VocalSound's file-name labels spelled out ('throatclearing' -> 'Throat clearing'); whether they
match the released evaluation's reference strings exactly is not verified (its converted files
are not part of the public repository).
"""

import argparse
import collections
import csv
import glob
import json
import os
import sys
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from qwen_audio_jax.data import manifest as manifest_lib

Row = Dict[str, object]
FIRST_MISSING = 5


def _lines(path: str) -> Iterator[str]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: not found (is --root the dataset's top folder?)")
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        yield line.rstrip("\n")


def _csv_rows(path: str, delimiter: str = ",", required: Sequence[str] = ()) -> List[Dict]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: not found (is --root the dataset's top folder?)")
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.DictReader(f, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL)
    rows = list(reader)
    missing = [c for c in required if c not in (reader.fieldnames or [])]
  if missing:
    raise ValueError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
  return rows


def librispeech(root: str, **_) -> Iterator[Row]:
  transcripts = sorted(glob.glob(os.path.join(root, "*", "*", "*.trans.txt")))
  if not transcripts:
    raise FileNotFoundError(f"{root}: no <speaker>/<chapter>/*.trans.txt files (pass one split's "
                            "folder, e.g. LibriSpeech/test-clean)")
  for transcript in transcripts:
    folder = os.path.dirname(transcript)
    for line in _lines(transcript):
      utterance, _, text = line.partition(" ")
      yield {"id": utterance, "task": "asr", "audio": os.path.join(folder, utterance + ".flac"),
             "audio_language": "en", "text": text.strip().lower(), "text_language": "en",
             "itn": False}


def aishell1(root: str, split: str = "test", **_) -> Iterator[Row]:
  waves = {os.path.splitext(os.path.basename(p))[0]: p for p in glob.glob(
      os.path.join(root, "wav", split, "*", "*.wav"))}
  if not waves:
    raise FileNotFoundError(f"{root}/wav/{split}: no <speaker>/*.wav files (unpack each "
                            "speaker's .tar.gz there first)")
  texts = {}
  for line in _lines(os.path.join(root, "transcript", "aishell_transcript_v0.8.txt")):
    utterance, _, words = line.partition(" ")
    texts[utterance] = "".join(words.split())
  for utterance in sorted(waves):
    # Clips without a transcript are yielded with an empty path for the caller to count.
    yield {"id": utterance, "task": "asr",
           "audio": waves[utterance] if utterance in texts else "",
           "audio_language": "zh", "text": texts.get(utterance, ""), "text_language": "zh",
           "itn": False}


def covost2(root: str, tsv: str = "", split: str = "test", **_) -> Iterator[Row]:
  name = os.path.basename(tsv)
  pair = name[len("covost_v2."):-len(".tsv")] if name.startswith("covost_v2.") else ""
  source, _, target = pair.partition("_")
  if not (source and target):
    raise ValueError(f"--tsv {tsv!r}: expected a file named covost_v2.<src>_<tgt>.tsv")
  for i, r in enumerate(_csv_rows(tsv, "\t", ("path", "translation", "split"))):
    if r["split"] != split:
      continue
    yield {"id": f"{pair}-{os.path.splitext(r['path'])[0]}", "task": "translation",
           "audio": os.path.join(root, "clips", r["path"]), "audio_language": source,
           "text": r["translation"].strip(), "text_language": target, "itn": True}


def clotho(root: str, split: str = "evaluation", **_) -> Iterator[Row]:
  columns = [f"caption_{k}" for k in range(1, 6)]
  for r in _csv_rows(os.path.join(root, f"clotho_captions_{split}.csv"),
                     required=["file_name"] + columns):
    captions = [r[c].strip() for c in columns if r[c].strip()]
    yield {"id": r["file_name"], "task": "caption",
           "audio": os.path.join(root, split, r["file_name"]), "audio_language": "unknown",
           "text": captions[0], "references": captions, "style": "clotho"}


VOCALSOUND_LABELS = {"laughter": "Laughter", "sigh": "Sigh", "cough": "Cough",
                     "throatclearing": "Throat clearing", "sneeze": "Sneeze", "sniff": "Sniff"}


def vocalsound(root: str, speakers: str = "", **_) -> Iterator[Row]:
  keep = None
  if speakers:
    keep = {line.split(",")[0].strip() for line in _lines(speakers)}
  files = sorted(glob.glob(os.path.join(root, "audio_16k", "*.wav")))
  if not files:
    raise FileNotFoundError(f"{root}/audio_16k: no .wav files")
  for path in files:
    stem = os.path.splitext(os.path.basename(path))[0]
    speaker, label = stem.split("_")[0], stem.split("_")[-1].lower()
    if keep is not None and speaker not in keep:
      continue
    if label not in VOCALSOUND_LABELS:
      raise ValueError(f"{path}: label {label!r} from the file name is not one of "
                       f"{sorted(VOCALSOUND_LABELS)}")
    yield {"id": stem, "task": "vocal_sound", "audio": path, "audio_language": "en",
           "label": VOCALSOUND_LABELS[label]}


def cochlscene(root: str, split: str = "Test", **_) -> Iterator[Row]:
  files = sorted(glob.glob(os.path.join(root, split, "*", "*.wav")))
  if not files:
    raise FileNotFoundError(f"{root}/{split}: no <Scene>/*.wav files")
  for path in files:
    yield {"id": os.path.splitext(os.path.basename(path))[0], "task": "scene", "audio": path,
           "audio_language": "unknown", "label": os.path.basename(os.path.dirname(path))}


def clothoaqa(root: str, split: str = "test", **_) -> Iterator[Row]:
  answers: Dict[Tuple[str, str], List[str]] = collections.OrderedDict()
  for r in _csv_rows(os.path.join(root, f"clotho_aqa_{split}.csv"),
                     required=["file_name", "QuestionText", "answer"]):
    answers.setdefault((r["file_name"], r["QuestionText"].strip()), []).append(
        r["answer"].strip())
  for n, ((file_name, question), given) in enumerate(answers.items()):
    counts = collections.Counter(given)
    best = max(counts.values())
    answer = next(a for a in given if counts[a] == best)
    yield {"id": f"{file_name}-{n}", "task": "aqa",
           "audio": os.path.join(root, "audio_files", file_name), "audio_language": "unknown",
           "question": question, "answer": answer}


def meld(root: str, audio_dir: str = "", split: str = "test", **_) -> Iterator[Row]:
  if not audio_dir:
    raise ValueError("meld: --audio_dir is required (the .wav files extracted from the videos)")
  for r in _csv_rows(os.path.join(root, f"{split}_sent_emo.csv"),
                     required=["Emotion", "Dialogue_ID", "Utterance_ID"]):
    name = f"dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}"
    yield {"id": name, "task": "emotion", "audio": os.path.join(audio_dir, name + ".wav"),
           "audio_language": "en", "label": r["Emotion"].strip()}


CONVERTERS = {"librispeech": librispeech, "aishell1": aishell1, "covost2": covost2,
              "clotho": clotho, "vocalsound": vocalsound, "cochlscene": cochlscene,
              "clothoaqa": clothoaqa, "meld": meld}


def convert(dataset: str, out: str, **options) -> Dict[str, object]:
  """Writes the manifest; returns {'rows', 'missing_audio', 'first_missing'}."""
  if dataset not in CONVERTERS:
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(CONVERTERS)}")
  rows, missing = [], []
  for row in CONVERTERS[dataset](**options):
    if not row["audio"] or not os.path.isfile(row["audio"]):
      missing.append(row["id"] if not row["audio"] else row["audio"])
      continue
    manifest_lib.validate_row(row, f"{dataset} row {row['id']}")
    rows.append(row)
  if not rows:
    raise FileNotFoundError(f"{dataset}: no clip found ({len(missing)} rows name audio that "
                            f"does not exist, first: {missing[:FIRST_MISSING]})")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  return {"rows": len(rows), "missing_audio": len(missing),
          "first_missing": missing[:FIRST_MISSING]}


def main(argv: Optional[Iterable[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m qwen_audio_jax.evaluate.prepare", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=__doc__.split("\n\n", 2)[2])
  parser.add_argument("dataset", choices=sorted(CONVERTERS))
  parser.add_argument("--root", required=True, help="the dataset's folder (see below)")
  parser.add_argument("--out", required=True, help="the manifest to write (.jsonl)")
  parser.add_argument("--split", help="the split to convert (default: the evaluated one)")
  parser.add_argument("--tsv", default="", help="covost2: covost_v2.<src>_<tgt>.tsv")
  parser.add_argument("--speakers", default="", help="vocalsound: file of the split's speakers")
  parser.add_argument("--audio_dir", default="", help="meld: the extracted .wav files")
  args = parser.parse_args(list(argv) if argv is not None else None)
  options = {k: v for k, v in vars(args).items()
             if k not in ("dataset", "out") and v not in (None, "")}
  try:
    summary = convert(args.dataset, args.out, **options)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"{args.out}: {summary['rows']} rows")
  if summary["missing_audio"]:
    print(f"left out {summary['missing_audio']} rows whose audio file (or, for aishell1, "
          f"transcript) is missing, first: {summary['first_missing']}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
