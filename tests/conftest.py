import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_dtype():
    """Each test starts from the same seed and the default dtype, whatever ran before."""
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
