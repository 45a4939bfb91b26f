"""CheckedCompile: compiled when it can be, checked against eager, eager whenever it must be."""

import logging

import pytest
import torch

from flowcg.compiled import CheckedCompile, compile_flow_piece


def _double(x):
    return 2 * x


def _agree(a, b):
    return None if torch.allclose(a, b) else "values differ"


def test_failure_or_disagreement_falls_back_to_eager_for_good(caplog):
    x = torch.arange(4.0)

    def broken(x):
        raise RuntimeError("C++ compiler not found\nlong traceback")

    for fake, message in ((broken, "failed (C++ compiler not found)"), (lambda x: 3 * x, "disagrees with the eager evaluation (values differ)")):
        kernel = CheckedCompile(_double, "a doubling", _agree)
        kernel._compiled = fake
        with caplog.at_level(logging.WARNING, logger="flowcg.compiled"):
            torch.testing.assert_close(kernel(x), 2 * x)
        assert message in caplog.text and not kernel.active
        torch.testing.assert_close(kernel(x), 2 * x)  # stays eager
        caplog.clear()


def test_only_accepted_calls_and_at_most_max_variants_are_compiled():
    calls = []
    kernel = CheckedCompile(_double, "a doubling", _agree, accepts=lambda x: len(x) >= 3, max_variants=1)
    kernel._compiled = lambda x: calls.append(len(x)) or 2 * x
    for n in (2, 3, 3, 4):
        torch.testing.assert_close(kernel(torch.ones(n)), 2 * torch.ones(n))
    assert calls == [3, 3] and kernel.active  # n=2 not accepted, n=4 a second signature beyond max_variants


def test_a_failing_backward_compilation_falls_back_to_eager(caplog):
    """Inductor compiles the backward on the first .backward(): a failure there (an unusable
    compiler, a corrupt kernel cache) is caught at the call, not left to end the caller's step."""

    class BrokenBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return 2 * x

        @staticmethod
        def backward(ctx, grad):
            raise ImportError("kernel.so: file too short")

    kernel = CheckedCompile(_double, "a doubling", _agree)
    kernel._compiled = BrokenBackward.apply
    x = torch.arange(4.0, requires_grad=True)
    with caplog.at_level(logging.WARNING, logger="flowcg.compiled"):
        out = kernel(x)
    assert "failed (kernel.so: file too short)" in caplog.text and not kernel.active
    out.sum().backward()  # the eager result's backward
    torch.testing.assert_close(x.grad, torch.full((4,), 2.0))


@pytest.mark.compile
def test_inside_an_enclosing_compiled_function_it_is_the_eager_function():
    """A compiled piece called from a larger compiled graph is traced into that graph (the flow's map
    of a training step holds every coupling layer's piece): its own compiled kernel is not called,
    and nothing is checked or counted as one of its signatures."""
    calls = []
    kernel = CheckedCompile(_double, "a doubling", _agree)
    kernel._compiled = lambda x: calls.append(len(x)) or 2 * x
    outer = torch.compile(lambda x: kernel(x) + 1, dynamic=False)
    torch.testing.assert_close(outer(torch.arange(4.0)), 2 * torch.arange(4.0) + 1)
    assert calls == [] and kernel._checked == set() and kernel.active


def test_a_chain_with_reduced_precision_conditioners_is_checked_at_bfloat16s_tolerance():
    """Compiled and eager round a layer's output differently by a few ulps, which can flip the bfloat16 rounding of the
    next conditioner's input: the map of all layers is checked at bfloat16's tolerance while it runs so, at float32's
    otherwise."""
    x = torch.linspace(1.0, 2.0, 8)
    for reduced, stays_on in ((True, True), (False, False)):
        kernel = compile_flow_piece(_double, "a chain", accepts=lambda x: True, reduced_precision=lambda: reduced)
        kernel._compiled = lambda x: 2 * x * (1 + 1e-3)  # bfloat16's noise, not float32's
        kernel(x)
        assert kernel.active is stays_on
    kernel = compile_flow_piece(_double, "a chain", accepts=lambda x: True, reduced_precision=lambda: True)
    kernel._compiled = lambda x: 3 * x  # a miscompiled kernel is caught either way
    kernel(x)
    assert not kernel.active
