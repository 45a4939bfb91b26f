"""One source of truth: every option a shipped config group sets to a value equals the default of
the code it configures, so a user of the library and a user of the CLI get the same run."""

import inspect
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from flowcg.active.flow_oracle import FlowOracle
from flowcg.active.loop import LoopOptions, ModelOptions, SimulationOptions
from flowcg.active.md_oracle import MDOracle
from flowcg.active.selection import STRATEGIES
from flowcg.cg.training import FitOptions
from flowcg.builders import build_internal_model
from flowcg.flows.build import build_flow, build_internal_flow
from flowcg.md.walkers import WalkerSettings
from flowcg.training.prior_refit import PriorRefitConfig
from flowcg.training.schedules import SCHEDULES
from flowcg.training.trainer import TrainConfig

CONF = Path(__file__).resolve().parents[1] / "conf"
NOT_OPTIONS = {"defaults", "kind", "name", "seed", "schedule"}  # group selectors and interpolated run-wide values

# (config file, key inside it or None, the code it configures)
PAIRS = [
    ("train/default.yaml", None, TrainConfig),
    ("train.yaml", "prior_refit", PriorRefitConfig),
    ("model/structured.yaml", None, build_flow),
    ("model/internal.yaml", None, build_internal_flow),
    ("model/internal.yaml", None, build_internal_model),
    *[(f"train/schedule/{p.name}", None, SCHEDULES[OmegaConf.load(p).kind]) for p in sorted((CONF / "train/schedule").glob("*.yaml"))],
    ("al.yaml", "loop", LoopOptions),
    ("al.yaml", "fit", FitOptions),
    ("al.yaml", "cg_model", ModelOptions),
    ("al.yaml", "simulation", SimulationOptions),
    *[(f"strategy/{p.name}", None, STRATEGIES[OmegaConf.load(p).name]) for p in sorted((CONF / "strategy").glob("*.yaml"))],
    ("oracle/md.yaml", None, MDOracle),
    ("oracle/flow.yaml", None, FlowOracle),
    ("reference.yaml", "walkers", WalkerSettings),
]


def code_defaults(code) -> dict:
    if is_dataclass(code):
        return {f.name: f.default for f in fields(code) if f.default is not MISSING}
    return {name: p.default for name, p in inspect.signature(code).parameters.items() if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize("path, key, code", PAIRS, ids=[f"{p}:{k or ''}" for p, k, _ in PAIRS])
def test_config_values_are_the_code_defaults(path, key, code):
    section = OmegaConf.load(CONF / path)
    section = section[key] if key else section
    options = {k: v for k, v in OmegaConf.to_container(section, resolve=False).items() if k not in NOT_OPTIONS}
    defaults = code_defaults(code)
    drift = {k: (v, defaults[k]) for k, v in options.items() if k in defaults and defaults[k] != v}
    assert not drift, f"{path}{':' + key if key else ''} (config, code): {drift}"
