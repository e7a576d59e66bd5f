"""The training configs shipped with the package (`get_config(preset)` in each file).

`--config` of `python -m qwen_audio_jax.train` (and `qwen-audio-train`) takes a config file, as
ml_collections does, or one of these by name, so the same command works in a checkout and after
`pip install`:

    --config=configs/pretrain.py:demo      a file; when it does not exist, the packaged one
    --config=pretrain:demo                 short form: configs/pretrain.py, preset demo
    --config=/path/to/my_config.py:arg     any other config file

The files import their shared keys from `qwen_audio_jax.configs.common`, so each also works
when copied out of the package and edited.
"""

import os
from typing import List, Optional

from absl import flags
from ml_collections import config_flags
from ml_collections.config_flags import config_path
from ml_collections.config_flags import config_flags as config_flags_lib

from qwen_audio_jax import errors

DIRECTORY = os.path.dirname(os.path.abspath(__file__))
_NOT_CONFIGS = ("__init__", "common")


def names() -> List[str]:
  """The packaged training configs (file names without '.py')."""
  return sorted(f[:-3] for f in os.listdir(DIRECTORY)
                if f.endswith(".py") and f[:-3] not in _NOT_CONFIGS)


def resolve(spec: str) -> str:
  """`PATH[:ARG]` with PATH an existing file, or the packaged config it names: `NAME`,
  `NAME.py` or `configs/NAME.py`. Raises ValueError naming what was tried otherwise."""
  path, colon, arg = spec.partition(":")
  if os.path.exists(path):
    return spec
  folder, base = os.path.split(path)
  name = base[:-3] if base.endswith(".py") else base
  if os.path.normpath(folder) in (".", "configs") or not folder:
    if name in names():
      return os.path.join(DIRECTORY, f"{name}.py") + colon + arg
  raise ValueError(f"--config={spec}: {path} is not a file and not a packaged config; expected a "
                   f"config file or one of {names()} (e.g. --config=pretrain:demo)")


class _Parser(config_flags_lib.ConfigFileFlagParser):
  """ml_collections' config-file parser, after `resolve`."""

  def parse(self, path):
    return super().parse(resolve(path))


def _unknown_override(flag, argument: str) -> Optional[str]:
  """`--NAME.key: unknown key 'key' (did you mean ...?)` for the first override of the command
  line that names no key of the config (None when every override does)."""
  config = flag.parser.parse(argument)
  for override in flag._GetOverrides(flag._GetArgv()):  # pylint: disable=protected-access
    try:
      config_path.get_type(override, config)
    except (AttributeError, KeyError, IndexError):
      problem = errors.unknown_key_message(config, override) or f"no key {override!r}"
      return f"--{flag.name}.{override}: {problem}"
  return None


def _naming_unknown_keys(flag):
  """Wraps the flag's parse so that an override of a missing key is named in full."""
  parse = flag._parse  # pylint: disable=protected-access

  def checked(argument):
    try:
      return parse(argument)
    except (AttributeError, KeyError) as e:
      problem = _unknown_override(flag, argument)
      if problem is None:
        raise
      raise flags.IllegalFlagValueError(problem) from e

  flag._parse = checked  # pylint: disable=protected-access


def DEFINE_config_file(name: str, help_string: str = "config file",  # pylint: disable=invalid-name
                       flag_values: flags.FlagValues = flags.FLAGS, **kwargs):
  """`config_flags.DEFINE_config_file` whose value may also name a packaged config; overrides
  (`--NAME.key=value`) work as there."""
  holder = config_flags.DEFINE_config_file(name, None, help_string, flag_values=flag_values,
                                           **kwargs)
  flag = flag_values[name]
  flag.parser = _Parser(name=name, lock_config=flag.parser._lock_config)  # pylint: disable=protected-access
  _naming_unknown_keys(flag)
  return holder
