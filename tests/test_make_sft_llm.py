"""make_sft's LLM path against a real OpenAI-compatible HTTP server on 127.0.0.1 (stdlib
http.server in a thread, started here; nothing leaves the machine): well-formed, malformed,
schema-breaking, wrong-answer, slow and failing responses, each counted by reason; the cache (a
second run sends nothing already answered); resumption after the command is killed mid-run."""

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from qwen_audio_jax.data import make_sft
from qwen_audio_jax.data.sft import llm as llm_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_REQUESTS = 200  # the server refuses to answer more than this (a runaway retry loop fails)


def pairs(*qa):
  return json.dumps({"pairs": [{"question": q, "answer": a} for q, a in qa]})


# Each row's transcript / caption / label selects what the server answers for it.
ROWS = [
    {"id": "good", "task": "asr", "audio": "a/good.wav", "audio_language": "en",
     "text": "the cat sat on the mat"},
    {"id": "wrong", "task": "asr", "audio": "a/wrong.wav", "audio_language": "en",
     "text": "please close the door"},
    {"id": "dog", "task": "event", "audio": "a/dog.wav", "label": "dog"},
    {"id": "siren", "task": "event", "audio": "a/siren.wav", "label": "siren"},
    {"id": "beeps", "task": "aqa", "audio": "a/beeps.wav", "question": "How many beeps are there?",
     "answer": "three", "choices": ["one", "two", "three"]},
    {"id": "malformed", "task": "caption", "audio": "a/m.wav", "text": "case malformed"},
    {"id": "schema", "task": "caption", "audio": "a/s.wav", "text": "case schema"},
    {"id": "fenced", "task": "caption", "audio": "a/f.wav", "text": "case fenced"},
    {"id": "slow", "task": "caption", "audio": "a/slow.wav", "text": "case slow"},
    {"id": "busy", "task": "caption", "audio": "a/busy.wav", "text": "case busy"},
    {"id": "failing", "task": "caption", "audio": "a/fail.wav", "text": "case failing"},
    {"id": "refused", "task": "caption", "audio": "a/refused.wav", "text": "case refused"},
]
ANSWERS = {
    "good": pairs(("What does the speaker say?", "The speaker says: the cat sat on the mat."),
                  ("How many words are spoken?", "Six words.")),
    "wrong": pairs(("What does the speaker say?", "They say \"please open the door\"."),
                   ("How many words does the speaker say?", "Five."),
                   ("Is it a request?", "Yes, a polite request."),
                   ("Is it a request?", "Yes.")),
    "dog": pairs(("What do you hear?", "A siren wailing in the distance."),
                 ("Is there an animal?", "Yes, a dog barking."),
                 ("What is the label of this clip?", "Dog.")),
    "siren": pairs(("Is that a dog?", "No, it is a siren."),),
    "beeps": pairs(("How many beeps are there?", "There are two beeps."),
                   ("Is it one, two or three beeps?", "It is one."),
                   ("Count the beeps for me.", "I count three.")),
    "malformed": "Sure! Here are some pairs: {pairs: [question: ...",
    "schema": json.dumps({"pairs": [{"q": "What is it?", "a": "A sound."}]}),
    "fenced": "```json\n" + pairs(("Describe the sound.", "A soft hum.")) + "\n```",
    "slow": pairs(("Describe it.", "Slow but sure.")),
    "busy": pairs(("Describe it.", "Busy at first.")),
    "failing": pairs(("Describe it.", "Never seen.")),
    "refused": pairs(("Describe it.", "Never seen.")),
}
TIMEOUT = 0.5


def case_of(body):
  known = json.loads(body["messages"][1]["content"].split("(JSON): ", 1)[1].split("\n", 1)[0])
  if "transcript" in known:
    return {"the cat sat on the mat": "good", "please close the door": "wrong"}[
        known["transcript"]]
  if "label" in known:
    return known["label"]
  if "question" in known:
    return "beeps"
  return known["caption"].split()[-1].rstrip(".")


class Server:
  """A chat-completions endpoint whose behaviour per case is set by the test."""

  def __init__(self, delay=0.0):
    self.lock = threading.Lock()
    self.requests = {}  # case -> attempts received
    self.healthy = False  # True: the failing cases answer too
    self.delay = delay  # seconds before every answer
    self.in_flight = self.max_in_flight = 0
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def log_message(self, *args):
        pass

      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if (self.path != "/v1/chat/completions" or body.get("model") != "test-model"
            or body.get("response_format") != {"type": "json_object"}
            or self.headers.get("Authorization") != "Bearer secret-key"):
          return self.reply(401, "")  # counted nowhere: the test's counts then fail
        case = case_of(body)
        with server.lock:
          server.in_flight += 1
          server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
          self.answer(case)
        finally:
          with server.lock:
            server.in_flight -= 1

      def answer(self, case):
        with server.lock:
          server.requests[case] = attempt = server.requests.get(case, 0) + 1
          total = sum(server.requests.values())
        status = 200
        content = ANSWERS.get(case) or pairs(("Describe it.", f"The answer for {case}."))
        if total > MAX_REQUESTS:
          status = 503
        elif case == "slow" and attempt == 1:
          time.sleep(3 * TIMEOUT)  # the client gives up first; its retry is answered at once
        elif case == "busy" and attempt == 1:
          status = 429
        elif case == "failing" and not server.healthy:
          status = 500
        elif case == "refused" and not server.healthy:
          status = 400
        time.sleep(server.delay)
        self.reply(status, content)

      def reply(self, status, content):
        if status == 200:
          payload = {"id": "x", "object": "chat.completion", "created": 0, "model": "test-model",
                     "choices": [{"index": 0, "finish_reason": "stop", "message": {
                         "role": "assistant", "content": content}}]}
        else:
          payload = {"error": {"message": f"status {status}", "type": "test"}}
        data = json.dumps(payload).encode()
        try:
          self.send_response(status)
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(data)))
          self.end_headers()
          self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
          pass  # the client timed out and left

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
    self.thread.start()

  def total(self):
    with self.lock:
      return sum(self.requests.values())

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def server():
  s = Server()
  yield s
  s.close()


def llm_config(url, **overrides):
  return llm_lib.LLMConfig(**dict(dict(
      base_url=url, model="test-model", api_key="secret-key", pairs=3, timeout=TIMEOUT,
      retries=2, backoff=0.01, backoff_max=0.05), **overrides))


def write_manifest(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_every_kind_of_response_is_counted(server, tmp_path):
  manifest = write_manifest(tmp_path / "in.jsonl", ROWS)
  out = tmp_path / "chat.jsonl"
  options = make_sft.Options(manifests=[manifest], out=str(out), builtin_templates=False,
                             llm=llm_config(server.url), concurrency=4)
  report = make_sft.run(options)

  rejected = report["rejected"]
  assert rejected["responses"] == {"invalid_json": 1, "schema": 1}
  assert rejected["pairs"] == {"wrong_transcript": 1, "wrong_count": 2, "duplicate_question": 1,
                               "wrong_label": 1, "mentions_metadata": 1, "wrong_answer": 1}
  assert rejected["requests_failed"] == {"http_500": 1, "http_400": 1}
  llm = report["llm"]
  # Attempts: one per case, one retry each for the slow and the 429 case, and all of the
  # retries of the failing one; a 400 is not retried.
  assert llm["attempt_errors"] == {"timeout": 1, "http_429": 1, "http_500": 3, "http_400": 1}
  assert llm["retries"] == 1 + 1 + 2
  assert llm["requests_sent"] == server.total() == len(ROWS) + 4
  assert server.requests["slow"] == 2 and server.requests["busy"] == 2
  assert server.requests["failing"] == 3 and server.requests["refused"] == 1
  assert llm["rows"] == len(ROWS) and llm["cache_hits"] == 0
  assert llm["pairs_generated"] == 2 + 4 + 3 + 1 + 3 + 1 + 1 + 1
  assert llm["pairs_accepted"] == llm["pairs_generated"] - sum(rejected["pairs"].values())

  # The accepted pairs, as dialogues with the clip in the first turn and provenance.
  rows = {r["id"]: r for r in read_jsonl(out)}
  assert set(rows) == {f"{i}/llm" for i in ("good", "wrong", "dog", "siren", "beeps", "fenced",
                                            "slow", "busy")}
  turns = lambda r: [(m["content"] if isinstance(m["content"], str) else m["content"][-1]["text"])
                     for m in r["messages"]]
  assert turns(rows["good/llm"]) == [
      "What does the speaker say?", "The speaker says: the cat sat on the mat.",
      "How many words are spoken?", "Six words."]
  assert turns(rows["wrong/llm"]) == ["Is it a request?", "Yes, a polite request."]
  assert turns(rows["dog/llm"]) == ["Is there an animal?", "Yes, a dog barking."]
  assert turns(rows["siren/llm"]) == ["Is that a dog?", "No, it is a siren."]
  assert turns(rows["beeps/llm"]) == ["Count the beeps for me.", "I count three."]
  assert turns(rows["fenced/llm"]) == ["Describe the sound.", "A soft hum."]
  good = rows["good/llm"]
  assert good["messages"][0]["content"][0] == {"audio": os.path.join("a", "good.wav")}
  assert good["provenance"] == {"sources": [{"id": "good", "manifest": manifest, "line": 1,
                                             "task": "asr"}],
                                "generator": "llm", "model": "test-model", "seed": 0}
  assert report["dialogues_out"]["by_family"] == {"asr": {"llm": 2}, "event": {"llm": 2},
                                                  "aqa": {"llm": 1}, "caption": {"llm": 3}}

  # Second run: everything answered comes from the cache; only the failed requests go out.
  before = dict(server.requests)
  again = make_sft.run(options)
  sent = {k: v - before.get(k, 0) for k, v in server.requests.items() if v != before.get(k, 0)}
  assert sent == {"failing": 3, "refused": 1}
  assert again["llm"]["cache_hits"] == len(ROWS) - 2
  assert again["dialogues_out"]["written_this_run"] == 0
  assert again["dialogues_out"]["already_present"] == len(rows)
  assert again["rejected"]["pairs"] == rejected["pairs"]  # counted again, from the cache

  # The endpoint recovers: the two missing requests are sent and their dialogues appended; a
  # further run sends nothing at all.
  server.healthy = True
  third = make_sft.run(options)
  assert third["llm"]["requests_sent"] == 2 and third["rejected"]["requests_failed"] == {}
  assert third["dialogues_out"]["written_this_run"] == 2
  fourth = make_sft.run(options)
  assert fourth["llm"]["requests_sent"] == 0 and fourth["llm"]["cache_hits"] == len(ROWS)
  assert len(read_jsonl(out)) == len(rows) + 2 == fourth["dialogues_out"]["total"]


def test_concurrent_requests_are_bounded_and_written_in_input_order(tmp_path):
  server = Server(delay=0.2)
  try:
    rows = [{"id": f"c{i}", "task": "caption", "audio": f"a/c{i}.wav", "text": f"case c{i}"}
            for i in range(10)]
    out = tmp_path / "o.jsonl"
    report = make_sft.run(make_sft.Options(
        manifests=[write_manifest(tmp_path / "in.jsonl", rows)], out=str(out),
        builtin_templates=False, llm=llm_config(server.url, timeout=5.0), concurrency=4))
    assert report["llm"]["requests_sent"] == 10
    assert server.max_in_flight == 4
    assert [r["id"] for r in read_jsonl(out)] == [f"c{i}/llm" for i in range(10)]
  finally:
    server.close()


def test_rate_limit_spaces_the_requests(server, tmp_path):
  manifest = write_manifest(tmp_path / "in.jsonl", ROWS[:3])
  options = make_sft.Options(manifests=[manifest], out=str(tmp_path / "o.jsonl"),
                             builtin_templates=False, llm=llm_config(server.url, rate=10.0),
                             concurrency=3)
  start = time.monotonic()
  report = make_sft.run(options)
  assert report["llm"]["requests_sent"] == 3
  assert time.monotonic() - start >= 0.2  # three starts at 10 / s: at least 2 intervals


def test_a_killed_run_resumes_with_nothing_lost(tmp_path):
  """The command runs in a subprocess that is killed (SIGKILL) after a few dialogues; the same
  command again completes the file exactly as an uninterrupted run writes it, asking only what
  the killed run had not got answered."""
  server = Server(delay=0.1)
  try:
    rows = [{"id": f"r{i}", "task": "caption", "audio": f"a/r{i}.wav",
             "text": f"case resume{i}"} for i in range(16)]
    manifest = write_manifest(tmp_path / "in.jsonl", rows)
    args = ["--manifest", manifest, "--no_builtin_templates", "--llm", "--llm_base_url",
            server.url, "--llm_model", "test-model", "--llm_api_key_env", "TEST_LLM_KEY",
            "--llm_concurrency", "2", "--llm_timeout", "10"]
    os.environ["TEST_LLM_KEY"] = "secret-key"
    straight = tmp_path / "straight.jsonl"
    assert make_sft.main(args + ["--out", str(straight)]) == 0
    assert server.total() == len(rows)

    out = tmp_path / "chat.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "qwen_audio_jax.data.make_sft"] + args
                               + ["--out", str(out)], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=REPO))
    deadline = time.time() + 120
    while not (out.exists() and len(out.read_text().splitlines()) >= 3):
      assert process.poll() is None, process.stderr.read().decode()
      assert time.time() < deadline
      time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    written = len(read_jsonl(out))
    answered = len(read_jsonl(str(out) + ".llm_cache.jsonl"))
    assert 3 <= written < len(rows) and written <= answered < len(rows)

    before = server.total()
    assert make_sft.main(args + ["--out", str(out)]) == 0
    assert server.total() - before == len(rows) - answered  # nothing answered is asked again
    assert out.read_bytes() == straight.read_bytes()  # nothing lost, nothing twice, same order
    report = json.loads((tmp_path / "chat.jsonl.report.json").read_text())
    assert report["dialogues_out"]["already_present"] == written
    assert report["llm"]["cache_hits"] == answered
  finally:
    os.environ.pop("TEST_LLM_KEY", None)
    server.close()


@pytest.mark.parametrize("question, answer, reason", [
    ("What does the speaker say?", "The cat sat on the mat.", None),
    ("What does the speaker say?", "The cat sat on a mat.", "wrong_transcript"),
    ("Could you transcribe it?", "Sure: the cat sat on the mat", None),
    ("Who is speaking?", "Someone saying \"the cat sat\".", None),
    ("Who is speaking?", "Someone saying \"the dog sat\".", "wrong_transcript"),
    ("How many words are there?", "There are 6 words.", None),
    ("How many words are there?", "There are seven words.", "wrong_count"),
    ("How many people speak?", "One person.", None),  # nothing known to check against
    ("Is the answer in the transcript provided?", "Yes.", "mentions_metadata"),
    ("What is it?", "The metadata says a cat.", "mentions_metadata"),
])
def test_transcript_and_count_checks(question, answer, reason):
  facts = {"family": "asr", "transcript": "the cat sat on the mat", "n_words": 6}
  assert llm_lib.check_pair(question, answer, facts, [], []) == reason


@pytest.mark.parametrize("question, answer, reason", [
    ("What do you hear?", "Thunder and rain.", None),
    ("What do you hear?", "Rain and a dog.", "wrong_label"),
    ("Is there a dog?", "No dog, just rain.", None),  # the question brought the dog up
    ("How many different sound events are there?", "Two.", None),
    ("How many different sound events are there?", "Three of them.", "wrong_count"),
])
def test_label_checks(question, answer, reason):
  facts = {"family": "event", "labels": "rain and thunder", "n_labels": 2}
  assert llm_lib.check_pair(question, answer, facts, ["rain", "thunder"],
                            ["dog", "rain", "siren", "thunder"]) == reason


@pytest.mark.parametrize("text, reason, n", [
    ('{"pairs": [{"question": "What is it?", "answer": "A hum."}]}', None, 1),
    ('```\n{"pairs": [{"question": "What is it?", "answer": "A hum."}]}\n```', None, 1),
    ('{"pairs": []}', "schema", 0),
    ('{"pairs": [{"question": "What is it?", "answer": ""}]}', "schema", 0),
    ('{"pairs": [{"question": "What?", "answer": "A", "note": 1}]}', "schema", 0),
    ('{"pairs": [{"question": 3, "answer": "A"}]}', "schema", 0),
    ('[1, 2]', "schema", 0),
    ('{"pairs": [', "invalid_json", 0),
    ('', "empty_response", 0),
    (None, "empty_response", 0),
])
def test_response_validation(text, reason, n):
  pairs_, why = llm_lib.parse_response(text)
  assert why == reason and len(pairs_) == n


def test_cache_survives_a_torn_last_line(tmp_path):
  path = tmp_path / "cache.jsonl"
  cache = llm_lib.ResponseCache(str(path))
  cache.put("a", "answer a")
  cache.close()
  with open(path, "a") as f:
    f.write('{"key": "b", "resp')  # killed mid-write
  cache = llm_lib.ResponseCache(str(path))
  assert cache.get("a") == (True, "answer a") and cache.get("b") == (False, None)
  cache.put("b", None)
  cache.close()
  assert llm_lib.ResponseCache(str(path)).get("b") == (True, None) and len(
      path.read_text().splitlines()) == 2
