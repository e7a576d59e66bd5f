"""The train and eval steps: pure functions the loop jits with explicit shardings.

One train step:
  features  waveform batches get their log-mel on the device (`audio.mel`); stage 1 applies
            SpecAugment to each clip's valid frames, keyed by the state's RNG and the step;
  forward   bf16 compute (model config `dtype`) over f32 master weights, remat per the model
            config, LoRA factors merged into their kernels when enabled; the loss on target
            tokens, from logits projected `loss.chunk_length` positions at a time when > 0;
  backward  gradients of the trainable subtree only (frozen parameters are constants);
  accumulation
            the batch is split into `grad_accum_steps` micro-batches (rows i, i+k, ..., so every
            device keeps its share) and a `lax.scan` adds up their loss and gradient SUMS; one
            division by the total number of target tokens then makes k micro-batches exactly one
            batch of k times the size. optax.MultiSteps is not used: it averages per-micro-batch
            means (wrong when micro-batches hold different numbers of target tokens) and costs
            one dispatch per micro-batch;
  update    optax (clipping, schedule, weight decay) on the trainable subtree; with
            `optim.vocab_rows='data'` its embedding and head are compact tables (the rows and
            columns the data uses), written back into the full ones after the update
            (`vocab_rows.py`; `untrained_tokens` counts inputs outside them);
  guard     a NaN / Inf loss or gradient norm, or an update that leaves a NaN / Inf in the
            trained parameters or the optimizer state (one reduction per array, `finite.py`),
            skips the update: parameters and optimizer state stay as they were, `nonfinite` = 1
            in the metrics (`nonfinite_update` = 1 when only the update was at fault; the loop
            halts or counts it, per `config.nonfinite`). The step counter still advances, so
            the data stream and the step numbers stay aligned; the optimizer's own count (and
            so its schedule) does not.
"""

from typing import Any, Dict, Tuple

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from qwen_audio_jax.audio import lengths, mel as mel_lib
from qwen_audio_jax.audio import specaugment as specaugment_lib
from qwen_audio_jax.audio.specaugment import SpecAugmentConfig, spec_augment
from qwen_audio_jax.model.layers import dtype_of
from qwen_audio_jax.model.llm import output_head
from qwen_audio_jax.model.qwen_audio import QwenAudio
from qwen_audio_jax.training import finite as finite_lib
from qwen_audio_jax.training import lora as lora_lib
from qwen_audio_jax.training import loss as loss_lib
from qwen_audio_jax.training import optimizer as optimizer_lib
from qwen_audio_jax.training import output_vocab as output_vocab_lib
from qwen_audio_jax.training import vocab_rows as vocab_rows_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: updates done (skipped ones included)
  params: Any  # the whole parameter tree, f32 master weights
  opt_state: Any  # over the trainable subtree (or the LoRA factors) only
  rng: jax.Array  # PRNG key of the run; each step folds in its number
  lora: Any  # {'path': {'a', 'b'}} LoRA factors, {} when LoRA is off


def init_train_state(config, params, rng) -> TrainState:
  """Step 0: optimizer state for what the stage trains, LoRA factors when enabled."""
  optimizer = optimizer_lib.make_optimizer(config, params)
  rng, lora_rng = jax.random.split(rng)
  if config.lora.rank > 0:
    factors = lora_lib.init_lora(config, params, lora_rng)
    opt_state = optimizer.tx.init(factors)
  else:
    factors = {}
    trainable, _ = optimizer.trained(params)
    opt_state = optimizer.tx.init(trainable)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, rng=rng,
                    lora=factors)


def _dict_path(path) -> Tuple[str, ...]:
  return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def train_state_shardings(abstract_state: TrainState, mesh) -> TrainState:
  """NamedShardings of a train state on `mesh`.

  Parameters keep the shardings their abstract leaves carry (from the logical rules); optimizer
  moments mirror the parameter they belong to (matched by the parameter's path at the end of
  the state path, and its shape); counters, the RNG and the small LoRA factors are replicated.
  """
  replicated = NamedSharding(mesh, PartitionSpec())

  def concrete(leaf):
    sharding = getattr(leaf, "sharding", None)
    spec = sharding.spec if isinstance(sharding, NamedSharding) else PartitionSpec()
    return NamedSharding(mesh, spec)

  params = jax.tree.map(concrete, abstract_state.params)
  by_path = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state.params)[0]:
    by_path[_dict_path(path)] = (leaf.shape, concrete(leaf))

  def moment(path, leaf):
    keys = _dict_path(path)
    for start in range(len(keys)):
      match = by_path.get(keys[start:])
      if match is not None and match[0] == leaf.shape:
        return match[1]
    return replicated

  opt_state = jax.tree_util.tree_map_with_path(moment, abstract_state.opt_state)
  return TrainState(step=replicated, params=params, opt_state=opt_state, rng=replicated,
                    lora=jax.tree.map(lambda _: replicated, abstract_state.lora))


def specaugment_config(config) -> SpecAugmentConfig:
  return specaugment_lib.from_config(config.specaugment.to_dict())


def audio_features(batch, n_mels: int, key, augment: SpecAugmentConfig = None):
  """[B, A, n_mels, 3000] log-mel of the batch's clips (computed here for waveform batches)."""
  if "audio_wave" in batch:
    wave = batch["audio_wave"]
    mel = mel_lib.log_mel_spectrogram_jax(wave.reshape(-1, wave.shape[-1]), n_mels)
    mel = mel.reshape(wave.shape[:2] + mel.shape[-2:])
  elif "audio_mel" in batch:
    mel = batch["audio_mel"]
  else:
    return None
  if augment is not None and not augment.is_identity:
    frames = lengths.mel_frames(batch["audio_lengths"]).reshape(-1)
    flat = spec_augment(key, mel.reshape((-1,) + mel.shape[2:]), frames, augment)
    mel = flat.reshape(mel.shape)
  return mel


def padding_fractions(batch) -> Dict[str, jax.Array]:
  """Shares of the batch that are padding: text positions (segment 0) and audio samples (past
  each clip, and empty slots) of the batch's audio bucket."""
  out = {"text_padding": jnp.mean((batch["segment_ids"] == 0).astype(jnp.float32))}
  audio = batch.get("audio_wave", batch.get("audio_mel"))
  if audio is not None:
    samples = audio.shape[-1] * (1 if "audio_wave" in batch else lengths.HOP_LENGTH)
    used = jnp.sum(batch["audio_lengths"].astype(jnp.float32)) / (
        samples * batch["audio_lengths"].size)
    out["audio_padding"] = 1.0 - used
  return out


def _loss_sums(model, params, batch, mel, *, train: bool, num_tasks: int, chunk_length: int,
               vocab=None, token_embeds=None, head=None, z_loss_weight: float = 0.0):
  """Forward pass and loss sums, with 'objective' = loss_sum + z_loss_weight * z_loss_sum (what
  the train step differentiates); with `chunk_length` > 0 the full logits are never formed;
  with `vocab` (training.output_vocab) the logits are those of its kept tokens only.
  `token_embeds` and `head` (its kept columns, with `vocab`) replace what the tables of `params`
  give (training.vocab_rows)."""
  if vocab is not None and chunk_length <= 0:
    chunk_length = batch["input_ids"].shape[1]  # one chunk: the kept logits are small
  audio = {}
  if mel is not None:
    audio = dict(audio_mel=mel, audio_lengths=batch["audio_lengths"],
                 audio_starts=batch["audio_starts"])
  out = model.apply({"params": params}, batch["input_ids"], positions=batch["positions"],
                    segment_ids=batch["segment_ids"], train=train,
                    return_hidden=chunk_length > 0, token_embeds=token_embeds, **audio)
  with jax.named_scope("loss"):  # the name profiles and HLO dumps show
    if chunk_length > 0:
      if head is None:
        head = output_head(params["llm"], model.config)
        if vocab is not None:
          head = output_vocab_lib.kept_columns(head, vocab)
      return loss_lib.chunked_loss_sums(out, head, batch, num_tasks, chunk_length, vocab,
                                        z_loss_weight)
    sums = loss_lib.loss_sums(out, batch, num_tasks)
    return dict(sums, objective=loss_lib.objective(sums, z_loss_weight))


def _micro_batches(batch: Dict[str, jax.Array], k: int) -> Dict[str, jax.Array]:
  """[B, ...] -> [k, B / k, ...]; micro-batch i holds rows i, i + k, i + 2k, ..."""
  def split(x):
    rows = x.shape[0]
    if rows % k:
      raise ValueError(f"config.optim.grad_accum_steps={k} does not divide the batch of {rows} "
                       "rows")
    return jnp.swapaxes(x.reshape((rows // k, k) + x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def _where(condition, new, old):
  """`new` where `condition` holds, else `old`, leaf by leaf (a skipped update keeps `old`)."""
  return jax.tree.map(lambda n, o: jnp.where(condition, n, o), new, old)


SUM_KEYS = ("loss_sum", "z_loss_sum", "correct", "target_tokens", "task_loss_sum", "task_correct",
            "task_target_tokens")


def make_train_step(config, model_config, optimizer: optimizer_lib.Optimizer):
  """train_step(state, batch) -> (state, metrics); see the module docstring."""
  model = QwenAudio(model_config)
  accum = int(config.optim.grad_accum_steps)
  num_tasks = len(config.data.mixture)
  z_weight = float(config.loss.z_loss_weight)
  chunk_length = int(config.loss.chunk_length)
  augment = specaugment_config(config) if config.specaugment.enabled else None
  n_mels = model_config.encoder.n_mels
  mask = optimizer.trainable_mask
  use_lora = config.lora.rank > 0
  vocab = output_vocab_lib.resolve(config, model_config)
  rows = optimizer.vocab_rows

  def objective(trained, frozen, micro, key):
    token_embeds = head = None
    if use_lora:
      params = lora_lib.merge(config, frozen, trained)
    elif rows is None:
      params = optimizer_lib.combine(mask, trained, frozen)
    else:
      # Compact tables (training/vocab_rows.py): the model keeps the full tables of `frozen`
      # (constants) and reads its embeddings and head columns from the compact ones.
      params = vocab_rows_lib.with_full_tables(optimizer_lib.combine(mask, trained, frozen),
                                               frozen)
      llm = trained["llm"]
      if llm.get(vocab_rows_lib.EMBED) is not None:
        token_embeds = vocab_rows_lib.token_embeddings(
            rows, llm[vocab_rows_lib.EMBED], params["llm"][vocab_rows_lib.EMBED],
            micro["input_ids"])
        token_embeds = token_embeds.astype(dtype_of(model.config.dtype))
      if llm.get(vocab_rows_lib.HEAD) is not None:
        head = vocab_rows_lib.head_columns(rows, llm[vocab_rows_lib.HEAD])
    mel = audio_features(micro, n_mels, key, augment)
    sums = _loss_sums(model, params, micro, mel, train=True, num_tasks=num_tasks,
                      chunk_length=chunk_length, vocab=vocab, token_embeds=token_embeds,
                      head=head, z_loss_weight=z_weight)
    sums = dict(sums)
    return sums.pop("objective"), sums

  grad_fn = jax.grad(objective, has_aux=True)

  def gradient_sums(trained, frozen, batch, key):
    """Loss and gradient sums over the batch, one micro-batch at a time when accumulating."""
    if accum == 1:  # no loop: XLA schedules a plain step better than a one-trip while loop
      return grad_fn(trained, frozen, batch, key)

    def one(carry, inputs):
      index, micro_batch = inputs
      g, s = grad_fn(trained, frozen, micro_batch, jax.random.fold_in(key, index))
      return jax.tree.map(jnp.add, carry, (g, s)), None

    zero_sums = {k: jnp.zeros((num_tasks,) if k.startswith("task_") else (), jnp.float32)
                 for k in SUM_KEYS}
    zero = (jax.tree.map(jnp.zeros_like, trained), zero_sums)
    micro = _micro_batches(batch, accum)
    return jax.lax.scan(one, zero, (jnp.arange(accum), micro))[0]

  def train_step(state: TrainState, batch):
    key = jax.random.fold_in(state.rng, state.step)
    if use_lora:
      trained, frozen = state.lora, state.params
    else:
      trained, frozen = optimizer.trained(state.params)
    grads, sums = gradient_sums(trained, frozen, batch, key)

    tokens = jnp.maximum(sums["target_tokens"], 1.0)
    task_tokens = jnp.maximum(sums["task_target_tokens"], 1.0)
    grads = jax.tree.map(lambda g: g / tokens, grads)
    loss = sums["loss_sum"] / tokens
    z_loss = sums["z_loss_sum"] / tokens
    grad_norm = optimizer.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(z_loss)
    with jax.named_scope("optimizer"):
      updates, new_opt_state = optimizer.tx.update(grads, state.opt_state, trained)
      new_trained = optax.apply_updates(trained, updates)
      update_finite = finite_lib.all_finite((new_trained, new_opt_state))
      applied = finite & update_finite
      new_trained = _where(applied, new_trained, trained)
      new_opt_state = _where(applied, new_opt_state, state.opt_state)
    if use_lora:
      params, factors = state.params, new_trained
    else:
      params, factors = optimizer.write_back(new_trained, state.params), state.lora
    new_state = state.replace(step=state.step + 1, params=params, opt_state=new_opt_state,
                              lora=factors)
    metrics = {
        "loss": loss,
        "z_loss": z_loss,
        "grad_norm": grad_norm,
        # The schedule at this step (after skipped steps the optimizer's own count lags behind).
        "learning_rate": jnp.asarray(optimizer.schedule(state.step), jnp.float32),
        "accuracy": sums["correct"] / tokens,
        "target_tokens": sums["target_tokens"],
        "tokens": jnp.sum((batch["segment_ids"] != 0).astype(jnp.float32)),
        "audio_seconds": jnp.sum(batch["audio_lengths"]).astype(jnp.float32) / lengths.SAMPLE_RATE,
        **padding_fractions(batch),
        "nonfinite": 1.0 - applied.astype(jnp.float32),
        "nonfinite_update": (finite & ~update_finite).astype(jnp.float32),
        "task_loss": sums["task_loss_sum"] / task_tokens,
        "task_accuracy": sums["task_correct"] / task_tokens,
        "task_target_tokens": sums["task_target_tokens"],
    }
    if rows is not None:
      metrics["untrained_tokens"] = vocab_rows_lib.untrained_tokens(rows, batch)
    return new_state, metrics

  return train_step


def eval_params(config, state: TrainState):
  """The parameters to evaluate: LoRA factors merged into their kernels when enabled."""
  return lora_lib.merge(config, state.params, state.lora) if config.lora.rank > 0 else state.params


def make_eval_step(config, model_config):
  """eval_step(params, batch) -> sums (loss, correct and target tokens; also per task)."""
  model = QwenAudio(model_config)
  num_tasks = len(config.eval_data.mixture)
  n_mels = model_config.encoder.n_mels
  chunk_length = int(config.loss.chunk_length)
  vocab = output_vocab_lib.resolve(config, model_config)

  def eval_step(params, batch):
    mel = audio_features(batch, n_mels, None)
    sums = _loss_sums(model, params, batch, mel, train=False, num_tasks=num_tasks,
                      chunk_length=chunk_length, vocab=vocab)
    return {k: v for k, v in sums.items() if k not in ("z_loss_sum", "objective")}

  return eval_step
