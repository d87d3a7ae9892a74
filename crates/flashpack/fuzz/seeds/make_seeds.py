"""Regenerates the committed seed corpus of the `footer` fuzz target: small real FlashPack files.

Run from the repository root with the project venv (and, optionally, the oracle venv for files
written by the original package 0.4.5):

    .venv/bin/python crates/flashpack/fuzz/seeds/make_seeds.py
    .venv-oracle/bin/python crates/flashpack/fuzz/seeds/make_seeds.py --original

Each seed is a whole file (payload, footer JSON, u64 LE length, magic), kept under 4 KiB so the
fuzzer's default maximum input length covers it.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "footer"
MAGIC = b"FLASHPK\0"


def state_dicts() -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(6, 4, generator=g)
    return {
        "v3_f32": {"w": torch.randn(4, 4, generator=g), "b": torch.randn(3, generator=g)},
        "v3_bf16_scalar": {"w": torch.randn(8, generator=g).to(torch.bfloat16), "s": torch.tensor(1.5).to(torch.bfloat16)},
        "v4_mixed": {
            "w": torch.randn(5, 3, generator=g),
            "ids": torch.arange(7),
            "mask": torch.tensor([True, False, True]),
            "h": torch.randn(9, generator=g).half(),
            "c": torch.randn(2, dtype=torch.complex64, generator=g),
        },
        "v4_empty_and_unicode": {
            "名前.weight": torch.randn(2, 2, generator=g),
            "empty": torch.empty(0, 5, dtype=torch.int32),
            "q\"uote": torch.ones(3, dtype=torch.uint8),
        },
        "v4_fp8": {"w8": torch.randn(16, generator=g).to(torch.float8_e4m3fn), "w": torch.randn(2, generator=g)},
        "tied": {"embed.weight": emb, "lm_head.weight": emb, "step": torch.tensor(3)},
    }


def main() -> None:
    original = "--original" in sys.argv
    from flashpack import pack_to_file

    OUT.mkdir(parents=True, exist_ok=True)
    for name, sd in state_dicts().items():
        if original and name in ("tied", "v4_fp8"):
            continue  # the original writes tied weights twice; fp8 is fine but keeps the set small
        path = OUT / (("orig_" if original else "") + name + ".flashpack")
        if original:
            pack_to_file(sd, str(path), target_dtype=None, silent=True)
        else:
            pack_to_file(sd, path, None)
        assert path.stat().st_size < 4096, path
    if not original:
        # Hand-built: extra footer keys the reader must keep; align_bytes 0.
        payload = bytes(range(16))
        footer = {
            "format": "flashpack_v4",
            "align_bytes": 0,
            "total_payload_bytes": 16,
            "total_elems": 6,
            "macroblocks": [
                {"dtype": "float32", "offset_bytes": 0, "length_bytes": 8, "length_elems": 2},
                {"dtype": "int16", "offset_bytes": 8, "length_bytes": 8, "length_elems": 4},
            ],
            "index": [
                {"name": "a", "shape": [2], "offset": 0, "length": 2, "macroblock": 0},
                {"name": "b", "shape": [2, 2], "offset": 0, "length": 4, "macroblock": 1},
            ],
            "producer": "fuzz-seed",
            "meta": {"nested": [1, 2.5, None, True, "é"]},
        }
        body = json.dumps(footer, separators=(",", ":"), ensure_ascii=False).encode()
        (OUT / "hand_extra_keys.flashpack").write_bytes(payload + body + struct.pack("<Q", len(body)) + MAGIC)


if __name__ == "__main__":
    main()
