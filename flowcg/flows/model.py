"""The structured flow: a structured latent pushed through a bijection to configurations.

    z = (z_slow, z_fast) ~ p(z_slow) p(z_fast | z_slow)
    y = T(z)                         T: LU mixing ∘ couplings (learnable)
    x = C(y)                         C: fixed coordinate map (identity, or internal → Cartesian)

log q(x) = log p(z) − log|det ∂T/∂z| − log|det ∂C/∂y|, exact in both directions; ``encode``
inverts the map, and z_slow of a configuration is its discovered collective variable.

Fast path. :meth:`StructuredFlow.use_compile` evaluates the latent density (the wrapped-normal
mixture is (B, K, dim, 9) terms), every coupling layer whole (conditioner, the gathers around
it, spline) and the fixed coordinate map, forward and inverse, through compiled kernels
(:func:`~flowcg.compiled.compile_transform`: ``torch.compile`` for fixed shapes, checked against
the eager evaluation on first use, eager on any failure). Compiling the spline alone left the
autograd bookkeeping of the small ops around it as costly as the spline. One graph per layer for
sampling, density evaluation and the inverse: layers of equal shapes share inductor's cached
kernels, so a flow compiles in one to two minutes cold (a few seconds warm). A training step's
push (with grad) goes through one more graph, the couplings and the coordinate map together
(:meth:`StructuredFlow.map`; the layers' own compiled pieces are traced into it eagerly): one
backward graph instead of one per piece, 8–11 % faster per step on the shipped flow
(data_free_benchmarks/RESULTS.md, "Flow throughput", item 8), for one to three more minutes of
compilation per training batch size, cold. The latent density stays a graph of its own, so that a prior refit, which resizes
the slow mixture, does not recompile the map. (The whole push-forward of the first engine, splines through
nflows, took minutes to compile and gave no faster a step.) Inside a compiled layer the spline is recomputed in the backward rather than
its intermediates saved (:func:`~flowcg.flows.splines.rational_quadratic`): writing and reading
them back cost more than the arithmetic. Randomness stays outside the compiled region, so the random stream, and the exact resume of a training run, do not depend on
whether the flow is compiled.
The transforms follow nflows' convention ``forward(inputs) -> (outputs, logabsdet)``, with
*forward meaning latent → configuration* here (the sampling direction).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from nflows.transforms import Transform
from torch import Tensor, nn

from flowcg.compiled import MAX_VARIANTS, CheckedCompile, allow_recompiles, compile_flow_piece, compile_transform
from flowcg.errors import ConfigError
from flowcg.flows.couplings import MixedSplineCoupling, SplineCoupling
from flowcg.latent.product import BlockMixture
from flowcg.latent.structured import StructuredLatent

@dataclass
class FlowSample:
    """A batch drawn from the flow.

    Attributes:
        x: configurations, shape (B, *event_shape).
        log_q: model log-density log q(x), shape (B,).
        z: latent draws, shape (B, latent dim).
        sample_weights: (B,) weights summing to 1 that make Σ_i weight_i f(x_i) an unbiased
            estimate of E_q[f] (1/B for iid draws; π_k / n_k for stratified ones).
    """

    x: Tensor
    log_q: Tensor
    z: Tensor
    sample_weights: Tensor


class StructuredFlow(nn.Module):
    """q(x): the push-forward of a :class:`StructuredLatent` through learnable and fixed maps.

    Args:
        latent: the structured latent distribution.
        bijection: learnable transform, latent → flow space (dimension = latent.dim).
        coordinates: fixed transform, flow space → configuration space; ``None`` for identity.
    """

    def __init__(self, latent: StructuredLatent, bijection: Transform, coordinates: Transform | None = None):
        super().__init__()
        self.latent = latent
        self.bijection = bijection
        self.coordinates = coordinates
        self._latent_log_prob: CheckedCompile | None = None
        self._compiled_map: CheckedCompile | None = None

    def use_compile(self, enabled: bool = True, min_batch: int = 256) -> "StructuredFlow":
        """Evaluate the latent density and the coupling layers on batches of ≥ ``min_batch`` through
        compiled kernels (module docstring), or eagerly again (``enabled=False``); returns self."""
        couplings = self._couplings()
        allow_recompiles(MAX_VARIANTS * len(couplings))  # per direction: each layer, each of its CheckedCompile variants
        for layer in couplings:
            compile_transform(layer, "a coupling layer", min_batch if enabled else None)
        if self.coordinates is not None:
            compile_transform(self.coordinates, "the coordinate map", min_batch if enabled else None)
        self._latent_log_prob = compile_flow_piece(
            self.latent.log_prob, "the latent density", accepts=lambda z: len(z) >= min_batch
        ) if enabled else None
        mixed = [layer for layer in couplings if isinstance(layer, MixedSplineCoupling)]
        self._compiled_map = compile_flow_piece(
            self.map, "the flow's map (training)", accepts=lambda z: len(z) >= min_batch and torch.is_grad_enabled(),
            parameters=list(self.bijection.parameters()) + (list(self.coordinates.parameters()) if self.coordinates is not None else []),
            state=lambda: tuple(layer.conditioner_dtype for layer in mixed),
            reduced_precision=lambda: any(layer.conditioner_dtype is not None for layer in mixed),
        ) if enabled else None
        return self

    @property
    def compiled(self) -> bool:
        """Whether some part of the push-forward goes through an active compiled kernel."""
        transforms = self._couplings() + ([self.coordinates] if self.coordinates is not None else [])
        kernels = [transform.__dict__.get(direction) for transform in transforms for direction in ("forward", "inverse")]
        return any(kernel.active for kernel in [*kernels, self._latent_log_prob, self._compiled_map] if kernel is not None)

    @contextmanager
    def conditioner_precision(self, dtype: torch.dtype | None) -> Iterator[None]:
        """Within the block, the coupling layers' conditioners compute in ``dtype`` (None: the model's).

        Mixed-precision training: ``torch.bfloat16`` runs the conditioners' matrix products, most of
        a step's arithmetic, at 2–4× the float32 rate on CPUs with bfloat16 units (AVX512-BF16, AMX);
        the weights, the splines, log q and the energies stay in the model's dtype, and a model
        trained so is evaluated and sampled at full precision (data_free_benchmarks/RESULTS.md,
        "Flow throughput"). Why full precision there: each layer stays an exact bijection, but
        pulling a configuration back recomputes the layers' untransformed features to float32
        round-off, which can flip a bfloat16 rounding of a conditioner input; pulled-back and
        pushed-forward log q then differ by up to ~0.1 for a few per cent of points, noise a training
        gradient tolerates and an importance weight should not carry. See
        :meth:`check_conditioner_precision` for what it refuses."""
        layers = self.check_conditioner_precision(dtype)
        previous = [layer.conditioner_dtype for layer in layers]
        for layer in layers:
            layer.conditioner_dtype = dtype
        try:
            yield
        finally:
            for layer, dtype_before in zip(layers, previous):
                layer.conditioner_dtype = dtype_before

    def check_conditioner_precision(self, dtype: torch.dtype | None) -> list[MixedSplineCoupling]:
        """The layers :meth:`conditioner_precision` sets; raises :class:`~flowcg.errors.ConfigError` unless it can
        run this model in ``dtype``: a reduced dtype needs :class:`MixedSplineCoupling` layers (the internal-
        coordinate flow) and a float32 model (mixed precision below float64 is not what it is for)."""
        layers = [layer for layer in self._couplings() if isinstance(layer, MixedSplineCoupling)]
        if dtype is None:
            return layers
        if not layers:
            raise ConfigError("a reduced conditioner precision needs the internal-coordinate flow's mixed spline couplings (model.kind=internal)")
        model_dtype = next(self.parameters()).dtype
        if model_dtype != torch.float32:
            raise ConfigError(f"a {dtype} conditioner is mixed precision for a float32 model (dtype=float32), not {model_dtype}")
        return layers

    def _couplings(self) -> list[Transform]:
        return [layer for layer in self.bijection.modules() if isinstance(layer, (SplineCoupling, MixedSplineCoupling))]

    @property
    def slow_dim(self) -> int:
        return self.latent.slow_dim

    def match_slow_prior(self, state_dict) -> "StructuredFlow":
        """Give the slow mixture as many components (and, after a joining refit, the joint form) as
        ``state_dict`` holds, in place, before loading it.

        A prior refit (:mod:`flowcg.training.prior_refit`) changes the number; resuming a recipe or
        warm-starting from a refit run calls this explicitly (``load_state_dict`` itself refuses a
        mismatch). The parameters keep their identity, so an optimiser holding them stays valid."""
        joint = "latent.slow.logits" in state_dict  # saved as one mixture, else as blocks (BlockMixture)
        saved_logits = state_dict.get("latent.slow.logits" if joint else "latent.slow.blocks.0.logits")  # block 0: K of every block
        if joint and isinstance(self.latent.slow, BlockMixture):  # a refit joined the blocks (StructuredLatent.join_slow_)
            self.latent.join_slow_(saved_logits.shape[0])
        elif saved_logits is not None and saved_logits.shape[0] != self.latent.slow.n_components:
            self.latent.slow.resize_(saved_logits.shape[0])
        return self

    def map(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Latents z (B, dim) ↦ configurations x = C(T(z)) and log|det ∂x/∂z|, differentiable."""
        y, logdet = self.bijection(z)
        if self.coordinates is None:
            return y, logdet
        x, logdet_coords = self.coordinates(y)
        return x, logdet + logdet_coords

    def push(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Latents z (B, dim) ↦ configurations x and their log q(x), differentiable."""
        x, logdet = (self._compiled_map or self.map)(z)
        return x, (self._latent_log_prob or self.latent.log_prob)(z) - logdet

    def _push_forward(self, z: Tensor, sample_weights: Tensor) -> FlowSample:
        x, log_q = self.push(z)
        return FlowSample(x=x, log_q=log_q, z=z, sample_weights=sample_weights)

    def rsample(self, n: int) -> FlowSample:
        """n reparameterised draws, stratified over the slow mixture components (for training)."""
        z, sample_weights = self.latent.rsample_stratified(n)
        return self._push_forward(z, sample_weights)

    @torch.no_grad()
    def sample(self, n: int) -> FlowSample:
        """n iid draws x ~ q with their log q(x)."""
        z = self.latent.sample(n)
        ref = next(self.parameters())
        return self._push_forward(z, torch.full((n,), 1.0 / n, device=ref.device, dtype=ref.dtype))

    def rsample_given_slow(self, z_slow: Tensor) -> FlowSample:
        """Reparameterised draws from q(x | z_slow), one per row, with the *joint* log q(x) (for training)."""
        z = self.latent.rsample_given_slow(z_slow)
        return self._push_forward(z, torch.full((len(z),), 1.0 / len(z), device=z.device, dtype=z.dtype))

    @torch.no_grad()
    def sample_given_slow(self, z_slow: Tensor) -> FlowSample:
        """One draw per row of z_slow (B, slow_dim) from q(x | z_slow), with the *joint* log q(x).

        log q(x | z_slow) = log q(x) − log p(z_slow), a constant within draws that share z_slow;
        importance weights normalised within such a group are therefore those of the conditional.
        """
        return self.rsample_given_slow(z_slow)

    def _pull_back(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """z = T⁻¹(C⁻¹(x)) and the log|det| of that inverse map."""
        logdet = x.new_zeros(x.shape[0])
        y = x
        if self.coordinates is not None:
            y, logdet = self.coordinates.inverse(x)
        z, logdet_bijection = self.bijection.inverse(y)
        return z, logdet + logdet_bijection

    def log_prob(self, x: Tensor) -> Tensor:
        """log q(x), shape (B,)."""
        z, logdet = self._pull_back(x)
        return (self._latent_log_prob or self.latent.log_prob)(z) + logdet

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(z_slow, z_fast) of configurations x: z_slow is the learned collective variable."""
        z, _ = self._pull_back(x)
        return self.latent.split(z)

