"""The vLLM tests run only with a python that has vLLM (the venv scripts/vllm-venv.sh builds;
`make test-vllm`). They live outside bindings/python/tests, so the main test run never collects
them; run with any other python, they fail here with that message instead of skipping."""

import importlib.util

import pytest


def pytest_configure(config: pytest.Config) -> None:
    missing = [m for m in ("vllm", "flashpack") if importlib.util.find_spec(m) is None]
    if missing:
        raise pytest.UsageError(
            f"bindings/python/tests_vllm needs {' and '.join(missing)} in this python: run `make test-vllm` "
            "(vLLM's CPU build in .venv-vllm, scripts/vllm-venv.sh, with flashpack installed from a wheel)"
        )
