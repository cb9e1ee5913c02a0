"""The torch array back end of the backward diffusion (:mod:`classdiff.data.backward`), CPU or CUDA.

:mod:`classdiff.data.backward` is numpy-only; it reaches this back end by name (``backend="torch"``) through the
``classdiff.backward_backends`` entry point of the package metadata (or :func:`classdiff.data.backward.
register_backend`, called when this module is imported). :class:`TorchBackend` implements the back-end
protocol :class:`classdiff.data.backward.ArrayBackend`: random streams, array conversions, the thread count,
and the two torch-specific kernels, the split form of the exact mixture score and the fused exact-mixture
Euler–Maruyama step. Random numbers: on the CPU the numpy back end's SFC64 normals (float64) or their
vectorized Box–Muller transform (float32, :class:`~classdiff.data.backward.BoxMuller32`), on a GPU torch's
generator of the device, each seeded from the same (seed, stream, block) sequence.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from classdiff.data.backward import BoxMuller32, block_seed, register_backend

__all__ = ["TorchBackend"]


class TorchBackend:
    """torch back end on ``device`` (``"auto"``: CUDA when present) with ``dtype`` ``"float64"`` or ``"float32"``."""

    name = "torch"

    def __init__(self, seed: int, device: str = "auto", dtype: str = "float64") -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if dtype not in ("float64", "float32"):
            raise ValueError(f"dtype = {dtype!r}: must be 'float64' or 'float32'")
        self.dtype = torch.float64 if dtype == "float64" else torch.float32
        self.np_dtype = np.float64 if dtype == "float64" else np.float32
        self.seed = seed
        self.blocked = self.device.type == "cpu"  # on a GPU the fast path updates the whole array per step

    # ------------------------------------------------------------------------------------------ random streams
    def block_generator(self, stream: int, block: int) -> Any:
        seq = block_seed(self.seed, stream, block)
        if self.device.type == "cpu":  # both faster than torch's CPU normal_
            if self.dtype == torch.float64:  # the numpy back end's numbers
                return np.random.Generator(np.random.SFC64(seq))
            return BoxMuller32(seq)
        g = torch.Generator(device=self.device)
        g.manual_seed(int(seq.generate_state(1, dtype=np.uint64)[0] >> 1))
        return g

    def normal(self, gen: Any, out: torch.Tensor, std: float = 1.0) -> torch.Tensor:
        if isinstance(gen, BoxMuller32):
            gen.fill(out.numpy().reshape(-1), std)
            return out
        if isinstance(gen, np.random.Generator):
            gen.standard_normal(out=out.numpy())
            if std != 1.0:
                out.mul_(std)
            return out
        return out.normal_(0.0, std, generator=gen)

    # ------------------------------------------------------------------------------------------ arrays
    def asarray(self, x: Any) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            return x.to(device=self.device, dtype=self.dtype)
        return torch.as_tensor(np.asarray(x), dtype=self.dtype, device=self.device)

    @staticmethod
    def to_numpy(x: Any) -> NDArray:
        if isinstance(x, torch.Tensor):
            return x.detach().cpu().numpy()
        return np.asarray(x)

    @staticmethod
    def like(values: NDArray, x: torch.Tensor) -> torch.Tensor:
        """``values`` (numpy) as a tensor of x's dtype and device."""
        return torch.as_tensor(values, dtype=x.dtype, device=x.device)

    @staticmethod
    def empty_like(x: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(x)

    @staticmethod
    def copy(x: torch.Tensor) -> torch.Tensor:
        return x.clone(memory_format=torch.contiguous_format)

    @staticmethod
    def add_scaled(x: torch.Tensor, a: float, y: torch.Tensor) -> torch.Tensor:
        """x += a y in place (fused)."""
        return x.add_(y, alpha=a)

    # ------------------------------------------------------------------------------------------ threads
    @staticmethod
    def get_threads() -> int | None:
        return torch.get_num_threads()

    @staticmethod
    def set_threads(n: int) -> None:
        torch.set_num_threads(n)

    # ------------------------------------------------------------------------------------------ kernels
    @staticmethod
    def mixture_split(x: torch.Tensor, mu: torch.Tensor, scale: NDArray, base: NDArray, inv: NDArray,
                      var_differs: bool, factor: float, out: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(factor * shift, coef) of :meth:`classdiff.data.backward.MixtureScore.split` for a tensor x (n, d)."""
        logits = x @ mu.T  # (n, K)
        sc = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
        logits.mul_(sc).add_(torch.as_tensor(base, dtype=x.dtype, device=x.device))
        if var_differs:
            logits.sub_(0.5 * (x * x).sum(1, keepdim=True) * torch.as_tensor(inv, dtype=x.dtype, device=x.device))
        post = torch.softmax(logits, dim=1)
        coef = post @ torch.as_tensor(inv, dtype=x.dtype, device=x.device)
        shift = torch.matmul(post * (sc * factor), mu, out=out)
        return shift, coef

    def prepare_fused(self, fused: Any, basis: NDArray) -> None:
        """Store the centroid basis Q (r, d) on the device for :meth:`fused_step`."""
        fused.q = torch.as_tensor(basis, dtype=self.dtype, device=self.device)

    def fused_step(self, fused: Any, x: torch.Tensor, k: int, noise: Any, buf: torch.Tensor) -> torch.Tensor:
        """Step k of :class:`classdiff.data.backward._FusedMixtureEM` in place on x: the float64 posterior from
        z = x Q^T and |x|^2, then x <- sqrt(2h) xi + coef x and x += w Q (one fused pass each)."""
        z = torch.mm(fused.q, x.t()).t().cpu().numpy().astype(np.float64)
        sq = torch.linalg.vecdot(x, x).cpu().numpy().astype(np.float64) if fused.nhinv is not None else None
        coef, w = fused.posterior(z, sq, k)
        coef_t = torch.from_numpy(coef.astype(self.np_dtype)[:, None]).to(x.device)
        w_t = torch.from_numpy(w.astype(self.np_dtype)).to(x.device)
        noise.fill(buf, float(fused.amp[k]))
        torch.addcmul(buf, x, coef_t, out=x)  # x <- sqrt(2h) xi + coef x
        if fused.r > 3:
            x.addmm_(w_t, fused.q)
        else:
            for i in range(fused.r):
                x.addcmul_(w_t[:, i : i + 1], fused.q[i])
        return x


register_backend("torch", TorchBackend)
