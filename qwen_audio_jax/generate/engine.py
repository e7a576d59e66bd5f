"""`Generator`: batched, bucketed, sharded generation from a model's parameters.

    generator = Generator.from_loaded(checkpoints.load_model(path))
    results = generator.generate(["<audio>a.wav</audio><|startoftranscript|><|en|>..."],
                                 "greedy")
    results[0].text, results[0].tokens

Requests are grouped by their own shape buckets (prompt length, mel frames), so each row runs
with the same padded lengths whether alone or batched: left padding plus masking then leaves
every row's numbers -- and its tokens -- unchanged by the rest of the batch (the release's batched
generation does not have this property: QwenLM/Qwen-Audio#43). For Qwen-Audio the encoder input
of each clip is also cut at the clip's own end, as the release does for a clip alone (its batched
code cuts every clip at the batch's longest).

Programs are compiled ahead of time, one per (batch, prompt, clips, mel frames, new tokens,
decoding mode) bucket, and counted (`num_compiled`, logged as they are built). With a mesh the
parameters keep the training layout and the batch is split over ('data', 'fsdp').
"""

import dataclasses
import itertools
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from qwen_audio_jax import sharding
from qwen_audio_jax.audio import lengths
from qwen_audio_jax.audio import mel as mel_lib
from qwen_audio_jax.config import QwenAudioConfig
from qwen_audio_jax.generate import beam as beam_lib
from qwen_audio_jax.generate import decode
from qwen_audio_jax.generate.buckets import Buckets, round_up
from qwen_audio_jax.generate.config import GenerationConfig, get_generation_config
from qwen_audio_jax.generate.requests import (PreparedRequest, Request, Result, as_request,
                                              prepare, resolve_stop_tokens)
from qwen_audio_jax.model.qwen_audio import QwenAudio

TokenCallback = Callable[[int, int], None]  # (request index, token id), called as tokens come


@dataclasses.dataclass(frozen=True)
class _RowShape:
  prompt: int  # prompt bucket
  mel_frames: int  # 0: no audio


class Generator:
  """Generation for one model (parameters placed once; programs compiled per bucket)."""

  def __init__(self, model_config: QwenAudioConfig, params, tokenizer=None, *,
               mesh: Optional[Mesh] = None, buckets: Buckets = Buckets()):
    """model_config / params: as the model's `apply` takes them (e.g. `LoadedModel`'s).
    tokenizer: encodes prompt strings and decodes results (None: only `generate_prepared`,
      results without text). mesh: a ('data', 'fsdp', 'tensor') mesh (None: one device)."""
    self.model_config = model_config
    self.model = QwenAudio(model_config)
    self.tokenizer = tokenizer
    self.buckets = buckets
    self.mesh = mesh
    self._compiled: Dict[Tuple, Any] = {}
    self._stream: Optional[Callable] = None
    if mesh is not None:
      from qwen_audio_jax.training import initialization  # pylint: disable=g-import-not-at-top
      self._param_shardings = initialization.param_shardings(model_config, mesh)
      params = jax.device_put(params, self._param_shardings)
      self._data_parallel = int(np.prod([mesh.shape[a] for a in sharding.BATCH_AXES]))
    else:
      self._param_shardings = None
      self._data_parallel = 1
    self.params = params

  @classmethod
  def from_loaded(cls, loaded, *, mesh: Optional[Mesh] = None,
                  buckets: Buckets = Buckets()) -> "Generator":
    """From `checkpoints.load_model(path)`'s result."""
    return cls(loaded.model_config, loaded.params, loaded.tokenizer, mesh=mesh, buckets=buckets)

  @property
  def num_compiled(self) -> int:
    """Programs compiled so far (one per shape bucket and decoding mode)."""
    return len(self._compiled)

  @property
  def pad_id(self) -> int:
    return int(self.tokenizer.eot_id) if self.tokenizer is not None else 0

  # ------------------------------------------------------------------------------ public API

  def generate(self, requests: Sequence[Union[str, Request, Dict[str, Any]]],
               config: Union[str, GenerationConfig, None] = "greedy", *,
               on_token: Optional[TokenCallback] = None) -> List[Result]:
    """One `Result` per request, in order.

    requests: prompt strings, `Request`s or mappings of Request fields.
    config: a preset name ('greedy', 'qwen_audio_base', 'qwen_audio_chat') or a
      GenerationConfig.
    on_token: called on the host with (request index, token id) for every generated token as it
      comes out of the device loop (streaming; greedy and sampling only).
    """
    if self.tokenizer is None:
      raise ValueError("Generator.generate needs a tokenizer (pass tokenizer=, or use "
                       "generate_prepared with token ids)")
    config = get_generation_config(config)
    prepared = [prepare(as_request(r, i), self.tokenizer, i) for i, r in enumerate(requests)]
    return self.generate_prepared(prepared, config, on_token=on_token)

  def generate_prepared(self, prepared: Sequence[PreparedRequest],
                        config: Union[str, GenerationConfig, None] = "greedy", *,
                        on_token: Optional[TokenCallback] = None) -> List[Result]:
    """Like `generate`, for requests already turned into ids and waveforms."""
    config = get_generation_config(config)
    if on_token is not None and config.num_beams > 1:
      raise ValueError("on_token (streaming) works with greedy decoding and sampling, not with "
                       "beam search (num_beams > 1)")
    stop_ids = self._stop_ids(config)
    vocab = self.model_config.llm.vocab_size
    for i, row in enumerate(prepared):
      if row.ids.max(initial=0) >= vocab or row.ids.min(initial=0) < 0:
        raise ValueError(f"request {i}: token ids must lie in [0, {vocab}) (the model's "
                         "vocabulary)")
    results: List[Optional[Result]] = [None] * len(prepared)
    groups: Dict[_RowShape, List[int]] = {}
    for i, row in enumerate(prepared):
      groups.setdefault(self._row_shape(row), []).append(i)
    for shape, members in sorted(groups.items(), key=lambda kv: kv[1][0]):
      for start in range(0, len(members), self.buckets.max_batch):
        chunk = members[start:start + self.buckets.max_batch]
        rows = [prepared[i] for i in chunk]
        for i, result in zip(chunk, self._run(rows, chunk, shape, config, stop_ids, on_token)):
          results[i] = result
    return results

  # ------------------------------------------------------------------------------ internals

  def _stop_ids(self, config: GenerationConfig) -> Tuple[int, ...]:
    if self.tokenizer is not None:
      return tuple(resolve_stop_tokens(config.stop_tokens, self.tokenizer))
    if not all(isinstance(t, int) for t in config.stop_tokens):
      raise ValueError("GenerationConfig.stop_tokens: without a tokenizer, stop tokens must be "
                       f"ids, got {config.stop_tokens!r}")
    return tuple(sorted(set(config.stop_tokens)))

  def _row_shape(self, row: PreparedRequest) -> _RowShape:
    mel_frames = 0
    if row.waves:
      needed = max(decode.encoder_mel_frames(n, self.model_config.encoder.cut_mel_to_batch_max)
                   for n in row.num_samples)
      mel_frames = round_up(needed, self.buckets.mel_frames)
    return _RowShape(round_up(len(row.ids), self.buckets.prompt), mel_frames)

  def _batch_size(self, rows: int) -> int:
    size = round_up(rows, self.buckets.batch)
    return -(-size // self._data_parallel) * self._data_parallel

  def _host_batch(self, rows: Sequence[PreparedRequest], shape: _RowShape, batch_size: int,
                  config: GenerationConfig, max_new_bucket: int) -> Dict[str, np.ndarray]:
    """Left-padded ids, positions, segments; per-clip mel; copies of the last row as filler."""
    length = shape.prompt
    n_real = len(rows)
    rows = list(rows) + [rows[-1]] * (batch_size - n_real)
    ids = np.full((batch_size, length), self.pad_id, np.int32)
    segments = np.zeros((batch_size, length), np.int32)
    positions = np.zeros((batch_size, length), np.int32)
    prompt_lengths = np.zeros((batch_size,), np.int32)
    for b, row in enumerate(rows):
      n = len(row.ids)
      ids[b, length - n:] = row.ids
      segments[b, length - n:] = 1
      positions[b, length - n:] = np.arange(n)
      prompt_lengths[b] = n
    batch = dict(input_ids=ids, segment_ids=segments, positions=positions,
                 prompt_lengths=prompt_lengths,
                 row_valid=np.arange(batch_size) < n_real,
                 seeds=np.asarray([r.seed for r in rows], np.int32),
                 base_seed=np.asarray(config.seed, np.int32),
                 max_new_tokens=np.asarray(config.max_new_tokens, np.int32),
                 temperature=np.asarray(config.temperature, np.float32),
                 top_p=np.asarray(config.top_p, np.float32),
                 length_penalty=np.asarray(config.length_penalty, np.float32))
    if shape.mel_frames:
      slots = round_up(max(len(r.waves) for r in rows), (1, 2, 4, 8))
      enc = self.model_config.encoder
      mel = np.zeros((batch_size, slots, enc.n_mels, shape.mel_frames), np.float32)
      num_samples = np.zeros((batch_size, slots), np.int32)
      starts = np.zeros((batch_size, slots), np.int32)
      for b, row in enumerate(rows):
        for a, (wave, start) in enumerate(zip(row.waves, row.audio_starts)):
          full = mel_lib.log_mel_spectrogram(wave, enc.n_mels)
          mel[b, a] = full[:, :shape.mel_frames]
          if enc.cut_mel_to_batch_max:  # the clip's own cut, as the release encodes it alone
            mel[b, a, :, decode.encoder_mel_frames(wave.shape[0], True):] = 0
          num_samples[b, a] = wave.shape[0]
          starts[b, a] = start + length - len(row.ids)
      batch.update(audio_mel=mel, audio_lengths=num_samples, audio_starts=starts)
    return batch

  def _program(self, batch: Dict[str, np.ndarray], config: GenerationConfig,
               stop_ids: Tuple[int, ...], max_new_bucket: int, stream: bool):
    """The compiled program for these shapes and settings (compiled on first use)."""
    beams = config.num_beams
    spec = decode.LoopSpec(
        max_new_bucket=max_new_bucket, sample=config.do_sample,
        top_k=config.top_k if config.do_sample else 0,
        use_top_p=config.do_sample and config.top_p < 1.0,
        use_temperature=config.do_sample and config.temperature != 1.0,
        repetition_penalty=float(config.repetition_penalty), stop_ids=stop_ids,
        pad_id=self.pad_id, stream=stream,
        vocab_limit=int(self.tokenizer.vocab_size) if self.tokenizer is not None else None)
    key = (tuple((k, v.shape) for k, v in sorted(batch.items())), spec, beams)
    if key in self._compiled:
      return self._compiled[key]

    model = self.model

    def run(params, batch):
      batch = dict(batch)
      base = jax.random.PRNGKey(batch.pop("base_seed"))
      batch["keys"] = jax.vmap(lambda s: jax.random.fold_in(base, s))(batch.pop("seeds"))
      if beams > 1:
        out, lengths_, stopped, scores = beam_lib.beam_search(model, params, batch, spec, beams)
        return out, lengths_, stopped, scores, jnp.zeros(out.shape, jnp.float32)
      out, lengths_, stopped, logp = decode.decode_loop(model, params, batch, spec,
                                                        self._on_tokens)
      return out, lengths_, stopped, jnp.zeros(out.shape[:1], jnp.float32), logp

    abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
    started = time.perf_counter()
    if self.mesh is not None:
      batch_shardings = {k: (sharding.batch_sharding(self.mesh, v.ndim) if v.ndim else
                             NamedSharding(self.mesh, PartitionSpec()))
                         for k, v in batch.items()}
      jitted = jax.jit(run, in_shardings=(self._param_shardings, batch_shardings))
      with sharding.activation_sharding(self.mesh):
        compiled = jitted.lower(self.params, abstract).compile()
    else:
      compiled = jax.jit(run).lower(self.params, abstract).compile()
    self._compiled[key] = compiled
    logging.info("generate: compiled program %d (batch %d, prompt %d, mel frames %s, new tokens "
                 "%d, %s) in %.1f s", len(self._compiled), batch["input_ids"].shape[0],
                 batch["input_ids"].shape[1],
                 batch["audio_mel"].shape[-1] if "audio_mel" in batch else 0, max_new_bucket,
                 "beam search" if beams > 1 else ("sampling" if config.do_sample else "greedy"),
                 time.perf_counter() - started)
    return compiled

  def _on_tokens(self, t, tokens, done):
    if self._stream is not None:
      self._stream(np.asarray(tokens), np.asarray(done))

  def _run(self, rows: Sequence[PreparedRequest], indices: Sequence[int], shape: _RowShape,
           config: GenerationConfig, stop_ids: Tuple[int, ...],
           on_token: Optional[TokenCallback]) -> List[Result]:
    max_new_bucket = round_up(config.max_new_tokens, self.buckets.new_tokens)
    batch = self._host_batch(rows, shape, self._batch_size(len(rows)), config, max_new_bucket)
    program = self._program(batch, config, stop_ids, max_new_bucket, on_token is not None)
    if on_token is not None:
      def forward(tokens, done):
        for b, i in enumerate(indices):
          if not done[b]:
            on_token(i, int(tokens[b]))
      self._stream = forward
    try:
      out, lengths_, stopped, scores, logp = jax.device_get(program(self.params, batch))
    finally:
      self._stream = None
    results = []
    for b, row in enumerate(rows):
      n = int(lengths_[b])
      tokens = np.asarray(out[b, :n], np.int32)
      logprobs = None if config.num_beams > 1 else np.asarray(logp[b, :n], np.float32)
      stop_token = None
      if stopped[b]:
        stop_token, tokens = int(tokens[-1]), tokens[:-1]
        logprobs = None if logprobs is None else logprobs[:-1]
      text = self.tokenizer.decode(tokens) if self.tokenizer is not None else ""
      results.append(Result(
          tokens=tokens, text=text, finish_reason="stop" if stopped[b] else "length",
          stop_token=stop_token, prompt_tokens=len(row.ids),
          score=float(scores[b]) if config.num_beams > 1 else None, logprobs=logprobs,
          id=row.id))
    return results
