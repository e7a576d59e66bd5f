"""Command line: multi-turn Qwen-Audio-Chat in the terminal.

    python -m qwen_audio_jax.chat --checkpoint CKPT

Type a message and press enter. `/audio PATH` attaches a clip to your next message (several may
be attached), `/reset` forgets the conversation, `/exit` (or end of input) quits. Answers stream
as they are generated. The context is built as Qwen-Audio-Chat's `make_context` builds it
(ChatML, `text.chat`), and history turns are dropped, oldest first, once the context would
reach `max_window_size` tokens (6144 in the release's chat generation config).
"""

import argparse
import dataclasses
import os
import sys
from typing import Callable, List, Optional, Sequence, TextIO, Tuple

import numpy as np

from qwen_audio_jax.text import chat as chat_lib

HELP = "commands: /audio PATH (attach a clip to the next message), /reset, /exit"


@dataclasses.dataclass
class Turn:
  """One user message (its clips first, then its text, as `from_list_format` lists them) and
  the answer."""
  clips: List[Tuple[str, np.ndarray]]
  text: str
  answer: Optional[str] = None

  def user_content(self):
    return [{"audio": path} for path, _ in self.clips] + [{"text": self.text}]


def messages_of(system: str, turns: Sequence[Turn]):
  """The dialogue of `turns` (the last one unanswered) as `text.chat` messages."""
  messages = [{"role": "system", "content": system}]
  for turn in turns:
    messages.append({"role": "user", "content": turn.user_content()})
    if turn.answer is not None:
      messages.append({"role": "assistant", "content": turn.answer})
  return messages


def _waves(turns: Sequence[Turn]) -> List[np.ndarray]:
  return [wave for turn in turns for _, wave in turn.clips]


def prompt_ids(system: str, turns: Sequence[Turn], tokenizer) -> np.ndarray:
  """Ids of the chat prompt for answering the last of `turns`."""
  encoded = chat_lib.encode_chat_prompt(messages_of(system, turns), tokenizer,
                                        [w.shape[0] for w in _waves(turns)])
  return np.asarray(encoded.input_ids)


def fit_history(system: str, history: Sequence[Turn], query: Turn, tokenizer,
                max_window_size: Optional[int]) -> List[Turn]:
  """The newest history turns that `make_context` keeps: going back from the newest, a turn is
  kept while system + kept turns (the current query not counted) stay under max_window_size
  tokens; the first turn that does not fit ends the search."""
  if max_window_size is None:
    return list(history)
  alone = prompt_ids(system, [query], tokenizer)
  system_length = int(np.argmax(alone == tokenizer.im_end_id)) + 1
  query_length = len(alone) - system_length
  kept: List[Turn] = []
  for turn in reversed(history):
    candidate = [turn] + kept
    if len(prompt_ids(system, candidate + [query], tokenizer)) - query_length < max_window_size:
      kept = candidate
    else:
      break
  return kept


class ChatSession:
  """A conversation with a `Generator`: history, attached clips, answers."""

  def __init__(self, generator, generation_config, system: str = chat_lib.DEFAULT_SYSTEM,
               load_audio: Optional[Callable[[str], np.ndarray]] = None):
    from qwen_audio_jax.audio import io as audio_io  # pylint: disable=g-import-not-at-top
    self.generator = generator
    self.config = generation_config
    self.system = system
    self.history: List[Turn] = []
    self.pending: List[Tuple[str, np.ndarray]] = []
    self._load = load_audio or audio_io.load_audio

  def attach(self, path: str) -> None:
    """Reads a clip now (errors name the file) for the next message."""
    self.pending.append((path, self._load(path)))

  def reset(self) -> None:
    self.history, self.pending = [], []

  def context(self, text: str) -> Tuple[List[Turn], Turn]:
    """(history kept within the window, the new turn) for a message."""
    query = Turn(list(self.pending), text)
    return fit_history(self.system, self.history, query, self.generator.tokenizer,
                       self.config.max_window_size), query

  def send(self, text: str, on_text: Optional[Callable[[str], None]] = None) -> str:
    """Answers `text` (with the attached clips); `on_text` gets the answer piece by piece."""
    from qwen_audio_jax.generate import Request  # pylint: disable=g-import-not-at-top
    kept, query = self.context(text)
    turns = kept + [query]
    request = Request(messages=messages_of(self.system, turns), audio=_waves(turns))
    tokenizer = self.generator.tokenizer
    streamed: List[int] = []
    shown = [""]

    def on_token(_, token):
      streamed.append(token)
      text_so_far = chat_lib.response_text(streamed, tokenizer)
      if on_text is not None and not text_so_far.endswith("\ufffd") and text_so_far.startswith(
          shown[0]):
        on_text(text_so_far[len(shown[0]):])
        shown[0] = text_so_far

    [result] = self.generator.generate([request], self.config,
                                       on_token=on_token if on_text else None)
    answer = chat_lib.response_text(result.tokens, tokenizer)
    if on_text is not None and answer.startswith(shown[0]) and answer != shown[0]:
      on_text(answer[len(shown[0]):])
    query.answer = answer
    self.history = turns
    self.pending = []
    return answer


def repl(session: ChatSession, stdin: TextIO, stdout: TextIO) -> None:
  """The terminal loop: commands and messages from stdin, answers streamed to stdout."""
  from qwen_audio_jax.audio.io import AudioError  # pylint: disable=g-import-not-at-top
  print(HELP, file=stdout)
  while True:
    stdout.write("User> ")
    stdout.flush()
    line = stdin.readline()
    if not line:
      break
    line = line.strip()
    if not line:
      continue
    if line in ("/exit", "/quit"):
      break
    if line == "/reset":
      session.reset()
      print("(conversation cleared)", file=stdout)
      continue
    if line.startswith("/audio"):
      path = line[len("/audio"):].strip()
      if not path:
        print("usage: /audio PATH", file=stdout)
        continue
      try:
        session.attach(path)
      except (AudioError, OSError) as e:
        print(f"error: {e}", file=stdout)
        continue
      print(f"(attached {path}: {len(session.pending)} clip(s) for the next message)",
            file=stdout)
      continue
    if line.startswith("/"):
      print(f"unknown command {line.split()[0]}; {HELP}", file=stdout)
      continue
    stdout.write("Assistant> ")

    def show(piece):
      stdout.write(piece)
      stdout.flush()

    try:
      session.send(line, on_text=show)
    except ValueError as e:
      print(f"error: {e}", file=stdout)
      continue
    stdout.write("\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m qwen_audio_jax.chat", description="Chat with Qwen-Audio-Chat about audio "
      "clips in the terminal. " + HELP,
      epilog="CKPT: a converted checkpoint directory or a run's checkpoints/<step>.")
  parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="model to chat with")
  parser.add_argument("--generation", default="qwen_audio_chat",
                      choices=("qwen_audio_chat", "greedy"),
                      help="decoding preset (default qwen_audio_chat: the release's sampling)")
  parser.add_argument("--system", default=chat_lib.DEFAULT_SYSTEM, help="system prompt")
  parser.add_argument("--max-new-tokens", type=int, default=None, help="answer length limit")
  parser.add_argument("--max-window-size", type=int, default=None,
                      help="history window in tokens (default: the preset's, 6144)")
  parser.add_argument("--seed", type=int, default=0, help="sampling seed")
  parser.add_argument("--tokenizer", default=None, help="vocabulary file or tokenizer directory")
  args = parser.parse_args(argv)
  for flag in ("max_new_tokens", "max_window_size"):
    value = getattr(args, flag)
    if value is not None and value < 1:
      parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
  if not os.path.exists(args.checkpoint):
    parser.error(f"--checkpoint: {args.checkpoint} does not exist")
  from qwen_audio_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.generate import Generator, get_generation_config  # pylint: disable=g-import-not-at-top
  try:
    loaded = checkpoints.load_model(args.checkpoint, tokenizer_path=args.tokenizer)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  overrides = {"seed": args.seed}
  if args.max_new_tokens:
    overrides["max_new_tokens"] = args.max_new_tokens
  if args.max_window_size:
    overrides["max_window_size"] = args.max_window_size
  config = get_generation_config(args.generation, **overrides)
  if args.generation == "greedy":
    config = config.replace(stop_tokens=get_generation_config("qwen_audio_chat").stop_tokens,
                            max_window_size=config.max_window_size or get_generation_config(
                                "qwen_audio_chat").max_window_size)
  session = ChatSession(Generator.from_loaded(loaded), config, system=args.system)
  repl(session, sys.stdin, sys.stdout)
  return 0


if __name__ == "__main__":
  sys.exit(main())
