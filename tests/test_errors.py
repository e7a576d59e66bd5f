"""Errors a person can read: known errors print their message alone and exit 1 (the stack with
--traceback or QWEN_AUDIO_JAX_TRACEBACK=1), an unknown config key names its neighbour, a bad
workdir names --workdir, a failed convert leaves no --out behind.

The command-line checks run the real entry points in subprocesses (each stops before any
compilation); the rest runs in this process.
"""

import os
import subprocess
import sys

import ml_collections
import pytest

from qwen_audio_jax import errors
from qwen_audio_jax.training import startup

from _train_configs import REPO


def run_command(*args, timeout=240):
  """`python -m <args>` on one CPU device (the demo presets' batches fit it)."""
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env=env)


def test_unknown_config_key_names_the_closest_key():
  done = run_command("qwen_audio_jax.train", "--config=configs/pretrain.py:demo",
                     "--config.total_stepz=5", "--workdir=/nonexistent/never/created")
  assert done.returncode == 1, done.stderr[-2000:]
  assert ("error: --config.total_stepz: unknown key 'total_stepz' (did you mean "
          "'total_steps'?)\n") in done.stderr
  assert "Traceback" not in done.stderr and "AttributeError" not in done.stderr


def test_unknown_nested_key_and_suggestions():
  config = ml_collections.ConfigDict({"optim": {"learning_rate": 1.0, "b1": 0.9},
                                      "total_steps": 1})
  assert errors.unknown_key_message(config, "total_steps") is None
  assert errors.unknown_key_message(config, "optim.lerning_rate") == (
      "unknown key 'optim.lerning_rate' (did you mean 'optim.learning_rate'?)")
  assert errors.unknown_key_message(config, "zzz") == (
      "unknown key 'zzz' (expected one of ['optim', 'total_steps'])")


def test_config_error_prints_its_message_alone_and_traceback_on_request(tmp_path):
  args = ("qwen_audio_jax.train", "--config=configs/pretrain.py:demo",
          "--config.optim.learning_rate=inf", f"--workdir={tmp_path / 'run'}")
  done = run_command(*args)
  assert done.returncode == 1
  assert done.stderr.rstrip().endswith(
      "error: invalid training config:\n  config.optim.learning_rate=inf: must be a finite "
      "number in (0, 1]"), done.stderr[-2000:]
  assert "Traceback" not in done.stderr
  assert not (tmp_path / "run").exists()  # refused before anything was written
  shown = run_command(*args, "--traceback")
  assert shown.returncode == 1 and "Traceback (most recent call last)" in shown.stderr
  assert "ConfigError: invalid training config" in shown.stderr


def test_workdir_that_is_a_file_names_the_flag(tmp_path):
  workdir = tmp_path / "workdir"
  workdir.write_text("not a directory")
  done = run_command("qwen_audio_jax.train", "--config=configs/pretrain.py:demo",
                     f"--workdir={workdir}")
  assert done.returncode == 1
  assert f"error: --workdir={workdir}: is a file, not a directory" in done.stderr
  assert "Traceback" not in done.stderr


def test_workdir_checks(tmp_path):
  startup.check_workdir(str(tmp_path / "new" / "run"))  # created
  assert (tmp_path / "new" / "run").is_dir() and not list((tmp_path / "new" / "run").iterdir())
  (tmp_path / "file").write_text("")
  with pytest.raises(errors.FlagError, match=r"--workdir=.*/file/run: a part of the path is a "
                     "file, not a directory"):
    startup.check_workdir(str(tmp_path / "file" / "run"))
  if os.geteuid() == 0 and sys.platform.startswith("linux"):
    read_only = "/sys/qwen_audio_jax_workdir"  # sysfs refuses new directories even to root
  else:
    (tmp_path / "locked").mkdir()
    os.chmod(tmp_path / "locked", 0o555)
    read_only = str(tmp_path / "locked" / "run")
  with pytest.raises(errors.FlagError, match=r"--workdir=.*: not writable \("):
    startup.check_workdir(read_only)


def test_known_errors_exit_1_with_the_message_and_bugs_keep_their_stack(capsys, monkeypatch):
  monkeypatch.delenv(errors.TRACEBACK_ENV, raising=False)
  monkeypatch.setattr(sys, "argv", ["cmd"])

  def fail(error):
    def main():
      raise error
    return main

  with pytest.raises(SystemExit) as stopped:
    errors.run_main(fail(errors.DataQualityError("task 'asr': 9 of 10 examples were bad")))
  assert stopped.value.code == 1
  assert capsys.readouterr().err == "error: task 'asr': 9 of 10 examples were bad\n"
  with pytest.raises(SystemExit):
    errors.run_main(fail(FileExistsError("out/params already exists")),
                    known=(FileExistsError,))
  assert capsys.readouterr().err == "error: out/params already exists\n"
  with pytest.raises(KeyError):  # not a known error: the traceback stays
    errors.run_main(fail(KeyError("bug")))
  monkeypatch.setenv(errors.TRACEBACK_ENV, "1")
  with pytest.raises(errors.CheckpointError):
    errors.run_main(fail(errors.CheckpointError("step 3: not saved")))
  monkeypatch.delenv(errors.TRACEBACK_ENV)
  assert errors.wants_traceback(["--traceback"]) and not errors.wants_traceback(["--x"])
  assert not errors.wants_traceback(["--traceback", "--notraceback"])
  with pytest.raises(SystemExit) as stopped:
    errors.run_main(lambda: 0)
  assert stopped.value.code == 0


def test_failed_convert_prints_one_line_and_leaves_no_out_directory(tmp_path):
  out = tmp_path / "converted"
  done = run_command("qwen_audio_jax.convert", "--source", str(tmp_path / "no_such_model"),
                     "--layout", "qwen2", "--out", str(out), "--no-progress")
  assert done.returncode == 1
  assert done.stderr.startswith("error: ") and "config.json is missing" in done.stderr
  assert "Traceback" not in done.stderr
  assert not out.exists()
  # An --out that existed before is left as it was.
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  assert run_command("qwen_audio_jax.convert", "--source", str(tmp_path / "no_such_model"),
                     "--layout", "qwen2", "--out", str(out)).returncode == 1
  assert (out / "keep.txt").read_text() == "mine"
