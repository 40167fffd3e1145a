import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# OMP_NUM_THREADS, when set, is the thread count of this process and of the subprocesses
# the tests start (tests/helpers.py); the suite is checked at 1 and 2 (README). Unset, each
# pytest-xdist worker (`make test` runs TEST_WORKERS of them) takes its share of the cores:
# more threads than cores slow every worker's torch kernels.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
torch.set_num_threads(
    int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, (os.cpu_count() or 1) // _workers)))
)
warnings.filterwarnings("ignore", category=UserWarning, module="torch")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One prepared-data cache for the whole session (tokenizer training runs once)."""
    return tmp_path_factory.mktemp("cache")
