"""Dialogue templates: their schema, validation (built-in and from a file) and rendering.

A template is a JSON object:

    {"name": "asr.what_said", "family": "asr", "weight": 1.0, "system": "...",
     "turns": [{"user": ["What does the speaker say?", "Transcribe the clip."],
                "assistant": "{sentence}"},
               {"user": "How many words is that?", "assistant": "{n_words} words."}]}

`family` is a task family of `qwen_audio_jax.text.tasks` or `"pair"` (two clips). A `user` or
`assistant` entry is one phrasing or a list of phrasings (one is drawn per dialogue). `{name}`
placeholders are facts of the row (`qwen_audio_jax.data.sft.facts.FACTS`); a template applies to
a row when the row has every fact it names. The clip(s) open the first user turn.

Pair templates name facts of the two clips with a prefix: `first_` / `second_` (by position),
`target_` / `other_` (the clip the question is about and the other one, placed first or second at
random), plus `target_ordinal` / `other_ordinal` ('first' / 'second') and `target_number` /
`other_number` (1 / 2). They choose their clips with
  `where`: {"target": {fact: value, ...}, "other": {...}}  facts the clip must have these values of,
  `differ`: [fact, ...] / `same`: [fact, ...]  facts the two clips must differ in / share,
  `more`: fact  a number the target must have more of than the other clip.
"""

import dataclasses
import json
import string
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from qwen_audio_jax.data.sft import facts as facts_lib
from qwen_audio_jax.text import tasks

PAIR = "pair"
POSITIONS = ("first", "second")
PAIR_ROLES = ("first", "second", "target", "other")
PAIR_SPECIAL = {"target_ordinal", "other_ordinal", "target_number", "other_number"}
_KEYS = {"name", "family", "turns", "system", "weight", "where", "differ", "same", "more",
         "description"}
_PAIR_KEYS = {"where", "differ", "same", "more"}


class TemplateError(ValueError):
  """A template that does not follow the schema (the message names the file and line)."""


@dataclasses.dataclass(frozen=True)
class Turn:
  user: Tuple[str, ...]
  assistant: Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Template:
  name: str
  family: str
  turns: Tuple[Turn, ...]
  system: Optional[str] = None
  weight: float = 1.0
  where: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  differ: Tuple[str, ...] = ()
  same: Tuple[str, ...] = ()
  more: Optional[str] = None
  placeholders: frozenset = frozenset()

  @property
  def is_pair(self) -> bool:
    return self.family == PAIR

  def needs(self, role: str) -> frozenset:
    """Facts a clip must have to be the `target` or `other` clip of this pair template (or the
    row of a one-clip template, role '')."""
    if not self.is_pair:
      return self.placeholders
    need = set(self.differ) | set(self.same) | set(self.where.get(role, {}))
    if self.more:
      need.add(self.more)
    for name in self.placeholders - PAIR_SPECIAL:
      prefix, fact = name.split("_", 1)
      if prefix in POSITIONS or prefix == role:
        need.add(fact)
    return frozenset(need)

  def to_json(self) -> Dict[str, Any]:
    out: Dict[str, Any] = {"name": self.name, "family": self.family}
    if self.system is not None:
      out["system"] = self.system
    if self.weight != 1.0:
      out["weight"] = self.weight
    for key in ("where", "differ", "same", "more"):
      if getattr(self, key):
        out[key] = (dict(self.where) if key == "where" else list(getattr(self, key))
                    if key != "more" else self.more)
    out["turns"] = [{"user": list(t.user) if len(t.user) > 1 else t.user[0],
                     "assistant": list(t.assistant) if len(t.assistant) > 1 else t.assistant[0]}
                    for t in self.turns]
    return out


def all_fact_names() -> frozenset:
  names = set(facts_lib.COMMON_FACTS)
  for family in facts_lib.FACTS:
    names |= set(facts_lib.FACTS[family])
  return frozenset(names)


def _fields(text: str, where: str) -> List[str]:
  try:
    parsed = list(string.Formatter().parse(text))
  except ValueError as e:
    raise TemplateError(f"{where}: bad placeholder in {text!r} ({e}); write literal braces as "
                        "'{{' and '}}'") from None
  names = []
  for _, name, spec, conversion in parsed:
    if name is None:
      continue
    if not name.isidentifier() or spec or conversion:
      raise TemplateError(f"{where}: placeholder {{{name}}} in {text!r} must be a plain fact "
                          "name such as {transcript}")
    names.append(name)
  return names


def _phrasings(value: Any, where: str) -> Tuple[str, ...]:
  if isinstance(value, str):
    value = [value]
  if not isinstance(value, list) or not value or not all(
      isinstance(v, str) and v.strip() for v in value):
    raise TemplateError(f"{where}: expected a non-empty string or a non-empty list of non-empty "
                        f"strings, got {value!r}")
  return tuple(value)


def _fact_list(value: Any, where: str, known: frozenset) -> Tuple[str, ...]:
  if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
    raise TemplateError(f"{where}: expected a list of fact names, got {value!r}")
  for name in value:
    if name not in known:
      raise TemplateError(f"{where}: unknown fact {name!r}; expected one of {sorted(known)}")
  return tuple(value)


def parse_template(obj: Any, where: str) -> Template:
  """Checks one template object; TemplateError names `where` and the field."""
  if not isinstance(obj, dict):
    raise TemplateError(f"{where}: a template must be a JSON object, got {type(obj).__name__}")
  unknown = set(obj) - _KEYS
  if unknown:
    raise TemplateError(f"{where}: unknown field(s) {sorted(unknown)}; expected some of "
                        f"{sorted(_KEYS)}")
  name = obj.get("name")
  if not isinstance(name, str) or not name.strip() or "/" in name:
    raise TemplateError(f"{where}: field 'name' must be a non-empty string without '/', got "
                        f"{name!r}")
  where = f"{where} (template {name!r})"
  family = obj.get("family")
  families = sorted(tasks.TASKS) + [PAIR]
  if family not in families:
    raise TemplateError(f"{where}: field 'family' is {family!r}, expected one of {families}")
  if family != PAIR and set(obj) & _PAIR_KEYS:
    raise TemplateError(f"{where}: field(s) {sorted(set(obj) & _PAIR_KEYS)} are for "
                        "family 'pair' only")
  weight = obj.get("weight", 1.0)
  if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
    raise TemplateError(f"{where}: field 'weight' must be a number > 0, got {weight!r}")
  system = obj.get("system")
  if system is not None and (not isinstance(system, str) or not system.strip()):
    raise TemplateError(f"{where}: field 'system' must be a non-empty string")
  raw_turns = obj.get("turns")
  if not isinstance(raw_turns, list) or not raw_turns:
    raise TemplateError(f"{where}: field 'turns' must be a non-empty list of "
                        "{'user': ..., 'assistant': ...}")
  turns, placeholders = [], []
  for t, turn in enumerate(raw_turns):
    here = f"{where}: turns[{t}]"
    if not isinstance(turn, dict) or set(turn) != {"user", "assistant"}:
      raise TemplateError(f"{here} must be an object with exactly 'user' and 'assistant'")
    user = _phrasings(turn["user"], f"{here}.user")
    assistant = _phrasings(turn["assistant"], f"{here}.assistant")
    for text in user + assistant:
      placeholders += _fields(text, here)
    turns.append(Turn(user, assistant))
  for text in [system] if system else []:
    placeholders += _fields(text, f"{where}: system")

  known_all = all_fact_names()
  if family == PAIR:
    for p in placeholders:
      prefix, _, fact = p.partition("_")
      if p not in PAIR_SPECIAL and not (prefix in PAIR_ROLES and fact in known_all):
        raise TemplateError(
            f"{where}: placeholder {{{p}}} is not a pair fact: write first_/second_/target_/"
            f"other_ + a fact name, or one of {sorted(PAIR_SPECIAL)}")
    where_ = obj.get("where", {})
    if not isinstance(where_, dict) or set(where_) - {"target", "other"}:
      raise TemplateError(f"{where}: field 'where' must be {{'target': {{fact: value}}, "
                          f"'other': {{fact: value}}}}, got {where_!r}")
    for role, conditions in where_.items():
      if not isinstance(conditions, dict):
        raise TemplateError(f"{where}: field 'where'.{role} must be an object of fact: value")
      _fact_list(list(conditions), f"{where}: field 'where'.{role}", known_all)
    more = obj.get("more")
    if more is not None:
      _fact_list([more], f"{where}: field 'more'", known_all)
    template = Template(name, family, tuple(turns), system, float(weight), where_,
                        _fact_list(obj.get("differ", []), f"{where}: field 'differ'", known_all),
                        _fact_list(obj.get("same", []), f"{where}: field 'same'", known_all),
                        more, frozenset(placeholders))
  else:
    known = facts_lib.family_facts(family)
    for p in placeholders:
      if p not in known:
        raise TemplateError(f"{where}: placeholder {{{p}}} is not a fact of family {family!r}; "
                            f"expected one of {sorted(known)}")
    template = Template(name, family, tuple(turns), system, float(weight),
                        placeholders=frozenset(placeholders))
  return template


def check_unique(templates: Sequence[Template], where: str) -> None:
  seen = set()
  for t in templates:
    if t.name in seen:
      raise TemplateError(f"{where}: template name {t.name!r} is used twice")
    seen.add(t.name)


def load_templates(path: str) -> List[Template]:
  """Templates from a JSONL file (one object per line; blank lines and lines starting with '#'
  are skipped). Errors name the file and line."""
  out = []
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.readlines()
  except OSError as e:
    raise TemplateError(f"{path}: cannot read the template file ({e})") from None
  for number, line in enumerate(lines, start=1):
    if not line.strip() or line.lstrip().startswith("#"):
      continue
    where = f"{path}:{number}"
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise TemplateError(f"{where}: invalid JSON ({e})") from None
    template = parse_template(obj, where)
    if any(t.name == template.name for t in out):
      raise TemplateError(f"{where}: template name {template.name!r} is used twice in the file")
    out.append(template)
  if not out:
    raise TemplateError(f"{path}: the template file holds no templates")
  return out


# ------------------------------------------------------------------------------ rendering


def _fill(text: str, values: Mapping[str, Any]) -> str:
  return text.format_map(values)


def applies(template: Template, row_facts: Mapping[str, Any]) -> bool:
  return template.needs("") <= set(row_facts)


def pick(rng: np.random.Generator, templates: Sequence[Template], count: int
         ) -> List[Template]:
  """Up to `count` distinct templates, drawn by weight without replacement."""
  pool = list(templates)
  chosen = []
  while pool and len(chosen) < count:
    weights = np.asarray([t.weight for t in pool])
    i = int(rng.choice(len(pool), p=weights / weights.sum()))
    chosen.append(pool.pop(i))
  return chosen


def render_messages(template: Template, values: Mapping[str, Any],
                    clips: Sequence[Mapping[str, Any]], rng: np.random.Generator
                    ) -> List[Dict[str, Any]]:
  """The dialogue's messages: the clip items open the first user turn; one phrasing drawn per
  entry."""
  messages = []
  if template.system:
    messages.append({"role": "system", "content": _fill(template.system, values)})
  for t, turn in enumerate(template.turns):
    user = _fill(turn.user[int(rng.integers(len(turn.user)))], values)
    answer = _fill(turn.assistant[int(rng.integers(len(turn.assistant)))], values)
    content: Any = [dict(c) for c in clips] + [{"text": user}] if t == 0 else user
    messages += [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
  return messages


def with_absent_label(row_facts: Mapping[str, Any], row_labels: Sequence[str],
                      pool: Sequence[str], rng: np.random.Generator) -> Dict[str, Any]:
  """The row's facts plus `absent_label`, a label of its family from elsewhere (when any)."""
  values = dict(row_facts)
  candidates = sorted(set(pool) - set(row_labels))
  if candidates:
    values["absent_label"] = candidates[int(rng.integers(len(candidates)))]
  return values


def pair_values(template: Template, target: Mapping[str, Any], other: Mapping[str, Any],
                target_position: int) -> Dict[str, Any]:
  """Placeholder values of a pair dialogue; target_position 0: the target clip comes first."""
  by_position = (target, other) if target_position == 0 else (other, target)
  values: Dict[str, Any] = {
      "target_ordinal": POSITIONS[target_position],
      "other_ordinal": POSITIONS[1 - target_position],
      "target_number": target_position + 1, "other_number": 2 - target_position}
  for role, facts in (("first", by_position[0]), ("second", by_position[1]), ("target", target),
                      ("other", other)):
    for key, value in facts.items():
      values[f"{role}_{key}"] = value
  del template
  return values


def pair_matches(template: Template, target: Mapping[str, Any], other: Mapping[str, Any]
                 ) -> bool:
  """Whether (target, other) satisfy the template's differ / same / more rules (`where` and the
  needed facts are checked when candidates are listed)."""
  if any(target[f] == other[f] for f in template.differ):
    return False
  if any(target[f] != other[f] for f in template.same):
    return False
  if template.more and not float(target[template.more]) > float(other[template.more]):
    return False
  return True


def candidate_for(template: Template, role: str, row_facts: Mapping[str, Any]) -> bool:
  """Whether a clip with these facts can play `role` ('target' / 'other') in the template."""
  if not template.needs(role) <= set(row_facts):
    return False
  return all(row_facts.get(k) == v for k, v in template.where.get(role, {}).items())
