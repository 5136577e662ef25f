"""The progress line: redrawn in place on a terminal, plain log-cadence lines otherwise."""

import io
import re

from simclr_jax import progress


class _Stream(io.StringIO):
  def __init__(self, tty):
    super().__init__()
    self._tty = tty

  def isatty(self):
    return self._tty


def test_not_a_terminal_gets_one_plain_line_per_log_and_the_last_step():
  out = _Stream(tty=False)
  bar = progress.Progress("pretrain", total=4, stream=out)
  bar.update(1)                                    # not a log step: nothing
  bar.update(2, log=True, epoch="0.5", loss=5.123456, **{"img/s": 321.04})
  bar.update(3)
  bar.update(4, loss=4.0)                          # the last step is always shown
  bar.close()
  lines = out.getvalue().split("\n")
  assert "\r" not in out.getvalue() and lines[-1] == "" and len(lines) == 3
  assert re.fullmatch(r"pretrain  epoch 0\.5  step 2/4  loss 5\.1235  321\.0 img/s  ETA \d+:\d\d",
                      lines[0]), lines[0]
  assert re.fullmatch(r"pretrain  epoch 0\.5  step 4/4  loss 4\.0000  321\.0 img/s  in \d+:\d\d",
                      lines[1]), lines[1]


def test_a_terminal_gets_the_line_redrawn_in_place_and_a_newline_at_the_end():
  out = _Stream(tty=True)
  bar = progress.Progress("features", total=3, unit="image", stream=out, min_interval=0.0)
  for i in (1, 2, 3):
    bar.update(i)
  bar.close()
  text = out.getvalue()
  draws = text.split("\r")[1:]
  assert len(draws) == 3 and text.endswith("\n") and text.count("\n") == 1
  assert draws[0].startswith("features  image 1/3") and draws[2].startswith("features  image 3/3")
  # Each redraw covers the previous one (padded to its width).
  assert all(len(b.rstrip("\n")) >= len(a.rstrip()) for a, b in zip(draws, draws[1:]))


def test_eta_and_clock():
  assert progress.clock(59.6) == "1:00" and progress.clock(3725) == "1:02:05"
