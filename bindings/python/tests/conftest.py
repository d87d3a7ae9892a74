"""Shared test set-up: no test sees the library patches of another (``patch_integrations()``
changes diffusers' and transformers' classes for the whole process)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _undo_library_patches() -> Iterator[None]:
    yield
    from flashpack.integrations import unpatch_integrations

    unpatch_integrations()
