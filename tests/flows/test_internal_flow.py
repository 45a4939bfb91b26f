"""The internal-coordinate flow on alanine dipeptide: harmonic standardisation, chirality by
construction, slow latents on φ/ψ, and an exact Cartesian log-density."""

import math

import openmm
import pytest
import torch

from flowcg.analysis.ramachandran import phi_psi
from flowcg.builders import build_internal_model
from flowcg.errors import ConfigError
from flowcg.flows import build_flow
from flowcg.coordinates import CAChirality, InternalCoordinateTransform
from flowcg.coordinates.geometry import wrap
from flowcg.coordinates.harmonic import HarmonicStandardization, harmonic_reference, minimized_positions
from flowcg.targets import load_target
from flowcg.training import TrainConfig, Trainer, build_schedule
from flowcg.training import trainer as trainer_module


@pytest.fixture(scope="module")
def vacuum():
    return load_target("aldp_vacuum", dtype="float64")


@pytest.fixture(scope="module")
def model(vacuum):
    torch.manual_seed(0)
    return build_internal_model(vacuum, n_couplings=2, hidden=16, fast_hidden=8, seed=0).double()


def test_rotors_are_the_free_torsions(vacuum):
    transform = InternalCoordinateTransform.from_topology(vacuum.topology)
    rotors = (transform.periodic_mask & ~transform.improper_mask).nonzero().ravel().tolist()
    # φ, ψ, the two amide ω and one torsion per methyl rotor; all other torsions are impropers
    assert len(rotors) == 7 and {transform.phi_index, transform.psi_index} <= set(rotors)


def test_harmonic_widths_match_the_bond_force_constants(vacuum):
    transform = InternalCoordinateTransform.from_topology(vacuum.topology)
    reference = harmonic_reference(vacuum.energy, transform, minimized_positions(vacuum.system, vacuum.positions))
    bonds = next(f for f in vacuum.system.getForces() if isinstance(f, openmm.HarmonicBondForce))
    k_of = {}
    for i in range(bonds.getNumBonds()):
        a, b, _, k = bonds.getBondParameters(i)
        k_of[frozenset((a, b))] = k.value_in_unit(k.unit)
    for index, atoms in enumerate(transform.atom_indices[: transform.n_atoms - 1]):
        expected = math.sqrt(vacuum.kT / k_of[frozenset(atoms)])  # σ = sqrt(kT / k) for a harmonic bond
        assert reference.width[index].item() == pytest.approx(expected, rel=0.05)


def test_standardization_inverts_across_the_torsion_seam(vacuum):
    transform = InternalCoordinateTransform.from_topology(vacuum.topology)
    reference = harmonic_reference(vacuum.energy, transform, minimized_positions(vacuum.system, vacuum.positions))
    standardization = HarmonicStandardization(reference).double()
    y = torch.randn(64, transform.dim, dtype=torch.float64) * 3
    rotors = transform.periodic_mask & ~transform.improper_mask
    y[:, rotors] = (torch.rand(64, int(rotors.sum()), dtype=torch.float64) * 2 - 1) * 3.1  # rotors live on one turn
    ic, logdet = standardization(y)
    back, logdet_inverse = standardization.inverse(ic)
    assert (ic[:, transform.improper_mask].abs() <= math.pi).all()  # impropers near 180° wrap
    assert torch.allclose(back, y, atol=1e-9) and torch.allclose(logdet, -logdet_inverse)


@pytest.fixture(scope="module")
def full_reference(vacuum):
    transform = InternalCoordinateTransform.from_topology(vacuum.topology)
    return transform, harmonic_reference(vacuum.energy, transform, minimized_positions(vacuum.system, vacuum.positions), covariance="full")


def test_full_covariance_whitens_the_stiff_hessian(vacuum, full_reference):
    """With the correlation factor, y = 0 is the minimum and the Hessian of u in y is the identity on the
    stiff coordinates: a standard normal y is the harmonic approximation, correlations included."""
    transform, reference = full_reference
    standardization = HarmonicStandardization(reference).double()
    stiff = reference.stiff.nonzero().ravel()

    def gradient(y):  # ∂u/∂y (B, dim); the force field has first derivatives only, so the Hessian is differenced
        y = y.clone().requires_grad_(True)
        cartesian, _ = transform.forward(standardization(y)[0])
        return torch.autograd.grad(vacuum.energy(cartesian).sum(), y)[0]

    origin = torch.zeros(1, transform.dim, dtype=torch.float64)
    assert gradient(origin)[0, stiff].abs().max() < 0.05  # y = 0 is the minimum (to the minimiser's tolerance)
    step = 1e-3 * torch.eye(transform.dim, dtype=torch.float64)[stiff]
    hessian = (gradient(step) - gradient(-step))[:, stiff] / 2e-3
    assert torch.allclose(hessian, torch.eye(len(stiff), dtype=torch.float64), atol=1e-3)
    assert not torch.allclose(reference.correlation, torch.eye(transform.dim, dtype=torch.float64), atol=0.1)  # correlations matter


def test_full_covariance_standardization_inverts_with_the_autograd_log_det(full_reference):
    transform, reference = full_reference
    standardization = HarmonicStandardization(reference).double()
    y = torch.randn(16, transform.dim, dtype=torch.float64)
    ic, log_det = standardization(y)
    back, log_det_inverse = standardization.inverse(ic)
    assert torch.allclose(back, y, atol=1e-9) and torch.allclose(log_det, -log_det_inverse)
    jacobian = torch.autograd.functional.jacobian(lambda v: standardization(v[None])[0][0], y[0])
    assert log_det[0].item() == pytest.approx(torch.linalg.slogdet(jacobian).logabsdet.item(), abs=1e-9)


def test_full_covariance_model_has_an_exact_density_and_restores_from_its_state(vacuum):
    model = build_internal_model(vacuum, n_couplings=2, hidden=16, fast_hidden=8, stiff_covariance="full", seed=0).double()
    draw = model.rsample(32)
    assert torch.allclose(model.log_prob(draw.x.detach()), draw.log_q.detach(), atol=1e-6)
    restored = build_internal_model(vacuum, fit_reference=False, n_couplings=2, hidden=16, fast_hidden=8, stiff_covariance="full", seed=0).double()
    restored.load_state_dict(model.state_dict())
    assert torch.allclose(restored.log_prob(draw.x.detach()), draw.log_q.detach(), atol=1e-9)
    with pytest.raises(ValueError, match="unknown stiff_covariance 'dense'; choose one of diagonal, full"):
        build_internal_model(vacuum, stiff_covariance="dense")


def test_wrapped_slow_prior_gives_an_exact_density(vacuum):
    model = build_internal_model(vacuum, n_couplings=2, hidden=16, slow_prior="wrapped", seed=2).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    draw = model.rsample(32)
    assert torch.allclose(model.log_prob(draw.x.detach()), draw.log_q.detach(), atol=1e-6)


def test_cartesian_log_density_is_exact_and_encode_inverts(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    draw = model.rsample(32)
    assert draw.x.shape == (32, 22, 3)
    assert torch.allclose(model.log_prob(draw.x.detach()), draw.log_q.detach(), atol=1e-6)
    z_slow, z_fast = model.encode(draw.x.detach())
    assert torch.allclose(torch.cat([z_slow, z_fast], 1), draw.z, atol=1e-6)


@pytest.mark.parametrize("slow_prior", ["gaussian", "wrapped"])
@pytest.mark.parametrize("perturbed", [False, True])
def test_phi_psi_are_the_slow_latents_and_chirality_stays_l(vacuum, perturbed, slow_prior):
    untrained = build_internal_model(vacuum, n_couplings=2, hidden=16, seed=1, slow_prior=slow_prior).double()
    if perturbed:  # trained couplings condition on φ/ψ but never move them (transform_slow=False)
        with torch.no_grad():
            for p in untrained.bijection.parameters():
                p.add_(0.1 * torch.randn_like(p))
    draw = untrained.sample(500)
    phi, psi = phi_psi(draw.x, vacuum.topology)
    # the circle embedding, rotated to the minimum's φ*, ψ*
    centre = untrained.bijection._transforms[-1].center
    transform = untrained.coordinates
    for angle, index, latent in ((phi, transform.phi_index, 0), (psi, transform.psi_index, 1)):
        embedded = draw.z[:, latent] if slow_prior == "wrapped" else 2 * torch.atan(draw.z[:, latent])
        expected = wrap(centre[index] + embedded)
        assert torch.allclose(wrap(torch.as_tensor(angle) - expected), torch.zeros(500, dtype=torch.float64), atol=1e-6)
    if not perturbed:
        assert not CAChirality(vacuum.topology).is_d(draw.x).any()  # CB's improper torsion sits on the L side


def test_internal_model_needs_a_molecule():
    with pytest.raises(ValueError, match="molecular target"):
        build_internal_model(load_target("double_well"))


def test_slow_coordinates_are_checked(vacuum):
    with pytest.raises(ValueError, match="slow_coordinates must name 2 distinct"):
        build_internal_model(vacuum, slow_coordinates=[41, 41], n_couplings=2, hidden=8)
    with pytest.raises(ValueError, match="unknown fast density"):
        build_internal_model(vacuum, fast="laplace", n_couplings=2, hidden=8)
    with pytest.raises(ValueError, match="needs every slow coordinate to be a rotor"):
        build_internal_model(vacuum, slow_prior="wrapped", slow_coordinates=[0, 41], n_couplings=2, hidden=8)


@pytest.mark.compile
def test_compiled_couplings_agree_with_eager(vacuum):
    """The fast path (coupling layers and coordinate map compiled, both directions, and the training push's map
    as one graph) gives the eager samples,
    log q (pushed forward and pulled back) and parameter gradients to round-off, and the model
    reports it as active."""
    torch.manual_seed(3)
    model = build_internal_model(vacuum, n_couplings=2, hidden=16, fast_hidden=8, seed=0)  # float32, as trained
    with torch.no_grad():  # move the splines off the identity so that every term is exercised
        for p in model.bijection.parameters():
            p.add_(0.1 * torch.randn_like(p))
    z = model.latent.sample(300)

    def push_and_gradients():
        x, log_q = model.push(z)
        grads = torch.autograd.grad(log_q.sum() + x.square().sum(), list(model.bijection.parameters()))
        with torch.no_grad():
            log_q_pulled = model.log_prob(x)
        return x.detach(), log_q.detach(), grads, log_q_pulled

    eager = push_and_gradients()
    model.use_compile(min_batch=256)
    fast = push_and_gradients()
    assert model.compiled
    assert model._compiled_map.active and len(model._compiled_map._checked) == 1  # the push with grad: one graph of all layers
    transforms = [*model._couplings(), model.coordinates]  # every coupling layer and the coordinate map, both ways
    assert all(len(t.forward._checked) == 1 and len(t.inverse._checked) == 1 for t in transforms)
    torch.testing.assert_close(fast[0], eager[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(fast[1], eager[1], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(fast[3], eager[3], rtol=1e-5, atol=1e-3)
    for g_fast, g_eager in zip(fast[2], eager[2]):
        torch.testing.assert_close(g_fast, g_eager, rtol=1e-3, atol=1e-3)
    with model.conditioner_precision(torch.bfloat16):  # mixed precision: compiled and checked as a variant of its own
        mixed = push_and_gradients()
    assert model.compiled and all(len(layer.forward._checked) == 2 for layer in model._couplings())
    assert len(model._compiled_map._checked) == 2
    torch.testing.assert_close(mixed[1], fast[1], rtol=0, atol=0.5)
    model.use_compile(False)
    assert not model.compiled


def test_bfloat16_conditioners_keep_each_layer_an_exact_bijection_and_are_undone_after_the_block(vacuum):
    """Mixed precision (the conditioners' matrix products in bfloat16) changes the flow by
    bfloat16's roundings, and each coupling layer is still a bijection with an exact log-det:
    forward and inverse compute the spline parameters from the same untransformed features. (Through
    the whole chain the inverse recomputes those features to float32 round-off, which can flip a
    bfloat16 rounding, so pulled-back and pushed-forward log q differ by up to ~0.1 for a few per cent
    of points: why the model is evaluated at full precision.)"""
    torch.manual_seed(4)
    model = build_internal_model(vacuum, n_couplings=2, hidden=16, fast_hidden=8, seed=0)
    with torch.no_grad():
        for p in model.bijection.parameters():
            p.add_(0.1 * torch.randn_like(p))
    z = model.latent.sample(200)
    with torch.no_grad():
        x32, log_q32 = model.push(z)
        round_trips = [layer.inverse(layer(z)[0])[0] for layer in model._couplings()]  # full precision (a few latents lie beyond ±π)
        with model.conditioner_precision(torch.bfloat16):
            assert all(layer.conditioner_dtype == torch.bfloat16 for layer in model._couplings())
            x16, log_q16 = model.push(z)
            for layer, z_back32 in zip(model._couplings(), round_trips):
                y, logdet = layer(z)
                z_back, logdet_back = layer.inverse(y)
                torch.testing.assert_close(z_back, z_back32, rtol=0, atol=1e-4)
                torch.testing.assert_close(logdet_back, -logdet, rtol=0, atol=1e-4)
        assert all(layer.conditioner_dtype is None for layer in model._couplings())
        torch.testing.assert_close(model.push(z)[1], log_q32)  # full precision again
    assert x16.dtype == log_q16.dtype == torch.float32
    assert 1e-4 < (log_q16 - log_q32).abs().max() < 0.5  # bfloat16 was used, and changed log q little


def test_a_mixed_precision_training_step_updates_a_float32_model_and_leaves_it_at_full_precision(tmp_path):
    target = load_target("aldp_vacuum")  # float32, as trained
    model = build_internal_model(target, n_couplings=2, hidden=16, fast_hidden=8, seed=0)
    before = [p.detach().clone() for p in model.bijection.parameters()]
    config = TrainConfig(batch_size=64, final_steps=3, eval_batch_size=64, show_progress=False, conditioner_dtype="bfloat16")
    trainer = Trainer(model, target, build_schedule("constant"), config, tmp_path)
    trainer.state["beta"] = 1.0
    losses = [trainer.train_step()[0] for _ in range(3)]
    assert all(math.isfinite(loss) for loss in losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.bijection.parameters()))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(layer.conditioner_dtype is None for layer in model._couplings())


def test_reduced_conditioner_precision_is_refused_where_it_means_nothing(vacuum):
    with pytest.raises(ConfigError, match="float32 model"):
        with build_internal_model(vacuum, n_couplings=2, hidden=16, fast_hidden=8, seed=0).double().conditioner_precision(torch.bfloat16):
            pass
    with pytest.raises(ConfigError, match="model.kind=internal"):
        build_flow(2, 1, 2, n_couplings=2, hidden=16).check_conditioner_precision(torch.bfloat16)
    build_flow(2, 1, 2, n_couplings=2, hidden=16).check_conditioner_precision(None)  # full precision: anything


@pytest.mark.parametrize("native", [True, False])
def test_auto_conditioner_precision_is_bfloat16_only_where_it_pays(vacuum, monkeypatch, native, tmp_path):
    monkeypatch.setattr(trainer_module, "native_bfloat16", lambda: native)

    def internal():
        return build_internal_model(vacuum, n_couplings=2, hidden=16, fast_hidden=8, seed=0)

    for model, expected in ((internal(), "bfloat16" if native else None), (internal().double(), None),
                            (build_flow(2, 1, 2, n_couplings=2, hidden=16), None)):
        assert trainer_module.resolve_conditioner_dtype("auto", model) == expected
    assert trainer_module.resolve_conditioner_dtype(None, internal()) is None  # only auto is resolved
    trainer = Trainer(internal(), vacuum, build_schedule("constant"), TrainConfig(batch_size=8, eval_batch_size=8, show_progress=False), tmp_path)
    assert trainer._conditioner_dtype == (torch.bfloat16 if native else None)  # auto is the default


@pytest.mark.compile
def test_compiled_latent_density_survives_a_prior_resize(vacuum):
    """A prior refit resizes the slow mixture in place after training steps: the compiled latent
    density stays on (it used to fail on the stale gradient and fall back to eager for the rest of
    the run) and agrees with the eager density for the new mixture, with and without grad."""
    torch.manual_seed(5)
    model = build_internal_model(vacuum, n_couplings=2, hidden=16, fast_hidden=8, seed=0).use_compile(min_batch=256)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(2):
        optimizer.zero_grad()
        model.rsample(300).log_q.mean().backward()
        optimizer.step()
    slow = model.latent.slow
    z_slow = slow.sample(2000)
    slow.resize_(5).fit_weighted(z_slow, torch.ones(len(z_slow)), n_iter=20)
    assert slow.means.grad is None
    z = model.latent.sample(300)
    model.push(z)[1].mean().backward()  # a training step's backward on the new mixture
    with torch.no_grad():
        fast_log_q = model.push(z)[1]
    assert model._latent_log_prob.active
    with torch.no_grad():
        eager_log_q = model.use_compile(False).push(z)[1]
    torch.testing.assert_close(fast_log_q, eager_log_q, rtol=1e-5, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_step_and_sampling_match_cpu(vacuum):
    """device=cuda: a compiled reverse-KL step runs and the push-forward matches the CPU one."""
    from flowcg.training.objective import reverse_kl

    model = build_internal_model(vacuum, n_couplings=2, hidden=16, fast_hidden=8, seed=0)
    z = model.latent.sample(512)
    x_cpu, log_q_cpu = model.push(z)
    cuda_model = model.to("cuda").use_compile()
    x, log_q = cuda_model.push(z.cuda())
    torch.testing.assert_close(x.cpu(), x_cpu.detach(), rtol=0, atol=1e-4)
    torch.testing.assert_close(log_q.cpu(), log_q_cpu.detach(), rtol=1e-4, atol=1e-2)
    target = load_target("aldp_vacuum").to(device="cuda")
    estimate = reverse_kl(cuda_model, target, 1.0, 512)
    estimate.loss.backward()
    assert torch.isfinite(estimate.loss) and all(torch.isfinite(p.grad).all() for p in cuda_model.parameters() if p.grad is not None)


def test_cauchy_rotor_latents_sit_on_the_embedded_rotors_and_keep_an_exact_density(vacuum):
    """The defensive Gaussian–Cauchy mixture on the circle-embedded rotor latents: the right dims, an exact density."""
    model = build_internal_model(vacuum, n_couplings=2, hidden=16, fast_hidden=8, rotor_cauchy_weight=0.3, seed=3).double()
    embedding = model.bijection._transforms[1]
    permutation = model.bijection._transforms[0]._permutation  # coordinate c holds latent permutation[c]
    embedded_latents = sorted(int(permutation[c]) for c in embedding.periodic_mask.nonzero().ravel())
    cauchy_latents = (model.latent.fast.cauchy_mask.nonzero().ravel() + model.slow_dim).tolist()
    assert cauchy_latents == embedded_latents and len(cauchy_latents) == 5  # the 7 rotors but φ, ψ
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    draw = model.rsample(64)
    assert torch.isfinite(draw.log_q).all()
    assert torch.allclose(model.log_prob(draw.x.detach()), draw.log_q.detach(), atol=1e-6)
    with pytest.raises(ValueError, match="rotor_cauchy_weight must be in"):
        build_internal_model(vacuum, rotor_cauchy_weight=1.5)
    assert not build_internal_model(vacuum, n_couplings=2, hidden=16, seed=3).latent.fast.has_cauchy  # the default: Gaussian
