"""A small Fashion-MNIST CNN classifier, trained once and cached, for sample labels and Fréchet features.

Architecture: conv3x3(C->32) ReLU maxpool, conv3x3(32->64) ReLU maxpool, flatten 64*(H//4)*(W//4) ->
Linear(128) ReLU (the *features*, penultimate layer, 128-d) -> Linear(K) (logits), K = max(10, largest
label + 1). Inputs are images in [-1, 1], shape (B, C, H, W), H, W >= 4; Fashion-MNIST is C = 1, H = W = 28
(64*7*7 features). Trained with Adam (lr 1e-3, batch 128) for ``epochs`` epochs, seeded.

Cache: ``cache_dir()/classifier-<key>.pt`` where ``key`` hashes the training arrays, the epochs and the seed,
so the real data set and synthetic test data never share a cache entry.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from classdiff.data.fashion_mnist import cache_dir

__all__ = ["classifier_features", "get_classifier", "train_classifier"]

FEATURE_DIM = 128


def _net(in_channels: int = 1, size: tuple[int, int] = (28, 28), n_outputs: int = 10):
    from torch import nn

    if size[0] < 4 or size[1] < 4:
        raise ValueError(f"classifier: images of {size[0]}x{size[1]} pixels are too small; need at least 4x4")
    flat = 64 * (size[0] // 4) * (size[1] // 4)

    class SmallCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(flat, FEATURE_DIM), nn.ReLU(),
            )
            self.head = nn.Linear(FEATURE_DIM, n_outputs)

        def features(self, x):
            return self.body(x)

        def forward(self, x):
            return self.head(self.body(x))

    return SmallCNN()


def _shape_of(images: NDArray, labels: NDArray) -> tuple[int, tuple[int, int], int]:
    """(channels, (H, W), number of outputs) of the classifier for ``images`` (n, C, H, W) and ``labels``."""
    if images.ndim != 4:
        raise ValueError(f"classifier: images have shape {images.shape}; expected (n, C, H, W)")
    lab = np.asarray(labels)
    top = int(lab.max()) + 1 if lab.size else 10
    return int(images.shape[1]), (int(images.shape[2]), int(images.shape[3])), max(10, top)


def train_classifier(images: NDArray[np.float32], labels: NDArray, *, epochs: int = 2, seed: int = 0,
                     device: str = "cpu", progress: bool = False):
    """Train the CNN on ``images`` (n, C, H, W) in [-1, 1] with labels (n,) >= 0; returns the model (eval)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    model = _net(*_shape_of(images, labels)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    g = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        batches = range(0, len(x), 128)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"classifier epoch {epoch + 1}/{epochs}", file=sys.stderr, leave=False)
        for i in batches:
            idx = perm[i:i + 128]
            loss = F.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


def _key(images: NDArray, labels: NDArray, epochs: int, seed: int) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels).tobytes())
    h.update(f"{epochs}-{seed}-v1".encode())
    shape = _shape_of(images, labels)
    if shape != (1, (28, 28), 10):  # the Fashion-MNIST key is unchanged from before other shapes were allowed
        h.update(repr(shape).encode())
    return h.hexdigest()[:16]


def get_classifier(images: NDArray[np.float32], labels: NDArray, *, epochs: int = 2, seed: int = 0,
                   device: str = "cpu", cache: str | Path | None = None, progress: bool = False):
    """The cached classifier for this training data (trained and saved atomically on first use)."""
    import torch

    folder = Path(cache) if cache is not None else cache_dir()
    path = folder / f"classifier-{_key(images, labels, epochs, seed)}.pt"
    model = _net(*_shape_of(images, labels))
    if path.is_file():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.to(device).eval()
        except (RuntimeError, OSError, EOFError):
            pass  # unreadable cache entry: retrain and overwrite
    model = train_classifier(images, labels, epochs=epochs, seed=seed, device=device, progress=progress)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model


def classifier_features(model, images, *, batch_size: int = 512, device: str = "cpu"
                        ) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Penultimate features (n, 128) float64 and predicted labels (n,) of ``images`` (n, C, H, W)."""
    import torch

    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    feats, preds = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            f = model.features(x[i:i + batch_size].to(device))
            feats.append(f.double().cpu().numpy())
            preds.append(model.head(f).argmax(1).cpu().numpy())
    if not feats:
        return np.zeros((0, FEATURE_DIM)), np.zeros(0, dtype=np.int64)
    return np.concatenate(feats), np.concatenate(preds).astype(np.int64)
