"""A reweighted buffer: one energy evaluation per draw per stage, many forward-KL steps on it.

Why. The reweighted forward KL of :mod:`flowcg.training.objective` pays one energy evaluation per
sample per step. Temperature-annealed Boltzmann generators (TA-BG, Schopmans & Friederich, ICML
2025) anneal with a buffer instead: at the start of a stage at β, N draws x_i ~ q₀ (the flow as
the previous stage left it) are evaluated once and weighted to the stage's target,

    log w_i = −β u(x_i) − log q₀(x_i),

and every step of the stage fits q_θ to a minibatch resampled in proportion to w:

    L(θ) = −(1/b) Σ_j log q_θ(x_{i_j}),    i_j ~ Categorical(w / Σ w),

an unbiased minibatch estimate of the self-normalised forward KL −Σ_i w̄_i log q_θ(x_i) + const.
Its gradient needs q's inverse pass only: no energy gradient and no new energy evaluation. The
weights stay those of q₀ however far q_θ moves, since the buffer is a weighted sample of p_β, not of
q_θ. A small step in β keeps them tame; what tail remains is cut as TA-BG cuts it: the largest
⌈10⁻⁴ N⌉ weights are clipped to the smallest of them (:data:`CLIP_FRACTION`), so a single draw
cannot fill the minibatches, at the price of a bias toward q₀ that vanishes as the tail thins.
Draws with a non-finite energy get weight 0.

TA-BG's recipe (``../shared/ANCHORS.md``): reverse KL at 1200 K, then 10 geometric steps to 300 K,
each 30 000 steps of batch 2048 on a buffer of 5·10⁶ draws. Here the buffer is a ``train``
setting (``train.buffer_size``), drawn at the start of every stage of a phase and, with
``train.buffer_refresh_steps``, again every so many steps within it (TA-BG's ``update_buffer_every``;
:class:`~flowcg.training.trainer.Trainer`), so an annealing phase is a tempering schedule with
``forward_kl_weight: 1`` and a buffer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from flowcg.errors import InputError
from flowcg.flows.model import StructuredFlow
from flowcg.io import load_torch, save_atomic
from flowcg.sampling.importance import kish_ess
from flowcg.targets.base import Target

__all__ = ["CLIP_FRACTION", "ReweightedBuffer"]

#: Share of the largest buffer weights clipped to the smallest of them (TA-BG's ``clip_top_k_weights_fraction``).
CLIP_FRACTION = 1e-4


@dataclass
class ReweightedBuffer:
    """N configurations drawn from the flow with their importance weights for p_β.

    Attributes:
        x: (N, *event_shape) configurations, detached.
        log_w: (N,) log importance weights −β u − log q₀ (−inf for non-finite energies).
        beta: the inverse temperature the weights target.
        step: the training step before which it was drawn (a resumed run checks it).

    Examples:
        >>> buffer = ReweightedBuffer(torch.zeros(4, 1), torch.log(torch.tensor([1.0, 1.0, 2.0, 0.0])), beta=1.0, step=0)
        >>> round(buffer.kish_ess, 3)   # (Σw)² / (N Σw²) = 16 / (4 · 6)
        0.667
        >>> x = buffer.minibatch(1000)
        >>> x.shape
        torch.Size([1000, 1])
    """

    x: Tensor
    log_w: Tensor
    beta: float
    step: int

    def __post_init__(self):
        finite = torch.isfinite(self.log_w)
        if not finite.any():
            raise InputError(f"no draw of the buffer at beta={self.beta:.4g} has a finite energy and density: nothing to train on")
        log_w = self.log_w.to(torch.float64).masked_fill(~finite, -math.inf)
        clip_at = torch.topk(log_w, min(math.ceil(CLIP_FRACTION * len(log_w)), int(finite.sum()))).values[-1]
        self._cdf = torch.cumsum(torch.exp(torch.minimum(log_w, clip_at) - clip_at), 0)

    @classmethod
    @torch.no_grad()
    def draw(cls, model: StructuredFlow, target: Target, beta: float, size: int, chunk: int, step: int) -> "ReweightedBuffer":
        """``size`` draws from ``model`` in chunks of ``chunk`` (the compiled batch size), each
        evaluated once by ``target`` (counted in its ``n_energy_evaluations``)."""
        xs, log_ws = [], []
        for start in range(0, size, chunk):
            draw = model.sample(min(chunk, size - start))
            u = target.energy(draw.x)
            xs.append(draw.x)
            log_ws.append(-beta * u - draw.log_q)
        return cls(torch.cat(xs), torch.cat(log_ws), beta, step)

    @cached_property
    def kish_ess(self) -> float:
        """Kish ESS of the raw (unclipped) weights, in (0, 1]."""
        return kish_ess(self.log_w.detach().cpu().double().numpy())

    def minibatch(self, size: int) -> Tensor:
        """``size`` configurations resampled with replacement ∝ the clipped weights (global torch RNG)."""
        u = torch.rand(size, dtype=torch.float64) * self._cdf[-1]
        index = torch.searchsorted(self._cdf, u, right=True).clamp_(max=len(self._cdf) - 1)
        return self.x[index.to(self.x.device)]

    def save(self, path) -> None:
        save_atomic({"x": self.x, "log_w": self.log_w, "beta": self.beta, "step": self.step}, path)

    @classmethod
    def load(cls, path, device) -> "ReweightedBuffer":
        saved = load_torch(path, map_location=device, what="reweighted buffer")
        return cls(saved["x"], saved["log_w"], float(saved["beta"]), int(saved["step"]))
