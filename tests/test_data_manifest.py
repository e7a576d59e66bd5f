"""JSONL manifests: validation with file:line errors, path resolution, record round trip."""

import json

import pytest

from qwen_audio_jax.data import manifest as manifest_lib
from qwen_audio_jax.data import records

ASR = {"id": "a1", "task": "asr", "audio": "clips/a1.wav", "audio_language": "en",
       "text": "hello world", "text_language": "en", "itn": False}
CHAT = {"id": "c1", "task": "chat", "messages": [
    {"role": "user", "content": [{"audio": "x.wav", "start": 0.5, "end": 1.5},
                                 {"text": "What is said?"}]},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": [{"audio": "/abs/y.flac"}, {"text": "And here?"}]},
    {"role": "assistant", "content": "Bye."}]}


def write_lines(path, lines):
  path.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
  return str(path)


@pytest.mark.parametrize("line, message", [
    ("{not json", r"m.jsonl:2: invalid JSON"),
    ([1, 2], r"m.jsonl:2: a row must be a JSON object, got list"),
    ({"audio": "a.wav", "text": "x"}, r"m.jsonl:2: field 'task' is missing"),
    (dict(ASR, task="dance"), r"m.jsonl:2: field 'task' is 'dance', expected one of"),
    ({k: v for k, v in ASR.items() if k != "audio"}, r"m.jsonl:2: field 'audio'"),
    (dict(ASR, start=-1), r"m.jsonl:2: field 'start' must be >= 0"),
    (dict(ASR, start=2.0, end=1.0), r"m.jsonl:2: field 'end' \(1.0\) must be greater"),
    (dict(ASR, end="3s"), r"m.jsonl:2: field 'end' must be a finite number"),
    (dict(ASR, audio_language=5), r"m.jsonl:2: field 'audio_language' must be a str"),
    ({"task": "chat", "messages": []}, r"m.jsonl:2: a 'chat' row needs a non-empty list"),
    ({"task": "chat", "messages": [{"role": "bot", "content": "x"}]},
     r"m.jsonl:2: messages\[0\].role must be"),
    ({"task": "chat", "messages": [{"role": "user", "content": [{"audio": 3}]}]},
     r"m.jsonl:2: messages\[0\].content\[0\].audio must be a non-empty path"),
    # The dialogue rules of the chat format are checked on load too.
    ({"task": "chat", "messages": CHAT["messages"][:1]},
     r"m.jsonl:2: field 'messages': a training dialogue must end with an assistant turn"),
    ({"task": "chat", "messages": [CHAT["messages"][0],
                                   {"role": "assistant", "content": [{"audio": "z.wav"}]}]},
     r"m.jsonl:2: field 'messages'\[1\]: only user messages may hold audio"),
])
def test_strict_errors_name_file_line_and_field(tmp_path, line, message):
  path = write_lines(tmp_path / "m.jsonl", [ASR, line])
  with pytest.raises(manifest_lib.ManifestError, match=message):
    manifest_lib.read_manifest(path, strict=True)


def test_task_fields_are_validated_by_the_task(tmp_path):
  bad = {k: v for k, v in ASR.items() if k != "text"}
  path = write_lines(tmp_path / "m.jsonl", [ASR, bad])
  with pytest.raises(manifest_lib.ManifestError, match=r"m.jsonl:2: .*text"):
    manifest_lib.read_manifest(path, strict=True)


def test_bad_rows_are_collected_with_their_line_and_good_rows_kept(tmp_path):
  path = write_lines(tmp_path / "m.jsonl", [ASR, "", "{oops", dict(ASR, id="a2"),
                                            {"task": "caption", "audio": "a.wav"}, CHAT])
  scanned = manifest_lib.read_manifest(path)
  assert [int(n) for n in scanned.line_numbers] == [1, 4, 6]
  assert scanned.tasks == ["asr", "asr", "chat"]
  assert [r.origin for r in scanned.rejections] == [f"{path}:3", f"{path}:5"]
  assert {r.reason for r in scanned.rejections} == {"malformed"}
  assert scanned.total_rows == 5  # the blank line is not a row
  only_asr = manifest_lib.read_manifest(path, tasks=["asr"])
  assert len(only_asr) == 2 and only_asr.total_rows == 3  # the bad JSON line counts everywhere


def test_paths_resolve_relative_to_the_manifest(tmp_path):
  (tmp_path / "sub").mkdir()
  path = write_lines(tmp_path / "sub" / "m.jsonl",
                     [ASR, dict(ASR, audio="/data/abs.wav"), dict(ASR, audio="gs://b/k.wav"),
                      CHAT])
  rows = [row for _, row in manifest_lib.iter_rows(path)]
  assert rows[0]["audio"] == str(tmp_path / "sub" / "clips" / "a1.wav")
  assert rows[1]["audio"] == "/data/abs.wav"
  assert rows[2]["audio"] == "gs://b/k.wav"
  refs = manifest_lib.clip_refs(rows[3])
  assert refs == [manifest_lib.ClipRef(str(tmp_path / "sub" / "x.wav"), 0.5, 1.5),
                  manifest_lib.ClipRef("/abs/y.flac", None, None)]
  assert rows[3]["messages"][1] == CHAT["messages"][1]  # text content untouched


def test_record_round_trip_and_damage_is_reported():
  blobs = {"a.wav": b"RIFF1234", "b.flac": b"\x00" * 5}
  row, got, origin = records.decode_record(records.encode_record(CHAT, blobs, "m.jsonl:3"))
  assert row == CHAT and got == blobs and origin == "m.jsonl:3"
  data = records.encode_record(ASR, blobs)
  with pytest.raises(records.RecordError, match="truncated inside the audio of 'b.flac'"):
    records.decode_record(data[:-1])
  with pytest.raises(records.RecordError, match="not a qwen_audio_jax record"):
    records.decode_record(b"RIFF" + data[4:])
  with pytest.raises(records.RecordError, match="trailing bytes"):
    records.decode_record(data + b"x")
