"""Command line: convert released checkpoints to ours, or export ours back to HF safetensors.

    python -m qwen_audio_jax.convert --source DIR --layout LAYOUT --out DIR [--dtype ...]
        [--combine-encoder DIR --encoder-layout whisper --seed N]
    python -m qwen_audio_jax.convert export --checkpoint DIR --layout LAYOUT --out DIR
        [--lora {merge,adapters}]

A failed conversion prints its error alone (`--traceback` for the stack) and exits 1; an --out
directory it created is removed again, so that no empty or half-written output is left behind.
"""

import argparse
import contextlib
import os
import shutil
import sys
from typing import List, Optional

from qwen_audio_jax import errors
from qwen_audio_jax.convert import names

_LAYOUT_HELP = """source layouts (safetensors: one file, or shards + model.safetensors.index.json):
  whisper      HF Whisper (WhisperModel / WhisperForConditionalGeneration): the encoder only;
               the decoder is skipped
  qwen2        HF Qwen2ForCausalLM (the LLM only)
  qwen         official Qwen-7B (transformer.wte, transformer.h.N.attn.c_attn, ...): the LLM
               only; a Qwen-Audio checkpoint's transformer.audio.* is skipped
  qwen_audio   official Qwen-Audio / Qwen-Audio-Chat: audio encoder, projection, audio bos/eos
               and LLM
  qwen2_audio  transformers' Qwen2AudioForConditionalGeneration

output: OUT/params (Orbax checkpoint of {'params': ...}, layers stacked), OUT/model_config.json,
OUT/conversion.json (source, skipped and freshly initialised tensors).

export back to HF safetensors: python -m qwen_audio_jax.convert export --help
"""


def _import_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m qwen_audio_jax.convert",
      description="Convert a released safetensors checkpoint into a qwen_audio_jax checkpoint.",
      epilog=_LAYOUT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--source", required=True, help="checkpoint directory (config.json + "
                      "*.safetensors)")
  parser.add_argument("--layout", required=True, choices=names.LAYOUTS,
                      help="naming layout of --source")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="dtype of the converted parameters (default float32)")
  parser.add_argument("--combine-encoder", metavar="DIR", default=None,
                      help="also read an audio encoder from DIR and write one stage-1 "
                      "initialisation of the whole model (--layout must be qwen or qwen2); the "
                      "projection (and Qwen-Audio's audio bos/eos) are freshly initialised")
  parser.add_argument("--encoder-layout", default="whisper", choices=("whisper",),
                      help="layout of --combine-encoder (default whisper)")
  parser.add_argument("--seed", type=int, default=0,
                      help="seed of the fresh initialisation with --combine-encoder (default 0)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace an existing checkpoint in --out")
  parser.add_argument("--no-progress", action="store_true", help="no progress bar")
  parser.add_argument(errors.TRACEBACK_FLAG, action="store_true", help=errors.TRACEBACK_HELP)
  return parser


@contextlib.contextmanager
def _removed_on_failure(out: str):
  """Removes `out` again if the block fails and `out` did not exist before it."""
  existed = os.path.lexists(out)
  try:
    yield
  except BaseException:
    if not existed and os.path.isdir(out):
      shutil.rmtree(out, ignore_errors=True)
    raise


def _export_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m qwen_audio_jax.convert export",
      description="Export a qwen_audio_jax checkpoint or a training run's step to safetensors + "
      "config.json in the layout users load.")
  parser.add_argument("--checkpoint", required=True,
                      help="a converted checkpoint (params/ + model_config.json) or a training "
                      "run's <workdir>/checkpoints/<step> (model config from the run's workdir)")
  parser.add_argument("--layout", required=True, choices=names.EXPORT_LAYOUTS,
                      help="whisper: the audio encoder alone (transformers' WhisperEncoder); "
                      "qwen2: Qwen2ForCausalLM (LLM only); qwen_audio: the official Qwen-Audio "
                      "layout with config.json and qwen.tiktoken; qwen2_audio: "
                      "Qwen2AudioForConditionalGeneration")
  parser.add_argument("--lora", default="merge", choices=("merge", "adapters"),
                      help="a LoRA run's factors: merged into the weights (default), or "
                      "'adapters': base weights plus a PEFT adapter in OUT/adapter "
                      "(qwen2_audio only)")
  parser.add_argument("--tokenizer", default=None,
                      help="vocabulary to ship (qwen.tiktoken or a tokenizer directory); "
                      "default: the model's own")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                      help="dtype of the written tensors (default: as stored)")
  parser.add_argument("--max-shard-size", default="5GB",
                      help="largest shard, e.g. 5GB or 500MB (default 5GB)")
  parser.add_argument("--audio-token-id", type=int, default=None,
                      help="audio_token_index for config.json (default: from the import, else "
                      "151646)")
  parser.add_argument("--no-progress", action="store_true", help="no progress bar")
  parser.add_argument(errors.TRACEBACK_FLAG, action="store_true", help=errors.TRACEBACK_HELP)
  return parser


def main(argv: Optional[List[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == "export":
    args = _export_parser().parse_args(argv[1:])
    from qwen_audio_jax.convert.exporter import export_checkpoint
    token_ids = {} if args.audio_token_id is None else {"audio_token_index": args.audio_token_id}
    with _removed_on_failure(args.out):
      files = export_checkpoint(args.checkpoint, args.layout, args.out, dtype=args.dtype,
                                max_shard_size=args.max_shard_size, token_ids=token_ids,
                                lora=args.lora, tokenizer_path=args.tokenizer,
                                progress=not args.no_progress)
    print(f"wrote {len(files)} files to {args.out}")
    for f in files:
      print(f"  {f}")
    return 0
  if argv and argv[0] == "import":
    argv = argv[1:]
  args = _import_parser().parse_args(argv)
  from qwen_audio_jax.convert.importer import convert_to_orbax
  with _removed_on_failure(args.out):
    report = convert_to_orbax(args.source, args.layout, args.out, dtype=args.dtype,
                              combine_encoder=args.combine_encoder,
                              encoder_layout=args.encoder_layout, seed=args.seed,
                              progress=not args.no_progress, overwrite=args.overwrite)
  print(report.summary())
  print(f"checkpoint written to {args.out}")
  return 0


if __name__ == "__main__":
  errors.run_main(main, known=(FileExistsError, FileNotFoundError))
