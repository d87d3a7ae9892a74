"""Deterministic tensors and file specs shared by test_interop.py and oracle_worker.py.

Imported by two processes: the test process (our flashpack) and the oracle worker (the original
flashpack 0.4.5, run with .venv-oracle's python, which reuses the project venv's torch). It must
therefore import nothing but torch and the standard library, and every tensor must be a pure
function of (spec name, tensor name, dtype, shape).

Tensor bytes come from a seeded ``torch.Generator`` through
``torch.randint(0, 256, ..., dtype=torch.uint8).view(dtype)``, so float tensors hold every bit
pattern (NaN payloads, infinities, subnormals) and the checks are on raw bytes, never on values.
bool bytes are drawn from {0, 1}.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass

import torch

BASE_SEED = 20240605

# Every dtype the original package stores (FORMAT.md's table), in that order.
DTYPE_NAMES: list[str] = [
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e5m2",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
    "complex128",
    "complex64",
    "complex32",
    "int64",
    "uint64",
    "int32",
    "uint32",
    "int16",
    "uint16",
    "int8",
    "uint8",
    "bool",
]


def _resolve_dtypes() -> tuple[dict[str, torch.dtype], dict[str, str]]:
    available: dict[str, torch.dtype] = {}
    skipped: dict[str, str] = {}
    for name in DTYPE_NAMES:
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype):
            skipped[name] = f"torch {torch.__version__} has no torch.{name}"
            continue
        try:
            torch.zeros(16, dtype=torch.uint8).view(dtype)
        except Exception as e:  # pragma: no cover - depends on the torch build
            skipped[name] = f"torch {torch.__version__} cannot view bytes as torch.{name}: {e}"
            continue
        available[name] = dtype
    return available, skipped


DTYPES, SKIPPED_DTYPES = _resolve_dtypes()


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def elem_size(dtype: torch.dtype) -> int:
    return dtype.itemsize


def make_tensor(spec: str, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """The tensor ``name`` of file ``spec``: random bytes from a seed derived from both names."""
    seed = (BASE_SEED ^ zlib.crc32(f"{spec}\0{name}".encode())) & 0x7FFF_FFFF_FFFF_FFFF
    gen = torch.Generator(device="cpu").manual_seed(seed)
    numel = 1
    for d in shape:
        numel *= d
    nbytes = numel * elem_size(dtype)
    high = 2 if dtype is torch.bool else 256
    raw = torch.randint(0, high, (nbytes,), dtype=torch.uint8, generator=gen)
    return raw.view(dtype).reshape(shape)


def tensor_bytes(t: torch.Tensor) -> bytes:
    """Raw little-endian bytes of a CPU tensor, row-major (0-dim and empty tensors included)."""
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes()


def tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(tensor_bytes(t)).hexdigest()


def describe(t: torch.Tensor) -> dict:
    """The manifest entry of one tensor: what the two sides compare."""
    return {"dtype": dtype_name(t.dtype), "shape": list(t.shape), "sha256": tensor_sha256(t)}


@dataclass
class FileSpec:
    """One interop file: its tensors (name -> (dtype name, shape)) and pack_to_file arguments."""

    name: str
    version: str  # expected footer format: "v3" or "v4"
    tensors: dict[str, tuple[str, tuple[int, ...]]]
    name_order: list[str] | None = None
    align_bytes: int = 128
    # Notes for a reader of a failure message.
    note: str = ""

    @property
    def filename(self) -> str:
        return f"{self.name}.flashpack"

    @property
    def test_id(self) -> str:
        return self.name

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: make_tensor(self.name, n, DTYPES[d], s) for n, (d, s) in self.tensors.items()}

    def pack_kwargs(self) -> dict:
        kw: dict = {"align_bytes": self.align_bytes}
        if self.name_order is not None:
            kw["name_order"] = list(self.name_order)
        return kw


# Shapes per single-dtype (v3) file. Byte sizes are deliberately not multiples of 128 for any
# element size, so alignment padding is exercised; "tie_a"/"tie_b" have equal element counts
# (stable sort order); "one" is a single element.
_V3_SHAPES: dict[str, tuple[int, ...]] = {
    "layers.0.weight": (37, 29),
    "layers.0.bias": (37,),
    "embed.weight": (1000,),
    "conv.weight": (3, 5, 7),
    "tie_a": (11, 3),
    "tie_b": (33,),
    "one": (1,),
    "big": (129, 33),
}


def _v3_spec(dname: str) -> FileSpec:
    tensors = {f"{dname}.{k}": (dname, s) for k, s in _V3_SHAPES.items()}
    return FileSpec(name=f"v3_{dname}", version="v3", tensors=tensors)


def _mixed_tensors(prefix: str, shapes: list[tuple[int, ...]]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensors of every available dtype, interleaved so blocks are not in name order."""
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    names = list(DTYPES)
    for i, dname in enumerate(names):
        for j in range(len(shapes)):
            # Rotate shapes per dtype so each block gets a different mix of sizes.
            tensors[f"{prefix}.{j}.{dname}"] = (dname, shapes[(i + j) % len(shapes)])
    return tensors


def file_specs() -> list[FileSpec]:
    specs = [_v3_spec(d) for d in DTYPES]

    mixed = _mixed_tensors("m", [(17, 3), (5,), (64, 9), (2, 3, 4)])
    specs.append(FileSpec(name="v4_mixed", version="v4", tensors=mixed))

    small = _mixed_tensors("o", [(7,), (3, 13), (1,)])
    # An explicit order that is neither insertion nor size order: reversed, then every other.
    keys = list(small)
    order = keys[::-2] + keys[-2::-2]
    specs.append(
        FileSpec(
            name="v4_order_align0",
            version="v4",
            tensors=small,
            name_order=order,
            align_bytes=0,
            note="explicit name_order, align_bytes=0",
        )
    )

    a64 = _mixed_tensors("a", [(9, 7), (31,), (1,)])
    specs.append(FileSpec(name="v4_align64", version="v4", tensors=a64, align_bytes=64, note="align_bytes=64"))

    # Same but single dtype: v3 with name_order + align 0, and v3 with align 64.
    v3o = {f"w{i}": ("bfloat16", s) for i, s in enumerate([(5,), (3, 7), (129,), (2, 2)])}
    specs.append(
        FileSpec(
            name="v3_order_align0",
            version="v3",
            tensors=v3o,
            name_order=["w3", "w0", "w2", "w1"],
            align_bytes=0,
            note="explicit name_order, align_bytes=0",
        )
    )
    v3a = {f"w{i}": ("float32", s) for i, s in enumerate([(5,), (3, 7), (129,), (2, 2)])}
    specs.append(FileSpec(name="v3_align64", version="v3", tensors=v3a, align_bytes=64, note="align_bytes=64"))

    # Edge cases: 0-dim tensors (the original reads them back as shape [1]), empty tensors
    # (kept in blocks that also hold data: the original cannot map a 0-byte block), a
    # non-ASCII name (the footer keeps it raw UTF-8), dots and odd characters in names.
    edge: dict[str, tuple[str, tuple[int, ...]]] = {
        "scalar.f32": ("float32", ()),
        "scalar.i64": ("int64", ()),
        "empty.f32": ("float32", (0,)),
        "empty.2d.i64": ("int64", (3, 0)),
        "poids.\u00e9t\u00e9.\u6743\u91cd": ("float32", (6, 5)),
        "a/b c\"d'e\\f": ("int64", (4,)),
        "vals.i64": ("int64", (10,)),
    }
    if "bfloat16" in DTYPES:
        edge["scalar.bf16"] = ("bfloat16", ())
        edge["x.bf16"] = ("bfloat16", (3,))
    specs.append(FileSpec(name="v4_edge", version="v4", tensors=edge, note="0-dim, empty, non-ASCII names"))

    # A block holding only empty tensors. Last (default order puts the empty tensor last): the
    # original still pads the cursor to that block's aligned start, so the payload -- and
    # total_payload_bytes -- ends past the last data byte, at the empty block's offset.
    specs.append(
        FileSpec(
            name="v4_empty_last_block",
            version="v4",
            tensors={"a": ("float32", (5,)), "b": ("uint8", (3,)), "e": ("int64", (0,))},
            note="trailing block with only empty tensors",
        )
    )
    # ... and in the middle, by name_order.
    specs.append(
        FileSpec(
            name="v4_empty_mid_block",
            version="v4",
            tensors={"a": ("float32", (5,)), "b": ("uint8", (3,)), "e": ("int64", (0, 4))},
            name_order=["a", "e", "b"],
            note="middle block with only empty tensors",
        )
    )
    return specs


SPECS: dict[str, FileSpec] = {s.name: s for s in file_specs()}
