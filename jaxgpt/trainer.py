"""The training loop: data, mesh, state, then batch(seed, step) -> train_step -> log -> eval -> save."""

import collections
import concurrent.futures
import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Iterator, Sequence
from typing import NoReturn

import jax
import ml_collections
import numpy as np

from jaxgpt import checkpoint, config as config_lib, data, generate, hellaswag, memory
from jaxgpt import pretrained as pretrained_lib
from jaxgpt import metrics, optim, profiling, run_setup, sharding, signals, throughput
from jaxgpt import state as state_lib
from jaxgpt import steps
from jaxgpt.data.tokenizer import Tokenizer
from jaxgpt.errors import Interrupted, UserError
from jaxgpt.model import GPT, count_params


def _check_batch(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
  """The global micro-batch must split evenly over the data-parallel devices and processes."""
  t = config.train
  micro_batch = t.batch_size // t.grad_accum_steps
  dp = sharding.data_parallel_size(mesh)
  multiple = math.lcm(dp, jax.process_count())
  if micro_batch % multiple:
    raise UserError(
        f"train.batch_size={t.batch_size} / train.grad_accum_steps={t.grad_accum_steps} = "
        f"{micro_batch} rows per micro-batch cannot be split over {dp} data-parallel devices "
        f"and {jax.process_count()} processes: make the micro-batch a multiple of {multiple}")


class Program:
  """What a run compiles: the mesh, the model, its optimizer, and the train state's shapes
  and shardings. Compiling the train step needs neither parameters nor data."""

  def __init__(self, config: ml_collections.ConfigDict, vocab_size: int,
               devices: Sequence[jax.Device] | None = None):
    self.config = config
    self.mesh = sharding.make_mesh(config.mesh, devices)
    _check_batch(config, self.mesh)
    self.model = GPT(config_lib.model_config(config, vocab_size, training=True))
    self.schedule = optim.learning_rate_schedule(config.train)
    self.optimizer = optim.make_optimizer(config.train)
    self.abstract_state = state_lib.abstract_state(self.model, self.optimizer, self.mesh)
    self.shardings = jax.tree.map(lambda leaf: leaf.sharding, self.abstract_state)

  def context(self) -> contextlib.AbstractContextManager:
    """The mesh and logical-axis rules under which the model and steps run."""
    return sharding.rules_context(self.mesh)

  def compile_train_step(self) -> tuple[jax.stages.Compiled, dict]:
    """The train step compiled ahead of time from abstract shapes, and its figures: the
    seconds lowering and compiling took and memory.compiled_memory's bytes per device."""
    c = self.config
    train_step = steps.jit_train_step(self.model, self.optimizer, self.schedule,
                                      state_lib.dropout_key(c.seed), self.mesh, self.shardings)
    batch = steps.abstract_batch(self.mesh, c.train.batch_size, c.train.grad_accum_steps,
                                 c.model.block_size, segments=has_segments(c))
    started = time.perf_counter()
    with self.context():
      compiled = train_step.lower(self.abstract_state, *batch).compile()
    return compiled, {"compile_seconds": time.perf_counter() - started,
                      **memory.compiled_memory(compiled)}


@dataclasses.dataclass(frozen=True)
class CompiledSteps:
  """What a run executes, compiled ahead of time from abstract shapes."""
  train_step: jax.stages.Compiled  # (state, batch, stop rows) -> (state, step metrics)
  eval_loss: jax.stages.Compiled  # (params, batches) -> mean validation loss
  figures: dict  # the train step's compile seconds and memory (Program.compile_train_step)


@dataclasses.dataclass
class _Loop:
  """What the training loop's steps share besides the step and the state."""
  compiled: CompiledSteps
  eval_set: steps.Batch
  writer: metrics.MetricsWriter
  trace: profiling.StepTrace
  throughput: throughput.Throughput
  start_step: int
  norms: steps.ParameterNorms
  started: float = dataclasses.field(default_factory=time.perf_counter)


class Trainer:
  """Trains a run: its setup (run_setup.resolve_run: config, data, tokenizer, checkpoints),
  its Program (mesh, model, optimizer, state shapes) and its stop request. `run()` trains
  from the newest checkpoint to train.max_steps, logging, evaluating and checkpointing on the
  config's cadence."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               devices: Sequence[jax.Device] | None = None,
               explicit_keys: set[str] | None = None):
    """`explicit_keys`: the config keys given on the command line (run_setup.resolve_run)."""
    self.is_main = jax.process_index() == 0
    self.setup = run_setup.resolve_run(config, workdir, explicit_keys, self.is_main)
    try:
      self.program = Program(config, self.tokenizer.vocab_size, devices)
      memory.check_state_fits(self.program.abstract_state)
      self.hellaswag = hellaswag.DuringTraining(config, self.model, self.mesh, self.tokenizer)
    except BaseException:
      self.checkpoints.close()
      raise
    self.stop_request = signals.StopRequest()  # SIGTERM / SIGINT: save and stop
    self._stop_rows = {}

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.setup.config

  @property
  def workdir(self) -> str:
    return self.setup.workdir

  @property
  def tokenizer(self) -> Tokenizer:
    return self.setup.tokenizer

  @property
  def checkpoints(self) -> checkpoint.Checkpointer:
    return self.setup.checkpoints

  @property
  def model(self) -> GPT:
    return self.program.model

  @property
  def mesh(self) -> jax.sharding.Mesh:
    return self.program.mesh

  def context(self) -> contextlib.AbstractContextManager:
    return self.program.context()

  def log(self, message: str) -> None:
    if self.is_main:
      print(message, flush=True)

  def compiled_steps_and_initial_state(self) -> tuple[CompiledSteps, state_lib.TrainState]:
    """The run's train step and evaluation loop compiled ahead of time, and its initial
    state, made or restored only once the step is known to fit; a UserError if it cannot."""
    with self._eval_loss_compiling() as eval_loss:
      train_step, figures = self.fitting_train_step()
      state = self.initial_state()
      return CompiledSteps(train_step, eval_loss.result(), figures), state

  def initial_state(self) -> state_lib.TrainState:
    """The newest checkpoint's state, or a new one (from the pretrained weights, if any)."""
    step = self.checkpoints.latest_step()
    if step is None:
      return self._new_state()
    max_steps = self.config.train.max_steps
    if step >= max_steps:
      where = "at" if step == max_steps else "past"
      self.log(f"the run is already at step {step}, {where} train.max_steps={max_steps}: "
               "nothing to train (raise --config.train.max_steps to go on)")
    else:
      self.log(f"resuming from the checkpoint of step {step}")
    return self._restore(step)

  def _new_state(self) -> state_lib.TrainState:
    p, pretrained, params = self.program, self.setup.pretrained, None
    if pretrained:
      self.log(f"initialising from {self.config.init_from} ({pretrained})")
      params = pretrained_lib.load_params(pretrained, self.model.config,
                                          state_lib.abstract_params(self.model, self.mesh))
    return state_lib.init_state(self.model, p.optimizer, self.mesh, self.config.seed, params,
                                p.shardings)

  def _restore(self, step: int) -> state_lib.TrainState:
    try:
      return self.checkpoints.restore(step, self.program.abstract_state)
    except checkpoint.DamagedCheckpointError as e:
      raise UserError(f"{e}: the newest checkpoint is damaged; move that folder out of "
                      f"{self.workdir}/checkpoints to resume from the one before it") from e

  def fitting_train_step(self) -> tuple[jax.stages.Compiled, dict]:
    """compile_train_step's step and figures, logged; a UserError, naming what to lower, if
    the step needs more than a device's memory."""
    train_step, figures = self.program.compile_train_step()
    self.log(memory.describe(figures))
    memory.check_step_fits(figures)
    return train_step, figures

  @contextlib.contextmanager
  def _eval_loss_compiling(self) -> Iterator[concurrent.futures.Future]:
    """The compiled evaluation loop's future. XLA compiles on one core: the evaluation loop
    compiles on another thread while the block runs."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      yield pool.submit(self._in_context, self._compile_eval_loss)

  def _in_context(self, function):
    """`function()` under the run's mesh and rules (a context of the thread that enters it)."""
    with self.context():
      return function()

  def _compile_eval_loss(self) -> jax.stages.Compiled:
    t, p = self.config.train, self.program
    batches = steps.abstract_arrays(
        self.mesh, (t.eval_steps, t.batch_size, self.config.model.block_size),
        segments=has_segments(self.config))
    eval_loss = steps.jit_eval_loss(self.model, self.mesh, p.shardings.params)
    return eval_loss.lower(p.abstract_state.params, batches).compile()

  def batch_stream(self, start_step: int, end_step: int) -> data.BatchStream:
    """This process's training batches for the steps after start_step, up to end_step."""
    c, t = self.config, self.config.train
    return data.BatchStream(self.setup.dataset.train, c.seed, jax.process_index(),
                            t.batch_size // jax.process_count(), c.model.block_size,
                            start_step, end_step, use_tf=_use_tf(c),
                            process_count=jax.process_count(), micro_batches=t.grad_accum_steps)

  def global_micro_batches(self, batch: tuple[np.ndarray, ...]) -> steps.Batch:
    """A batch's (B, T) local rows -> global (A, B/A, T) arrays, A = grad_accum_steps."""
    a = self.config.train.grad_accum_steps
    return tuple(sharding.global_batch(z.reshape(a, -1, z.shape[-1]), self.mesh, leading_dims=1)
                 for z in batch)

  def eval_set(self) -> steps.Batch:
    """The validation batches, stacked (E, B, T) and placed on the mesh."""
    t = self.config.train
    batches = data.eval_batches(self.setup.dataset.val, self.config.seed, jax.process_index(),
                                t.batch_size // jax.process_count(), self.config.model.block_size,
                                t.eval_steps, process_count=jax.process_count())
    return tuple(sharding.global_batch(np.stack(z), self.mesh, leading_dims=1)
                 for z in zip(*batches))

  def stop_rows(self) -> jax.Array:
    """This process's stop request, one per row of its micro-batch (see steps.train_step)."""
    local_rows = self.config.train.batch_size // self.config.train.grad_accum_steps \
        // jax.process_count()
    flag = bool(self.stop_request)
    if flag not in self._stop_rows:
      self._stop_rows[flag] = sharding.global_batch(np.full(local_rows, flag, np.int32),
                                                    self.mesh)
    return self._stop_rows[flag]

  def run(self) -> dict:
    """Trains from the newest checkpoint (or from scratch) to train.max_steps; returns the
    last step and validation loss."""
    with contextlib.ExitStack() as cleanup:  # closed in the reverse order
      cleanup.callback(self.checkpoints.close)  # waits for the last save to be on disk
      writer = metrics.MetricsWriter(self.workdir, enabled=self.is_main)
      cleanup.callback(writer.close)
      # Process 0 alone traces: processes sharing a host would write the same file (per host).
      trace = profiling.StepTrace(os.path.join(self.workdir, metrics.TENSORBOARD_DIR),
                                config_lib.profile_window(self.config) if self.is_main else None)
      cleanup.callback(trace.stop)
      with self.context(), self.stop_request.installed():
        compiled, state = self.compiled_steps_and_initial_state()
        self._save_run_files(int(state.step))
        return self._train_from(state, self._loop(state, compiled, writer, trace))

  def _save_run_files(self, step: int) -> None:
    """The tokenizer and config, saved only now: a run refused at start, or resumed with
    nothing to train, leaves the workdir as it was (a new run, at step 0, saves them even at
    train.max_steps=0)."""
    if self.is_main and (step == 0 or step < self.config.train.max_steps):
      self.tokenizer.save(self.workdir)
      config_lib.save_config(self.config, self.workdir)
      if self.setup.pretrained:  # export writes the model back with its own config.json
        pretrained_lib.save_hf_config(self.setup.pretrained, self.workdir)

  def _loop(self, state: state_lib.TrainState, compiled: CompiledSteps,
            writer: metrics.MetricsWriter, trace: profiling.StepTrace) -> _Loop:
    c, t, dataset = self.config, self.config.train, self.setup.dataset
    num_params = count_params(state.params)
    self.log(f"model: {num_params / 1e6:.2f}M parameters, vocabulary "
             f"{self.tokenizer.vocab_size} (padded to {self.model.config.padded_vocab_size}); "
             f"mesh {dict(self.mesh.shape)}; train {len(dataset.train):,} tokens, "
             f"val {len(dataset.val):,}")
    rate = throughput.Throughput(t.batch_size * c.model.block_size,
                                 throughput.flops_per_token(self.model.config, num_params),
                                 jax.device_count())
    return _Loop(compiled, self.eval_set(), writer, trace, rate, int(state.step),
                 steps.ParameterNorms(self.model.config.lora_rank))

  def _train_from(self, state: state_lib.TrainState, loop: _Loop) -> dict:
    t, start = self.config.train, loop.start_step
    stream = self.batch_stream(start, t.max_steps)
    # On CPU with several devices, dispatching sharded steps without waiting can make XLA's
    # all-reduce rendezvous time out and abort the process ("Termination timeout for all
    # reduce RendezvousKey", jax 0.10.2, even with 2 devices on 2 cores); elsewhere one step
    # may run while the next is dispatched.
    max_pending = 0 if jax.default_backend() == "cpu" else 1
    pending = collections.deque()
    last = {"step": start}
    loop.throughput.measure(start)
    batches = map(self.global_micro_batches, stream)
    batch = next(batches, None)
    stop = False
    for step in range(start + 1, t.max_steps + 1):
      loop.trace.before(step)
      before = loop.norms.before(state.params) if self._logs(step) else None
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, step_metrics = loop.compiled.train_step(state, batch, self.stop_rows())
        batch = next(batches, None)  # made and placed while the step runs
        if before is not None:
          if not max_pending:  # the norms' program after the step's, not beside it (above)
            jax.block_until_ready(step_metrics)
          step_metrics = {**step_metrics, **loop.norms.after(before, state.params)}
      loop.trace.after(step, state)
      pending.append((step, step_metrics))
      evaluate = step % t.eval_every == 0 or step == t.max_steps
      save = step % t.checkpoint_every == 0 or step == t.max_steps
      hellaswag_due = self.hellaswag.due(step)
      # Every loss up to a step is checked before that step is evaluated or saved. Which
      # steps are read here depends only on the schedule, so every process sees a stop that
      # one of them reports at the same step, and saves that step.
      while len(pending) > (0 if evaluate or save or stop or hellaswag_due else max_pending):
        stop |= self._log_step(*pending.popleft(), loop)
      if evaluate:
        last["val_loss"] = self._evaluate_and_keep_best(step, state, loop)
      if hellaswag_due:
        self._evaluate_hellaswag(step, state, loop)
      if evaluate or hellaswag_due:
        loop.throughput.measure(step)  # evaluation time is not training throughput
      if save or stop:
        self.checkpoints.save(step, state)
      last["step"] = step
      if stop and step < t.max_steps:
        self._stop_after(step)
    self.state = state
    return last

  def _logs(self, step: int) -> bool:
    t = self.config.train
    return step % t.log_every == 0 or step == t.max_steps

  def _log_step(self, step: int, step_metrics: steps.Metrics, loop: _Loop) -> bool:
    """Checks and logs a step's loss; returns whether some process asked to stop."""
    loss = float(step_metrics["loss"])
    if not math.isfinite(loss):
      newest = self.checkpoints.latest_step()
      kept = (f"the newest good checkpoint, {newest}, is kept" if newest is not None
              else "no checkpoint was written yet")
      raise UserError(f"the training loss became {loss} at step {step}: lower "
                      f"train.learning_rate or raise train.warmup_steps; {kept}")
    stop = bool(step_metrics["stop"])
    if not self._logs(step):
      return stop
    t = self.config.train
    rate = loop.throughput.measure(step)
    values = {"train_loss": loss, **{key: float(step_metrics[key]) for key in (
        "lr", "grad_norm", "param_norm", "update_norm")}, **rate}
    loop.writer.write(step, **values)
    elapsed = time.perf_counter() - loop.started
    eta = elapsed / max(step - loop.start_step, 1) * (t.max_steps - step)
    line = f"step {step:6d}/{t.max_steps} | loss {loss:.4f} | lr {values['lr']:.2e}"
    if "tokens_per_sec" in rate:
      line += f" | {rate['tokens_per_sec']:,.0f} tok/s"
    if "mfu" in rate:
      line += f" | mfu {100 * rate['mfu']:.1f}%"
    self.log(line + f" | eta {_format_duration(eta)}")
    return stop

  def _evaluate_and_keep_best(self, step: int, state: state_lib.TrainState, loop: _Loop
                              ) -> float:
    val_loss = float(loop.compiled.eval_loss(state.params, loop.eval_set))
    loop.writer.write(step, val_loss=val_loss)
    self.log(f"step {step:6d} | val loss {val_loss:.4f}")
    self.checkpoints.save_if_best(step, state, val_loss)
    return val_loss

  def _evaluate_hellaswag(self, step: int, state: state_lib.TrainState, loop: _Loop) -> None:
    scores = self.hellaswag(state.params)
    loop.writer.write(step, **scores)
    self.log(f"step {step:6d} | hellaswag acc {scores['hellaswag_acc']:.4f} | acc_norm "
             f"{scores['hellaswag_acc_norm']:.4f} ({len(self.hellaswag.examples):,} examples)")

  def _stop_after(self, step: int) -> NoReturn:
    """Stops the run on a stop request, once the checkpoint of `step` is on disk."""
    self.checkpoints.wait()
    raise Interrupted(f"stopped by {self.stop_request.signal_name or 'another process'} "
                      f"after step {step}, whose checkpoint is saved: run the same command "
                      "to resume", exit_code=self.stop_request.exit_code)

  def sample(self, prompt: str | None = None, max_new_tokens: int = 300) -> str:
    """A short sample from the trained parameters (printed after training)."""
    prompt = generate.default_prompt(self.tokenizer) if prompt is None else prompt
    with self.context():
      pieces = generate.generate_text(self.model, self.state.params, self.tokenizer, prompt,
                                      max_new_tokens, generate.Sampling(temperature=0.8, top_k=200))
      return prompt + "".join(sample[0] for sample in pieces)


def has_segments(config) -> bool:
  """Whether the run's batches carry segments (x, y, segments): chat data's do."""
  return config.data.source == "chat"


def _use_tf(config) -> bool | None:
  return {"auto": None, "tf": True, "numpy": False}[config.data.pipeline]


def _format_duration(seconds: float) -> str:
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
