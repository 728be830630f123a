"""Orbax checkpoints of the train state: the only module that talks to Orbax.

WORKDIR/checkpoints/<step>/ holds the newest `keep` states; WORKDIR/best/<step>/ holds the
one with the lowest validation loss. Orbax writes each into a temporary folder and renames it
when complete, so a run killed mid-save never leaves a checkpoint that looks whole.

Each checkpoint keeps the weights (item "params") apart from the step and the optimizer's
state (item "optimizer"): sampling and export read only the weights, so they neither read
Adam's moments (twice the weights' size) nor depend on the optimizer's structure.
"""

import contextlib
import errno
import json
import logging
import os
import re
import sys
import traceback

import jax
import orbax.checkpoint as ocp

from jaxgpt import files, layers
from jaxgpt.errors import UserError, first_line

LATEST_DIR = "checkpoints"
BEST_DIR = "best"
ARRAYS_METADATA = "_METADATA"  # Orbax's description of an item's arrays


# How long a save may take, its cross-process barriers included, before it is an error.
DEFAULT_TIMEOUT_SECS = 1200

PARAMS, OPTIMIZER = "params", "optimizer"
# Checkpoints of older jaxgpt versions hold the whole TrainState in one item, "state", and
# each LayerNorm's parameters one level deeper: h_0/ln_1/LayerNorm_0/scale for h_0/ln_1/scale.
OLD_STATE, OLD_NORM_LEVEL = "state", "LayerNorm_0"


def _manager(directory: str, keep: int, read_only: bool, timeout_secs: int, **options):
  # Each manager's cross-process barriers get a key prefix of their own: without it, saves of
  # the same step under checkpoints/ and best/ share barrier keys and hang or fail together.
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=not read_only, cleanup_tmp_directories=not read_only,
      async_options=ocp.AsyncOptions(timeout_secs=timeout_secs),
      multiprocessing_options=ocp.options.MultiprocessingOptions(
          barrier_sync_key_prefix=os.path.basename(directory)),
      **options)
  try:
    return ocp.CheckpointManager(directory, options=options, item_handlers={
        PARAMS: ocp.StandardCheckpointHandler(), OPTIMIZER: ocp.StandardCheckpointHandler(),
        OLD_STATE: ocp.PyTreeCheckpointHandler()})  # whose partial restore reads params alone
  except (ValueError, KeyError, TypeError) as e:  # a step's metadata, read on opening
    step = _step_with_damaged_metadata(directory)
    folder = os.path.join(directory, step) if step else "the damaged step's folder"
    raise DamagedCheckpointError(
        f"the checkpoints in {directory} cannot be read ({_plain_reason(e)}): move {folder} "
        "out of it (or restore it from a copy)") from None


def _step_with_damaged_metadata(directory: str) -> str | None:
  """The first step folder whose metadata files (read when the folder is opened) are not
  JSON, or None."""
  steps = sorted((name for name in os.listdir(directory) if name.isdigit()), key=int)
  for step in steps:
    for name in ("_CHECKPOINT_METADATA", os.path.join("metrics", "metrics")):
      path = os.path.join(directory, step, name)
      if os.path.isfile(path) and files.read_json(path) is None:
        return step
  return None


class Checkpointer:
  """Saves train states asynchronously; restores them strictly, onto any mesh."""

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False,
               timeout_secs: int = DEFAULT_TIMEOUT_SECS):
    workdir = os.path.abspath(workdir)
    _quiet_background_failures()
    self._latest = _manager(os.path.join(workdir, LATEST_DIR), keep, read_only, timeout_secs)
    self._best, self._best_damage = None, None
    try:
      self._best = _manager(os.path.join(workdir, BEST_DIR), 1, read_only, timeout_secs,
                            best_fn=lambda m: m["val_loss"], best_mode="min")
    except DamagedCheckpointError as e:
      if not read_only:  # training would keep its new best checkpoints there
        self._latest.close()
        raise
      self._best_damage = e  # reading the other checkpoints goes on
      print(f"warning: {e}", file=sys.stderr, flush=True)
    best_step = self._best.best_step() if self._best else None
    self.best_val_loss = (self._best.metrics(best_step) or {}).get("val_loss") \
        if best_step is not None else None

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._latest.all_steps())

  def best_step(self) -> int | None:
    """The best checkpoint's step; a DamagedCheckpointError if best/ could not be opened."""
    if self._best_damage:
      raise self._best_damage
    return self._best.best_step()

  def save(self, step: int, state) -> None:
    """Starts writing `state` in the background; a failed earlier write raises here."""
    with self._failures_as_errors(self._latest):
      self._latest.check_for_errors()
      self._latest.save(step, args=_save_args(state), force=True)

  def save_if_best(self, step: int, state, val_loss: float) -> None:
    """Keeps `state` as the best checkpoint if its validation loss is the lowest yet."""
    if self.best_val_loss is not None and val_loss >= self.best_val_loss:
      return
    if step in self._best.all_steps():  # this step was kept before a crash and its resume
      return
    with self._failures_as_errors(self._best):
      self._best.check_for_errors()
      self._best.save(step, args=_save_args(state), metrics={"val_loss": float(val_loss)},
                      force=True)
    self.best_val_loss = val_loss

  def restore(self, step: int, abstract_state, which: str = "latest"):
    """The whole train state of checkpoint `step`, in the shapes and shardings of
    `abstract_state` (on any mesh), for resuming."""
    wanted = {"step": abstract_state.step, "params": abstract_state.params,
              "opt_state": abstract_state.opt_state}
    return abstract_state.replace(**self._read(step, which, wanted))

  def restore_params(self, step: int, abstract_params, which: str = "latest"):
    """Only the parameters of checkpoint `step`, for sampling and export."""
    return self._read(step, which, {"params": abstract_params})["params"]

  def restore_newest_good_params(self, abstract_params):
    """The newest checkpoint's parameters that read; damaged newer ones are reported and
    left alone. Returns (step, params), or (None, None)."""
    for step in reversed(self.all_steps()):
      try:
        return step, self.restore_params(step, abstract_params)
      except DamagedCheckpointError as e:
        print(f"warning: {e}; trying an older checkpoint (the damaged one is left in place)",
              file=sys.stderr, flush=True)
    return None, None

  def _read(self, step: int, which: str, wanted: dict) -> dict:
    """Reads the parts of a train state named in `wanted` (abstract arrays), in any layout.

    A checkpoint whose blocks are in the other form (model.scan_layers) is read in its own
    form, on shardings derived from the wanted ones, and converted. Shapes are compared first:
    a differently shaped model is an error naming the first mismatch, never a partial restore.
    """
    if which == "best" and self._best_damage:
      raise self._best_damage
    manager = self._best if which == "best" else self._latest
    where = f"checkpoint {step} in {manager.directory}"
    missing = _missing_part(manager.directory / str(step), "opt_state" in wanted)
    if missing:
      raise DamagedCheckpointError(f"{where} cannot be read (its {missing} is missing)")
    try:
      saved = manager.item_metadata(step)
      old_layout = saved.get(OLD_STATE) is not None
      saved_params = saved[OLD_STATE].tree["params"] if old_layout else saved[PARAMS].tree
    except Exception as e:  # pylint: disable=broad-except
      raise DamagedCheckpointError(f"{where} cannot be read ({_plain_reason(e)})") from e
    params = _unnest_norms(saved_params)
    target = layers.in_form(wanted, layers.is_scanned(params))
    mismatch = _first_mismatch(params, target["params"])
    if mismatch:
      raise UserError(f"{where} does not fit this model: {mismatch}; use the run's own model "
                      "settings (see its config.json) or a new --workdir")
    if jax.tree.structure(params) != jax.tree.structure(saved_params):
      target = _nest_norms(target)
    try:
      restored = manager.restore(step, args=_restore_args(target, old_layout))
    except Exception as e:  # pylint: disable=broad-except
      raise DamagedCheckpointError(f"{where} cannot be read ({_plain_reason(e)})") from e
    if old_layout:
      parts = restored[OLD_STATE]
    else:
      parts = {"params": restored[PARAMS], **(restored.get(OPTIMIZER) or {})}
    return layers.converted(_unnest_norms(parts), wanted)

  def wait(self) -> None:
    """Blocks until every save is on disk; a failed save raises here."""
    for manager in self._managers():
      with self._failures_as_errors(manager):
        manager.wait_until_finished()
        manager.check_for_errors()

  @contextlib.contextmanager
  def _failures_as_errors(self, manager):
    """A save that fails or times out (here or, through the cross-process barriers, on
    another process) is one UserError naming the folder and the newest complete checkpoint."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except  # Orbax raises many kinds
      kept = (f"the newest complete checkpoint, {self._newest_complete()}, is kept: run the "
              "same command to resume from it")
      if _disk_full(e):
        raise SaveFailedError(
            f"the disk holding {manager.directory} is full (No space left on device), so a "
            f"checkpoint could not be written: free space there or pass another --workdir; "
            f"{kept}") from e
      raise SaveFailedError(
          f"writing a checkpoint in {manager.directory} failed ({first_line(e)}): check free "
          "space and write access there (with several processes, also the other processes' "
          f"logs); {kept}") from e

  def _newest_complete(self):
    try:
      self._latest.reload()
      return max(self._latest.all_steps(), default="none")
    except Exception:  # pylint: disable=broad-except  # the folder itself may be unreadable
      return "unknown"

  def close(self) -> None:
    try:
      self.wait()
    finally:  # each item of a failed save reports its own error, the later ones here
      for manager in self._managers():
        with self._failures_as_errors(manager):
          manager.close()

  def _managers(self):
    return [self._latest] + ([self._best] if self._best else [])


class DamagedCheckpointError(UserError):
  """A checkpoint folder exists but its files cannot be read."""


class SaveFailedError(UserError):
  """Writing a checkpoint failed or timed out."""


def _missing_part(step_dir, needs_optimizer: bool) -> str | None:
  """The first part of a checkpoint's folder that reading it needs and that is missing
  (`params/_METADATA file`), or None. Orbax would report it as a None or a KeyError, after a
  warning of its own."""
  if (step_dir / OLD_STATE).exists():
    return None
  for item in (PARAMS, OPTIMIZER) if needs_optimizer else (PARAMS,):
    for part, kind in ((item, "folder"), (f"{item}/{ARRAYS_METADATA}", "file")):
      if not (step_dir / part).exists():
        return f"{part} {kind}"
  return None


# A status code opens TensorStore's messages: `DATA_LOSS: Error reading ...`.
_STATUS = re.compile(r"[A-Z][A-Z_]+: ")


def _plain_reason(error: Exception) -> str:
  """The cause of a reading error in words: a metadata file that is not JSON, or the innermost
  error of the chain that carries TensorStore's status (Orbax wraps it in one that quotes an
  array index and TensorStore's spec), without its spec, object reprs and quoted paths:
  `DATA_LOSS: Error decoding b-tree node: CRC-32C checksum verification failed: ...`."""
  causes = list(_chain(error))
  not_json = next((e for e in causes if isinstance(e, json.JSONDecodeError)), None)
  if not_json:
    return f"a metadata file in it is not JSON (cut short or overwritten): {not_json}"
  line = next((first_line(e) for e in reversed(causes) if _STATUS.match(first_line(e))),
              first_line(error))
  line = re.split(r"\s*\[tensorstore_spec=|\s*<bound method |\s*<[\w.]+ object at ", line)[0]
  segments = line.split(": ")
  cause = []
  while segments and '"' not in segments[-1]:  # paths and file names come quoted
    cause.insert(0, segments.pop())
  code = segments[0] if segments and segments[0].isupper() else ""
  return ": ".join(([code] if code and cause else []) + cause) or line


def _chain(error: BaseException):
  """`error` and the errors that caused it, outermost first."""
  while error is not None:
    yield error
    error = error.__cause__ or error.__context__


def _disk_full(error: BaseException) -> bool:
  """Whether ENOSPC caused `error` (TensorStore reports it inside a ValueError's text)."""
  return any(getattr(e, "errno", None) == errno.ENOSPC or "No space left on device" in str(e)
             for e in _chain(error))


def _quiet_background_failures() -> None:
  """Drops the many reports Orbax's background writers make of one failed save, and of one
  damaged checkpoint.

  A full disk during a save makes them print some 1,500 lines: absl errors with tracebacks,
  asyncio's "exception was never retrieved" for every array (some at exit), and TensorStore
  callbacks into a closed event loop. A restore that fails leaves reads of other arrays
  unfinished, and each prints a traceback with TensorStore's whole spec when it is collected.
  The Checkpointer reports the failure itself, once, as a SaveFailedError or a
  DamagedCheckpointError; other errors and all warnings pass as before. Installed once per
  process.
  """
  if sys.unraisablehook is not _unraisable:
    _unraisable.default = sys.unraisablehook
    sys.unraisablehook = _unraisable
    for name in ("absl", "asyncio"):
      logging.getLogger(name).addFilter(_not_from_orbax)


def _unraisable(unraisable) -> None:
  if not (_closed_event_loop(unraisable) or _abandoned_orbax_read(unraisable)):
    _unraisable.default(unraisable)


def _closed_event_loop(unraisable) -> bool:
  return (unraisable.object is None and isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == "Event loop is closed")


def _abandoned_orbax_read(unraisable) -> bool:
  """An Orbax coroutine closed unfinished that turned the close (GeneratorExit) into an error."""
  code = getattr(unraisable.object, "cr_code", None)
  return (code is not None and "orbax" in code.co_filename
          and isinstance(getattr(unraisable.exc_value, "__cause__", None), GeneratorExit))


def _not_from_orbax(record: logging.LogRecord) -> bool:
  if record.levelno < logging.ERROR:
    return True
  if record.name == "asyncio" and "exception was never retrieved" in record.getMessage():
    return False  # only Orbax runs asyncio here; a TensorStore error's frames are not its own
  frames = traceback.extract_tb(record.exc_info[2]) if record.exc_info else []
  return not ("orbax" in record.pathname or "orbax" in record.getMessage()
              or any("orbax" in frame.filename for frame in frames) or _called_from_orbax())


def _called_from_orbax() -> bool:
  """Whether Orbax's code is logging now: absl's logging functions can name themselves as the
  record's origin."""
  frame = sys._getframe(2)  # pylint: disable=protected-access
  while frame is not None:
    if "orbax" in frame.f_code.co_filename:
      return True
    frame = frame.f_back
  return False


def _save_args(state):
  return ocp.args.Composite(**{
      PARAMS: ocp.args.StandardSave(state.params),
      OPTIMIZER: ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state})})


def _restore_args(wanted: dict, old_layout: bool):
  """Orbax's arguments that read `wanted` ("params", and "step" and "opt_state" or neither)."""
  if old_layout:
    return ocp.args.Composite(**{OLD_STATE: ocp.args.PyTreeRestore(
        wanted, restore_args=ocp.checkpoint_utils.construct_restore_args(wanted),
        partial_restore="opt_state" not in wanted)})
  args = {PARAMS: ocp.args.StandardRestore(wanted["params"])}
  if "opt_state" in wanted:
    args[OPTIMIZER] = ocp.args.StandardRestore(
        {"step": wanted["step"], "opt_state": wanted["opt_state"]})
  return ocp.args.Composite(**args)


def _is_norm(tree) -> bool:
  return isinstance(tree, dict) and "scale" in tree


def _is_nested_norm(tree) -> bool:
  return isinstance(tree, dict) and set(tree) == {OLD_NORM_LEVEL}


def _nest_norms(tree):
  """Today's LayerNorm paths (in parameters and optimizer state) as old checkpoints have them."""
  return jax.tree.map(lambda x: {OLD_NORM_LEVEL: x} if _is_norm(x) else x, tree, is_leaf=_is_norm)


def _unnest_norms(tree):
  return jax.tree.map(lambda x: x[OLD_NORM_LEVEL] if _is_nested_norm(x) else x, tree,
                      is_leaf=_is_nested_norm)


def _first_mismatch(saved_tree, target_tree) -> str | None:
  """Describes the first parameter whose presence or shape differs, or None."""
  saved = {jax.tree_util.keystr(p): v.shape
           for p, v in jax.tree_util.tree_flatten_with_path(saved_tree)[0]}
  target = {jax.tree_util.keystr(p): v.shape
            for p, v in jax.tree_util.tree_flatten_with_path(target_tree)[0]}
  for name in sorted(saved.keys() | target.keys()):
    if name not in target:
      return f"the checkpoint has parameter {name} {saved[name]} that this model lacks"
    if name not in saved:
      return f"this model has parameter {name} {target[name]} that the checkpoint lacks"
    if tuple(saved[name]) != tuple(target[name]):
      return (f"parameter {name} has shape {tuple(saved[name])} in the checkpoint but "
              f"{tuple(target[name])} in this model")
  return None
