"""Shared fixtures: quiet threads, the shared real data folder, in-process plugins, benchmark scripts."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (tiny tensors run fastest so, above all on shared cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def load_benchmark() -> Callable[[str], ModuleType]:
    """Import a script of ``benchmarks/`` by file name (``"accuracy"``), with its siblings importable."""
    folder = REPO_ROOT / "benchmarks"

    def load(name: str) -> ModuleType:
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
        spec = importlib.util.spec_from_file_location(f"{name}_benchmark", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests using it skip with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it sits beside the checkout on project machines)")
    return SHARED_DATA


@pytest.fixture
def plugin_registration():
    """Register plugin objects in-process for one test; they are removed afterwards."""
    from weakseg import plugins

    added: list[object] = []

    def register(plugin: object) -> None:
        plugins.register_plugin(plugin)
        added.append(plugin)

    yield register
    for plugin in added:
        plugins.unregister_plugin(plugin)
