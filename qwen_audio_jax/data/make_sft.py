r"""Stage-2 dialogue data from stage-1 manifests: templates, two-clip comparisons, an LLM.

    python -m qwen_audio_jax.data.make_sft --manifest train.jsonl --out chat.jsonl --seed 0
    python -m qwen_audio_jax.data.make_sft --manifest 'data/*.jsonl' --out chat.jsonl \
        --mix asr=0.5,event=2,pair=0.3 --templates my_templates.jsonl \
        --llm --llm_base_url http://localhost:8000/v1 --llm_model Qwen/Qwen2.5-7B-Instruct

Qwen-Audio-Chat's instruction data was made from labelled task data: hand-written examples per
kind of label, then many question/answer dialogues an LLM (GPT-3.5) wrote from each clip's
labels and text (arXiv:2311.07919, "Supervised Fine-tuning"). This command does both. Every
labelled row (any task family of `qwen_audio_jax.text.tasks`) becomes `--mix` template
dialogues on average (built-in templates of `qwen_audio_jax.data.sft.builtin` and the user's
`--templates`), `pair` dialogues compare two clips, rows that already are dialogues are kept
(`--chat keep`), and with `--llm` an OpenAI-compatible endpoint writes more
(`qwen_audio_jax.data.sft.llm`). Every choice is drawn from a generator seeded by `--seed` and
the row's id, so the output depends only on the inputs and the seed.

The output is a manifest of `chat` rows (`configs/sft.py` reads it: `--config.data.mixture.chat.
paths=chat.jsonl`), each with `provenance`: its source rows (id, manifest, line), the generator
('template', 'llm' or 'source'), the template or model, and the seed. The file is only appended
to, one dialogue per line, in a deterministic order: an interrupted run, started again with the
same arguments, skips the dialogues already written and continues; with the LLM cache
(`--llm_cache`), nothing already answered is asked again. A report (rows in, dialogues out per
family and generator, rejections per reason) is printed and written to `<out>.report.json`.
"""

import argparse
import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import sys
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from qwen_audio_jax.data import manifest as manifest_lib
from qwen_audio_jax.data.sft import builtin
from qwen_audio_jax.data.sft import facts as facts_lib
from qwen_audio_jax.data.sft import llm as llm_lib
from qwen_audio_jax.data.sft import templates as templates_lib
from qwen_audio_jax.data.sources import expand_paths

PAIR = templates_lib.PAIR
CHAT = manifest_lib.CHAT_TASK
_LLM_STREAM, _PAIR_STREAM = 1, 2  # seed streams besides the per-row template stream
_PAIR_TRIES = 20  # random (target, other) draws before a pair dialogue is given up
_EXAMPLES = 10  # bad rows / dialogues named in the report


@dataclasses.dataclass
class Options:
  """Everything the command does (its flags)."""
  manifests: Sequence[str]
  out: str
  seed: int = 0
  templates: Sequence[str] = ()  # user template files (JSONL)
  builtin_templates: bool = True
  mix: Dict[str, float] = dataclasses.field(default_factory=dict)  # family -> dialogues per row
  default_ratio: float = 1.0
  pair_ratio: float = 0.25  # pair dialogues per labelled row (mix 'pair=' overrides)
  chat: str = "keep"  # rows that already are dialogues: 'keep' or 'skip'
  strict: bool = False  # stop at the first malformed input row
  llm: Optional[llm_lib.LLMConfig] = None
  llm_fraction: float = 1.0  # share of the labelled rows sent to the LLM
  llm_families: Sequence[str] = ()  # '' = every family
  llm_cache: str = ""  # '' = <out>.llm_cache.jsonl
  concurrency: int = 4
  report: str = ""  # '' = <out>.report.json
  stop_after: int = 0  # tests: raise KeyboardInterrupt after writing this many new dialogues


@dataclasses.dataclass
class Source:
  """One labelled (or dialogue) input row."""
  key: str  # the row's id, or 'manifest:line' without one
  manifest: str
  line: int
  row: Dict[str, Any]  # audio paths resolved
  facts: Dict[str, Any]

  @property
  def family(self) -> str:
    return self.row["task"]

  def provenance(self) -> Dict[str, Any]:
    return {"id": self.key, "manifest": self.manifest, "line": self.line, "task": self.family}


def _stable(key: str) -> int:
  return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")


def row_rng(seed: int, key: str, stream: int = 0) -> np.random.Generator:
  """The generator of one row's choices: independent of the other rows and of their order."""
  return np.random.default_rng([seed, stream, _stable(key)])


def draw_count(ratio: float, rng: np.random.Generator) -> int:
  """floor(ratio) dialogues, plus one with probability frac(ratio): `ratio` on average."""
  whole = int(ratio)
  return whole + int(rng.random() < ratio - whole)


class Report:
  """Counts of everything that came in, went out or was turned down."""

  def __init__(self):
    self.rows_by_manifest: Dict[str, int] = collections.Counter()
    self.rows_by_family: Dict[str, int] = collections.Counter()
    self.malformed: List[str] = []
    self.malformed_count = 0
    self.out_by_family: Dict[str, Dict[str, int]] = collections.defaultdict(collections.Counter)
    self.out_by_template: Dict[str, int] = collections.Counter()
    self.written = 0
    self.already_present = 0
    self.no_template: Dict[str, int] = collections.Counter()
    self.pairs_wanted = 0
    self.pairs_unmatched = 0
    self.invalid_dialogues: List[str] = []
    self.rejected: Dict[str, Dict[str, int]] = {
        "dialogues": collections.Counter(), "responses": collections.Counter(),
        "pairs": collections.Counter(), "requests_failed": collections.Counter()}
    self.llm_rows = 0
    self.llm_pairs_generated = 0
    self.llm_pairs_accepted = 0
    self.transport: Optional[llm_lib.TransportStats] = None

  def to_json(self, options: Options) -> Dict[str, Any]:
    by_source = collections.Counter()
    for counts in self.out_by_family.values():
      by_source.update(counts)
    out = {
        "seed": options.seed,
        "rows_in": {"total": sum(self.rows_by_manifest.values()),
                    "by_manifest": dict(self.rows_by_manifest),
                    "by_family": dict(sorted(self.rows_by_family.items())),
                    "malformed": self.malformed_count, "malformed_examples": self.malformed},
        "dialogues_out": {"total": sum(by_source.values()),
                          "by_family": {f: dict(c) for f, c in sorted(self.out_by_family.items())},
                          "by_source": dict(by_source),
                          "by_template": dict(sorted(self.out_by_template.items())),
                          "written_this_run": self.written,
                          "already_present": self.already_present},
        "no_template": dict(self.no_template),
        "pairs": {"wanted": self.pairs_wanted, "unmatched": self.pairs_unmatched},
        "rejected": {k: dict(v) for k, v in self.rejected.items()},
        "invalid_dialogue_examples": self.invalid_dialogues,
    }
    if options.llm is not None:
      t = self.transport or llm_lib.TransportStats()
      out["llm"] = {"rows": self.llm_rows, "requests_sent": t.requests_sent,
                    "retries": t.retries, "cache_hits": t.cache_hits,
                    "attempt_errors": dict(t.errors),
                    "pairs_generated": self.llm_pairs_generated,
                    "pairs_accepted": self.llm_pairs_accepted}
    return out


# ------------------------------------------------------------------------------ input


def read_sources(options: Options, report: Report) -> List[Source]:
  """Every usable row of the manifests, in order; malformed rows are counted (or, with
  `strict`, stop the command); two rows with one id are an error."""
  sources, seen = [], {}
  for spec in options.manifests:
    for path in expand_paths(spec, "--manifest"):
      scanned = manifest_lib.read_manifest(path, strict=options.strict)
      report.malformed_count += len(scanned.rejections)
      report.malformed += [f"{r.origin}: {r.detail}" for r in scanned.rejections
                           ][:_EXAMPLES - len(report.malformed)]
      report.rows_by_manifest[path] += scanned.total_rows
      with open(path, "rb") as f:
        for i, line in enumerate(scanned.line_numbers):
          row = manifest_lib.read_row(f, scanned, i)
          origin = f"{path}:{int(line)}"
          key = str(row["id"]) if "id" in row else origin
          if key in seen:
            raise manifest_lib.ManifestError(f"{origin}: id {key!r} is also the id of the row at "
                                             f"{seen[key]}; ids must be unique over the inputs")
          seen[key] = origin
          report.rows_by_family[row["task"]] += 1
          facts = {} if row["task"] == CHAT else facts_lib.row_facts(row)
          sources.append(Source(key, path, int(line), row, facts))
  return sources


class PathMapper:
  """Audio paths as the output manifest must hold them: relative to its folder for clips under
  it, absolute for other local clips, URIs unchanged."""

  def __init__(self, out: str):
    self.out_dir = os.path.dirname(os.path.abspath(out))

  def __call__(self, path: str) -> str:
    if manifest_lib.is_uri(path):
      return path
    path = os.path.abspath(path)
    relative = os.path.relpath(path, self.out_dir)
    return path if relative.startswith(os.pardir) else relative

  def clip(self, row: Dict[str, Any]) -> Dict[str, Any]:
    item = {"audio": self(row["audio"])}
    for key in ("start", "end"):
      if row.get(key) is not None:
        item[key] = row[key]
    return item


# ------------------------------------------------------------------------------ output


def existing_ids(path: str) -> set:
  """Ids of the dialogues an earlier run wrote; a torn last line (a killed run) is cut off."""
  if not os.path.exists(path):
    return set()
  ids, end = set(), 0  # end: the byte after the last complete line
  with open(path, "rb+") as f:
    for number, line in enumerate(f, start=1):
      if not line.endswith(b"\n"):
        break
      end += len(line)
      if not line.strip():
        continue
      try:
        ids.add(json.loads(line)["id"])
      except (json.JSONDecodeError, KeyError, TypeError):
        raise manifest_lib.ManifestError(
            f"{path}:{number}: not a dialogue row of this command; --out must be a new file or "
            "the output of an earlier run with the same arguments") from None
    f.truncate(end)
  return ids


class Writer:
  """Appends dialogues that are not in the file yet, each checked against the manifest schema."""

  def __init__(self, options: Options, report: Report):
    self.path = options.out
    self.report = report
    self.done = existing_ids(options.out)
    os.makedirs(os.path.dirname(os.path.abspath(options.out)), exist_ok=True)
    self.file = open(options.out, "a", encoding="utf-8")
    self.stop_after = options.stop_after

  def write(self, row: Dict[str, Any], family: str) -> None:
    try:
      manifest_lib.validate_row(row, f"dialogue {row['id']}")
    except manifest_lib.ManifestError as e:
      self.report.rejected["dialogues"]["invalid_dialogue"] += 1
      if len(self.report.invalid_dialogues) < _EXAMPLES:
        self.report.invalid_dialogues.append(str(e))
      return
    provenance = row["provenance"]
    self.report.out_by_family[family][provenance["generator"]] += 1
    self.report.out_by_template[provenance.get("template") or provenance["generator"]] += 1
    if row["id"] in self.done:
      self.report.already_present += 1
      return
    self.file.write(json.dumps(row, ensure_ascii=False) + "\n")
    self.file.flush()
    self.done.add(row["id"])
    self.report.written += 1
    if self.stop_after and self.report.written >= self.stop_after:
      raise KeyboardInterrupt(f"stopped after {self.report.written} dialogues (stop_after)")

  def close(self) -> None:
    self.file.flush()
    os.fsync(self.file.fileno())
    self.file.close()


def dialogue_row(key: str, messages, sources: Sequence[Source], seed: int, generator: str,
                 **extra) -> Dict[str, Any]:
  provenance = {"sources": [s.provenance() for s in sources], "generator": generator, **extra,
                "seed": seed}
  return {"id": key, "task": CHAT, "messages": messages, "provenance": provenance}


# ------------------------------------------------------------------------------ generation


class Generator:
  """Turns sources into dialogue rows (templates here, the LLM through `llm_job`)."""

  def __init__(self, options: Options, sources: Sequence[Source], report: Report):
    self.options = options
    self.report = report
    self.paths = PathMapper(options.out)
    templates = builtin.builtin_templates() if options.builtin_templates else []
    for path in options.templates:
      templates += templates_lib.load_templates(path)
    templates_lib.check_unique(templates, "templates (built-in and --templates)")
    if not templates and options.llm is None:
      raise ValueError("no templates: drop --no_builtin_templates or give --templates / --llm")
    self.by_family: Dict[str, List[templates_lib.Template]] = collections.defaultdict(list)
    for t in templates:
      self.by_family[t.family].append(t)
    self.label_pools: Dict[str, List[str]] = collections.defaultdict(list)
    for family, labels in self._labels(sources).items():
      self.label_pools[family] = sorted(labels)
    self.labelled = [s for s in sources if s.family != CHAT]

  @staticmethod
  def _labels(sources: Sequence[Source]) -> Dict[str, set]:
    pools = collections.defaultdict(set)
    for s in sources:
      if s.family != CHAT:
        pools[s.family].update(facts_lib.row_labels(s.row))
    return pools

  def ratio(self, family: str) -> float:
    return self.options.mix.get(family, self.options.default_ratio)

  def values(self, source: Source, rng) -> Dict[str, Any]:
    return templates_lib.with_absent_label(source.facts, facts_lib.row_labels(source.row),
                                           self.label_pools.get(source.family, []), rng)

  def template_rows(self, source: Source) -> List[Dict[str, Any]]:
    if source.family == CHAT:
      if self.options.chat == "skip":
        return []
      row = manifest_lib.map_audio_paths(source.row, self.paths)
      row = {k: v for k, v in row.items() if k not in ("id", "provenance")}
      return [dict(row, id=f"{source.key}/source", provenance={
          "sources": [source.provenance()], "generator": "source", "seed": self.options.seed})]
    rng = row_rng(self.options.seed, source.key)
    count = draw_count(self.ratio(source.family), rng)
    if not count:
      return []
    values = self.values(source, rng)
    usable = [t for t in self.by_family.get(source.family, [])
              if templates_lib.applies(t, values)]
    if not usable:
      self.report.no_template[source.family] += 1
      return []
    rows = []
    for template in templates_lib.pick(rng, usable, count):
      messages = templates_lib.render_messages(template, values, [self.paths.clip(source.row)],
                                               rng)
      rows.append(dialogue_row(f"{source.key}/{template.name}", messages, [source],
                               self.options.seed, "template", template=template.name))
    return rows

  def pair_rows(self) -> Iterator[Dict[str, Any]]:
    """`pair_ratio` x labelled rows two-clip dialogues, each drawn from its own seed stream."""
    templates = self.by_family.get(PAIR, [])
    if not templates:
      return
    wanted = int(round(self.options.mix.get(PAIR, self.options.pair_ratio) * len(self.labelled)))
    self.report.pairs_wanted = wanted
    candidates = {}
    for t in templates:
      candidates[t.name] = tuple(
          [i for i, s in enumerate(self.labelled) if templates_lib.candidate_for(t, role, s.facts)]
          for role in ("target", "other"))
    usable = [t for t in templates if all(candidates[t.name])]
    for k in range(wanted):
      rng = row_rng(self.options.seed, f"pair/{k}", _PAIR_STREAM)
      row = self._pair(k, rng, usable, candidates) if usable else None
      if row is None:
        self.report.pairs_unmatched += 1
      else:
        yield row

  def _pair(self, k, rng, usable, candidates) -> Optional[Dict[str, Any]]:
    template = templates_lib.pick(rng, usable, 1)[0]
    targets, others = candidates[template.name]
    for _ in range(_PAIR_TRIES):
      target = self.labelled[targets[int(rng.integers(len(targets)))]]
      other = self.labelled[others[int(rng.integers(len(others)))]]
      if (target.row["audio"] == other.row["audio"]
          or not templates_lib.pair_matches(template, target.facts, other.facts)):
        continue
      position = int(rng.integers(2))
      values = templates_lib.pair_values(template, self.values(target, rng),
                                         self.values(other, rng), position)
      if not template.placeholders <= set(values):
        continue  # a drawn fact (absent_label) the clips' families lack
      ordered = [target, other] if position == 0 else [other, target]
      messages = templates_lib.render_messages(
          template, values, [self.paths.clip(s.row) for s in ordered], rng)
      return dialogue_row(f"pair/{k}/{template.name}", messages, ordered, self.options.seed,
                          "template", template=template.name, target_clip=position + 1)
    return None

  # ---------------------------------------------------------------------------- LLM

  def wants_llm(self, source: Source) -> bool:
    options = self.options
    if options.llm is None or source.family == CHAT:
      return False
    if options.llm_families and source.family not in options.llm_families:
      return False
    return row_rng(options.seed, source.key, _LLM_STREAM).random() < options.llm_fraction

  def llm_body(self, source: Source) -> Dict[str, Any]:
    return llm_lib.request_body(self.options.llm, llm_lib.prompt_messages(
        source.facts, self.options.llm.pairs))

  def llm_row(self, source: Source, text: Optional[str]) -> Optional[Dict[str, Any]]:
    """The accepted pairs of one response as a dialogue (None when none is accepted)."""
    pairs, reason = llm_lib.parse_response(text)
    if reason:
      self.report.rejected["responses"][reason] += 1
      return None
    self.report.llm_pairs_generated += len(pairs)
    row = source.row
    choices = [c.strip() for c in row.get("choices") or []] if source.family == "aqa" else []
    labels = facts_lib.row_labels(row)
    messages, asked = [], set()
    for pair in pairs:
      reason = llm_lib.check_pair(
          pair["question"], pair["answer"], source.facts, labels,
          self.label_pools.get(source.family, []), choices,
          row.get("answer", "").strip() if source.family == "aqa" else None)
      question = " ".join(facts_lib.words_of(pair["question"]))
      if reason is None and question in asked:
        reason = "duplicate_question"
      if reason:
        self.report.rejected["pairs"][reason] += 1
        continue
      asked.add(question)
      content = pair["question"] if messages else [self.paths.clip(row),
                                                   {"text": pair["question"]}]
      messages += [{"role": "user", "content": content},
                   {"role": "assistant", "content": pair["answer"]}]
    self.report.llm_pairs_accepted += len(messages) // 2
    if not messages:
      return None
    return dialogue_row(f"{source.key}/llm", messages, [source], self.options.seed, "llm",
                        model=self.options.llm.model)


def _resolve(options: Options) -> Options:
  if not options.manifests:
    raise ValueError("--manifest: give at least one stage-1 manifest")
  if options.chat not in ("keep", "skip"):
    raise ValueError(f"--chat must be 'keep' or 'skip', got {options.chat!r}")
  families = set(facts_lib.FACTS) | {PAIR}
  for family, ratio in options.mix.items():
    if family not in families:
      raise ValueError(f"--mix: unknown family {family!r}; expected some of {sorted(families)}")
    if not ratio >= 0:
      raise ValueError(f"--mix: {family}={ratio} must be >= 0 (dialogues per row)")
  for family in options.llm_families:
    if family not in facts_lib.FACTS:
      raise ValueError(f"--llm_families: unknown family {family!r}; expected some of "
                       f"{sorted(facts_lib.FACTS)}")
  if not 0 <= options.llm_fraction <= 1:
    raise ValueError(f"--llm_fraction must be in [0, 1], got {options.llm_fraction}")
  if options.concurrency < 1:
    raise ValueError(f"--llm_concurrency must be >= 1, got {options.concurrency}")
  for flag, value in (("--default_ratio", options.default_ratio),
                      ("--pair_ratio", options.pair_ratio)):
    if not value >= 0:
      raise ValueError(f"{flag} must be >= 0 (dialogues per row), got {value}")
  llm = options.llm
  if llm is not None:
    for flag, ok in (("--llm_pairs must be in [1, 16]", 1 <= llm.pairs <= 16),
                     ("--llm_timeout must be > 0", llm.timeout > 0),
                     ("--llm_retries must be >= 0", llm.retries >= 0),
                     ("--llm_backoff and --llm_backoff_max must be >= 0",
                      llm.backoff >= 0 and llm.backoff_max >= 0),
                     ("--llm_rate must be >= 0", llm.rate >= 0),
                     ("--llm_max_tokens must be > 0", llm.max_tokens > 0)):
      if not ok:
        raise ValueError(f"{flag}, got {llm}")
  return dataclasses.replace(
      options, report=options.report or options.out + ".report.json",
      llm_cache=options.llm_cache or options.out + ".llm_cache.jsonl")


def run(options: Options) -> Dict[str, Any]:
  """Writes (or completes) the output and the report; returns the report."""
  facts_lib.check_coverage()
  options = _resolve(options)
  report = Report()
  sources = read_sources(options, report)
  generator = Generator(options, sources, report)
  writer = Writer(options, report)
  cache = client = pool = None
  if options.llm is not None:
    cache = llm_lib.ResponseCache(options.llm_cache)
    client = llm_lib.ChatClient(options.llm, cache)
    report.transport = client.stats
    pool = concurrent.futures.ThreadPoolExecutor(options.concurrency)
  try:
    pending: collections.deque = collections.deque()

    def finish(source, rows, future):
      for row in rows:
        writer.write(row, source.family)
      if future is None:
        return
      try:
        text = future.result()
      except llm_lib.RequestFailed as e:
        report.rejected["requests_failed"][e.reason] += 1
        return
      row = generator.llm_row(source, text)
      if row is not None:
        writer.write(row, source.family)

    for source in sources:
      future = None
      if generator.wants_llm(source):
        report.llm_rows += 1
        future = pool.submit(client.complete, generator.llm_body(source))
      pending.append((source, generator.template_rows(source), future))
      # Results are written in input order; a window of requests stays in flight.
      while pending and (pending[0][2] is None or pending[0][2].done()
                         or len(pending) > 4 * options.concurrency):
        finish(*pending.popleft())
    while pending:
      finish(*pending.popleft())
    for row in generator.pair_rows():
      writer.write(row, PAIR)
  finally:
    if pool is not None:
      pool.shutdown(wait=True, cancel_futures=True)
    if cache is not None:
      cache.close()
    writer.close()
  result = report.to_json(options)
  with open(options.report, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  return result


def format_report(report: Dict[str, Any]) -> str:
  rows, out = report["rows_in"], report["dialogues_out"]
  lines = [f"rows in: {rows['total']} ({rows['malformed']} malformed)  "
           + ", ".join(f"{k} {v}" for k, v in rows["by_family"].items()),
           f"dialogues out: {out['total']} (written now {out['written_this_run']}, already there "
           f"{out['already_present']})"]
  for family, counts in out["by_family"].items():
    lines.append(f"  {family}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
  rejected = {f"{kind}/{reason}": n for kind, reasons in report["rejected"].items()
              for reason, n in reasons.items()}
  lines.append("rejected: " + (", ".join(f"{k} {v}" for k, v in rejected.items()) or "none"))
  if report["no_template"]:
    lines.append("rows without an applicable template: " + ", ".join(
        f"{k} {v}" for k, v in report["no_template"].items()))
  lines.append(f"pairs: {report['pairs']['wanted']} wanted, {report['pairs']['unmatched']} "
               "without matching clips")
  if "llm" in report:
    lines.append("llm: " + ", ".join(f"{k} {v}" for k, v in report["llm"].items()))
  return "\n".join(lines)


# ------------------------------------------------------------------------------ command line


def _mix(text: str) -> Dict[str, float]:
  out = {}
  for item in filter(None, (p.strip() for p in text.split(","))):
    family, sep, value = item.partition("=")
    try:
      out[family.strip()] = float(value)
    except ValueError:
      sep = ""
    if not sep:
      raise argparse.ArgumentTypeError(f"--mix: expected family=ratio items, got {item!r}")
  return out


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m qwen_audio_jax.data.make_sft",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--manifest", action="append", default=[],
                 help="stage-1 JSONL manifest (files or globs, comma-separated; repeatable)")
  p.add_argument("--out", help="output JSONL of chat rows (appended to; re-run to resume)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--templates", action="append", default=[],
                 help="JSONL file of user templates (repeatable); see --list_templates")
  p.add_argument("--no_builtin_templates", action="store_true",
                 help="use only the templates of --templates")
  p.add_argument("--list_templates", action="store_true",
                 help="print the built-in templates as JSONL and exit")
  p.add_argument("--mix", type=_mix, default={},
                 help="dialogues per row by family, e.g. asr=0.5,event=2,pair=0.3 ('pair': "
                      "two-clip dialogues per labelled row)")
  p.add_argument("--default_ratio", type=float, default=1.0,
                 help="template dialogues per row of families not in --mix")
  p.add_argument("--pair_ratio", type=float, default=0.25,
                 help="two-clip dialogues per labelled row (unless --mix names 'pair')")
  p.add_argument("--chat", choices=("keep", "skip"), default="keep",
                 help="input rows that already are dialogues: copy them or leave them out")
  p.add_argument("--strict", action="store_true", help="stop at the first malformed input row")
  p.add_argument("--report", default="", help="report path (default <out>.report.json)")
  g = p.add_argument_group("LLM generation (pip install 'qwen_audio_jax[sft]')")
  g.add_argument("--llm", action="store_true", help="also ask an LLM for dialogues")
  g.add_argument("--llm_base_url", default=os.environ.get("OPENAI_BASE_URL", ""),
                 help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (default "
                      "$OPENAI_BASE_URL)")
  g.add_argument("--llm_model", default="", help="model name the endpoint serves")
  g.add_argument("--llm_api_key_env", default="OPENAI_API_KEY",
                 help="environment variable holding the API key (unset: 'EMPTY', as for a "
                      "local vLLM)")
  g.add_argument("--llm_pairs", type=int, default=3, help="question/answer pairs per clip")
  g.add_argument("--llm_fraction", type=float, default=1.0, help="share of rows sent")
  g.add_argument("--llm_families", default="", help="comma-separated families sent ('' = all)")
  g.add_argument("--llm_temperature", type=float, default=0.7)
  g.add_argument("--llm_max_tokens", type=int, default=1024)
  g.add_argument("--llm_no_json_mode", action="store_true",
                 help="do not send response_format=json_object (servers that refuse it)")
  g.add_argument("--llm_timeout", type=float, default=60.0, help="seconds per request")
  g.add_argument("--llm_retries", type=int, default=4, help="retries after a failed attempt")
  g.add_argument("--llm_backoff", type=float, default=1.0,
                 help="seconds before the first retry (doubled each retry)")
  g.add_argument("--llm_backoff_max", type=float, default=30.0)
  g.add_argument("--llm_rate", type=float, default=0.0,
                 help="requests per second over all threads (0 = no limit)")
  g.add_argument("--llm_concurrency", type=int, default=4, help="requests in flight")
  g.add_argument("--llm_cache", default="",
                 help="response cache (default <out>.llm_cache.jsonl)")
  args = p.parse_args(argv)
  if not args.list_templates and (not args.manifest or not args.out):
    p.error("--manifest and --out are required")
  if args.llm and not (args.llm_base_url and args.llm_model):
    p.error("--llm needs --llm_base_url (or $OPENAI_BASE_URL) and --llm_model")
  return args


def options_from_args(args: argparse.Namespace) -> Options:
  llm = None
  if args.llm:
    llm = llm_lib.LLMConfig(
        base_url=args.llm_base_url, model=args.llm_model,
        api_key=os.environ.get(args.llm_api_key_env) or "EMPTY", pairs=args.llm_pairs,
        temperature=args.llm_temperature, max_tokens=args.llm_max_tokens,
        json_mode=not args.llm_no_json_mode, timeout=args.llm_timeout,
        retries=args.llm_retries, backoff=args.llm_backoff, backoff_max=args.llm_backoff_max,
        rate=args.llm_rate)
  return Options(
      manifests=args.manifest, out=args.out, seed=args.seed, templates=args.templates,
      builtin_templates=not args.no_builtin_templates, mix=args.mix,
      default_ratio=args.default_ratio, pair_ratio=args.pair_ratio, chat=args.chat,
      strict=args.strict, report=args.report, llm=llm, llm_fraction=args.llm_fraction,
      llm_families=[f for f in args.llm_families.split(",") if f], llm_cache=args.llm_cache,
      concurrency=args.llm_concurrency)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  if args.list_templates:
    for template in builtin.builtin_templates():
      print(json.dumps(template.to_json(), ensure_ascii=False))
    return 0
  try:
    report = run(options_from_args(args))
  except (ValueError, FileNotFoundError, ImportError) as e:  # named inputs, missing extras
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(format_report(report))
  failed = sum(report["rejected"]["requests_failed"].values())
  if failed:
    print(f"{failed} LLM request(s) failed after retries: run the same command again to retry "
          "them (answered ones come from the cache).", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
