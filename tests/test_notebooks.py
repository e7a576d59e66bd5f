"""The notebooks in notebooks/ run headless on the tiny configs (nbclient, one kernel each), with
the small parameters their first cells read from the environment: a narrow untrained model
transcribing and chatting, a few steps of fine-tuning on a folder of demo clips, the planner on a
virtual v5e-1 with a narrow model, the data pipeline on the demo corpus. Their outputs stay
stripped in git."""

import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "notebooks")
NARROW_MODEL = {"encoder": {"width": 32, "heads": 2, "mlp_dim": 64, "depth": 1, "output_dim": 32},
                "llm": {"width": 32, "heads": 2, "kv_heads": 1, "head_dim": 16, "mlp_dim": 64,
                        "depth": 1}}
# The model notebooks run on one CPU device, as on a Colab CPU or T4 runtime (the 8 virtual devices
# of the other tests cost them a third more compilation time).
ONE_DEVICE = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
PARAMETERS = {
    "01_transcribe_and_chat.ipynb": {"CHECKPOINT": "", "RELEASED": "", "MAX_NEW_TOKENS": "8",
                                     "CHAT_GENERATION": "greedy",
                                     "MODEL_OVERRIDES": json.dumps(NARROW_MODEL), **ONE_DEVICE},
    "02_fine_tune.ipynb": {"AUDIO_DIR": "", "NUM_CLIPS": "8", "PRESET": "tiny", "STEPS": "3",
                           "EVAL_EVERY": "0", "BATCH_SIZE": "8", "AUDIO_BUCKETS": "30",
                           "MODEL_OVERRIDES": json.dumps(NARROW_MODEL), **ONE_DEVICE},
    "03_data_pipeline.ipynb": {"BATCH_SIZE": "4", "PACKING": "1"},
    # One chip: the search's one candidate is the plan's own program, compiled once (the
    # planner keeps the analyses of what it compiled).
    "04_plan_a_run.ipynb": {"CONFIG": "pretrain:demo", "TOPOLOGY": "v5e-1", "GPUS": "h100x2",
                            "SEARCH_BUDGET": "1", "BATCH_SIZE": "2", "TEXT_LENGTH": "64",
                            "MODEL_OVERRIDES": json.dumps(NARROW_MODEL)},
}


def test_every_notebook_is_tested_stripped_and_has_a_colab_badge():
  names = sorted(f for f in os.listdir(NOTEBOOKS) if f.endswith(".ipynb"))
  assert names == sorted(PARAMETERS)
  for name in names:
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    nbformat.validate(nb)
    badge = ("https://colab.research.google.com/github/qwen-audio-jax/qwen_audio_jax/blob/main/"
             f"notebooks/{name}")
    assert badge in nb.cells[0].source, name
    for cell in nb.cells:
      if cell.cell_type == "code":
        assert not cell.outputs and cell.execution_count is None, f"{name}: outputs not stripped"


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_notebook_runs(name, monkeypatch):
  for key, value in PARAMETERS[name].items():
    monkeypatch.setenv(key, value)
  # The kernel imports this checkout (not an installed copy) and runs on CPU.
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [REPO, os.environ.get(
      "PYTHONPATH")])))
  nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": NOTEBOOKS}}).execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "error"]
  assert not errors
