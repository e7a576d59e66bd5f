"""Question/answer dialogues written by an LLM from a clip's labels and text, as the paper made
most of Qwen-Audio-Chat's instruction data (with GPT-3.5).

The endpoint is any OpenAI-compatible chat-completions server (a local vLLM or a hosted one),
reached through the `openai` client (`pip install 'qwen_audio_jax[sft]'`). Per clip one request
asks for question/answer pairs as JSON. What comes back is

  1. parsed and validated against `RESPONSE_SCHEMA` (jsonschema): a response that is not JSON
     ('invalid_json') or does not follow the schema ('schema') is rejected whole;
  2. checked pair by pair against what the row knows (`check_pair`): counts, labels, the
     transcript's words, the multiple-choice answer; a failing pair is rejected by reason.

Transport: a request timeout, retries with exponential backoff on timeouts, connection errors,
429 and 5xx (other 4xx are not retried), a shared rate limit and a thread pool (the caller's).
Answered requests, malformed ones included, are appended to an on-disk cache keyed by the exact
request, so a re-run sends nothing already answered; failed requests are not cached and are sent
again by the next run.
"""

import dataclasses
import hashlib
import json
import os
import re
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from qwen_audio_jax.data.sft import facts as facts_lib

RESPONSE_SCHEMA = {
    "type": "object",
    "required": ["pairs"],
    "properties": {
        "pairs": {
            "type": "array", "minItems": 1, "maxItems": 16,
            "items": {
                "type": "object",
                "required": ["question", "answer"],
                "properties": {"question": {"type": "string", "minLength": 3, "maxLength": 1000},
                               "answer": {"type": "string", "minLength": 1, "maxLength": 2000}},
                "additionalProperties": False,
            },
        },
    },
}
# Why a whole response is rejected, and why a pair of an accepted response is.
RESPONSE_REJECTIONS = ("invalid_json", "schema", "empty_response")
PAIR_REJECTIONS = ("mentions_metadata", "duplicate_question", "wrong_count", "wrong_label",
                   "wrong_answer", "wrong_transcript")
FAMILY_WORDS = {
    "asr": "speech (transcribed)", "srwt": "speech with word times",
    "translation": "speech (its translation is known)", "caption": "a sound (captioned)",
    "music_description": "music (described)", "aqa": "a sound with a question answered about it",
    "event": "sound events (labelled)", "scene": "an acoustic scene (labelled)",
    "emotion": "emotional speech (labelled)", "vocal_sound": "a vocal sound (labelled)",
    "speaker_meta": "speech (speaker attributes known)", "song_meta": "a song (metadata known)",
    "slu": "a spoken request (intent known)", "ner": "speech (named entities known)",
    "note_analysis": "a played musical note"}
SYSTEM_PROMPT = (
    "You write training data for an assistant that listens to audio clips. You are told what is "
    "known about one clip. Write {n} different questions a user could ask about the clip, each "
    "with the assistant's answer. Every answer must follow from what is known, and speak as if "
    "listening to the audio: never mention labels, captions, transcripts given to you, metadata "
    "or JSON. Vary the questions (content, details, counts, yes/no, reasoning). Reply with JSON "
    "only, in this form: {{\"pairs\": [{{\"question\": \"...\", \"answer\": \"...\"}}]}}")
_PROMPT_FACTS_SKIPPED = ("family", "absent_label")
_METADATA = re.compile(r"\b(labels?|labell?ed|metadata|json|annotations?|ground truth|"
                       r"(given|provided) (transcript|caption|text|facts|information)|"
                       r"(transcript|caption|text|facts|information) (given|provided))\b", re.I)
_SAYS = re.compile(r"\b(what (is|was|does|did|do) [\w\s]*?(say|said|saying|spoken|speak)|"
                   r"transcri\w*|repeat\w*|exact words|word for word)\b", re.I)
_QUOTED = re.compile(r"[\"“]([^\"”]+)[\"”]")
_HOW_MANY = re.compile(r"\bhow many ((?:[a-z']+\s*){1,3})", re.I)


@dataclasses.dataclass(frozen=True)
class LLMConfig:
  """Where and how requests go (the command-line flags `--llm_*`)."""
  base_url: str
  model: str
  api_key: str = "EMPTY"  # read from the environment by the caller
  pairs: int = 3  # question/answer pairs asked per clip
  temperature: float = 0.7
  max_tokens: int = 1024
  json_mode: bool = True  # response_format={'type': 'json_object'}
  timeout: float = 60.0  # seconds per request
  retries: int = 4  # further attempts after the first
  backoff: float = 1.0  # seconds before the first retry, doubled every retry
  backoff_max: float = 30.0
  rate: float = 0.0  # requests started per second, over all threads (0 = no limit)


def prompt_messages(row_facts: Mapping[str, Any], n_pairs: int) -> List[Dict[str, str]]:
  """The chat-completions messages for one clip: its kind, its labels and text as JSON."""
  known = {k: v for k, v in row_facts.items() if k not in _PROMPT_FACTS_SKIPPED}
  user = (f"The clip: {FAMILY_WORDS.get(row_facts['family'], row_facts['family'])}.\n"
          f"Known about it (JSON): {json.dumps(known, ensure_ascii=False, sort_keys=True)}\n"
          f"Write {n_pairs} question/answer pairs as JSON.")
  return [{"role": "system", "content": SYSTEM_PROMPT.format(n=n_pairs)},
          {"role": "user", "content": user}]


def request_body(config: LLMConfig, messages: Sequence[Mapping[str, str]]) -> Dict[str, Any]:
  body: Dict[str, Any] = {"model": config.model, "messages": list(messages),
                          "temperature": config.temperature, "max_tokens": config.max_tokens}
  if config.json_mode:
    body["response_format"] = {"type": "json_object"}
  return body


def request_key(body: Mapping[str, Any]) -> str:
  """The cache key: a hash of everything that decides the answer."""
  return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()
                        ).hexdigest()


# ------------------------------------------------------------------------------ validation


def parse_response(text: Optional[str]) -> Tuple[List[Dict[str, str]], Optional[str]]:
  """(pairs, None) for a valid response, ([], reason) otherwise. A ```json fence is allowed."""
  import jsonschema  # pylint: disable=g-import-not-at-top
  if text is None or not text.strip():
    return [], "empty_response"
  body = text.strip()
  fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.S)
  if fenced:
    body = fenced.group(1)
  try:
    obj = json.loads(body)
  except json.JSONDecodeError:
    return [], "invalid_json"
  try:
    jsonschema.validate(obj, RESPONSE_SCHEMA)
  except jsonschema.ValidationError:
    return [], "schema"
  return [{"question": p["question"].strip(), "answer": p["answer"].strip()}
          for p in obj["pairs"]], None


def _mentions(text: str, phrase: str) -> bool:
  return re.search(r"(?<![\w])" + re.escape(phrase.lower()) + r"(?![\w])", text.lower()) is not None


def _contains_run(words: Sequence[str], run: Sequence[str]) -> bool:
  n = len(run)
  return n > 0 and any(list(words[i:i + n]) == list(run) for i in range(len(words) - n + 1))


def _numbers(text: str) -> List[int]:
  out = []
  for token in re.findall(r"[\w']+", text.lower()):
    number = facts_lib.parse_number(token)
    if number is not None:
      out.append(number)
  return out


def _expected_count(question: str, row_facts: Mapping[str, Any]) -> Optional[int]:
  """The count a 'how many ...' question asks for, when the row knows it."""
  match = _HOW_MANY.search(question)
  if not match:
    return None
  counted = row_facts.get("count_noun", "").split()
  for word in match.group(1).lower().split():  # 'how many (different) (sound) events'
    noun = word.rstrip("s")
    if noun == "word" and "n_words" in row_facts:
      return int(row_facts["n_words"])
    if counted and counted[0].rstrip("s") == noun:
      return int(row_facts["count"])
    if noun in ("entitie", "entity", "name") and "n_entities" in row_facts:
      return int(row_facts["n_entities"])
    if noun in ("label", "event", "sound") and "n_labels" in row_facts:
      return int(row_facts["n_labels"])
  return None


def check_pair(question: str, answer: str, row_facts: Mapping[str, Any],
               row_labels: Sequence[str], label_pool: Sequence[str],
               choices: Sequence[str] = (), aqa_answer: Optional[str] = None) -> Optional[str]:
  """Why a generated pair contradicts the row (a PAIR_REJECTIONS reason), or None.

  Checked where the row allows it: a 'how many' question against the count the row knows; the
  labels an answer names against the row's (a label of the family that the row lacks and the
  question did not bring up); the multiple-choice option an answer picks; quoted speech and
  answers to 'what is said' against the transcript's words.
  """
  if _METADATA.search(question) or _METADATA.search(answer):
    return "mentions_metadata"
  expected = _expected_count(question, row_facts)
  if expected is not None and expected not in _numbers(answer):
    return "wrong_count"
  foreign = [l for l in label_pool if l not in row_labels and _mentions(answer, l)
             and not _mentions(question, l)]
  if foreign:
    return "wrong_label"
  if choices and aqa_answer is not None:
    picked = {c for c in choices if _mentions(answer, c)}
    if picked and picked != {aqa_answer}:
      return "wrong_answer"
  if "transcript" in row_facts:
    transcript = facts_lib.words_of(row_facts["transcript"])
    for quoted in _QUOTED.findall(answer):
      if not _contains_run(transcript, facts_lib.words_of(quoted)):
        return "wrong_transcript"
    if _SAYS.search(question) and not _contains_run(facts_lib.words_of(answer), transcript):
      return "wrong_transcript"
  return None


# ------------------------------------------------------------------------------ cache


class ResponseCache:
  """Answered requests on disk: one JSON line per request (key, response text), appended and
  flushed as each answer arrives, so an interrupted run keeps every answer it got. A torn last
  line (a run killed mid-write) is ignored when reading."""

  def __init__(self, path: str):
    self.path = path
    self._entries: Dict[str, Optional[str]] = {}
    self._lock = threading.Lock()
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        for line in f:
          try:
            entry = json.loads(line)
            self._entries[entry["key"]] = entry["response"]
          except (json.JSONDecodeError, KeyError, TypeError):
            continue
      self._repair()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._file = open(path, "a", encoding="utf-8")

  def _repair(self) -> None:
    """Cuts a torn last line so that appended entries start on a line of their own."""
    with open(self.path, "rb+") as f:
      data = f.read()
      if data and not data.endswith(b"\n"):
        f.truncate(data.rfind(b"\n") + 1)

  def __len__(self) -> int:
    return len(self._entries)

  def get(self, key: str) -> Tuple[bool, Optional[str]]:
    with self._lock:
      return (key in self._entries), self._entries.get(key)

  def put(self, key: str, response: Optional[str]) -> None:
    with self._lock:
      self._entries[key] = response
      self._file.write(json.dumps({"key": key, "response": response}, ensure_ascii=False) + "\n")
      self._file.flush()
      os.fsync(self._file.fileno())

  def close(self) -> None:
    self._file.close()


# ------------------------------------------------------------------------------ transport


class RequestFailed(Exception):
  """A request that got no answer after its retries; `reason` names why ('timeout', ...)."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason


class RateLimiter:
  """At most `rate` request starts per second over all threads (0: no limit)."""

  def __init__(self, rate: float):
    self.interval = 1.0 / rate if rate > 0 else 0.0
    self._next = 0.0
    self._lock = threading.Lock()

  def wait(self) -> None:
    if not self.interval:
      return
    with self._lock:
      now = time.monotonic()
      start = max(now, self._next)
      self._next = start + self.interval
    if start > now:
      time.sleep(start - now)


@dataclasses.dataclass
class TransportStats:
  requests_sent: int = 0  # HTTP attempts, retries included
  retries: int = 0
  cache_hits: int = 0
  errors: Dict[str, int] = dataclasses.field(default_factory=dict)  # per attempt, by reason


class ChatClient:
  """chat.completions through the `openai` client, with our retries, backoff and rate limit
  (the library's own retries are off so that every attempt is counted)."""

  def __init__(self, config: LLMConfig, cache: ResponseCache, sleep=time.sleep):
    try:
      import openai  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ImportError("LLM generation needs the openai package: "
                        "pip install 'qwen_audio_jax[sft]'") from None
    self._openai = openai
    self.config = config
    self.cache = cache
    self.client = openai.OpenAI(base_url=config.base_url, api_key=config.api_key,
                                timeout=config.timeout, max_retries=0)
    self.limiter = RateLimiter(config.rate)
    self.stats = TransportStats()
    self._lock = threading.Lock()
    self._sleep = sleep

  def _count(self, **deltas) -> None:
    with self._lock:
      for name, value in deltas.items():
        setattr(self.stats, name, getattr(self.stats, name) + value)

  def _error(self, reason: str) -> None:
    with self._lock:
      self.stats.errors[reason] = self.stats.errors.get(reason, 0) + 1

  def _classify(self, error: Exception) -> Tuple[str, bool, Optional[float]]:
    """(reason, retryable, Retry-After seconds) of a failed attempt."""
    openai = self._openai
    if isinstance(error, openai.APITimeoutError):
      return "timeout", True, None
    if isinstance(error, openai.APIConnectionError):
      return "connection", True, None
    if isinstance(error, openai.APIStatusError):
      status = error.status_code
      retry_after = None
      try:
        retry_after = float(error.response.headers.get("retry-after"))
      except (TypeError, ValueError):
        pass
      return f"http_{status}", status == 429 or status >= 500, retry_after
    if isinstance(error, openai.APIResponseValidationError):
      return "bad_response", False, None
    raise error

  def complete(self, body: Mapping[str, Any]) -> Optional[str]:
    """The response text for `body` (from the cache when answered before); RequestFailed."""
    key = request_key(body)
    hit, cached = self.cache.get(key)
    if hit:
      self._count(cache_hits=1)
      return cached
    attempt = 0
    while True:
      self.limiter.wait()
      self._count(requests_sent=1)
      try:
        response = self.client.chat.completions.create(**body)
      except self._openai.OpenAIError as e:
        reason, retryable, retry_after = self._classify(e)
        self._error(reason)
        if not retryable or attempt >= self.config.retries:
          raise RequestFailed(reason, str(e)[:200]) from None
        delay = min(self.config.backoff_max, self.config.backoff * 2 ** attempt)
        if retry_after is not None:
          delay = min(self.config.backoff_max, max(delay, retry_after))
        self._count(retries=1)
        self._sleep(delay)
        attempt += 1
        continue
      text = response.choices[0].message.content if response.choices else None
      self.cache.put(key, text)
      return text
