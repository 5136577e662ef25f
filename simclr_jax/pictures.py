"""Pictures of an embedding space: a 2-D map, and a grid of nearest neighbours.

  embedding_map     every embedding placed in 2-D (UMAP where umap-learn is installed, the
                    `umap` extra; else t-SNE from scikit-learn), coloured by label;
  neighbour_grid    query images in the first column, then their k nearest other images by
                    cosine similarity of the embeddings: what the encoder finds similar.
Used by `simclr-jax embed --plot` (simclr_jax/embeddings.py) and the model report. Drawn on the Agg
canvas directly, without pyplot, so no global backend is chosen for the caller.
"""

from __future__ import annotations

import numpy as np

from simclr_jax import extras

METHODS = ("auto", "umap", "tsne", "pca")


def project_2d(h: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
  """(N, 2) coordinates of the rows of `h`, and the method used.

  'auto' is UMAP where installed, else t-SNE; both start from the first 50 principal
  components (the usual denoising step; t-SNE's cost grows with the dimension). Fewer than 5
  points, or 'pca', are the first two principal components.
  """
  if method not in METHODS:
    raise ValueError(f"map method {method!r}; expected one of {METHODS}")
  x = np.asarray(h, np.float64)
  n = len(x)
  if method == "auto":
    method = "umap" if extras.installed("umap") else "tsne"
  from sklearn.decomposition import PCA
  k = max(1, min(50, n - 1, x.shape[1])) if n > 1 else 1
  if n < 5 or method == "pca":
    xy = PCA(n_components=min(2, k), random_state=seed).fit_transform(x) if n > 1 else x[:, :1]
    return np.pad(xy, ((0, 0), (0, 2 - xy.shape[1]))), "pca"
  x = PCA(n_components=k, random_state=seed).fit_transform(x)
  if method == "umap":
    umap = extras.require("umap", "the UMAP embedding map")
    reducer = umap.UMAP(n_neighbors=min(15, n - 1), random_state=seed, n_jobs=1)
    return np.asarray(reducer.fit_transform(x)), "umap"
  from sklearn.manifold import TSNE
  tsne = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed)
  return tsne.fit_transform(x), "t-SNE"


def _figure(width: float, height: float):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height), dpi=100)
  FigureCanvasAgg(fig)
  return fig


def embedding_map(h: np.ndarray, labels: np.ndarray | None, path: str, title: str = "",
                  class_names=None, method: str = "auto", seed: int = 0) -> str:
  """Draws the 2-D map of `h` (coloured by `labels` where given, -1 = unlabelled) to `path`."""
  xy, used = project_2d(h, method, seed)
  fig = _figure(6.5, 5.5)
  ax = fig.subplots()
  labelled = labels is not None and (np.asarray(labels) >= 0).any()
  if labelled:
    labels = np.asarray(labels)
    classes = np.unique(labels[labels >= 0])
    cmap = "tab10" if len(classes) <= 10 else "tab20"
    if (labels < 0).any():
      ax.scatter(*xy[labels < 0].T, s=6, c="lightgrey", label="unlabelled")
    sc = ax.scatter(*xy[labels >= 0].T, s=8, c=labels[labels >= 0], cmap=cmap,
                    vmin=classes.min(), vmax=classes.max() if len(classes) > 1 else classes.min() + 1)
    if len(classes) <= 20:
      handles = [ax.scatter([], [], s=20, color=sc.cmap(sc.norm(c))) for c in classes]
      names = [str(class_names[c]) if class_names is not None and c < len(class_names) else str(c)
               for c in classes]
      ax.legend(handles, names, fontsize=7, markerscale=1, loc="best", title="label")
  else:
    ax.scatter(*xy.T, s=8, c="tab:blue")
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(f"{title}\n{len(xy)} embeddings, {used}" if title else f"{len(xy)} embeddings, "
               f"{used}", fontsize=9)
  fig.tight_layout()
  fig.savefig(path)
  return path


def nearest(h: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
  """(Q, k) indices of the k rows of `h` most cosine-similar to each query row, itself left
  out, most similar first."""
  x = np.asarray(h, np.float64)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  sim = x[queries] @ x.T
  sim[np.arange(len(queries)), queries] = -np.inf
  return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def _display(image: np.ndarray, value_range) -> np.ndarray:
  """(H, W, C) -> an RGB or gray image in [0, 1]: the value range where known, else its own
  min..max; more than 3 channels show the first 3."""
  x = np.asarray(image, np.float64)
  x = x[..., :3] if x.shape[-1] >= 3 else x[..., :1]
  lo, hi = value_range if value_range else (x.min(), x.max())
  x = np.clip((x - lo) / max(hi - lo, 1e-12), 0, 1)
  return x[..., 0] if x.shape[-1] == 1 else x


def pick_queries(n: int, count: int, labels=None, seed: int = 0) -> np.ndarray:
  """`count` indices of n drawn with `seed`: one per class in turn where there are labels
  (so that the queries show every class they can), else uniformly."""
  rng = np.random.default_rng(seed)
  if labels is None or not (np.asarray(labels) >= 0).any():
    return np.sort(rng.choice(n, min(count, n), replace=False))
  labels = np.asarray(labels)
  pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels[labels >= 0])]
  out = []
  while len(out) < min(count, n) and any(pools):
    for pool in pools:
      if pool and len(out) < count:
        out.append(pool.pop())
  return np.asarray(out)


def neighbour_grid(images: np.ndarray, h: np.ndarray, path: str, queries: int = 10, k: int = 7,
                   value_range=None, title: str = "", labels=None, seed: int = 0) -> str:
  """Draws `queries` images (`pick_queries`) and their `k` nearest neighbours in embedding
  space, one row each, to `path`."""
  n = len(images)
  if n < 2:
    raise ValueError(f"a neighbour grid needs at least 2 images, got {n}")
  k = min(k, n - 1)
  q = pick_queries(n, queries, labels, seed)
  idx = nearest(h, q, k)
  fig = _figure(1.1 * (k + 1), 1.1 * len(q) + 0.5)
  axes = fig.subplots(len(q), k + 1, squeeze=False)
  for r, (qi, row) in enumerate(zip(q, idx)):
    for c, i in enumerate([qi, *row]):
      ax = axes[r, c]
      ax.imshow(_display(images[i], value_range), cmap="gray", vmin=0, vmax=1,
                interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if c == 0:
        for side in ax.spines.values():
          side.set_color("tab:red")
          side.set_linewidth(2)
  axes[0, 0].set_title("query", fontsize=8)
  for c in range(1, k + 1):
    axes[0, c].set_title(f"#{c}", fontsize=8)
  fig.suptitle(title or "nearest neighbours (cosine, embeddings)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path)
  return path
