"""What the ``flashpack`` command does that needs Python, and the original package's Python API
for it (``convert_to_flashpack``, ``revert_from_flashpack``, ...).

The command line itself is the engine's (``flashpack._engine.run_command``, the Rust binary's parser and
subcommands): it converts safetensors and FlashPack files bit-exactly and hands over here only
what needs torch, transformers, diffusers or the Hub: torch files (``.bin``/``.pt``/``.pth``/
``.ckpt``), ``--dtype`` casts, model folders and Hub ids. The API functions route the same way,
through the same parser, so a conversion does the same whichever way it is asked for.

>>> import torch, tempfile, os
>>> from flashpack.commands import convert_to_flashpack, revert_from_flashpack
>>> folder = tempfile.mkdtemp()
>>> torch.save({"w": torch.ones(2)}, os.path.join(folder, "w.pt"))
>>> convert_to_flashpack(os.path.join(folder, "w.pt")) == os.path.join(folder, "w.flashpack")
True
>>> revert_from_flashpack(os.path.join(folder, "w.flashpack")) == os.path.join(folder, "w.safetensors")
True

Every file is written atomically (a temporary file beside the destination, renamed over it
once complete): an interrupted or failed command leaves the previous file as it was.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

from . import _engine
from .deserialization import read_storage, revert_from_file
from .serialization import pack_to_file
from .storage import revert_storage
from .utils import NAME_TO_DTYPE, atomic_path, dtype_to_string, filter_state_dict

if TYPE_CHECKING:
    import torch

TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Weight files a library writes into a model folder, in the order they are looked for.
WEIGHT_FILE_STEMS = ("model", "diffusion_pytorch_model", "pytorch_model")
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32",
                 "fp64": "float64", "double": "float64"}  # fmt: skip


class CommandError(Exception):
    """A failure the user can act on; the command prints it as one line."""


# ---------------------------------------------------------------------------------------------
# The original's API


def filter_kwargs_for_method(kwargs: dict[str, Any], method: Callable[..., Any]) -> dict[str, Any]:
    """The entries of ``kwargs`` that ``method`` accepts (all of them when it takes ``**kwargs``)."""
    params = inspect.signature(method).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if k in params}


def convert_to_flashpack_from_state_dict(
    state_dict: dict[str, torch.Tensor],
    destination_path: str | os.PathLike[str],
    dtype: torch.dtype | str | None = None,
    ignore_names: list[str] | None = None,
    ignore_prefixes: list[str] | None = None,
    ignore_suffixes: list[str] | None = None,
    silent: bool = True,
    **pack_options: Any,
) -> str:
    """Pack a state dict (floating-point tensors cast to ``dtype``, the ``ignore_*`` ones left
    out) into ``destination_path``; ``pack_options`` are those of ``pack_to_file``."""
    kept = filter_state_dict(state_dict, ignore_names, ignore_prefixes, ignore_suffixes)
    if not kept:
        raise CommandError(
            f"{os.fspath(destination_path)}: every tensor was left out by ignore_names/prefixes/suffixes"
        )
    pack_to_file(kept, destination_path, parse_dtype(dtype), silent=silent, **pack_options)
    return os.fspath(destination_path)


def convert_to_flashpack_from_model(
    model: torch.nn.Module,
    destination_path: str | os.PathLike[str],
    dtype: torch.dtype | str | None = None,
    ignore_names: list[str] | None = None,
    ignore_prefixes: list[str] | None = None,
    ignore_suffixes: list[str] | None = None,
    silent: bool = True,
    **pack_options: Any,
) -> str:
    """:func:`convert_to_flashpack_from_state_dict` of ``model.state_dict()``."""
    return convert_to_flashpack_from_state_dict(
        model.state_dict(), destination_path, dtype, ignore_names, ignore_prefixes, ignore_suffixes, silent,
        **pack_options,
    )  # fmt: skip


def convert_to_flashpack_from_state_dict_file(
    path: str | os.PathLike[str],
    destination_path: str | os.PathLike[str] | None = None,
    dtype: torch.dtype | str | None = None,
    ignore_names: list[str] | None = None,
    ignore_prefixes: list[str] | None = None,
    ignore_suffixes: list[str] | None = None,
    silent: bool = True,
) -> str:
    """Convert one weights file (.safetensors, .flashpack or a torch file) to FlashPack."""
    return convert_to_flashpack(
        path, destination_path, dtype, ignore_names, ignore_prefixes, ignore_suffixes, silent=silent
    )


def convert_to_flashpack_from_diffusers_repo_id_or_dir(
    model_dir: str | os.PathLike[str],
    destination_path: str | os.PathLike[str],
    dtype: torch.dtype | str | None = None,
    ignore_names: list[str] | None = None,
    ignore_prefixes: list[str] | None = None,
    ignore_suffixes: list[str] | None = None,
    silent: bool = True,
    **kwargs: Any,
) -> str:
    """Load a diffusers model (folder or Hub id; ``kwargs`` go to ``from_pretrained``, e.g.
    ``subfolder``, ``variant``) and save it as a FlashPack folder."""
    return convert_to_flashpack(
        model_dir, destination_path, dtype, ignore_names, ignore_prefixes, ignore_suffixes,
        use_diffusers=True, silent=silent, **kwargs,
    )  # fmt: skip


def convert_to_flashpack_from_transformers_repo_id_or_dir(
    model_dir: str | os.PathLike[str],
    destination_path: str | os.PathLike[str],
    dtype: torch.dtype | str | None = None,
    ignore_names: list[str] | None = None,
    ignore_prefixes: list[str] | None = None,
    ignore_suffixes: list[str] | None = None,
    silent: bool = True,
    **kwargs: Any,
) -> str:
    """Load a transformers model (folder or Hub id; ``kwargs`` go to ``from_pretrained``) and
    save it as a FlashPack folder."""
    return convert_to_flashpack(
        model_dir, destination_path, dtype, ignore_names, ignore_prefixes, ignore_suffixes,
        use_transformers=True, silent=silent, **kwargs,
    )  # fmt: skip


def convert_to_flashpack(
    model_or_state_dict_or_path_or_repo_id: str | os.PathLike[str] | torch.nn.Module | dict[str, torch.Tensor],
    destination_path: str | os.PathLike[str] | None = None,
    dtype: torch.dtype | str | None = None,
    ignore_names: list[str] | None = None,
    ignore_prefixes: list[str] | None = None,
    ignore_suffixes: list[str] | None = None,
    use_transformers: bool = False,
    use_diffusers: bool = False,
    silent: bool = True,
    **kwargs: Any,
) -> str:
    """``flashpack convert`` as a function; returns the path written.

    A model or state dict is packed into ``destination_path``. A path or Hub id is converted as
    the command does: safetensors and FlashPack files by the engine (bit-exact, ``__metadata__``
    kept), torch files, ``dtype`` casts, model folders and Hub ids here (``subfolder``,
    ``variant`` and the library's ``from_pretrained`` keywords in ``kwargs``).
    """
    source = model_or_state_dict_or_path_or_repo_id
    if not isinstance(source, (str, os.PathLike)):
        if destination_path is None:
            raise TypeError("destination_path is required to convert a model or a state dict")
        if hasattr(source, "state_dict"):  # a model (anything with a state_dict: duck-typed as one)
            return convert_to_flashpack_from_model(
                cast("torch.nn.Module", source),
                destination_path,
                dtype,
                ignore_names,
                ignore_prefixes,
                ignore_suffixes,
                silent,
            )
        return convert_to_flashpack_from_state_dict(
            source, destination_path, dtype, ignore_names, ignore_prefixes, ignore_suffixes, silent
        )
    if dtype is not None and not isinstance(dtype, str):
        dtype = dtype_to_string(dtype)
    argv = ["convert", os.fspath(source)]
    argv += [os.fspath(destination_path)] if destination_path is not None else []
    argv += ["--dtype", dtype] if dtype else []
    for flag, values in (("--ignore-names", ignore_names), ("--ignore-prefixes", ignore_prefixes),
                         ("--ignore-suffixes", ignore_suffixes)):  # fmt: skip
        for value in values or ():
            argv += [flag, value]
    for flag in ("subfolder", "variant"):
        if kwargs.get(flag) is not None:
            argv += [f"--{flag}", str(kwargs.pop(flag))]
    argv += ["--use-transformers"] if use_transformers else []
    argv += ["--use-diffusers"] if use_diffusers else []
    argv += [] if silent else ["--verbose"]
    return os.fspath(run_quietly(argv, kwargs))


def revert_from_flashpack(
    path: str | os.PathLike[str], destination_path: str | os.PathLike[str] | None = None, silent: bool = True
) -> str:
    """``flashpack revert`` as a function: a FlashPack file as .safetensors (default, beside it;
    bit-exact) or a torch file. Returns the path written."""
    argv = ["revert", os.fspath(path)] + ([os.fspath(destination_path)] if destination_path is not None else [])
    return os.fspath(run_quietly(argv + ([] if silent else ["--verbose"]), {}))


# ---------------------------------------------------------------------------------------------
# The command's Python side


def run_quietly(argv: list[str], library_kwargs: dict[str, Any]) -> Path:
    """Run a command line (as the ``flashpack`` command would, printing nothing); the path written."""
    outcome = _engine.run_command(["--quiet", *argv])
    if outcome["kind"] == "exit":
        raise CommandError(" ".join(str(outcome["stderr"] or outcome["stdout"]).split()))
    if outcome["kind"] == "done":
        return Path(outcome["written"])
    return carry_out(json.loads(outcome["request"]), library_kwargs).written


class Done:
    """A finished command: its report line and the path written."""

    def __init__(self, report: str, written: Path) -> None:
        self.report = report
        self.written = written


def carry_out(request: dict[str, Any], library_kwargs: dict[str, Any] | None = None) -> Done:
    """Do what the engine handed over (``request``: the parsed command line, see
    ``flashpack._engine.run_command``). ``library_kwargs`` go to the library's ``from_pretrained``."""
    args = request["command"]
    start = time.perf_counter()
    with phase_output(request["verbose"]):
        if args["command"] == "revert":
            done = revert_to_torch(Path(args["path"]), Path(args["destination_path"]), quiet=request["quiet"])
        elif args["command"] == "convert":
            done = convert_in_python(args, library_kwargs or {}, quiet=request["quiet"])
        else:
            raise CommandError(f"flashpack {args['command']}: nothing for Python to do")
    done.report += f", {time.perf_counter() - start:.2f} s"
    return done


@contextlib.contextmanager
def phase_output(verbose: bool) -> Iterator[None]:
    """Keep the per-phase timing lines packs and loads print off stdout unless ``verbose``."""
    if verbose:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def parse_dtype(name: torch.dtype | str | None) -> torch.dtype | None:
    """A floating-point torch dtype from a dtype or a name (``bf16``, ``bfloat16``, ``torch.float16``)."""
    import torch

    if name is None or isinstance(name, torch.dtype):
        return name
    dtype = NAME_TO_DTYPE.get(DTYPE_ALIASES.get(name.lower(), name.removeprefix("torch.")))
    if dtype is None or not dtype.is_floating_point:
        choices = sorted(n for n, d in NAME_TO_DTYPE.items() if d.is_floating_point)
        raise CommandError(f"--dtype {name!r} is not a floating-point dtype; use one of {', '.join(choices)}")
    return dtype


def pack_options(args: dict[str, Any], quiet: bool) -> dict[str, Any]:
    """The ``pack_to_file`` options the command line sets."""
    options: dict[str, Any] = {"silent": quiet, "checksums": not args["no_checksums"]}
    if args["align_bytes"] is not None:
        options["align_bytes"] = args["align_bytes"]
    return options


class _Ignored(TypedDict):
    ignore_names: list[str] | None
    ignore_prefixes: list[str] | None
    ignore_suffixes: list[str] | None


def ignored(args: dict[str, Any]) -> _Ignored:
    return _Ignored(
        ignore_names=args["ignore_names"] or None,
        ignore_prefixes=args["ignore_prefixes"] or None,
        ignore_suffixes=args["ignore_suffixes"] or None,
    )


def convert_in_python(args: dict[str, Any], library_kwargs: dict[str, Any], quiet: bool) -> Done:
    source = Path(args["path_or_repo_id"])
    destination = Path(args["destination_path"]) if args["destination_path"] else None
    if args["to"] not in (None, "flashpack"):
        raise CommandError(f"{source}: --to {args['to']}: this conversion writes FlashPack only")
    if source.is_file():
        if destination is None:
            destination = source.with_suffix(".flashpack")
        elif destination.is_dir():
            destination = destination / f"{source.stem}.flashpack"
        state_dict = read_state_dicts([source])
        convert_to_flashpack_from_state_dict(
            state_dict, destination, args["dtype"], **ignored(args), **pack_options(args, quiet)
        )
        return Done(f"{source} (torch file) -> {destination} (FlashPack): {len(state_dict)} tensors", destination)

    from_hub = not source.exists()
    folder = fetch_repo(args["path_or_repo_id"], args["subfolder"], library_kwargs) if from_hub else source
    model_dir = folder / args["subfolder"] if args["subfolder"] else folder
    if not model_dir.is_dir():
        raise CommandError(f"{model_dir}: no such subfolder")
    library = (
        "transformers" if args["use_transformers"]
        else "diffusers" if args["use_diffusers"]
        else library_of(model_dir / "config.json")
    )  # fmt: skip
    what = f"Hub repository {args['path_or_repo_id']}" if from_hub else "folder"

    if library is None:  # a folder of weights without a library config: the weights as they are
        if destination is None:
            if from_hub:
                raise CommandError("a destination path is required when converting a Hub repository")
            destination = model_dir / "model.flashpack"
        elif destination.suffix != ".flashpack":
            destination = destination / "model.flashpack"
        destination.parent.mkdir(parents=True, exist_ok=True)
        state_dict = read_state_dicts(weight_files(model_dir, args["variant"]))
        convert_to_flashpack_from_state_dict(
            state_dict, destination, args["dtype"], **ignored(args), **pack_options(args, quiet)
        )
        return Done(f"{source} ({what}) -> {destination} (FlashPack): {len(state_dict)} tensors", destination)

    if destination is None:
        if from_hub:
            raise CommandError("a destination directory is required when converting a Hub repository")
        destination = model_dir
    if destination.exists() and not destination.is_dir():
        raise CommandError(f"{destination}: a {library} model is saved as a folder, and this is a file")
    model = load_library_model(library, folder, args, library_kwargs)
    save = library_saver(library)
    save(model, destination, pack_options={**pack_options(args, quiet), "target_dtype": parse_dtype(args["dtype"])},
         **ignored(args))  # fmt: skip
    name = type(model).__name__
    return Done(f"{source} ({what}, {library} {name}) -> {destination} (FlashPack folder)", destination)


def revert_to_torch(source: Path, destination: Path, quiet: bool) -> Done:
    """Write a FlashPack file as a torch file (``torch.save`` of the state dict), atomically."""
    import torch

    storage = read_storage(os.fsdecode(source), torch.device("cpu"), silent=quiet)
    state_dict = revert_storage(storage)
    # Records sharing bytes (tied weights stored once) become separate tensors, as in a file
    # written from a model whose weights are not tied.
    for rec in storage.records or []:
        if rec.tied_to is not None:
            state_dict[rec.name] = state_dict[rec.name].clone()
    with atomic_path(destination) as temporary, _WriteErrors(temporary) as f:
        try:
            torch.save(state_dict, f)
        except Exception as e:
            # torch turns a failed write (a full disk) into a RuntimeError about stream
            # positions; report the operating system's error, on the destination's name.
            if f.error is None:
                raise
            raise OSError(f.error.errno, f.error.strerror, os.fspath(destination)) from e
    return Done(f"{source} (FlashPack) -> {destination} (torch file): {len(state_dict)} tensors", destination)


class _WriteErrors(io.FileIO):
    """A file opened for writing that remembers the first OSError a write raised."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "wb")
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return super().write(data)
        except OSError as e:
            self.error = self.error or e
            raise


# ---------------------------------------------------------------------------------------------
# Reading weights and model folders


def library_of(config_path: Path) -> str | None:
    """ "diffusers" / "transformers" for a model config that names one of them, else None."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    if "_diffusers_version" in config or "_class_name" in config:
        return "diffusers"
    if "transformers_version" in config or "model_type" in config:
        return "transformers"
    return None


def with_variant(name: str, variant: str | None) -> str:
    if not variant:
        return name
    stem, dot, ext = name.partition(".")
    return f"{stem}.{variant}{dot}{ext}"


def weight_files(folder: Path, variant: str | None) -> list[Path]:
    """The weight files of a model folder: a sharded index's shards, or the single weights file."""
    for stem in WEIGHT_FILE_STEMS:
        for ext in (".safetensors", ".bin"):
            index = folder / with_variant(f"{stem}{ext}.index.json", variant)
            if index.is_file():
                try:
                    weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                except (OSError, ValueError, KeyError, TypeError) as e:
                    raise CommandError(f"{index}: not a valid shard index ({e})") from e
                return [folder / name for name in dict.fromkeys(weight_map.values())]
            single = folder / with_variant(f"{stem}{ext}", variant)
            if single.is_file():
                return [single]
    candidates = sorted(folder.glob("*.safetensors"))
    if len(candidates) == 1 and not variant:
        return candidates
    what = f" for variant {variant!r}" if variant else ""
    raise CommandError(f"{folder}: no weights file found{what} (looked for model/diffusion_pytorch_model/pytorch_model "
                       ".safetensors/.bin and their shard indexes)")  # fmt: skip


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of one .safetensors, .flashpack or torch file, on the CPU."""
    import torch

    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError) as e:
            raise CommandError(f"{path}: cannot read safetensors file: {e}") from e
    if suffix == ".flashpack":
        return revert_from_file(path)
    try:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # files in torch's legacy (non-zip) format cannot be mapped
            if "mmap" not in str(e):
                raise
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for bad files
        raise CommandError(f"{path}: cannot read torch file: {e}") from e
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise CommandError(f"{path}: holds a {type(loaded).__name__}, not a state dict")
    bad = [k for k, v in loaded.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CommandError(f"{path}: entries that are not tensors: {bad[:5]}")
    return loaded


def read_state_dicts(paths: list[Path]) -> dict[str, torch.Tensor]:
    from tqdm import tqdm

    state_dict: dict[str, torch.Tensor] = {}
    for path in tqdm(paths, desc="reading shards", unit="file", disable=len(paths) < 2):
        for name, tensor in read_state_dict(path).items():
            if name in state_dict:
                raise CommandError(f"{path}: tensor '{name}' also appears in an earlier shard")
            state_dict[name] = tensor
    return state_dict


def fetch_repo(repo_id: str, subfolder: str | None, hub_kwargs: dict[str, Any]) -> Path:
    """The local snapshot of a Hub repository (the cache is used when offline)."""
    from huggingface_hub import snapshot_download

    patterns = [f"{subfolder.strip('/')}/*", "*.json"] if subfolder else None
    options = filter_kwargs_for_method(hub_kwargs, snapshot_download)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, **options))
    except Exception as e:  # huggingface_hub raises many types (offline, auth, missing repo, ...)
        raise CommandError(f"{repo_id}: no such file or directory, and fetching it from the Hub failed: {e}") from e


def load_library_model(library: str, folder: Path, args: dict[str, Any], library_kwargs: dict[str, Any]) -> Any:
    """Load a model folder with the library's own ``from_pretrained`` (the class named by its config)."""
    model_dir = folder / args["subfolder"] if args["subfolder"] else folder
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CommandError(f"{model_dir / 'config.json'}: cannot read the model config: {e}") from e
    options: dict[str, Any] = {"variant": args["variant"]} if args["variant"] else {}
    if library == "transformers":
        import transformers

        names = [n.removeprefix("FlashPack") for n in config.get("architectures") or []]
        cls = next((getattr(transformers, n) for n in names if hasattr(transformers, n)), transformers.AutoModel)
    else:
        import diffusers

        name = str(config.get("_class_name", "")).removeprefix("FlashPack")
        cls = getattr(diffusers, name, None) or diffusers.AutoModel
    if args["subfolder"]:
        options["subfolder"] = args["subfolder"]
    options.update(filter_kwargs_for_method(library_kwargs, cls.from_pretrained))
    return cls.from_pretrained(os.fspath(folder), **options)


def library_saver(library: str) -> Callable[..., None]:
    if library == "transformers":
        from .integrations.transformers.model import save_transformers_model

        return save_transformers_model
    from .integrations.diffusers.model import save_diffusers_model

    return save_diffusers_model
