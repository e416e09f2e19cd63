import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    # Tests share 2 cores with other test workers (pytest -n 2); one torch thread
    # each avoids the oversubscription that made 2-thread runs 4-6x slower here.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shakespeare():
    from search.model.data import load_shakespeare
    return load_shakespeare()
