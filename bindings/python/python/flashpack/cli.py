"""The ``flashpack`` command: ``convert``, ``revert``, ``metadata`` and ``verify``.

    flashpack convert model.safetensors                       # -> model.flashpack
    flashpack convert ./bert-dir ./bert-fp --use-transformers  # -> ./bert-fp/{config.json,model.flashpack}
    flashpack convert org/repo ./out --subfolder unet          # a Hub id (or its cached snapshot)
    flashpack revert model.flashpack model.safetensors
    flashpack metadata model.flashpack -i
    flashpack verify model.flashpack                           # footer, layout and checksums

diffusers / transformers are imported only by the commands that load a model through them.
Failures exit with status 1 and one line on stderr (``-v`` adds the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

STATE_DICT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Weight files a library writes into a model folder, in the order they are looked for.
WEIGHT_FILE_STEMS = ("model", "diffusion_pytorch_model", "pytorch_model")
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32",
                 "fp64": "float64", "double": "float64"}  # fmt: skip


class CliError(Exception):
    """A failure the user can act on; printed as one line."""


# ---------------------------------------------------------------------------------------------
# helpers


def parse_dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    import torch

    from .utils import NAME_TO_DTYPE

    key = DTYPE_ALIASES.get(name.lower(), name.removeprefix("torch."))
    dtype = NAME_TO_DTYPE.get(key)
    if dtype is None or not dtype.is_floating_point:
        choices = sorted(n for n, d in NAME_TO_DTYPE.items() if d.is_floating_point)
        raise CliError(f"--dtype {name!r} is not a floating-point dtype; use one of {', '.join(choices)}")
    assert isinstance(dtype, torch.dtype)
    return dtype


@contextlib.contextmanager
def quiet_phases(verbose: bool) -> Iterator[None]:
    """Run a non-silent pack/load (so the engine draws its progress bar on stderr for long work)
    while keeping the per-phase timing lines it prints off stdout unless ``verbose``."""
    if verbose:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def library_of(config_path: Path) -> str | None:
    """"diffusers" / "transformers" for a model config that names one of them, else None."""
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
                    raise CliError(f"{index}: not a valid shard index ({e})") from e
                return [folder / name for name in dict.fromkeys(weight_map.values())]
            single = folder / with_variant(f"{stem}{ext}", variant)
            if single.is_file():
                return [single]
    candidates = sorted(folder.glob("*.safetensors"))
    if len(candidates) == 1 and not variant:
        return candidates
    what = f" for variant {variant!r}" if variant else ""
    raise CliError(f"{folder}: no weights file found{what} (looked for model/diffusion_pytorch_model/pytorch_model "
                   ".safetensors/.bin and their shard indexes)")  # fmt: skip


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of one .safetensors or torch file, on the CPU."""
    import torch

    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError) as e:
            raise CliError(f"{path}: cannot read safetensors file: {e}") from e
    if suffix in TORCH_SUFFIXES:
        try:
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:  # files in torch's legacy (non-zip) format cannot be mapped
                if "mmap" not in str(e):
                    raise
                loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch.load raises many types for bad files
            raise CliError(f"{path}: cannot read torch file: {e}") from e
        if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
            loaded = loaded["state_dict"]
        if not isinstance(loaded, dict):
            raise CliError(f"{path}: holds a {type(loaded).__name__}, not a state dict")
        bad = [k for k, v in loaded.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise CliError(f"{path}: entries that are not tensors: {bad[:5]}")
        return loaded
    raise CliError(f"{path}: unsupported file type {suffix!r} (expected one of {', '.join(STATE_DICT_SUFFIXES)})")


def read_state_dicts(paths: list[Path]) -> dict[str, torch.Tensor]:
    from tqdm import tqdm

    state_dict: dict[str, torch.Tensor] = {}
    for path in tqdm(paths, desc="reading shards", unit="file", disable=len(paths) < 2):
        for name, tensor in read_state_dict(path).items():
            if name in state_dict:
                raise CliError(f"{path}: tensor '{name}' also appears in an earlier shard")
            state_dict[name] = tensor
    return state_dict


def pack_state_dict(state_dict: dict[str, torch.Tensor], destination: Path, args: argparse.Namespace) -> Path:
    from . import pack_to_file
    from .utils import filter_state_dict

    state_dict = filter_state_dict(state_dict, args.ignore_names, args.ignore_prefixes, args.ignore_suffixes)
    if not state_dict:
        raise CliError("every tensor was filtered out by --ignore-names/--ignore-prefixes/--ignore-suffixes")
    destination.parent.mkdir(parents=True, exist_ok=True)
    with quiet_phases(args.verbose):
        pack_to_file(state_dict, destination, parse_dtype(args.dtype), silent=False)
    return destination


def fetch_repo(repo_id: str, subfolder: str | None) -> Path:
    """The local snapshot of a Hub repository (the cache is used when offline)."""
    from huggingface_hub import snapshot_download

    if repo_id.count("/") > 1:
        raise CliError(f"{repo_id}: no such file or directory, and not a Hub repository id")
    patterns = [f"{subfolder.strip('/')}/*", "*.json"] if subfolder else None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # huggingface_hub raises many types (offline, auth, missing repo, ...)
        raise CliError(f"{repo_id}: no such file or directory, and fetching it from the Hub failed: {e}") from e


def load_library_model(library: str, folder: Path, args: argparse.Namespace) -> Any:
    """Load a model folder with the library's own ``from_pretrained`` (the class named by its config)."""
    model_dir = folder / args.subfolder if args.subfolder else folder
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CliError(f"{model_dir / 'config.json'}: cannot read the model config: {e}") from e
    options: dict[str, Any] = {"variant": args.variant} if args.variant else {}
    if library == "transformers":
        import transformers

        names = [n.removeprefix("FlashPack") for n in config.get("architectures") or []]
        cls = next((getattr(transformers, n) for n in names if hasattr(transformers, n)), transformers.AutoModel)
    else:
        import diffusers

        name = str(config.get("_class_name", "")).removeprefix("FlashPack")
        cls = getattr(diffusers, name, None) or diffusers.AutoModel
    if args.subfolder:
        options["subfolder"] = args.subfolder
    return cls.from_pretrained(os.fspath(folder), **options)


def save_library_model(library: str, model: Any, destination: Path, args: argparse.Namespace) -> Path:
    options = dict(
        target_dtype=parse_dtype(args.dtype),
        ignore_names=args.ignore_names,
        ignore_prefixes=args.ignore_prefixes,
        ignore_suffixes=args.ignore_suffixes,
        silent=False,
    )
    with quiet_phases(args.verbose):
        if library == "transformers":
            from .integrations.transformers.model import save_transformers_model

            save_transformers_model(model, destination, **options)
        else:
            from .integrations.diffusers.model import save_diffusers_model

            save_diffusers_model(model, destination, **options)
    return destination


# ---------------------------------------------------------------------------------------------
# commands


def convert(args: argparse.Namespace) -> Path:
    source = Path(args.path_or_repo_id)
    destination = Path(args.destination_path) if args.destination_path else None
    if args.use_transformers and args.use_diffusers:
        raise CliError("--use-transformers and --use-diffusers exclude each other")

    if source.is_file():
        if args.use_transformers or args.use_diffusers:
            raise CliError(f"{source}: --use-transformers/--use-diffusers need a model folder or Hub id, not a file")
        if destination is None:
            destination = source.with_suffix(".flashpack")
        elif destination.is_dir():
            destination = destination / f"{source.stem}.flashpack"
        if destination.resolve() == source.resolve():
            raise CliError(f"{source}: the destination would overwrite the source")
        return pack_state_dict(read_state_dicts([source]), destination, args)

    from_hub = not source.exists()
    if from_hub and source.suffix.lower() in (*STATE_DICT_SUFFIXES, ".flashpack"):
        raise CliError(f"{source}: no such file")
    folder = fetch_repo(args.path_or_repo_id, args.subfolder) if from_hub else source
    if not folder.is_dir():
        raise CliError(f"{source}: not a file or a directory")
    model_dir = folder / args.subfolder if args.subfolder else folder
    if not model_dir.is_dir():
        raise CliError(f"{model_dir}: no such subfolder")
    library = (
        "transformers" if args.use_transformers
        else "diffusers" if args.use_diffusers
        else library_of(model_dir / "config.json")
    )  # fmt: skip

    if library is None:  # a folder of weights without a library config: convert the weights as they are
        if destination is None:
            if from_hub:
                raise CliError("a destination path is required when converting a Hub repository")
            destination = model_dir / "model.flashpack"
        elif destination.suffix != ".flashpack":
            destination = destination / "model.flashpack"
        return pack_state_dict(read_state_dicts(weight_files(model_dir, args.variant)), destination, args)

    if destination is None:
        if from_hub:
            raise CliError("a destination directory is required when converting a Hub repository")
        destination = model_dir
    if destination.exists() and not destination.is_dir():
        raise CliError(f"{destination}: a {library} model is saved as a folder, and this is a file")
    model = load_library_model(library, folder, args)
    return save_library_model(library, model, destination, args)


def revert(args: argparse.Namespace) -> Path:
    from .deserialization import get_flashpack_file_metadata, revert_from_file

    source = Path(args.path)
    if not source.is_file():
        raise CliError(f"{source}: no such file")
    destination = Path(args.destination_path) if args.destination_path else source.with_suffix(".safetensors")
    suffix = destination.suffix.lower()
    if suffix != ".safetensors" and suffix not in TORCH_SUFFIXES:
        raise CliError(f"{destination}: write .safetensors or a torch file ({', '.join(TORCH_SUFFIXES)})")
    if destination.resolve() == source.resolve():
        raise CliError(f"{source}: the destination would overwrite the source")
    with quiet_phases(args.verbose):
        state_dict = revert_from_file(source, silent=False)
    # Records sharing bytes (tied weights stored once) become separate copies: both formats
    # want one tensor per name.
    seen: set[tuple[int, int]] = set()
    for rec in get_flashpack_file_metadata(source)["index"]:
        key = (int(rec.get("macroblock", 0)), int(rec["offset"]))
        if key in seen and int(rec["length"]) > 0:
            state_dict[rec["name"]] = state_dict[rec["name"]].clone()
        seen.add(key)
    destination.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state_dict, destination, metadata={"format": "pt"})
    else:
        import torch

        torch.save(state_dict, destination)
    return destination


def metadata(args: argparse.Namespace) -> None:
    from .deserialization import get_flashpack_file_metadata

    path = Path(args.path)
    if not path.is_file():
        raise CliError(f"{path}: no such file")
    meta = get_flashpack_file_metadata(path)
    index = meta.pop("index")
    if args.json:
        if args.show_index:
            meta["index"] = index
        print(json.dumps(meta, indent=2))
        return
    blocks = meta.get("macroblocks") or [
        {"dtype": meta["target_dtype"], "offset_bytes": 0, "length_elems": meta["total_elems"]}
    ]
    print(f"file: {path} ({path.stat().st_size:,} bytes)")
    for key, value in meta.items():
        if key != "macroblocks":
            print(f"{key}: {value}")
    print(f"tensors: {len(index)}")
    print("macroblocks:")
    for i, block in enumerate(blocks):
        length = block.get("length_bytes")
        size = f", {length:,} bytes" if length is not None else ""
        print(f"  {i}: {block['dtype']:<14} at byte {block['offset_bytes']:,}: {block['length_elems']:,} elements{size}")
    if args.show_index:
        print("index:")
        width = max(len(rec["name"]) for rec in index)
        for rec in index:
            block = int(rec.get("macroblock", 0))
            shape = "x".join(str(d) for d in rec["shape"]) or "scalar"
            print(f"  {rec['name']:<{width}}  {blocks[block]['dtype']:<10} {shape:<16} "
                  f"block {block} elements {rec['offset']}..{rec['offset'] + rec['length']}")  # fmt: skip


def verify(args: argparse.Namespace) -> None:
    from .deserialization import verify_flashpack_file

    report = verify_flashpack_file(args.path, silent=not args.verbose)
    size = f"{report['payload_len']:,} payload bytes"
    if report["chunks_checked"]:
        print(f"{args.path}: OK: {report['tensors']} tensors, {size}, "
              f"{report['chunks_checked']} {report['algorithm']} checksums match")  # fmt: skip
    else:
        print(f"{args.path}: footer and layout OK ({report['tensors']} tensors, {size}); "
              "the file has no checksums, so its bytes were not checked")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# entry point


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="flashpack", description="Convert, revert, inspect and verify FlashPack files.")
    parser.add_argument("--version", action="version", version=f"flashpack {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{convert,revert,metadata,verify}")

    p = commands.add_parser("convert", help="convert weights (file, model folder or Hub id) to FlashPack")
    p.add_argument("path_or_repo_id", help=".safetensors/.bin file, model folder, or Hugging Face Hub repository id")
    p.add_argument("destination_path", nargs="?", help="output file (weights) or folder (library models)")
    p.add_argument("--subfolder", help="subfolder of the model inside the folder or repository (e.g. unet)")
    p.add_argument("--variant", help="weights variant, e.g. fp16 (model.fp16.safetensors)")
    p.add_argument("--dtype", help="cast floating-point tensors to this dtype (e.g. bfloat16); default: keep")
    p.add_argument("--ignore-names", action="append", metavar="NAME", help="leave out this tensor (repeatable)")
    p.add_argument("--ignore-prefixes", action="append", metavar="PREFIX", help="leave out tensors with this prefix")
    p.add_argument("--ignore-suffixes", action="append", metavar="SUFFIX", help="leave out tensors with this suffix")
    p.add_argument("--use-transformers", action="store_true", help="load the folder as a transformers model")
    p.add_argument("--use-diffusers", action="store_true", help="load the folder as a diffusers model")
    p.add_argument("-v", "--verbose", action="store_true", help="print phase timings, and tracebacks on errors")
    p.set_defaults(run=convert)

    p = commands.add_parser("revert", help="write a FlashPack file back as .safetensors or a torch file")
    p.add_argument("path", help="the .flashpack file")
    p.add_argument("destination_path", nargs="?", help="output .safetensors (default) or .pt/.bin/.pth file")
    p.add_argument("-v", "--verbose", action="store_true", help="print phase timings, and tracebacks on errors")
    p.set_defaults(run=revert)

    p = commands.add_parser("metadata", help="print the footer of a FlashPack file")
    p.add_argument("path", help="the .flashpack file")
    p.add_argument("-i", "--show-index", action="store_true", help="list every tensor")
    p.add_argument("-j", "--json", action="store_true", help="print the footer as JSON")
    p.set_defaults(run=metadata, verbose=False)

    p = commands.add_parser("verify", help="check a FlashPack file's footer, layout and checksums")
    p.add_argument("path", help="the .flashpack file")
    p.add_argument("-v", "--verbose", action="store_true", help="show progress, and tracebacks on errors")
    p.set_defaults(run=verify)
    return parser


def one_line(error: BaseException) -> str:
    if isinstance(error, ModuleNotFoundError) and error.name in ("diffusers", "transformers", "safetensors"):
        extra = f"flashpack[{error.name}]" if error.name != "safetensors" else "safetensors"
        return f"this needs {error.name}, which is not installed (pip install '{extra}')"
    text = " ".join(str(error).split()) or type(error).__name__
    return text if isinstance(error, (CliError, OSError, ValueError)) else f"{type(error).__name__}: {text}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
    except KeyboardInterrupt:
        print("flashpack: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # every failure becomes one line (and a traceback with -v)
        if args.verbose:
            traceback.print_exc()
        print(f"flashpack {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 1
    if isinstance(result, Path):
        print(f"Saved to {result.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
