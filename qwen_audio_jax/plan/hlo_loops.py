"""How much of a compiled program XLA's cost analysis leaves out: the trip counts of its loops.

XLA's `cost_analysis()` adds up every instruction of the optimised module once, and it counts a
`while` loop's body once as well, however many times it runs. A train step has loops the size of
the model: the scanned layers (`nn.scan`, forward and backward), gradient accumulation, the
chunked cross-entropy. So the FLOPs, bytes and optimal time XLA reports for a 32-layer model with
8 micro-batches describe about one layer of one micro-batch.

This module reads the optimised HLO text, finds each loop's trip count in its condition (the
`compare(counter, constant(N)), direction=LT` every JAX loop lowers to) and counts the FLOPs of
the matrix products (`dot`, and `convolution`, which TPU programs use for most products) twice:
each instruction once, as XLA does, and each times the trip counts of the loops around it. The
planner adds the difference to XLA's FLOPs and scales XLA's bytes and time by the same factor
(`LoopCounts.scale_of`): memory traffic is assumed to repeat like the FLOPs. A loop whose count
cannot be read is counted once and reported. A conditional counts its costliest branch: the
chunked loss skips chunks without targets at run time, so a plan counts every chunk (the worst
case). Recomputation is real work and is counted: rematerialised layers are why a plan's FLOPs
exceed the analytic model FLOPs (with the loss's chunks that hold no target).
"""

import dataclasses
import math
import re
from typing import Dict, List, Optional, Tuple

import numpy as np

_HEADER = re.compile(r"^(?:ENTRY )?%(\S+) \(.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.+?) ([a-z][\w-]*)\((.*)$")
_SHAPE = re.compile(r"^[a-z]\w*\[([\d,]*)\]")
_OPERAND = re.compile(r"%([\w.\-]+)")
_CALLS = re.compile(r"\b(calls|body|condition|to_apply)=%([\w.\-]+)")
_BRANCHES = re.compile(r"\bbranch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


@dataclasses.dataclass(frozen=True)
class LoopCounts:
  """FLOPs of a program's matrix products: `once` counts every instruction once (as XLA's cost
  analysis does), `executed` times its loops' trip counts."""
  once: float
  executed: float
  loops: Tuple[int, ...]  # trip counts of the loops found (outermost first per nest)
  unknown_loops: int  # loops whose trip count could not be read (counted once)

  @property
  def scale(self) -> float:
    """executed / once of the products alone (1.0 when nothing is counted)."""
    return self.executed / self.once if self.once > 0 else 1.0

  def scale_of(self, xla_flops: float) -> float:
    """What XLA's figures are multiplied by: its FLOPs (every instruction once) plus the product
    FLOPs its loops repeat, over its FLOPs. Work outside the loops (the optimizer update) is not
    multiplied; elementwise work inside them is counted once, as XLA counts it."""
    if xla_flops <= 0:
      return self.scale
    return (xla_flops + self.executed - self.once) / xla_flops


@dataclasses.dataclass
class _Instruction:
  name: str
  shape: str
  opcode: str
  rest: str


def _dims(shape: str) -> Optional[List[int]]:
  match = _SHAPE.match(shape)
  if not match:
    return None
  return [int(d) for d in match.group(1).split(",") if d]


def _parse(hlo_text: str) -> Tuple[Dict[str, List[_Instruction]], Optional[str]]:
  """Computations by name (their instructions), and the entry computation's name."""
  computations: Dict[str, List[_Instruction]] = {}
  entry, current = None, None
  for line in hlo_text.splitlines():
    header = _HEADER.match(line)
    if header and not line.startswith(" "):
      current = header.group(1)
      computations[current] = []
      if line.startswith("ENTRY "):
        entry = current
      continue
    if current is None:
      continue
    if line.startswith("}"):
      current = None
      continue
    match = _INSTRUCTION.match(line)
    if match:
      computations[current].append(_Instruction(*match.groups()))
  return computations, entry


def _product_flops(instruction: _Instruction, shapes: Dict[str, str]) -> float:
  """2 x multiply-adds of a dot or convolution (0 for anything else)."""
  out = _dims(instruction.shape)
  if out is None:
    return 0.0
  operands = _OPERAND.findall(instruction.rest.split(")", 1)[0])
  if instruction.opcode == "dot":
    contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", instruction.rest)
    lhs = _dims(shapes.get(operands[0], "")) if operands else None
    if lhs is None or contracting is None:
      return 0.0
    k = math.prod(lhs[int(d)] for d in contracting.group(1).split(",") if d)
    return 2.0 * math.prod(out) * k
  if instruction.opcode == "convolution":
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", instruction.rest)
    lhs = _dims(shapes.get(operands[0], "")) if operands else None
    rhs = _dims(shapes.get(operands[1], "")) if len(operands) > 1 else None
    if lhs is None or rhs is None or labels is None:
      return 0.0
    lhs_labels, rhs_labels, out_labels = labels.groups()
    window = _window(instruction.rest)
    macs = out[out_labels.index("b")] * out[out_labels.index("f")] * rhs[rhs_labels.index("i")]
    for d in range(len(out_labels) - 2):
      digit = str(d)
      macs *= _valid_pairs(lhs[lhs_labels.index(digit)], rhs[rhs_labels.index(digit)],
                           out[out_labels.index(digit)], {k: v[d] for k, v in window.items()})
    return 2.0 * macs
  return 0.0


def _window(rest: str) -> Dict[str, List[Tuple[int, int]]]:
  """A convolution's window attributes per spatial dimension (stride, padding, dilations)."""
  match = re.search(r"window=\{([^}]*)\}", rest)
  fields = dict(f.split("=", 1) for f in match.group(1).split()) if match else {}
  rank = len(fields["size"].split("x")) if "size" in fields else 0
  def per_dim(key, default):
    if key not in fields:
      return [default] * rank
    return [tuple(int(v) for v in part.split("_")) if "_" in part else int(part)
            for part in fields[key].split("x")]
  return {"stride": per_dim("stride", 1), "pad": per_dim("pad", (0, 0)),
          "lhs_dilate": per_dim("lhs_dilate", 1), "rhs_dilate": per_dim("rhs_dilate", 1)}


def _valid_pairs(n: int, k: int, m: int, window: Dict) -> int:
  """(output position, kernel tap) pairs of one spatial dimension that read an input element
  (not padding, not a hole of the input's dilation), as XLA's own cost analysis counts them:
  batch dimensions that a TPU program turns into dilated windows count once, not per tap."""
  stride, (pad_low, _), lhs_dilate, rhs_dilate = (
      window["stride"], window["pad"], window["lhs_dilate"], window["rhs_dilate"])
  o = np.arange(m)[:, None]
  taps = np.arange(k)[None, :]
  position = o * stride + taps * rhs_dilate - pad_low
  valid = (position >= 0) & (position <= (n - 1) * lhs_dilate) & (position % lhs_dilate == 0)
  return int(valid.sum())


def _constant_value(name: str, computation: List[_Instruction]) -> Optional[int]:
  for i in computation:
    if i.name == name and i.opcode == "constant":
      value = re.match(r"\s*(-?\d+)\)", i.rest)
      return int(value.group(1)) if value else None
  return None


def _counter_step(body: List[_Instruction], index: int) -> int:
  """How much one pass of a loop body adds to its counter (tuple element `index`): 1 unless
  the new counter is `add(counter, constant(k))` (a compiler-unrolled body steps by k)."""
  by_name = {i.name: i for i in body}
  root = next((i for i in reversed(body) if i.opcode == "tuple"), None)
  if root is None:
    return 1
  operands = _OPERAND.findall(root.rest.split(")", 1)[0])
  if index >= len(operands) or operands[index] not in by_name:
    return 1
  # Follow add(add(counter, 1), 1)... back to the counter read from the loop's tuple.
  step, update = 0, by_name[operands[index]]
  for _ in range(64):
    if update.opcode == "get-tuple-element" and f"index={index}" in update.rest:
      return max(step, 1)
    if update.opcode != "add":
      return 1
    names = _OPERAND.findall(update.rest.split(")", 1)[0])
    values = [_constant_value(n, body) for n in names]
    if len(names) != 2 or values.count(None) != 1:
      return 1
    step += next(v for v in values if v is not None)
    update = by_name.get(names[values.index(None)])
    if update is None:
      return 1
  return 1


def _trip_count(instruction: _Instruction, computations) -> Optional[int]:
  known = _TRIP.search(instruction.rest)
  if known:
    return int(known.group(1))
  condition = re.search(r"\bcondition=%([\w.\-]+)", instruction.rest)
  body = re.search(r"\bbody=%([\w.\-]+)", instruction.rest)
  if not condition:
    return None
  test = computations.get(condition.group(1), [])
  by_name = {i.name: i for i in test}
  for i in test:
    if i.opcode != "compare" or "direction=LT" not in i.rest:
      continue
    names = _OPERAND.findall(i.rest.split(")", 1)[0])
    if len(names) != 2:
      continue
    limit = _constant_value(names[1], test)
    counter = by_name.get(names[0])
    if limit is None or counter is None:
      continue
    index = re.search(r"index=(\d+)", counter.rest) if counter.opcode == "get-tuple-element" \
        else None
    step = _counter_step(computations.get(body.group(1), []) if body else [],
                         int(index.group(1))) if index else 1
    return -(-limit // step)
  return None


def count(hlo_text: str) -> LoopCounts:
  """The product FLOPs of an optimised HLO module (`compiled.as_text()`), once and executed."""
  computations, entry = _parse(hlo_text)
  shapes = {i.name: i.shape for body in computations.values() for i in body}
  memo: Dict[str, Tuple[float, float]] = {}
  loops: List[int] = []
  unknown = [0]

  def visit(name: str, stack: Tuple[str, ...]) -> Tuple[float, float]:
    if name in memo:
      return memo[name]
    if name in stack or name not in computations:
      return 0.0, 0.0
    once = executed = 0.0
    for instruction in computations[name]:
      flops = _product_flops(instruction, shapes)
      once, executed = once + flops, executed + flops
      trips = 1
      if instruction.opcode == "while":
        trip = _trip_count(instruction, computations)
        if trip is None:
          unknown[0] += 1
        else:
          trips = max(trip, 0)
          loops.append(trip)
      for kind, called in _CALLS.findall(instruction.rest):
        if kind == "to_apply":  # scalar reducers: no products
          continue
        child_once, child_executed = visit(called, stack + (name,))
        once += child_once
        executed += child_executed * (trips if kind in ("body", "condition") else 1)
      branches = _BRANCHES.search(instruction.rest)
      if branches:  # a conditional runs one branch: count the costliest
        counted = [visit(b, stack + (name,)) for b in _OPERAND.findall(branches.group(1))]
        if counted:
          once += max(c[0] for c in counted)
          executed += max(c[1] for c in counted)
    memo[name] = (once, executed)
    return memo[name]

  once, executed = visit(entry, ()) if entry else (0.0, 0.0)
  return LoopCounts(once=once, executed=executed, loops=tuple(loops), unknown_loops=unknown[0])
