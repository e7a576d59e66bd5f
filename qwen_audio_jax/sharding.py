"""One table maps logical axis names onto the device mesh.

Every parameter and key activation of the model is annotated with logical axis names ('embed',
'heads', 'act_batch', ...). A rules table says which mesh axis ('data', 'fsdp', 'tensor') each
name is split over: `LOGICAL_AXIS_RULES` by default, or the table in force through Flax's own
`flax.linen.logical_axis_rules` context (the trainer sets `config.mesh.logical_axis_rules` there,
overridable from the command line as in MaxText). Flax's `logical_to_mesh_sharding` /
`with_logical_constraint` are not used to apply it: they lack the fallback below.

Resolution drops a mesh axis from a dimension it does not divide evenly (the released
vocabularies, e.g. 155,947 rows, divide by nothing), so a rules table written for large meshes
still works on any mesh: the dimension is then replicated along that axis instead of failing.
"""

import contextlib
import threading
from typing import Any, List, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LOGICAL_AXIS_RULES = (
    # Activations.
    ("act_batch", BATCH_AXES),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("act_clips", None),
    # Parameters: fully sharded over 'fsdp' on the model width, megatron-style over 'tensor'.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("mel", None),
    ("conv_window", None),
    ("positions", None),
    ("bos_eos", None),
)


def fill_mesh_shape(shape: Sequence[int], device_count: int) -> List[int]:
  """`shape` ('data', 'fsdp', 'tensor' sizes) with its one -1 entry given the devices left over;
  ValueError unless the sizes then multiply to `device_count`."""
  shape = [int(s) for s in shape]
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"mesh shape {shape} must have {len(MESH_AXES)} entries {MESH_AXES}")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape}: at most one entry may be -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if known <= 0 or device_count % known:
      raise ValueError(f"mesh shape {shape}: {device_count} devices are not divisible by {known}")
    shape[shape.index(-1)] = device_count // known
  if int(np.prod(shape)) != device_count:
    raise ValueError(
        f"mesh shape {dict(zip(MESH_AXES, shape))} needs {int(np.prod(shape))} devices, "
        f"{device_count} are available")
  return shape


def make_mesh(shape: Sequence[int], devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh; one entry of `shape` may be -1 to take the rest."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  shape = fill_mesh_shape(shape, devices.size)
  try:  # physical-topology-aware order on TPUs (rings along the torus); plain order elsewhere
    arranged = mesh_utils.create_device_mesh(shape, devices=list(devices.flat),
                                             allow_split_physical_axes=True)
  except (ValueError, NotImplementedError, AssertionError):
    arranged = devices.reshape(shape)
  return Mesh(arranged, MESH_AXES)


def axis_rules(rules=None):
  """The rules to apply: `rules` when given, else the table set with
  `flax.linen.logical_axis_rules`, else `LOGICAL_AXIS_RULES`."""
  if rules is not None:
    return tuple(rules)
  return tuple(nn.get_logical_axis_rules()) or LOGICAL_AXIS_RULES


def _mesh_axes_for(name, rules):
  for logical, mesh_axes in rules:
    if logical == name:
      if mesh_axes is None:
        return ()
      return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
  if name is None:
    return ()
  raise ValueError(f"logical axis {name!r} has no entry in the sharding rules")


def logical_to_spec(logical_axes: Sequence[Optional[str]], shape: Sequence[int], mesh: Mesh,
                    rules=None) -> PartitionSpec:
  """PartitionSpec for an array of `shape`, keeping only mesh axes that divide each dimension.

  A mesh axis is used at most once per array (the first dimension that asks for it wins).
  """
  if len(logical_axes) != len(shape):
    raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
  rules = axis_rules(rules)
  used = set()
  spec = []
  for name, size in zip(logical_axes, shape):
    kept = []
    for axis in _mesh_axes_for(name, rules):
      if axis in used or axis not in mesh.shape:
        continue
      split = int(np.prod([mesh.shape[a] for a in kept + [axis]]))
      if size % split == 0:
        kept.append(axis)
    used.update(kept)
    spec.append(None if not kept else (kept[0] if len(kept) == 1 else tuple(kept)))
  return PartitionSpec(*spec)


def param_shardings(abstract_params, mesh: Mesh, rules=None):
  """NamedShardings for a tree of (possibly boxed) abstract parameters from `jax.eval_shape`."""
  logical = nn.get_partition_spec(abstract_params)
  unboxed = nn.unbox(abstract_params)
  rules = axis_rules(rules)

  def one(spec, leaf):
    names = tuple(spec) if spec is not None else (None,) * len(leaf.shape)
    names = names + (None,) * (len(leaf.shape) - len(names))
    return NamedSharding(mesh, logical_to_spec(names, leaf.shape, mesh, rules))

  return jax.tree.map(one, logical, unboxed,
                      is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None)


class _Context(threading.local):
  mesh: Optional[Mesh] = None
  rules = LOGICAL_AXIS_RULES


_CONTEXT = _Context()


@contextlib.contextmanager
def activation_sharding(mesh: Optional[Mesh], rules=None):
  """Within this context, `constrain` pins activations to `mesh` (trace the step inside it)."""
  previous = (_CONTEXT.mesh, _CONTEXT.rules)
  _CONTEXT.mesh, _CONTEXT.rules = mesh, axis_rules(rules)
  try:
    yield
  finally:
    _CONTEXT.mesh, _CONTEXT.rules = previous


def current_mesh() -> Optional[Mesh]:
  """The mesh of the enclosing `activation_sharding` (None outside one)."""
  return _CONTEXT.mesh


def compile_platform() -> str:
  """The platform being compiled for: the enclosing mesh's devices ('tpu' for the planner's
  virtual TPU slice on a CPU host), else JAX's default backend. Trace-time choices that depend
  on the platform (attention implementation, DFT method) read this, not the host's backend."""
  mesh = _CONTEXT.mesh
  return mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()


def activation_spec(logical_axes: Sequence[Optional[str]], shape) -> Optional[PartitionSpec]:
  """The PartitionSpec `constrain` pins for these names and shape (None outside a mesh)."""
  mesh = _CONTEXT.mesh
  return None if mesh is None else logical_to_spec(logical_axes, shape, mesh, _CONTEXT.rules)


def constrain(x: jax.Array, logical_axes: Sequence[Optional[str]]) -> jax.Array:
  """Sharding constraint by logical names; a no-op outside `activation_sharding`."""
  spec = activation_spec(logical_axes, x.shape)
  if spec is None:
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(_CONTEXT.mesh, spec))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Sharding of a batch array: leading dimension over the batch axes, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))
