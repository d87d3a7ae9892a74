"""Checks that `make wheel` produced one wheel per platform and that each holds the extension
built for it: the wheel's platform tag, the extension's file name and its binary header (ELF
machine, Mach-O CPU type or PE machine) must all agree with the Rust target it was built for.
The macOS and Windows extensions must also link only what every such machine has: macOS system
libraries, and on Windows system DLLs plus python3.dll (the stable ABI), never a MinGW runtime
DLL (libgcc_s, libwinpthread, libstdc++) or a version-specific python3XY.dll. (maturin already
audits the Linux wheels against manylinux2014.)

    python scripts/check_wheels.py dist x86_64-unknown-linux-gnu aarch64-apple-darwin ...
"""

from __future__ import annotations

import re
import struct
import sys
import zipfile
from pathlib import Path

# Rust target -> (regex on the wheel's platform tag, extension file, binary format, machine).
EXPECTED: dict[str, tuple[str, str, str, int]] = {
    "x86_64-unknown-linux-gnu": (r"manylinux.*_x86_64", "flashpack/_core.abi3.so", "elf", 62),
    "aarch64-unknown-linux-gnu": (r"manylinux.*_aarch64", "flashpack/_core.abi3.so", "elf", 183),
    "x86_64-apple-darwin": (r"macosx_.*_x86_64", "flashpack/_core.abi3.so", "macho", 0x01000007),
    "aarch64-apple-darwin": (r"macosx_.*_arm64", "flashpack/_core.abi3.so", "macho", 0x0100000C),
    "x86_64-pc-windows-gnu": (r"win_amd64", "flashpack/_core.pyd", "pe", 0x8664),
}


def machine(blob: bytes) -> tuple[str, int]:
    """The binary format and machine/CPU field of an ELF, 64-bit Mach-O or PE file."""
    if blob[:4] == b"\x7fELF":
        return "elf", struct.unpack_from("<H", blob, 18)[0]
    if blob[:4] == b"\xcf\xfa\xed\xfe":
        return "macho", struct.unpack_from("<I", blob, 4)[0]
    if blob[:2] == b"MZ":
        pe = struct.unpack_from("<I", blob, 0x3C)[0]
        if blob[pe : pe + 4] == b"PE\0\0":
            return "pe", struct.unpack_from("<H", blob, pe + 4)[0]
    return "unknown", -1


def macho_dylibs(blob: bytes) -> list[str]:
    """The libraries a 64-bit Mach-O file loads (LC_LOAD_DYLIB, weak and re-exported ones)."""
    ncmds = struct.unpack_from("<I", blob, 16)[0]
    at, out = 32, []
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", blob, at)
        if cmd in (0xC, 0x80000018, 0x8000001F):
            name_at = at + struct.unpack_from("<I", blob, at + 8)[0]
            out.append(blob[name_at : blob.index(b"\0", name_at)].decode())
        at += size
    return out


def pe_imports(blob: bytes) -> list[str]:
    """The DLLs a PE32+ file imports (its import directory)."""
    pe = struct.unpack_from("<I", blob, 0x3C)[0]
    nsections, opt_size = struct.unpack_from("<H", blob, pe + 6)[0], struct.unpack_from("<H", blob, pe + 20)[0]
    opt = pe + 24
    imports_rva = struct.unpack_from("<I", blob, opt + 112 + 8)[0]
    sections = [struct.unpack_from("<IIII", blob, opt + opt_size + 40 * i + 8) for i in range(nsections)]

    def offset(rva: int) -> int:
        for vsize, vaddr, raw_size, raw_at in sections:
            if vaddr <= rva < vaddr + max(vsize, raw_size):
                return rva - vaddr + raw_at
        raise SystemExit(f"RVA {rva:#x} is in no section")

    out, at = [], offset(imports_rva)
    while any(blob[at : at + 20]):
        name_at = offset(struct.unpack_from("<I", blob, at + 12)[0])
        out.append(blob[name_at : blob.index(b"\0", name_at)].decode())
        at += 20
    return out


def foreign_libraries(fmt: str, blob: bytes) -> list[str]:
    """Libraries the extension needs that a plain macOS or Windows machine may not have."""
    if fmt == "macho":
        return [d for d in macho_dylibs(blob) if not d.startswith(("/usr/lib/", "/System/Library/"))]
    if fmt == "pe":
        dlls = pe_imports(blob)
        bad = [d for d in dlls if re.match(r"(?i)(libgcc|libwinpthread|libstdc|python3\d+\.dll)", d)]
        return bad + ([] if any(d.lower() == "python3.dll" for d in dlls) else ["(python3.dll missing)"])
    return []


def check(dist: Path, target: str) -> str:
    tag_re, ext, fmt, mach = EXPECTED[target]
    wheels = [w for w in dist.glob("flashpack-*.whl") if re.search(rf"-abi3-{tag_re}\.whl$", w.name)]
    if len(wheels) != 1:
        raise SystemExit(f"{target}: expected one abi3 wheel tagged {tag_re} in {dist}, found {[w.name for w in wheels]}")
    wheel = wheels[0]
    with zipfile.ZipFile(wheel) as z:
        # The extension module itself (its type stub, _core.pyi, ships beside it).
        exts = [n for n in z.namelist() if n.startswith("flashpack/_core") and n.endswith((".so", ".pyd"))]
        if exts != [ext]:
            raise SystemExit(f"{wheel.name}: expected the extension {ext}, found {exts}")
        blob = z.read(ext)
    got = machine(blob)
    if got != (fmt, mach):
        raise SystemExit(f"{wheel.name}: {ext} is {got[0]} machine {got[1]:#x}, expected {fmt} {mach:#x} ({target})")
    if foreign := foreign_libraries(fmt, blob):
        raise SystemExit(f"{wheel.name}: {ext} needs libraries a {target} machine may lack: {foreign}")
    return f"{wheel.name}: {ext} ({fmt}, machine {mach:#x})"


def main() -> None:
    dist, targets = Path(sys.argv[1]), sys.argv[2:]
    for target in targets:
        print(check(dist, target))


if __name__ == "__main__":
    main()
