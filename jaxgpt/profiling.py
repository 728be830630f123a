"""jax.profiler traces of chosen train steps (train.profile_steps)."""

import jax


class StepTrace:
  """A jax.profiler trace of the train steps first..last of `window` (what remains of them in
  a resumed run), written under `logdir` as plugins/profile/<time>/<host>.xplane.pb and
  .trace.json.gz, where TensorBoard's profile tab finds it."""

  def __init__(self, logdir: str, window: tuple[int, int] | None):
    self._logdir = logdir
    self._first, self._last = window or (1, 0)
    self._started = self._latest = None  # the first and the latest step traced

  def before(self, step: int) -> None:
    if self._first <= step <= self._last:
      if self._started is None:
        jax.profiler.start_trace(self._logdir)
        self._started = step
      self._latest = step

  def after(self, step: int, state) -> None:
    """Ends the trace at the window's last step, once that step has run."""
    if step == self._last:
      jax.block_until_ready(state)
      self.stop()

  def stop(self) -> None:
    """Writes the trace, if one is running (a run may end before the window does)."""
    if self._started is None:
      return
    jax.profiler.stop_trace()
    print(f"profile of steps {self._started}-{self._latest} written to {self._logdir}/plugins/"
          f"profile: view it with `tensorboard --logdir {self._logdir}` (its Profile tab needs "
          "`pip install xprof`), or open its .trace.json.gz in ui.perfetto.dev", flush=True)
    self._started = None
