"""A plain PyTorch SimCLR train step, the reference benchmarks/train_step.py compares with.

  pip install -e .[bench]      # torch (CPU build); not a dependency of the package or tests
  python benchmarks/torch_reference.py --recipes cifar10,sdo

The same network and step as the JAX recipes (the cifar10 and sdo configs with Adam 1e-3):
a torchvision-layout ResNet (written here: torchvision's PyPI wheel need not import beside
this torch), the projection head of simclr_jax/models/heads.py (Dense -> BN -> ReLU
layers, then Dense without bias), the online classifier on detached h where the config has
one, NT-Xent at the config's temperature over all 2N views, Adam 1e-3 with the config's L2
weight decay on kernels only (as simclr_jax/optim.py), channels_last, all cores
(torch.set_num_threads(os.cpu_count())), a random batch of 2N views. It does not augment: the
JAX step's on-device augmentation is a small part of its time (benchmarks/augment.py).
Modes: eager and torch.compile (whose compile time is reported apart: the first step's time
minus a steady step's). Views/s after warm-up. Also torch's float32 and bfloat16 matmul GFLOP/s.
Prints one JSON line, 'RESULT {...}', and each row as it lands on stderr. The parameter count
is checked against the JAX model's (given by --jax-params-<recipe>, else from jax.eval_shape
of the project's model), so the comparison is like for like.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
MARK = "RESULT "


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin, filters, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, filters, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(filters)
    self.conv2 = nn.Conv2d(filters, filters, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(filters)
    self.shortcut = _shortcut(cin, filters, stride)

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    return F.relu(self.shortcut(x) + self.bn2(self.conv2(y)))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, filters, stride):
    super().__init__()
    out = filters * 4
    self.conv1 = nn.Conv2d(cin, filters, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(filters)
    self.conv2 = nn.Conv2d(filters, filters, 3, stride, 1, bias=False)   # v1.5: stride here
    self.bn2 = nn.BatchNorm2d(filters)
    self.conv3 = nn.Conv2d(filters, out, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(out)
    self.shortcut = _shortcut(cin, out, stride)

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    return F.relu(self.shortcut(x) + self.bn3(self.conv3(y)))


def _shortcut(cin, cout, stride):
  # As simclr_jax/models/resnet.py (and torchvision): a 1x1 conv + BN only where shapes change.
  if cin == cout and stride == 1:
    return nn.Identity()
  return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


BACKBONES = {"resnet18": ((2, 2, 2, 2), BasicBlock), "resnet34": ((3, 4, 6, 3), BasicBlock),
             "resnet50": ((3, 4, 6, 3), Bottleneck), "resnet101": ((3, 4, 23, 3), Bottleneck)}


class ResNet(nn.Module):
  def __init__(self, backbone, channels, width_multiplier=1.0, cifar_stem=False):
    super().__init__()
    sizes, block = BACKBONES[backbone]
    width = int(round(64 * width_multiplier))
    if cifar_stem:     # 3x3 stride-1 stem, no max-pool
      stem = [nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
              nn.ReLU()]
    else:
      stem = [nn.Conv2d(channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
              nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    layers, cin = stem, width
    for i, n in enumerate(sizes):
      for j in range(n):
        layers.append(block(cin, width * 2**i, 2 if i > 0 and j == 0 else 1))
        cin = width * 2**i * block.expansion
    self.body = nn.Sequential(*layers)
    self.features = cin
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

  def forward(self, x):
    return self.body(x).mean((2, 3))


class SimCLR(nn.Module):
  """Encoder + projection (+ online head on h.detach()); forward returns the step's loss."""

  def __init__(self, m, channels, num_classes, temperature):
    super().__init__()
    self.encoder = ResNet(m.backbone, channels, m.width_multiplier, m.cifar_stem)
    layers, d = [], self.encoder.features
    for _ in range(m.proj_layers - 1):
      layers += [nn.Linear(d, m.hidden_mlp), nn.BatchNorm1d(m.hidden_mlp), nn.ReLU()]
      d = m.hidden_mlp
    self.projection = nn.Sequential(*layers, nn.Linear(d, m.feat_dim, bias=False))
    self.online_head = None
    if num_classes:
      h, p = m.online_hidden, m.online_dropout
      self.online_head = (nn.Linear(self.encoder.features, num_classes) if h == 0 else
                          nn.Sequential(nn.Dropout(p), nn.Linear(self.encoder.features, h,
                                                                 bias=False),
                                        nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(p),
                                        nn.Linear(h, num_classes)))
    self.temperature = temperature

  def forward(self, x, labels):
    h = self.encoder(x)
    z = F.normalize(self.projection(h).float(), dim=1)
    n2 = z.shape[0]
    logits = (z @ z.T / self.temperature).masked_fill(
        torch.eye(n2, dtype=torch.bool, device=z.device), -1e9)
    # Row i's positive is the other view of the same image: i + N for the first half.
    pos = (torch.arange(n2, device=z.device) + n2 // 2) % n2
    loss = F.cross_entropy(logits, pos)
    if self.online_head is not None:
      loss = loss + F.cross_entropy(self.online_head(h.detach()).float(), labels)
    return loss


def recipe(name, batch):
  sys.path.insert(0, HERE)
  import train_step   # the recipes are defined once, from the project's real configs
  return train_step.recipe_config(name, batch or None)


def jax_param_count(config) -> int:
  """Parameters of the project's model for this config, without running it (eval_shape)."""
  import jax
  import jax.numpy as jnp

  from simclr_jax.models import simclr as simclr_model
  c = config.data
  model = simclr_model.model_from_config(config.model, num_classes=c.num_classes)
  x = jax.ShapeDtypeStruct((2, c.image_size, c.image_size, c.channels), jnp.float32)
  key = jax.random.PRNGKey(0)
  shapes = jax.eval_shape(lambda x: model.init({"params": key, "dropout": key}, x,
                                               train=False)["params"], x)
  return int(sum(s.size for s in jax.tree.leaves(shapes)))


def matmul_peaks(size, trials) -> dict:
  out = {"matmul_size": size}
  for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(trials):
      t0 = time.perf_counter()
      for _ in range(4):
        torch.mm(a, b)
      best = min(best, (time.perf_counter() - t0) / 4)
    out[f"{name}_gflops"] = 2 * size**3 / best / 1e9
  return out


def measure(name, config, mode, dtype, steps, warmup) -> dict:
  c, m = config.data, config.model
  batch = config.train.batch_size
  torch.manual_seed(0)
  num_classes = c.num_classes if m.online_head else 0
  net = SimCLR(m, c.channels, num_classes, config.loss.temperature)
  net = net.to(memory_format=torch.channels_last).train()
  params = sum(p.numel() for p in net.parameters())
  # L2 on kernels only, added to the gradient before Adam: simclr_jax/optim.py's 'adam'.
  decay = [p for p in net.parameters() if p.ndim > 1]
  rest = [p for p in net.parameters() if p.ndim <= 1]
  opt = torch.optim.Adam([{"params": decay, "weight_decay": config.optim.weight_decay},
                          {"params": rest, "weight_decay": 0.0}],
                         lr=config.optim.learning_rate)
  lo, hi = c.value_range if c.value_range else (0.0, 1.0)
  x = (torch.rand(2 * batch, c.channels, c.image_size, c.image_size) * (hi - lo) + lo
       ).contiguous(memory_format=torch.channels_last)
  labels = torch.randint(0, max(1, c.num_classes), (2 * batch,))
  loss_fn = torch.compile(net) if mode == "compile" else net

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
      loss = loss_fn(x, labels)
    loss.backward()
    opt.step()
    return loss.detach()

  t0 = time.perf_counter()
  step()
  first_s = time.perf_counter() - t0
  for _ in range(warmup):
    step()
  t0 = time.perf_counter()
  for _ in range(steps):
    loss = step()
  dt = time.perf_counter() - t0
  step_s = dt / steps
  return {"backend": "torch eager" if mode == "eager" else "torch.compile", "recipe": name,
          "backbone": m.backbone, "input": f"{c.image_size}x{c.image_size}x{c.channels}",
          "batch": batch, "dtype": dtype, "devices": 1, "params": params,
          "first_step_s": first_s,
          "compile_s": max(0.0, first_s - step_s) if mode == "compile" else None,
          "steps_timed": steps, "warmup_steps": warmup, "step_s": step_s,
          "views_per_s": 2 * batch / step_s, "loss_after": loss.item()}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--recipes", default="cifar10,sdo")
  p.add_argument("--batch", type=int, default=0, help="override every recipe's batch (smoke)")
  p.add_argument("--modes", default="eager,compile")
  p.add_argument("--dtypes", default="float32", help="float32,bfloat16 (autocast)")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--matmul-size", type=int, default=2048)
  p.add_argument("--matmul-trials", type=int, default=5)
  for r in ("cifar10", "sdo"):
    p.add_argument(f"--jax-params-{r}", type=int, default=0,
                   help="the JAX model's parameter count (default: from jax.eval_shape)")
  args = p.parse_args(argv)
  torch.set_num_threads(args.threads)

  out = {"torch": torch.__version__, "threads": torch.get_num_threads(),
         "cpu_count": os.cpu_count(), "peaks": matmul_peaks(args.matmul_size,
                                                             args.matmul_trials),
         "params": {}, "rows": []}
  print(json.dumps(out["peaks"]), file=sys.stderr, flush=True)
  for name in args.recipes.split(","):
    config = recipe(name, args.batch)
    jax_params = getattr(args, f"jax_params_{name}") or jax_param_count(config)
    for mode in args.modes.split(","):
      for dtype in args.dtypes.split(","):
        try:
          row = measure(name, config, mode, dtype, args.steps, args.warmup)
        except Exception as e:  # noqa: BLE001 - e.g. no C++ compiler for torch.compile
          row = {"backend": "torch eager" if mode == "eager" else "torch.compile",
                 "recipe": name, "dtype": dtype, "batch": config.train.batch_size,
                 "error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(json.dumps(row), file=sys.stderr, flush=True)
        out["rows"].append(row)
    torch_params = next((r["params"] for r in out["rows"]
                         if r["recipe"] == name and "params" in r), None)
    out["params"][name] = {"jax": jax_params, "torch": torch_params,
                           "equal": jax_params == torch_params}
    print(f"{name}: parameters JAX {jax_params:,} torch {torch_params or 0:,}"
          + ("" if jax_params == torch_params else "  MISMATCH"), file=sys.stderr, flush=True)
  print(MARK + json.dumps(out), flush=True)


if __name__ == "__main__":
  main()
