"""``flowcg-sample``: draw N iid samples from a trained model and reweight them to the target.

    flowcg-sample run=RUN_DIR n=100000 hydra.run.dir=OUT
    flowcg-sample pretrained=aldp_implicit n=100000 hydra.run.dir=OUT    # a model shipped with flowcg

Writes into OUT: samples.npz (log_q, energies_kT, log_w = −βu − log q, z_slow; x for vector
targets), metrics.json (Kish ESS, log Z, target metrics) and plots. For a molecule, x goes to
samples.dcd with topology.pdb instead, samples.npz adds phi and psi (and, as for every target,
in_state: the draws in the target's conformational state), and the metrics add the Ramachandran
comparison with the reference (by default the walker reference shipped for the
target) and the CV discovery (cv_report.md,
free_energy.png, ramachandran.png). log_q is the density of Cartesian frames with the rigid-body
degrees of freedom fixed as the internal-coordinate map fixes them.
"""

from __future__ import annotations

import time
from pathlib import Path

import mdtraj as md
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from flowcg.analysis.cv import cv_discovery, cv_markdown, plot_free_energy
from flowcg.analysis.evaluate import evaluate_samples
from flowcg.analysis.molecular import Reference, plot_residue_ramachandrans, resolve_reference, torsion_table
from flowcg.analysis.plots import plot_marginals, plot_samples
from flowcg.analysis.ramachandran import RamachandranReference, residue_phi_psi
from flowcg.builders import Run, configure_compile, describe_device, load_run, seed_everything
from flowcg.cli.common import clean_errors, entry_point, write_json
from flowcg.errors import ConfigError
from flowcg.pretrained import load_pretrained, pretrained_md_reference
from flowcg.sampling import SampleSet, draw_samples, reweighted_mean


def _load(cfg: DictConfig) -> tuple[Run, Reference | RamachandranReference | None, Reference | None]:
    """The model named by ``run`` or ``pretrained`` (exactly one), the reference its metrics are
    scored against (``reference``), and the MD time series for TICA, if any."""
    if (cfg.run is None) == (cfg.pretrained is None):
        raise ConfigError("give exactly one of run=RUN_DIR or pretrained=NAME")
    run = load_pretrained(cfg.pretrained, device=cfg.device) if cfg.pretrained is not None else load_run(cfg.run, device=cfg.device)
    reference = resolve_reference(cfg.reference, run.target)
    if isinstance(reference, Reference) and reference.is_time_series:
        md_series = reference
    else:
        md_series = pretrained_md_reference(cfg.pretrained) if cfg.pretrained is not None else None
    configure_compile(run.model, cfg.compile, run.config.model.get("kind", "structured"))
    return run, reference, md_series


def _molecular_outputs(run: Run, samples: SampleSet, reference: Reference | RamachandranReference | None, md_series: Reference | None,
                       out_dir: Path, lag_frames: int) -> dict:
    """Trajectory, npz, Ramachandran and CV-discovery outputs of a molecular sample; returns the CV report."""
    topology = run.target.topology
    md.Trajectory(samples.x.astype("float32"), topology).save_dcd(str(out_dir / "samples.dcd"))
    md.Trajectory(run.target.positions[None].astype("float32"), topology).save_pdb(str(out_dir / "topology.pdb"))
    phi, psi = residue_phi_psi(samples.x, topology)  # (N, residues)
    dipeptide = phi.shape[1] == 1
    keep = samples.in_state
    stored = {"phi": phi[:, 0], "psi": psi[:, 0]} if dipeptide else {"phi": phi, "psi": psi}
    samples.save(out_dir / "samples.npz", include_x=False, **stored)
    plot_residue_ramachandrans(out_dir / "ramachandran.png", phi[keep], psi[keep], samples.log_w[keep], reference)
    names, torsions = torsion_table(run.model.coordinates, topology, samples.x)
    # TICA on the backbone torsions of the MD series (every residue's, for a peptide)
    sample_phi, sample_psi = (phi[:, 0], psi[:, 0]) if dipeptide else (phi, psi)
    report = cv_discovery(samples.z_slow, torsions, names, samples.log_w, sample_phi, sample_psi, md_series, lag_frames=lag_frames,
                          periodic_latents=bool(getattr(run.model.latent.slow, "periodic", False)))
    (out_dir / "cv_report.md").write_text(cv_markdown(report))
    plot_free_energy(samples.z_slow, samples.log_w, out_dir / "free_energy.png")
    return report


@clean_errors("flowcg-sample")
def sample(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    seed_everything(cfg.seed)
    run, reference, md_series = _load(cfg)
    samples = draw_samples(run.model, run.target, cfg.n, cfg.batch_size, beta=cfg.beta)
    metrics = {
        "model": cfg.pretrained or str(Path(cfg.run).resolve()),
        "target": run.target.name,
        "beta": cfg.beta,
        **evaluate_samples(run.target, samples, reference),
        "energy_evaluations": run.target.n_energy_evaluations,
        "device": describe_device(run.device),
    }
    if getattr(run.target, "topology", None) is not None:
        metrics["cv_discovery"] = _molecular_outputs(run, samples, reference, md_series, out_dir, cfg.tica_lag_frames)
    else:
        samples.save(out_dir / "samples.npz")
        flat = samples.x.reshape(len(samples.x), -1)
        metrics["observables"] = {
            "mean_x_model": flat.mean(0).tolist(),
            "mean_x_reweighted": reweighted_mean(flat, samples.log_w).tolist(),
            "mean_energy_kT_reweighted": float(reweighted_mean(samples.energies_kT, samples.log_w)),
        }
        plot_marginals(run.target, samples, out_dir / "marginals.png")
        plot_samples(run.target, samples, out_dir / "samples.png")
    metrics["wall_time_s"] = time.perf_counter() - started
    write_json(metrics, out_dir / "metrics.json")
    print(f"flowcg-sample: {cfg.n} samples, ESS {metrics['ess']:.4f}, log Z {metrics['log_z']:.4f}; results in {out_dir}")
    return metrics


main = entry_point("sample", sample)

if __name__ == "__main__":
    main()
