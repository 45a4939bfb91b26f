import os
import warnings

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
warnings.filterwarnings("ignore", message=".*triangular_solve.*")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
