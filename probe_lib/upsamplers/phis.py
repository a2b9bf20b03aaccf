"""PHI-S feature standardisation (Ranzinger et al.; used by FeatSharp, arXiv 2502.16025).

A backbone's feature channels have very different variances, so an MSE in raw feature space is
dominated by a few directions. PHI-S whitens *isotropically*: with the feature covariance
Σ = V Λ Vᵀ, rotate into the eigenbasis (Vᵀ), then spread every eigen-direction evenly over all
channels with a normalised Hadamard matrix H (all entries ±1/√C), and scale by one scalar
α = 1/√mean(Λ):

    x' = α · H Vᵀ (x − μ),        x = V Hᵀ x' / α + μ.

Every output channel then has the same variance (mean(Λ)·α² = 1 on average) while the transform
stays a rotation plus one scale, so it is exactly invertible. Before fitting the module is the
identity (μ = 0, α = 1, rotation = I).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sylvester_hadamard(n: int) -> torch.Tensor:
    """Unnormalised ±1 Hadamard matrix of order n = 2^k (float64), Sylvester's doubling."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Sylvester construction needs a power of two, got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], dim=1), torch.cat([h, -h], dim=1)], dim=0)
    return h


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, math.isqrt(q) + 1))


def paley1_hadamard(q: int) -> torch.Tensor:
    """Unnormalised ±1 Hadamard matrix of order q + 1 from Paley's first construction.

    Needs q prime with q ≡ 3 (mod 4). With χ the quadratic character mod q and the Jacobsthal
    matrix Q[i, j] = χ(j − i) (skew-symmetric for such q), H = I + [[0, 1ᵀ], [−1, Q]].
    """
    if not _is_prime(q) or q % 4 != 3:
        raise ValueError(f"Paley I needs a prime q = 3 (mod 4), got {q}")
    squares = {(i * i) % q for i in range(1, q)}
    chi = [0] + [1 if d in squares else -1 for d in range(1, q)]
    jac = torch.tensor([[chi[(j - i) % q] for j in range(q)] for i in range(q)],
                       dtype=torch.float64)
    s = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    s[0, 1:] = 1.0
    s[1:, 0] = -1.0
    s[1:, 1:] = jac
    return s + torch.eye(q + 1, dtype=torch.float64)


def hadamard_matrix(n: int) -> torch.Tensor:
    """Normalised Hadamard matrix of order n (float64, H Hᵀ = I).

    n = 2^k uses Sylvester; otherwise n = m·2^k with m − 1 a prime ≡ 3 (mod 4) uses
    Paley-I(m) ⊗ Sylvester(2^k) (384 = 12 · 32 for DINOv2-S). Other orders raise a ValueError.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"Hadamard order must be a positive int, got {n!r}")
    if n & (n - 1) == 0:
        return sylvester_hadamard(n) / math.sqrt(n)
    two = 1
    while n % (two * 2) == 0:
        two *= 2
    # Try the smallest Paley block first: m = (odd part) * 2^j for growing j.
    m = n // two
    while m <= n:
        if m % 4 == 0 and _is_prime(m - 1) and (m - 1) % 4 == 3:
            h = torch.kron(paley1_hadamard(m - 1), sylvester_hadamard(n // m))
            return h / math.sqrt(n)
        m *= 2
    raise ValueError(f"no Hadamard construction for order {n}: need 2^k or m·2^k with m − 1 a "
                     "prime = 3 (mod 4) (e.g. 384 = 12·32, 768 = 12·64, 1024)")


class PHIS(nn.Module):
    """Invertible PHI-S standardisation of (B, C, H, W) feature maps.

    Buffers (saved in checkpoints): ``mean`` (C,), ``alpha`` (), ``rotation`` (C, C) = H Vᵀ,
    ``inv_rotation`` (C, C) = its inverse, ``fitted`` () 0/1.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("alpha", torch.ones(()))
        self.register_buffer("rotation", torch.eye(dim))
        self.register_buffer("inv_rotation", torch.eye(dim))
        self.register_buffer("fitted", torch.zeros(()))

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted.item())

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> PHIS:
        """Estimate μ, Σ from features (N, C) or (B, C, h, w) (all pixels pooled), in float64."""
        if not isinstance(features, torch.Tensor) or features.ndim not in (2, 4):
            raise ValueError("features must be a tensor (N, C) or (B, C, h, w), got "
                             f"{getattr(features, 'shape', type(features).__name__)}")
        x = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]) if features.ndim == 4 \
            else features
        if x.shape[1] != self.dim:
            raise ValueError(f"features have {x.shape[1]} channels, PHI-S was built for {self.dim}")
        if x.shape[0] < 2:
            raise ValueError("PHI-S needs at least 2 feature vectors to estimate a covariance")
        if not torch.isfinite(x).all():
            raise ValueError("features contain NaN or Inf")
        x = x.double()
        mu = x.mean(0)
        cov = (x - mu).T @ (x - mu) / (x.shape[0] - 1)
        evals, evecs = torch.linalg.eigh(cov)
        alpha = 1.0 / evals.clamp_min(0).mean().clamp_min(1e-12).sqrt()
        rot = hadamard_matrix(self.dim) @ evecs.T
        self.mean.copy_(mu.to(self.mean))
        self.alpha.copy_(alpha.to(self.alpha))
        self.rotation.copy_(rot.to(self.rotation))
        self.inv_rotation.copy_(rot.T.to(self.inv_rotation))
        self.fitted.fill_(1.0)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) backbone space -> PHI-S space."""
        y = torch.einsum("dc,bchw->bdhw", self.rotation.to(x), x - self.mean.to(x).view(1, -1, 1, 1))
        return self.alpha.to(x) * y

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) PHI-S space -> backbone space."""
        x = torch.einsum("cd,bdhw->bchw", self.inv_rotation.to(y), y / self.alpha.to(y))
        return x + self.mean.to(y).view(1, -1, 1, 1)
