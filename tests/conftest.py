import os
import shutil
import warnings

import pytest
import torch

from flowcg.cg.mapping import CGMapping
from flowcg.targets.systems import load_system

os.environ.setdefault("WANDB_MODE", "disabled")
warnings.filterwarnings("ignore", message=".*triangular_solve.*")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def aldp_topology():
    """mdtraj topology of alanine dipeptide (22 atoms)."""
    return load_system("aldp_vacuum").topology


@pytest.fixture(scope="session")
def backbone(aldp_topology):
    """The 5-bead backbone CG mapping of alanine dipeptide."""
    return CGMapping.aldp_backbone(aldp_topology)


def _has_cxx_compiler() -> bool:
    """What torch.compile's CPU backend (inductor) needs: a C++ compiler ($CXX, g++, clang++ or c++)."""
    return any(shutil.which(name) for name in (os.environ.get("CXX", ""), "g++", "clang++", "c++") if name)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``compile`` check real compiled kernels: skipped, with the reason, where no
    C++ compiler is installed (flowcg itself then falls back to eager, which other tests cover)."""
    if _has_cxx_compiler():
        return
    skip = pytest.mark.skip(reason="torch.compile needs a C++ compiler; none found ($CXX, g++, clang++, c++)")
    for item in items:
        if "compile" in item.keywords:
            item.add_marker(skip)
