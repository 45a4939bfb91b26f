"""``torch.compile`` with the eager function as its reference and its fallback.

Inductor fuses the hundreds of small elementwise ops of a force-field pass or a coupling flow
into a few loops, several times faster on CPU; but it can fail (no C++ compiler, a codegen bug)
or, rarely, compute something else. :class:`CheckedCompile` therefore

* compiles for static shapes only (``dynamic=False``: the fastest kernels) and only for the
  calls that ``accepts`` admits, at most ``max_variants`` distinct signatures (the tensors'
  shape, dtype and device, the other arguments' values, the grad mode), each of which costs one
  compilation; every other call runs eagerly;
* evaluates the first call of every signature eagerly as well and compares the two with
  ``disagreement``, and with grad enabled also runs the compiled backward once (it is compiled
  lazily, and would otherwise fail outside this guard); a disagreement or any exception from the
  compiler logs one warning and turns compilation off for good, the eager result being returned;
* is the eager function when called while an enclosing function is being compiled, so that a
  compiled piece can sit inside a larger compiled graph and be fused into it.

So a caller can always ask for compilation: the worst case is eager speed and a logged line.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import torch
from torch import Tensor

log = logging.getLogger(__name__)

#: Input signatures a :class:`CheckedCompile` compiles at most, by default.
MAX_VARIANTS = 4
#: Largest relative |Δ| between a compiled flow piece (a transform, a density) and its eager evaluation.
FLOW_TOLERANCES = {torch.float32: 1e-4, torch.float64: 1e-10}
#: The same for a chain of layers whose conditioners compute in bfloat16 (mixed-precision training):
#: compiled and eager round a layer's float32 output differently by a few ulps, which can flip the
#: bfloat16 rounding of the next conditioner's input, so a few rows differ by bfloat16's noise
#: (relative 1e-4–1e-3 of log q, seen 1.8e-4 on the shipped ALDP flow), not float32's. A miscompiled
#: kernel is off by far more; each layer on its own is still checked at float32's tolerance.
REDUCED_PRECISION_TOLERANCES = {torch.float32: 1e-2, torch.float64: 1e-2}
#: Inductor options for the flow's pieces. A coupling layer's backward is one long elementwise
#: chain over K bin planes (~1 000 nodes); inductor's default cap of 64 nodes per fused loop cut it
#: into dozens of loops passing ~100 intermediate planes through memory. Lifting the cap: a layer's
#: forward + backward at batch 1024 from 14.9 to 10.4 ms (data_free_benchmarks/RESULTS.md, "Flow throughput").
FLOW_INDUCTOR_OPTIONS = {"max_fusion_size": 1024}


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class CheckedCompile:
    """``fn`` through ``torch.compile(dynamic=False)``, checked against ``fn`` itself.

    Args:
        fn: a function of tensors returning a tensor or a tuple of tensors.
        what: what ``fn`` computes, for the log ("the force field", "the flow").
        disagreement: ``(compiled_out, eager_out) -> None`` if they agree, else a short reason.
        accepts: ``(*args) -> bool``: whether a call may take the compiled path (default: all).
        max_variants: input signatures compiled at most; calls with further ones run eagerly.
        parameters: tensors ``fn`` reads besides its arguments (a module's parameters): the first
            backward of each signature is differentiated back to them too, inside the guard.
        options: inductor options for this function (``torch.compile(options=...)``).
        state: ``() -> hashable``: what ``fn`` computes depends on besides its arguments (a layer's
            arithmetic dtype); part of the signature, so each state is compiled and checked apart.

    Examples:
        >>> square = CheckedCompile(lambda x: x * x, "a square", lambda a, b: None, accepts=lambda x: False)
        >>> square(torch.tensor([3.0]))   # not accepted: the eager function
        tensor([9.])
    """

    def __init__(self, fn: Callable, what: str, disagreement: Callable, accepts: Callable[..., bool] | None = None,
                 max_variants: int = MAX_VARIANTS, parameters: list[Tensor] = (), options: dict | None = None,
                 state: Callable[[], object] | None = None):
        self.fn, self.what, self.disagreement, self.parameters = fn, what, disagreement, list(parameters)
        self.state = state or (lambda: None)
        self.accepts = accepts or (lambda *args: True)
        self.max_variants = max_variants
        self._compiled: Callable | None = torch.compile(fn, dynamic=False, options=options)
        self._checked: set[tuple] = set()

    @property
    def active(self) -> bool:
        """False once compilation has been turned off (a failure or a disagreement)."""
        return self._compiled is not None

    def _signature(self, args) -> tuple:
        arguments = tuple((tuple(a.shape), a.dtype, a.device.type) if isinstance(a, Tensor) else a for a in args)
        return arguments, torch.is_grad_enabled(), self.state()

    def _turn_off(self, reason: str) -> None:
        log.warning("torch.compile of %s: %s; evaluating eagerly from now on", self.what, reason)
        self._compiled = None

    def __call__(self, *args):
        if torch.compiler.is_compiling():  # traced into an enclosing compiled graph: the eager function is what it fuses
            return self.fn(*args)
        if self._compiled is None or not self.accepts(*args):
            return self.fn(*args)
        signature = self._signature(args)
        if signature not in self._checked and len(self._checked) >= self.max_variants:
            return self.fn(*args)
        try:
            out = self._compiled(*args)
            if signature not in self._checked and torch.is_grad_enabled():
                _compile_backward(self._compiled, args, self.parameters)
        except Exception as err:  # inductor raises many types (no compiler, codegen bugs); eager is exact
            self._turn_off(f"failed ({_first_line(err)})")
            return self.fn(*args)
        if signature not in self._checked:
            with torch.no_grad():
                reference = self.fn(*args)
            reason = self.disagreement(out, reference)
            if reason is not None:
                self._turn_off(f"disagrees with the eager evaluation ({reason})")
                return self.fn(*args)
            self._checked.add(signature)
        return out


def compile_transform(transform: torch.nn.Module, what: str, min_batch: int | None = 256) -> None:
    """Evaluate an nflows-style transform's ``forward`` and ``inverse`` (``(inputs, context=None) ->
    (outputs, logabsdet)``, with their backward) through :class:`CheckedCompile` for batches of
    ≥ ``min_batch`` rows and no context; ``min_batch=None`` makes it eager again. The compiled
    callables shadow the class's methods on the instance; ``what`` names it in the log. A transform
    with a ``conditioner_dtype`` attribute (:class:`~flowcg.flows.couplings.MixedSplineCoupling`) is
    compiled and checked for each value of it apart."""
    def precision():
        return getattr(transform, "conditioner_dtype", None)

    for direction in ("forward", "inverse"):
        transform.__dict__.pop(direction, None)  # the class's own method again
        if min_batch is not None:
            setattr(transform, direction, compile_flow_piece(
                getattr(transform, direction), f"{what} ({direction})",
                accepts=lambda inputs, context=None: context is None and len(inputs) >= min_batch,
                parameters=list(transform.parameters()), state=precision,
            ))


def compile_flow_piece(fn: Callable, what: str, accepts: Callable[..., bool], parameters: list[Tensor] = (),
                       state: Callable[[], object] | None = None, reduced_precision: Callable[[], bool] | None = None) -> CheckedCompile:
    """A piece of the flow (a transform's direction, the latent density, the map of all layers) through
    :class:`CheckedCompile` with the flow's tolerances (:data:`FLOW_TOLERANCES`) and inductor options
    (:data:`FLOW_INDUCTOR_OPTIONS`); while ``reduced_precision()`` is true (a chain of layers with bfloat16
    conditioners), with :data:`REDUCED_PRECISION_TOLERANCES`."""
    strict = relative_disagreement(FLOW_TOLERANCES)
    disagreement = strict
    if reduced_precision is not None:
        lenient = relative_disagreement(REDUCED_PRECISION_TOLERANCES)

        def disagreement(compiled, eager):
            return (lenient if reduced_precision() else strict)(compiled, eager)

    return CheckedCompile(fn, what, disagreement, accepts=accepts, parameters=parameters, options=FLOW_INDUCTOR_OPTIONS, state=state)


def allow_recompiles(variants: int) -> None:
    """Let dynamo keep at least ``variants`` compiled variants per function.

    Dynamo counts variants (a new shape, a grad mode) per *code object*, not per module: all
    coupling layers of a flow share their ``forward``'s code, so a flow of L layers of distinct
    shapes, each called with and without grad and at a few batch sizes, needs several times L
    variants, beyond dynamo's default limit of 8, past which it silently runs the function eagerly."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # renamed in torch 2.6
    setattr(config, name, max(getattr(config, name), variants))


def _compile_backward(compiled: Callable, args, parameters: list[Tensor]) -> None:
    """Differentiate one extra evaluation of ``compiled`` back to ``args`` and ``parameters``, here: inductor compiles
    the backward lazily on the first ``.backward()``, which would otherwise happen in the caller,
    outside the eager fallback (an unusable compiler or a corrupt kernel cache would then end the
    run instead of logging a line). An extra evaluation, because compiled graphs donate their
    buffers and cannot be differentiated twice."""
    inputs = [a for a in [*args, *parameters] if isinstance(a, Tensor) and a.requires_grad]
    if not inputs:
        return
    out = compiled(*args)
    outputs = [o for o in (out if isinstance(out, tuple) else (out,)) if isinstance(o, Tensor) and o.requires_grad]
    if outputs:
        torch.autograd.grad(sum(o.sum() for o in outputs), inputs, allow_unused=True)


def relative_disagreement(tolerances: dict) -> Callable:
    """A ``disagreement`` for :class:`CheckedCompile`: the outputs (a tensor or a tuple of them)
    agree if max |a − b| / (1 + |b|) ≤ ``tolerances[dtype]`` everywhere (NaN only where both are)."""

    def disagreement(compiled, eager) -> str | None:
        pairs = zip(compiled, eager) if isinstance(eager, tuple) else [(compiled, eager)]
        worst = 0.0
        for a, b in pairs:
            a, b = a.detach(), b.detach()
            error = ((a - b).abs() / (1 + b.abs())).nan_to_num(nan=0.0, posinf=math.inf)
            error = torch.where(a.isnan() != b.isnan(), math.inf, error)
            worst = max(worst, float(error.max()) if error.numel() else 0.0)
        tolerance = tolerances.get(eager[0].dtype if isinstance(eager, tuple) else eager.dtype, max(tolerances.values()))
        return None if worst <= tolerance else f"max relative |Δ| = {worst:.3g}"

    return disagreement
