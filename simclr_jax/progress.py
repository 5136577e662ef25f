# Not clu.periodic_actions.ReportProgress: that module imports TensorFlow when imported.
"""One progress line: `desc  epoch E  step S/T  loss L  N img/s  ETA m:ss`.

On a terminal the line is redrawn in place (carriage return, at most `min_interval` apart); when
the stream is not a terminal (a log file, CI, a pipe) it is printed as a plain line, only when
`update(..., log=True)` says so (the loop's log cadence), so files get no control characters
and no flood. Quiet on processes other than 0. Written by hand (~50 lines) rather than with tqdm:
the loop already knows its rates and metrics, and tqdm is not a dependency here.
"""

from __future__ import annotations

import sys
import time

import jax


def clock(seconds: float) -> str:
  seconds = max(0, int(round(seconds)))
  h, rem = divmod(seconds, 3600)
  return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


class Progress:
  """`update(done, log=..., **fields)` after each step; `close()` at the end."""

  def __init__(self, desc: str, total: int, start: int = 0, unit: str = "step",
               stream=None, min_interval: float = 0.5):
    self.desc, self.total, self.start, self.unit = desc, int(total), int(start), unit
    self.stream = sys.stdout if stream is None else stream
    self.enabled = jax.process_index() == 0
    self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
    self.min_interval = min_interval
    self.t0 = time.perf_counter()
    self._last_draw, self._width, self.fields = 0.0, 0, {}

  def line(self, done: int) -> str:
    elapsed = time.perf_counter() - self.t0
    parts = [self.desc]
    parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
              for k, v in self.fields.items() if k not in ("loss", "img/s")]
    parts.append(f"{self.unit} {done}/{self.total}")
    if "loss" in self.fields:
      parts.append(f"loss {self.fields['loss']:.4f}")
    if "img/s" in self.fields:
      parts.append(f"{self.fields['img/s']:.1f} img/s")
    rate = (done - self.start) / elapsed if elapsed > 0 else 0.0
    if rate > 0 and done < self.total:
      parts.append(f"ETA {clock((self.total - done) / rate)}")
    elif done >= self.total:
      parts.append(f"in {clock(elapsed)}")
    return "  ".join(parts)

  def update(self, done: int, log: bool = False, **fields) -> None:
    if not self.enabled:
      return
    self.fields.update(fields)
    now = time.perf_counter()
    if self.tty:
      if log or done >= self.total or now - self._last_draw >= self.min_interval:
        text = self.line(done)
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width, self._last_draw = len(text), now
    elif log or done >= self.total:
      self.stream.write(self.line(done) + "\n")
      self.stream.flush()

  def close(self) -> None:
    if self.enabled and self.tty and self._width:
      self.stream.write("\n")
      self.stream.flush()
      self._width = 0
