"""What a linear probe reads from a pretrained SimCLR model: h, or more of the network.

The protocol's probe reads h, the encoder's globally pooled output. A narrow encoder has a
short h (128 numbers for ResNet-18 x1/4), and global pooling throws away where in the image a
feature fired. Two standard ways to give the probe more of what pretraining learned, without
training anything but the probe:

- the projection head's first layer (Dense, BatchNorm, ReLU), where SimCLR v2 fine-tunes from
  (its § 2: the middle of the head is a better representation than h for few labels);
- a stage's feature map average-pooled over a 2x2 grid instead of 1x1, the readout of
  convolutional features in the self-supervised evaluations before SimCLR (Zhang et al. 2016,
  Colorful Image Colorization; Doersch et al. 2015), here from the last two stages.

A feature set is names joined by '+', concatenated in that order: `h`, `head1`, `s4_2x2`
(the last stage), `s3_2x2` (the stage before). `Readout(model, spec).apply` has the model's
signature and puts the set under 'h', so evaluate.extract_features reads it as it reads h.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

PARTS = ("h", "head1", "s4_2x2", "s3_2x2")


def parse(spec: str) -> tuple[str, ...]:
  """'s3_2x2+s4_2x2+head1' -> its parts; one line naming the bad part otherwise."""
  parts = tuple(p.strip() for p in str(spec).split("+"))
  bad = [p for p in parts if p not in PARTS] or (["(repeated)"] if len(set(parts)) < len(parts)
                                                  else [])
  if bad:
    raise ValueError(f"features {spec!r}: {bad[0]!r} is not one of {', '.join(PARTS)}; "
                     "expected distinct names joined by '+'")
  return parts


def adaptive_avg_pool(x, out: int = 2):
  """NHWC -> (N, out*out*C): torch's adaptive_avg_pool2d (cell i spans floor(i*H/out) to
  ceil((i+1)*H/out), so an odd side overlaps by one row) flattened row-major, cell by cell."""
  n, height, width, c = x.shape
  def spans(size):
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]
  cells = [x[:, r0:r1, c0:c1].mean(axis=(1, 2)) for r0, r1 in spans(height)
           for c0, c1 in spans(width)]
  return jnp.stack(cells, axis=1).reshape(n, out * out * c)


def _stage_outputs(encoder_intermediates) -> list:
  """The output of each stage's last block, first stage first (blocks are named
  'stage{i}_block{j}' in models/resnet.py and models/sk_resnet.py)."""
  last = {}
  for name in encoder_intermediates:
    if name.startswith("stage") and "_block" in name:
      stage, block = (int(s) for s in name[len("stage"):].split("_block"))
      if block >= last.get(stage, (0, None))[0]:
        last[stage] = (block, encoder_intermediates[name]["__call__"][0])
  return [last[s][1] for s in sorted(last)]


class Readout:
  """`model.apply`-alike whose 'h' is the feature set `spec` of a models.simclr.SimCLRModel."""

  def __init__(self, model, spec: str = "h"):
    self.model, self.parts = model, parse(spec)

  def apply(self, variables, images, train=False):
    parts = self.parts_of(variables, images)
    return {"h": jnp.concatenate([parts[p] for p in self.parts], axis=-1)}

  def dims(self, variables, image_shape) -> dict[str, int]:
    """The width of each part, for images of `image_shape` (H, W, C); nothing computed."""
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    return {p: a.shape[-1] for p, a in jax.eval_shape(self.parts_of, variables, x).items()}

  def parts_of(self, variables, images) -> dict:
    """{part: (batch, width)} for each part of the spec."""
    if self.parts == ("h",):
      return {"h": self.model.apply(variables, images, train=False)["h"]}
    # Capture only the blocks and the head's first BatchNorm: every module would also keep
    # each convolution's output of the batch.
    def wanted(mdl, method):
      path = mdl.scope.path if mdl.scope else ()
      return method == "__call__" and (path == ("projection", "bn1") or (
          len(path) == 2 and path[0] == "encoder" and path[1].startswith("stage")))
    out, state = self.model.apply(variables, images, train=False, mutable=["intermediates"],
                                  capture_intermediates=wanted)
    inter = state["intermediates"]
    stages = _stage_outputs(inter["encoder"])
    f32 = lambda a: a.astype(jnp.promote_types(a.dtype, jnp.float32))
    take = {
        "h": lambda: out["h"],
        # The head's first layer: ProjectionHead's dense1 -> bn1 -> ReLU (models/heads.py).
        "head1": lambda: nn.relu(f32(inter["projection"]["bn1"]["__call__"][0])),
        "s4_2x2": lambda: adaptive_avg_pool(f32(stages[-1])),
        "s3_2x2": lambda: adaptive_avg_pool(f32(stages[-2])),
    }
    return {p: take[p]() for p in self.parts}
