"""The one place where flashpack changes the libraries' classes.

``patch_diffusers_auto_model()`` and ``patch_transformers_auto_model()`` wrap a few classmethods
of public library classes (``AutoModel*.from_pretrained`` / ``from_config``,
``DiffusionPipeline.from_pretrained``) and add ``from_pretrained_flashpack``; every change goes
through :func:`wrap_classmethod` or :func:`add_classmethod`, which record it. Applying a
change twice is a no-op, :func:`undo_patches` restores every original (tests use it), and a
library whose class no longer has the method we wrap gets a :class:`PatchError` naming the
library version and what moved, instead of an AttributeError deep inside a later call.

>>> class Library:
...     @classmethod
...     def load(cls) -> str:
...         return "model"
>>> wrap_classmethod(Library, "load", lambda original: lambda cls: original(cls).upper())
>>> Library.load()
'MODEL'
>>> undo_patches()
>>> Library.load()
'model'
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Callable
from typing import Any

# The library versions these patches are written for (pyproject's extras).
SUPPORTED = {"diffusers": ">=0.42,<0.43", "transformers": ">=5,<6"}

_ABSENT = object()
# (class, attribute) -> the attribute's value in the class's own __dict__ before we changed it.
_ORIGINALS: dict[tuple[type, str], Any] = {}


class PatchError(RuntimeError):
    """A library no longer has what a flashpack patch wraps (a version this flashpack does not know)."""


def _describe(owner: type) -> str:
    library = owner.__module__.split(".")[0]
    try:
        version = importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        version = "(unknown version)"
    supported = SUPPORTED.get(library)
    wanted = f"; this flashpack supports {library}{supported}" if supported else ""
    return f"{library} {version}{wanted}"


def wrap_classmethod(owner: type, name: str, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Replace the classmethod ``owner.name`` (defined by ``owner`` itself) by
    ``classmethod(wrapper(function))``, where ``function(cls, ...)`` is the original's function.
    A no-op when already done."""
    if (owner, name) in _ORIGINALS:
        return
    current = owner.__dict__.get(name)
    if not isinstance(current, classmethod):
        what = "does not exist" if current is None else f"is a {type(current).__name__}, not a classmethod"
        raise PatchError(
            f"flashpack cannot patch {owner.__module__}.{owner.__qualname__}.{name}: it {what} in {_describe(owner)}"
        )
    original = current.__func__
    patched = functools.wraps(original)(wrapper(original))
    _ORIGINALS[(owner, name)] = current
    setattr(owner, name, classmethod(patched))


def add_classmethod(owner: type, name: str, function: Callable[..., Any]) -> None:
    """Set ``owner.name`` to ``classmethod(function)``; a no-op when already done."""
    if (owner, name) in _ORIGINALS:
        return
    _ORIGINALS[(owner, name)] = owner.__dict__.get(name, _ABSENT)
    setattr(owner, name, classmethod(function))


def is_patched(owner: type, name: str) -> bool:
    return (owner, name) in _ORIGINALS


def undo_patches() -> None:
    """Restore every attribute changed by :func:`wrap_classmethod` / :func:`add_classmethod`."""
    for (owner, name), original in reversed(list(_ORIGINALS.items())):
        if original is _ABSENT:
            delattr(owner, name)
        else:
            setattr(owner, name, original)
    _ORIGINALS.clear()
