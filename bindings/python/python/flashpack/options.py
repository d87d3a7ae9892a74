"""The keyword options of loading and packing, defined once.

``assign_from_file``'s signature defines the load options (``LOAD_OPTIONS``: ``strict``,
``ignore_names``, ``eager``, ``verify``, ...) and ``pack_to_file``'s the pack options
(``PACK_OPTIONS``: ``target_dtype``, ``align_bytes``, ``checksums``, ...). Every other entry
point (``FlashPackMixin.from_flashpack`` / ``save_flashpack``, the integrations'
``from_pretrained_flashpack`` / ``save_pretrained_flashpack``, pipelines, the patched AutoModels)
takes its options with :func:`with_options`, which adds them to the entry point's own signature
(so ``help()`` and ``inspect.signature`` list them) and hands them over as one dict. A keyword
added to ``assign_from_file`` or ``pack_to_file`` therefore reaches every entry point.

>>> import inspect
>>> from flashpack import FlashPackMixin
>>> "verify" in inspect.signature(FlashPackMixin.from_flashpack).parameters
True
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, cast

from . import deserialization, serialization

F = TypeVar("F", bound=Callable[..., Any])

_P = inspect.Parameter
OPTIONS_ARGUMENT = "flashpack_options"


class Options:
    """The keyword parameters of ``source`` except ``skip``, in order, with their defaults."""

    def __init__(self, source: Callable[..., Any], skip: Iterable[str]) -> None:
        skipped = set(skip)
        self.parameters: dict[str, inspect.Parameter] = {
            name: p
            for name, p in inspect.signature(source).parameters.items()
            if name not in skipped and p.kind in (_P.POSITIONAL_OR_KEYWORD, _P.KEYWORD_ONLY)
        }
        self.names: tuple[str, ...] = tuple(self.parameters)

    def __contains__(self, name: object) -> bool:
        return name in self.parameters

    def __iter__(self) -> Any:
        return iter(self.names)

    def pick(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The entries of ``values`` that are options of this set."""
        return {name: values[name] for name in self.names if name in values}

    def pop(self, values: dict[str, Any]) -> dict[str, Any]:
        """Remove this set's options from ``values`` and return them (those present)."""
        return {name: values.pop(name) for name in self.names if name in values}


# assign_from_file(model, path, device, <LOAD_OPTIONS>)
LOAD_OPTIONS = Options(deserialization.assign_from_file, skip=("model", "path", "device"))
# pack_to_file(state_dict_or_model, destination_path, <PACK_OPTIONS>)
PACK_OPTIONS = Options(serialization.pack_to_file, skip=("state_dict_or_model", "destination_path"))


class _Option:
    """The default of a parameter that an entry point declares only to fix its position."""

    def __repr__(self) -> str:
        return "OPTION"


OPTION: Any = _Option()


def with_options(*sets: Options, defaults: Mapping[str, Any] | None = None) -> Callable[[F], F]:
    """Give a function the options of ``sets`` as parameters of its public signature.

    The decorated function declares a keyword-only parameter ``flashpack_options``; each call
    binds the public signature (so unknown keywords and missing arguments raise ``TypeError``
    as usual) and passes every option, with its default filled in, in that dict. Options are
    added as keyword-only parameters after the function's own ones; a function that must take
    some of them positionally (as the original package did) declares them where they belong
    with the default ``OPTION``. ``defaults`` overrides the defaults of the options' source
    (e.g. ``silent=False`` for a method that prints by default). A parameter the function
    declares with a real default stays its own, even when an option has its name.
    """
    overrides = dict(defaults or {})

    def decorate(fn: F) -> F:
        inner = inspect.signature(fn)
        if OPTIONS_ARGUMENT not in inner.parameters:
            raise TypeError(f"{fn.__qualname__} must take a keyword-only {OPTIONS_ARGUMENT} parameter")
        every: dict[str, inspect.Parameter] = {}
        for option_set in sets:
            for name, p in option_set.parameters.items():
                every.setdefault(name, p.replace(default=overrides.get(name, p.default)))
        unknown = set(overrides) - set(every)
        if unknown:
            raise TypeError(f"{fn.__qualname__}: defaults for unknown options {sorted(unknown)}")

        params: list[inspect.Parameter] = []
        own: list[inspect.Parameter] = []
        option_names: list[str] = []
        for p in inner.parameters.values():
            if p.name == OPTIONS_ARGUMENT:
                continue
            if p.default is OPTION:
                if p.name not in every:
                    raise TypeError(f"{fn.__qualname__}: {p.name}=OPTION is not an option")
                params.append(every[p.name].replace(kind=p.kind))
                option_names.append(p.name)
            else:
                params.append(p)
                own.append(p)
        taken = {p.name for p in params}
        added = [p.replace(kind=_P.KEYWORD_ONLY) for name, p in every.items() if name not in taken]
        option_names += [p.name for p in added]
        var_keyword = [p for p in params if p.kind is _P.VAR_KEYWORD]
        params = [p for p in params if p.kind is not _P.VAR_KEYWORD] + added + var_keyword
        public = inner.replace(parameters=params)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = public.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = bound.arguments
            call_args: list[Any] = []
            call_kwargs: dict[str, Any] = {}
            for p in own:
                value = arguments[p.name]
                if p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD):
                    call_args.append(value)
                elif p.kind is _P.VAR_POSITIONAL:
                    call_args.extend(value)
                elif p.kind is _P.KEYWORD_ONLY:
                    call_kwargs[p.name] = value
                else:
                    call_kwargs.update(value)
            call_kwargs[OPTIONS_ARGUMENT] = {name: arguments[name] for name in option_names}
            return fn(*call_args, **call_kwargs)

        # What inspect.signature reports (and so help() and the bound checks above): the function's
        # own parameters plus the options.
        wrapper.__signature__ = public  # type: ignore[attr-defined]  # functions take it; typeshed has no such field
        return cast(F, wrapper)

    return decorate
