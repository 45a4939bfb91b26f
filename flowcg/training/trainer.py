"""Tempered reverse-KL training with checkpoints that resume exactly.

The trainer runs stages: each trains ``steps_per_stage`` Adam steps at a fixed β (the stage at
β = 1 runs ``final_steps``), then draws ``eval_batch_size`` fresh samples to log ESS, log Z and
the KL estimate at that β and to ask the schedule for the next β.

Robustness, because one bad batch must never end a long run:
* NaN/inf energies are dropped from the loss and counted (see :mod:`objective`);
* a step whose loss or gradient norm is not finite is skipped and counted;
* gradient norms are clipped to ``clip_factor`` × the running median of the last
  ``clip_window`` norms (robust to the heavy tails that high-energy samples produce), and a step
  whose norm exceeds ``skip_factor`` × that median is skipped and counted (on alanine dipeptide,
  after one clipped-but-applied 2.5e8 spike the loss jumped from ~250 to ~1200 and never recovered).

With ``conditioner_dtype: bfloat16`` each step runs the coupling conditioners in bfloat16
(:meth:`~flowcg.flows.model.StructuredFlow.conditioner_precision`, mixed precision); the stage
evaluations, like sampling and refits, run at the model's full precision. The default ``auto``
does so where it applies and pays (:func:`resolve_conditioner_dtype`).

Every ``checkpoint_every`` steps and at every stage boundary the full state (model, optimiser,
RNG states, schedule position, counters, history) is written atomically to
``<run_dir>/checkpoint.pt``. ``fit(resume=True)`` continues from it and, with the same seed and
config, ends with exactly the parameters of an uninterrupted run.

With ``buffer_size`` > 0 every stage starts by drawing a :class:`~flowcg.training.buffer.ReweightedBuffer`
at its β, and again every ``buffer_refresh_steps`` steps if set (saved as ``<run_dir>/buffer.pt``, so
a stage resumed mid-way trains on the same draws); the forward-KL term of every step is resampled
from it: TA-BG's temperature annealing when the phase's schedule steps β down from a hotter, already
trained flow.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from flowcg.errors import ConfigError, InputError
from flowcg.flows.model import StructuredFlow
from flowcg.hardware import native_bfloat16
from flowcg.sampling.importance import kish_ess, kl_estimate, log_z_estimate
from flowcg.targets.base import Target
from flowcg.io import load_torch, save_atomic
from flowcg.training.buffer import ReweightedBuffer
from flowcg.training.objective import kl_objective
from flowcg.training.schedules import Schedule
from flowcg.threads import rebalance

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
BUFFER_NAME = "buffer.pt"
#: ``train.conditioner_dtype`` values: None = the model's own dtype; ``AUTO`` resolves to one of them.
CONDITIONER_DTYPES = {None: None, "bfloat16": torch.bfloat16}
AUTO = "auto"


def resolve_conditioner_dtype(setting: str | None, model: StructuredFlow) -> str | None:
    """``"auto"`` → ``"bfloat16"`` for a float32 internal-coordinate flow on a CPU that multiplies
    bfloat16 in hardware (:func:`~flowcg.hardware.native_bfloat16`), else None; any other setting as is.

    On the alanine-dipeptide recipe from scratch (AMD EPYC, AVX512-BF16) bfloat16 conditioners gave
    Kish ESS 0.833–0.841 on three 10⁶ sets against 0.846–0.851 for the shipped float32 run and
    0.822–0.836 for another float32 run of the same recipe, with steps 1.2× faster
    (``data_free_benchmarks/RESULTS.md``, "Flow throughput", item 7)."""
    if setting != AUTO:
        return setting
    try:
        model.check_conditioner_precision(torch.bfloat16)
    except ConfigError:
        return None
    return "bfloat16" if next(model.parameters()).device.type == "cpu" and native_bfloat16() else None


class MetricLogger(Protocol):
    def log(self, metrics: dict, step: int) -> None: ...


@dataclass
class TrainConfig:
    """Optimisation settings (``conf/train/*.yaml`` holds them next to the schedule).

    Energies in the loss are cut at ``linear_until`` / ``clamp_max`` (kT); the learning rate
    decays by cosine to ``lr × final_lr_factor`` over the final stage at β = 1.
    """

    batch_size: int = 256
    lr: float = 3e-3
    final_lr_factor: float = 0.1
    steps_per_stage: int = 50
    final_steps: int = 1000
    max_stages: int = 100
    eval_batch_size: int = 1024
    checkpoint_every: int = 200
    clip_factor: float = 5.0
    skip_factor: float = 100.0
    clip_window: int = 100
    linear_until: float = 1e3
    clamp_max: float = 1e9
    log_every: int = 10
    show_progress: bool = True
    slow_uniform_fraction: float = 0.0  # share of each batch trained conditionally on a uniform slow state (objective.py)
    forward_kl_weight: float = 0.0  # λ: loss = (1 − λ) reverse KL + λ importance-weighted forward KL (objective.py)
    buffer_size: int = 0  # > 0: the forward KL resamples a buffer of this many draws per stage (buffer.py)
    buffer_refresh_steps: int = 0  # > 0: the buffer is drawn anew every this many steps of a stage (0: once per stage)
    conditioner_dtype: str | None = AUTO  # "bfloat16": the coupling conditioners compute in it during steps (mixed precision); auto: see resolve_conditioner_dtype

    def __post_init__(self):
        for name in ("batch_size", "steps_per_stage", "max_stages", "eval_batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be ≥ 1, got {getattr(self, name)}")
        if not 0.0 <= self.slow_uniform_fraction < 1.0:
            raise ConfigError(f"train.slow_uniform_fraction must be in [0, 1), got {self.slow_uniform_fraction}")
        if not 0.0 <= self.forward_kl_weight <= 1.0:
            raise ConfigError(f"train.forward_kl_weight must be in [0, 1], got {self.forward_kl_weight}")
        if self.forward_kl_weight == 1.0 and self.slow_uniform_fraction > 0.0:
            raise ConfigError("train.slow_uniform_fraction trains the reverse-KL part, which train.forward_kl_weight=1 leaves out")
        if self.buffer_refresh_steps < 0:
            raise ConfigError(f"train.buffer_refresh_steps must be ≥ 0, got {self.buffer_refresh_steps}")
        if self.buffer_size < 0:
            raise ConfigError(f"train.buffer_size must be ≥ 0, got {self.buffer_size}")
        if self.buffer_size and not self.forward_kl_weight > 0.0:
            raise ConfigError("train.buffer_size feeds the forward KL: set train.forward_kl_weight > 0 as well")
        if 0 < self.buffer_size < self.batch_size:
            raise ConfigError(f"train.buffer_size ({self.buffer_size}) must hold at least one batch ({self.batch_size})")
        if self.conditioner_dtype not in (*CONDITIONER_DTYPES, AUTO):
            raise ConfigError(f"train.conditioner_dtype must be null (the model's dtype), {AUTO} or one of "
                              f"{', '.join(d for d in CONDITIONER_DTYPES if d)}, got {self.conditioner_dtype!r}")
        if self.final_steps < 0:  # 0: a warm-started run that only evaluates (or refits its prior)
            raise ConfigError(f"train.final_steps must be ≥ 0, got {self.final_steps}")


def rng_state() -> dict:
    """The global torch, numpy and Python random states, as tensors and plain data (a weights-only checkpoint)."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Fits a :class:`StructuredFlow` to a :class:`Target` by tempered reverse KL.

    Args:
        model, target: already on the same device and dtype.
        schedule: the tempering schedule.
        config: optimisation settings.
        run_dir: where ``checkpoint.pt`` lives.
        logger: optional metric sink (wandb or nothing).
    """

    def __init__(self, model: StructuredFlow, target: Target, schedule: Schedule, config: TrainConfig, run_dir: str | Path, logger: MetricLogger | None = None):
        self.model, self.target, self.schedule, self.config = model, target, schedule, config
        self.run_dir = Path(run_dir)
        self.logger = logger
        self.buffer: ReweightedBuffer | None = None
        # fused Adam: one kernel over all parameters instead of a dozen ops per tensor (~20 → 2 ms per step for the ALDP flow)
        self._fused_adam = next(model.parameters()).device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=self._fused_adam)
        self._conditioner_dtype = CONDITIONER_DTYPES[resolve_conditioner_dtype(config.conditioner_dtype, model)]
        try:
            model.check_conditioner_precision(self._conditioner_dtype)  # now, not at the first step
        except ConfigError as error:
            raise ConfigError(f"train.conditioner_dtype={config.conditioner_dtype}: {error}") from None
        self.state = {
            "step": 0,
            "stage": 0,
            "stage_step": 0,
            "beta": schedule.initial_beta,
            "done": False,
            "stages": [],  # one record per finished stage
            "curve": [],  # (step, beta, loss, grad_norm) every log_every steps
            "grad_norms": [],
            "skipped_steps": 0,
            "nonfinite_energies": 0,
            "energy_evaluations": 0,
            "wall_time_s": 0.0,
        }

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        self.state["energy_evaluations"] = self.target.n_energy_evaluations
        save_atomic(
            {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "state": self.state, "rng": rng_state(), "config": asdict(self.config)},
            self.checkpoint_path,
        )

    def load_checkpoint(self) -> None:
        saved = load_torch(self.checkpoint_path, map_location=next(self.model.parameters()).device, what="checkpoint")
        self.model.match_slow_prior(saved["model"]).load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        for group in self.optimizer.param_groups:  # the saved groups carry the saving run's choice
            group["fused"] = self._fused_adam
        self.state = saved["state"]
        self.target.n_energy_evaluations = self.state["energy_evaluations"]
        set_rng_state(saved["rng"])
        log.info("resumed from %s at step %d (stage %d, beta=%.4g)", self.checkpoint_path, self.state["step"], self.state["stage"], self.state["beta"])

    # ------------------------------------------------------------------ the stage's buffer
    def _ensure_buffer(self) -> None:
        """Have the buffer the current step trains on (``buffer_size`` > 0): drawn and saved at the
        first step of a stage or of a refresh block, read back when a run resumes inside one."""
        cfg, s = self.config, self.state
        if not cfg.buffer_size:
            return
        since_draw = s["stage_step"] % cfg.buffer_refresh_steps if cfg.buffer_refresh_steps else s["stage_step"]
        drawn_at = s["step"] - since_draw
        if self.buffer is not None and self.buffer.step == drawn_at:
            return
        path = self.run_dir / BUFFER_NAME
        if since_draw:
            self.buffer = ReweightedBuffer.load(path, next(self.model.parameters()).device)
            if self.buffer.step != drawn_at:
                raise InputError(f"{path} was drawn before step {self.buffer.step}, the checkpoint needs the one of step {drawn_at}: the run folder is inconsistent")
            return
        self.buffer = ReweightedBuffer.draw(self.model, self.target, s["beta"], cfg.buffer_size, cfg.eval_batch_size, s["step"])
        self.buffer.save(path)
        log.info("step %d (stage %d): buffer of %d draws at beta=%.4g, Kish ESS %.4f", s["step"], s["stage"], cfg.buffer_size, s["beta"], self.buffer.kish_ess)

    # ------------------------------------------------------------------ one step
    def _learning_rate(self) -> float:
        cfg, s = self.config, self.state
        if s["beta"] < 1.0:
            return cfg.lr
        progress = s["stage_step"] / cfg.final_steps
        floor = cfg.lr * cfg.final_lr_factor
        return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))

    def _clip_threshold(self) -> float:
        norms = self.state["grad_norms"][-self.config.clip_window :]
        return self.config.clip_factor * float(np.median(norms)) if len(norms) >= 10 else math.inf

    def train_step(self) -> tuple[float, float]:
        """One Adam step at the current β; returns (loss, gradient norm), NaN if skipped."""
        cfg, s = self.config, self.state
        for group in self.optimizer.param_groups:
            group["lr"] = self._learning_rate()
        self.optimizer.zero_grad(set_to_none=True)
        with self.model.conditioner_precision(self._conditioner_dtype):  # autograd keeps the dtypes for the backward
            estimate = kl_objective(self.model, self.target, s["beta"], cfg.batch_size, cfg.forward_kl_weight, cfg.slow_uniform_fraction,
                                    cfg.linear_until, cfg.clamp_max, self.buffer)
        s["nonfinite_energies"] += estimate.n_nonfinite  # reported once per stage, not per step
        loss = float(estimate.loss.detach())
        if not math.isfinite(loss):
            s["skipped_steps"] += 1
            log.debug("step %d: non-finite loss, step skipped", s["step"])
            return math.nan, math.nan
        estimate.loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self._clip_threshold()))
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            s["skipped_steps"] += 1
            log.debug("step %d: non-finite gradient norm, step skipped", s["step"])
            return loss, math.nan
        threshold = self._clip_threshold()
        s["grad_norms"] = (s["grad_norms"] + [grad_norm])[-cfg.clip_window :]
        if grad_norm > cfg.skip_factor / cfg.clip_factor * threshold:
            # an outlier batch (typically one near-clash sample): even clipped, its direction
            # would kick Adam's moments; skip it, and let the median adapt if it persists
            self.optimizer.zero_grad(set_to_none=True)
            s["skipped_steps"] += 1
            log.debug("step %d: gradient norm %.3g beyond %g x the running median, step skipped", s["step"], grad_norm, cfg.skip_factor)
            return loss, grad_norm
        self.optimizer.step()
        return loss, grad_norm

    # ------------------------------------------------------------------ stage evaluation
    @torch.no_grad()
    def evaluate_stage(self) -> tuple[dict, np.ndarray, np.ndarray]:
        """ESS, log Z and KL estimates at the current β (and at β = 1) from fresh samples."""
        s = self.state
        draw = self.model.sample(self.config.eval_batch_size)
        u = self.target.energy(draw.x).detach().cpu().double().numpy()
        log_q = draw.log_q.detach().cpu().double().numpy()
        log_w = -s["beta"] * u - log_q
        record = {
            "stage": s["stage"],
            "step": s["step"],
            "beta": s["beta"],
            "ess": kish_ess(log_w),
            "log_z": log_z_estimate(log_w),
            "kl": kl_estimate(log_w),
            "ess_target": kish_ess(-u - log_q),
            "energy_evaluations": self.target.n_energy_evaluations,
        }
        return record, u, log_q

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False) -> dict:
        """Train until the stage at β = 1 is finished; returns the training state."""
        if resume:
            self.load_checkpoint()
        s, cfg = self.state, self.config
        self.model.train()
        start = time.perf_counter() - s["wall_time_s"]
        bar = tqdm(initial=s["step"], desc="train", unit="step", disable=not cfg.show_progress, dynamic_ncols=True)
        try:
            while not s["done"]:
                stage_length = cfg.final_steps if s["beta"] >= 1.0 else cfg.steps_per_stage
                while s["stage_step"] < stage_length:
                    self._ensure_buffer()
                    loss, grad_norm = self.train_step()
                    if math.isfinite(loss):  # the stage's mean loss, kept in the state so it survives a resume
                        s["stage_loss_sum"] = s.get("stage_loss_sum", 0.0) + loss
                        s["stage_loss_count"] = s.get("stage_loss_count", 0) + 1
                    s["step"] += 1
                    s["stage_step"] += 1
                    bar.update(1)
                    if s["step"] % cfg.log_every == 0:
                        rebalance()  # another flowcg run may have started or ended (flowcg.threads)
                        s["curve"].append((s["step"], s["beta"], loss, grad_norm))
                        bar.set_postfix(beta=f"{s['beta']:.3g}", loss=f"{loss:.3f}")
                        if self.logger:
                            self.logger.log({"train/loss": loss, "train/beta": s["beta"], "train/grad_norm": grad_norm, "train/energy_evaluations": self.target.n_energy_evaluations}, s["step"])
                    if s["step"] % cfg.checkpoint_every == 0:
                        s["wall_time_s"] = time.perf_counter() - start
                        self.save_checkpoint()
                record, u, log_q = self.evaluate_stage()
                count = s.pop("stage_loss_count", 0)
                record["loss"] = s.pop("stage_loss_sum", 0.0) / count if count else math.nan
                record["nonfinite_energies"] = s["nonfinite_energies"]
                record["skipped_steps"] = s["skipped_steps"]
                if self.buffer is not None and self.buffer.beta == s["beta"]:  # not a previous stage's (a stage without steps draws none)
                    record["buffer_ess"] = self.buffer.kish_ess
                previous = s["stages"][-1] if s["stages"] else {"nonfinite_energies": 0, "skipped_steps": 0}
                if record["nonfinite_energies"] > previous["nonfinite_energies"] or record["skipped_steps"] > previous["skipped_steps"]:
                    log.warning(
                        "stage %d: %d samples with non-finite energy dropped from the loss, %d steps skipped (handled, training goes on)",
                        s["stage"], record["nonfinite_energies"] - previous["nonfinite_energies"], record["skipped_steps"] - previous["skipped_steps"],
                    )
                s["stages"].append(record)
                log.info("stage %d done: beta=%.4g loss=%.4f ess=%.3f log_z=%.4f evals=%d", record["stage"], record["beta"], record["loss"], record["ess"], record["log_z"], record["energy_evaluations"])
                if self.logger:
                    self.logger.log({f"stage/{k}": v for k, v in record.items()}, s["step"])
                if s["beta"] >= 1.0:
                    s["done"] = True
                else:
                    force_final = s["stage"] + 2 >= cfg.max_stages
                    s["beta"] = 1.0 if force_final else self.schedule.next_beta(s["beta"], u, log_q)
                    s["stage"] += 1
                    s["stage_step"] = 0
                s["wall_time_s"] = time.perf_counter() - start
                self.save_checkpoint()
        finally:
            bar.close()
        (self.run_dir / BUFFER_NAME).unlink(missing_ok=True)  # the finished phase's last buffer is no longer needed
        self.model.eval()
        return s
