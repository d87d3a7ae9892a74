"""vLLM plugin: the load formats ``flashpack`` and ``flashpack_restart``.

Installing ``flashpack`` registers :func:`register` under vLLM's ``vllm.general_plugins`` entry
point group, so ``vllm serve ./model --load-format flashpack`` and
``LLM(model=..., load_format="flashpack")`` work with nothing imported by the user. vLLM calls
:func:`register` in each of its processes (front end, engine core, workers), sometimes more than
once; it registers the loaders once per process. This module imports vLLM only inside
:func:`register` (``import flashpack`` never imports it); the loaders themselves live in
``flashpack.integrations._vllm_loader``, which does.

A vLLM whose model-loader API is not the one this plugin was written against (``BaseModelLoader``
with ``download_model(model_config)`` and ``load_weights(model, model_config)``, and
``register_model_loader``) gets one warning naming its version, and nothing is registered: its own
load formats keep working. See docs/serving.md.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

__all__ = ["LOAD_FORMAT", "RESTART_LOAD_FORMAT", "register"]

LOAD_FORMAT = "flashpack"
RESTART_LOAD_FORMAT = "flashpack_restart"

_logger = logging.getLogger("flashpack.vllm")
_state: dict[str, Any] = {"done": False}

# The parameters each loader method takes (besides self), as vLLM 0.32 declares them.
_EXPECTED = {"download_model": ["model_config"], "load_weights": ["model", "model_config"]}


def _api_mismatch(base: Any) -> str | None:
    """What differs between vLLM's ``BaseModelLoader`` and the API this plugin implements."""
    for method, params in _EXPECTED.items():
        fn = getattr(base, method, None)
        if fn is None:
            return f"BaseModelLoader has no {method}()"
        got = [p for p in inspect.signature(fn).parameters if p != "self"]
        if got != params:
            return f"BaseModelLoader.{method} takes ({', '.join(got)}), this plugin implements ({', '.join(params)})"
    return None


def register() -> None:
    """Register the ``flashpack`` and ``flashpack_restart`` load formats with vLLM (idempotent;
    never raises: vLLM runs plugins unguarded, and a plugin error would stop vLLM itself)."""
    if _state["done"]:
        return
    _state["done"] = True
    version = "unknown"
    try:
        import vllm

        version = str(getattr(vllm, "__version__", "unknown"))
        from vllm.model_executor.model_loader import BaseModelLoader, register_model_loader

        problem = _api_mismatch(BaseModelLoader)
        if problem is None:
            from . import _vllm_loader

            register_model_loader(LOAD_FORMAT)(_vllm_loader.FlashPackModelLoader)
            register_model_loader(RESTART_LOAD_FORMAT)(_vllm_loader.FlashPackRestartLoader)
            return
    except Exception as e:  # noqa: BLE001 -- whatever failed (vLLM's API moved), vLLM must keep running
        problem = f"{type(e).__name__}: {e}"
    _logger.warning(
        "flashpack: vLLM %s has a model-loader API this plugin does not support (%s); the load formats "
        "%r and %r are not available. vLLM's own load formats are unaffected.",
        version,
        problem,
        LOAD_FORMAT,
        RESTART_LOAD_FORMAT,
    )
