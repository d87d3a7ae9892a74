"""Files are bit-exactly exchangeable with the original ``flashpack`` package (PyPI 0.4.5).

The original runs in its own venv (scripts/oracle-venv.sh: .venv-oracle, reusing this venv's
torch) and is driven through oracle_worker.py in a subprocess; this process only ever imports
our flashpack. Every tensor is regenerated from a seed (interop_data.py), so both sides agree on
the expected contents without exchanging pickles.

- A: the original writes, we read (``revert_from_file``, and ``read_flashpack_file(eager=True)``).
- B: we write, the original reads (``revert_from_file`` manifest: names, dtypes, shapes, sha256).
- C: for the same state dict and arguments our file is byte-identical to the original's.
- D: the original's file is exactly what FORMAT.md describes (a pure-Python model of the
  layout), so the contract document stays true.

Each test is parametrized by file spec: ``v3_<dtype>`` (one file per stored dtype),
``v4_mixed`` (every dtype), ``v4_order_align0`` / ``v3_order_align0`` (explicit name_order,
align_bytes=0), ``v4_align64`` / ``v3_align64``, ``v4_edge`` (0-dim, empty, non-ASCII names).
The whole module skips only when the original package cannot be installed (oracle script exit 3).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import interop_data as data  # noqa: E402

import flashpack  # noqa: E402
import flashpack.deserialization as our_deser  # noqa: E402

REPO = HERE.parents[2]
ORACLE_SCRIPT = REPO / "scripts" / "oracle-venv.sh"
WORKER = HERE / "oracle_worker.py"
MAGIC = b"FLASHPK\0"

# --------------------------------------------------------------------------------------------
# Parametrization: every spec, plus a skipped entry for each dtype this torch lacks.

_PARAMS = [pytest.param(name, id=name) for name in data.SPECS]
_PARAMS += [
    pytest.param(f"v3_{d}", id=f"v3_{d}", marks=pytest.mark.skip(reason=reason))
    for d, reason in data.SKIPPED_DTYPES.items()
]
# Ids name the file version and dtype: v3_<dtype>, v4_mixed, v4_align64, v3_order_align0, ...
spec_param = pytest.mark.parametrize("spec_name", _PARAMS)


def _oracle_env() -> dict[str, str]:
    env = dict(os.environ)
    # PYTHONPATH would put our package (or anything else) ahead of the oracle's site-packages.
    for var in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH"):
        env.pop(var, None)
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def oracle_python() -> str:
    """Create/verify .venv-oracle; skip (exit 3: original not installable) or fail otherwise."""
    proc = subprocess.run(
        ["bash", str(ORACLE_SCRIPT)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env=_oracle_env(),
    )
    if proc.returncode == 3:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        why = [ln for ln in lines if ln.startswith("ERROR")][:2]
        head = lines[-1] if lines else "original flashpack cannot be installed (oracle-venv.sh exit 3)"
        pytest.skip(" | ".join([head, *why]))
    if proc.returncode != 0:
        pytest.fail(
            f"scripts/oracle-venv.sh failed (exit {proc.returncode})\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}",
            pytrace=False,
        )
    venv = Path(proc.stdout.strip().splitlines()[-1])
    py = venv / "bin" / "python"
    assert py.exists(), f"oracle python missing: {py}"
    return str(py)


def _run_worker(oracle_python: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [oracle_python, str(WORKER), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_oracle_env(),
    )


@pytest.fixture(scope="session")
def oracle_info(oracle_python: str) -> dict:
    proc = _run_worker(oracle_python, "info")
    assert proc.returncode == 0, f"oracle_worker info failed:\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def oracle_dir(oracle_python: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The original package's files for every spec, and its per-spec results."""
    out = tmp_path_factory.mktemp("oracle_written")
    proc = _run_worker(oracle_python, "write", str(out))
    report_path = out / "oracle_write.json"
    if not report_path.exists():
        pytest.fail(f"oracle_worker write produced no report (exit {proc.returncode}):\n{proc.stderr}")
    report = json.loads(report_path.read_text(encoding="utf-8"))
    return out, report["results"]


def _oracle_file(oracle_dir: tuple[Path, dict], spec: data.FileSpec) -> Path:
    out, results = oracle_dir
    result = results.get(spec.name)
    if result != "ok":
        pytest.fail(f"[{spec.name}] the ORIGINAL package failed to write this file:\n{result}")
    return out / spec.filename


def _write_ours(out: Path, **extra: object) -> tuple[Path, dict[str, str]]:
    results: dict[str, str] = {}
    for spec in data.SPECS.values():
        try:
            flashpack.pack_to_file(spec.state_dict(), str(out / spec.filename), None, **spec.pack_kwargs(), **extra)
            results[spec.name] = "ok"
        except Exception as e:  # reported by the spec's own test
            results[spec.name] = f"{type(e).__name__}: {e}"
    return out, results


@pytest.fixture(scope="session")
def ours_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Our package's files for every spec, as written by default (with payload checksums);
    errors are recorded per spec, not raised."""
    return _write_ours(tmp_path_factory.mktemp("ours_written"))


@pytest.fixture(scope="session")
def ours_plain_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The same, written with ``checksums=False``."""
    return _write_ours(tmp_path_factory.mktemp("ours_plain"), checksums=False)


def _our_file(ours_dir: tuple[Path, dict[str, str]], spec: data.FileSpec) -> Path:
    out, results = ours_dir
    if results[spec.name] != "ok":
        pytest.fail(f"[{spec.name}] our pack_to_file failed: {results[spec.name]}")
    return out / spec.filename


@pytest.fixture(scope="session")
def oracle_read_ours(oracle_python: str, ours_dir: tuple[Path, dict[str, str]], tmp_path_factory) -> dict:
    """The original's revert_from_file manifest of each of our files (one subprocess for all)."""
    out, results = ours_dir
    files = [str(out / data.SPECS[n].filename) for n, r in results.items() if r == "ok"]
    if not files:
        return {}
    manifest_path = tmp_path_factory.mktemp("oracle_read") / "manifests.json"
    proc = _run_worker(oracle_python, "read-many", str(manifest_path), *files)
    assert proc.returncode == 0 and manifest_path.exists(), f"oracle_worker read-many failed:\n{proc.stderr}"
    return json.loads(manifest_path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# Expected contents


def _expected_order(spec: data.FileSpec, sd: dict[str, torch.Tensor]) -> list[str]:
    """FORMAT.md: explicit name_order (names not in the state dict dropped), else largest first,
    ties in state-dict order."""
    if spec.name_order is not None:
        return [n for n in spec.name_order if n in sd]
    return sorted(sd, key=lambda n: -sd[n].numel())


def _index_order(spec: data.FileSpec, sd: dict[str, torch.Tensor]) -> list[str]:
    """Order of the footer's index records, which is also the order ``revert_from_file``
    returns: grouped by macroblock (blocks in order of each dtype's first appearance), tensor
    order within a block. For v3 files this is just the tensor order."""
    groups: dict[torch.dtype, list[str]] = {}
    for n in _expected_order(spec, sd):
        groups.setdefault(sd[n].dtype, []).append(n)
    return [n for members in groups.values() for n in members]


def _compare_tensors(
    spec: data.FileSpec,
    got: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    what: str,
) -> None:
    problems: list[str] = []
    missing = [n for n in expected if n not in got]
    extra = [n for n in got if n not in expected]
    if missing:
        problems.append(f"missing tensors: {missing}")
    if extra:
        problems.append(f"unexpected tensors: {extra}")
    for name, want in expected.items():
        if name not in got:
            continue
        t = got[name]
        dn = data.dtype_name(want.dtype)
        if t.dtype != want.dtype:
            problems.append(f"{name} [{dn}]: dtype {t.dtype} != {want.dtype}")
            continue
        if tuple(t.shape) != tuple(want.shape):
            problems.append(f"{name} [{dn}]: shape {list(t.shape)} != {list(want.shape)}")
            continue
        gb, wb = data.tensor_bytes(t), data.tensor_bytes(want)
        if gb != wb:
            first = next(i for i in range(min(len(gb), len(wb))) if gb[i] != wb[i]) if len(gb) == len(wb) else -1
            problems.append(f"{name} [{dn}]: bytes differ (len {len(gb)} vs {len(wb)}, first diff at byte {first})")
    assert not problems, f"[{spec.name}, {spec.version}] {what}:\n  " + "\n  ".join(problems)


def _expected_manifest_from_original(spec: data.FileSpec, sd: dict[str, torch.Tensor]) -> dict:
    """What the original's revert_from_file reports: 0-dim tensors come back as shape [1]
    (FORMAT.md weakness 2); everything else as written."""
    out = {}
    for name, t in sd.items():
        d = data.describe(t)
        d["shape"] = d["shape"] or [1]
        out[name] = d
    return out


def _footer(raw: bytes) -> tuple[int, bytes]:
    """(payload length, footer JSON bytes) of a file's raw bytes."""
    assert raw[-8:] == MAGIC, f"bad magic {raw[-8:]!r}"
    (n,) = struct.unpack("<Q", raw[-16:-8])
    start = len(raw) - 16 - n
    assert start >= 0, "footer length larger than the file"
    return start, raw[start : len(raw) - 16]


def format_md_model(spec: data.FileSpec) -> bytes:
    """The file FORMAT.md prescribes for ``spec`` (pack_to_file(sd, path, None, **kwargs)),
    built without either package: payload, compact JSON footer, u64 LE length, magic."""
    sd = spec.state_dict()
    align = spec.align_bytes
    names = _expected_order(spec, sd)
    groups: dict[torch.dtype, list[str]] = {}
    for n in names:
        groups.setdefault(sd[n].dtype, []).append(n)

    payload = bytearray()
    blocks, index, total_elems = [], [], 0
    cursor = 0
    for block_id, (dtype, members) in enumerate(groups.items()):
        es = dtype.itemsize
        block_align = (align * es // math.gcd(align, es)) if align else es
        cursor += (-cursor) % block_align
        block_off = cursor
        align_elems = align // math.gcd(align, es) if align else 0
        bc = 0
        for n in members:
            t = sd[n]
            if align_elems:
                bc += (-bc) % align_elems
            rec = {"name": n, "shape": list(t.shape), "offset": bc, "length": t.numel()}
            if len(groups) > 1:
                rec["macroblock"] = block_id
            index.append(rec)
            start = block_off + bc * es
            b = data.tensor_bytes(t)
            if len(payload) < start:
                payload.extend(b"\0" * (start - len(payload)))
            payload[start : start + len(b)] = b
            bc += t.numel()
        length_bytes = bc * es
        if len(payload) < block_off + length_bytes:
            payload.extend(b"\0" * (block_off + length_bytes - len(payload)))
        blocks.append(
            {"dtype": data.dtype_name(dtype), "offset_bytes": block_off, "length_bytes": length_bytes, "length_elems": bc}
        )
        total_elems += bc
        cursor = block_off + length_bytes

    if len(blocks) == 1:
        meta = {
            "format": "flashpack_v3",
            "target_dtype": blocks[0]["dtype"],
            "align_bytes": align,
            "total_elems": total_elems,
            "index": index,
        }
    else:
        meta = {
            "format": "flashpack_v4",
            "align_bytes": align,
            "total_payload_bytes": cursor,
            "total_elems": total_elems,
            "macroblocks": blocks,
            "index": index,
        }
    footer = json.dumps(meta, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return bytes(payload) + footer + struct.pack("<Q", len(footer)) + MAGIC


def _short(x: object, limit: int = 600) -> str:
    text = x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def _explain_footer_diff(fo: bytes, ft: bytes, ol: str, tl: str) -> list[str]:
    try:
        mo, mt = json.loads(fo), json.loads(ft)
    except ValueError as e:
        return [f"footer differs and does not parse: {e}", f"  {ol}: {_short(fo.decode('utf-8', 'replace'))}",
                f"  {tl}: {_short(ft.decode('utf-8', 'replace'))}"]
    lines = ["footer differs:"]
    if list(mo) != list(mt):
        lines.append(f"  key order: {ol} {list(mo)} vs {tl} {list(mt)}")
    for key in dict.fromkeys([*mt, *mo]):
        a, b = mo.get(key, "<absent>"), mt.get(key, "<absent>")
        if a == b:
            continue
        if key == "index" and isinstance(a, list) and isinstance(b, list):
            by_name = lambda recs: sorted(recs, key=lambda r: r.get("name", ""))  # noqa: E731
            i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            if by_name(a) == by_name(b):
                lines.append(f"  index: the same {len(a)} records in a different ORDER; first at record {i}:")
            else:
                lines.append(f"  index: records differ ({len(a)} vs {len(b)}); first at record {i}:")
            lines.append(f"    {ol}: {_short(a[i] if i < len(a) else '<end>')}")
            lines.append(f"    {tl}: {_short(b[i] if i < len(b) else '<end>')}")
        else:
            lines.append(f"  {key}: {ol} {_short(a)} vs {tl} {_short(b)}")
    if len(lines) == 1:
        lines.append("  same JSON value, different serialization (spacing, escaping or number format):")
        lines.append(f"    {ol}: {_short(fo.decode('utf-8', 'replace'))}")
        lines.append(f"    {tl}: {_short(ft.decode('utf-8', 'replace'))}")
    return lines


def _explain_file_diff(ours: bytes, theirs: bytes, ours_label: str, theirs_label: str) -> str:
    lines = [f"sizes: {ours_label} {len(ours)}, {theirs_label} {len(theirs)}"]
    try:
        po, fo = _footer(ours)
        pt, ft = _footer(theirs)
    except AssertionError as e:
        return "\n".join([*lines, f"cannot parse footer: {e}"])
    lines.append(f"payload bytes: {ours_label} {po}, {theirs_label} {pt}")
    if fo != ft:
        lines += _explain_footer_diff(fo, ft, ours_label, theirs_label)
    n = min(po, pt)
    diff = next((i for i in range(n) if ours[i] != theirs[i]), None)
    if diff is not None:
        lines.append(
            f"payload differs first at byte {diff}: {ours_label} {ours[diff:diff + 16].hex()} vs "
            f"{theirs_label} {theirs[diff:diff + 16].hex()}"
        )
    elif po == pt:
        lines.append("payload identical")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Sanity of the setup


def test_oracle_is_the_original_package(oracle_info: dict) -> None:
    assert oracle_info["flashpack"] == os.environ.get("ORACLE_FLASHPACK_VERSION", "0.4.5")
    oracle_prefix = str(Path(oracle_info["flashpack_file"]).resolve().parents[1])
    ours = str(Path(flashpack.__file__).resolve())
    assert not ours.startswith(oracle_prefix), f"the test process imported the ORIGINAL flashpack: {ours}"
    # Same torch on both sides, so both generate the same tensors.
    assert oracle_info["torch"] == torch.__version__
    assert oracle_info["skipped_dtypes"] == data.SKIPPED_DTYPES


def test_every_dtype_is_covered() -> None:
    """Each stored dtype has a v3 file and is in the mixed v4 file (or is skipped with a reason)."""
    mixed_dtypes = {d for d, _ in data.SPECS["v4_mixed"].tensors.values()}
    for d in data.DTYPE_NAMES:
        if d in data.SKIPPED_DTYPES:
            continue
        assert f"v3_{d}" in data.SPECS
        assert d in mixed_dtypes
    assert "float64" in data.DTYPES and "bfloat16" in data.DTYPES, data.SKIPPED_DTYPES


def test_generator_is_deterministic() -> None:
    for spec in (data.SPECS["v4_mixed"], data.SPECS["v4_edge"]):
        a, b = spec.state_dict(), spec.state_dict()
        assert {n: data.tensor_sha256(t) for n, t in a.items()} == {n: data.tensor_sha256(t) for n, t in b.items()}


# --------------------------------------------------------------------------------------------
# A: the original writes, we read


@spec_param
def test_ours_reads_original(spec_name: str, oracle_dir) -> None:
    spec = data.SPECS[spec_name]
    path = _oracle_file(oracle_dir, spec)
    expected = spec.state_dict()
    got = our_deser.revert_from_file(str(path))
    _compare_tensors(spec, got, expected, "our revert_from_file of the ORIGINAL's file")
    order = _index_order(spec, expected)
    assert list(got) == order, f"[{spec.name}, {spec.version}] revert_from_file order differs from the file's index order"


@spec_param
def test_ours_reads_original_eager(spec_name: str, oracle_dir) -> None:
    if "eager" not in inspect.signature(our_deser.read_flashpack_file).parameters:
        pytest.skip("our read_flashpack_file has no eager= keyword")
    spec = data.SPECS[spec_name]
    path = _oracle_file(oracle_dir, spec)
    storage, meta = our_deser.read_flashpack_file(str(path), eager=True)
    got = dict(our_deser.iterate_from_flash_tensor(storage, meta))
    _compare_tensors(spec, got, spec.state_dict(), "our read_flashpack_file(eager=True) of the ORIGINAL's file")


# --------------------------------------------------------------------------------------------
# B: we write, the original reads


@spec_param
def test_original_reads_ours(spec_name: str, ours_dir, oracle_read_ours: dict) -> None:
    spec = data.SPECS[spec_name]
    _our_file(ours_dir, spec)
    result = oracle_read_ours[spec.filename]
    assert "error" not in result, f"[{spec.name}, {spec.version}] the ORIGINAL failed to read our file:\n{result.get('error')}"
    got = result["manifest"]
    expected = _expected_manifest_from_original(spec, spec.state_dict())
    problems = []
    if set(got) != set(expected):
        problems.append(f"names: missing {sorted(set(expected) - set(got))}, unexpected {sorted(set(got) - set(expected))}")
    for name, want in expected.items():
        have = got.get(name)
        if have is not None and have != want:
            problems.append(f"{name} [{want['dtype']}]: original read {have}, expected {want}")
    assert not problems, f"[{spec.name}, {spec.version}] ORIGINAL's revert_from_file of our file:\n  " + "\n  ".join(problems)


# --------------------------------------------------------------------------------------------
# C: byte-identical files; D: the original matches FORMAT.md


@spec_param
def test_ours_byte_identical_to_original(spec_name: str, oracle_dir, ours_dir, ours_plain_dir) -> None:
    """Without checksums our file is the original's, byte for byte; with them (the default) the
    only difference is the "checksums" key appended at the end of the footer."""
    spec = data.SPECS[spec_name]
    theirs = _oracle_file(oracle_dir, spec).read_bytes()
    default = _our_file(ours_dir, spec).read_bytes()
    n, footer = _footer(default)
    meta = json.loads(footer)
    cs = json.dumps({"checksums": meta["checksums"]}, separators=(",", ":"))
    stripped_footer = footer[: -len(cs)] + b"}"
    assert footer.endswith(cs[1:].encode()) and footer[-len(cs)] == ord(","), footer[-200:]
    stripped = default[:n] + stripped_footer + struct.pack("<Q", len(stripped_footer)) + MAGIC
    assert stripped == theirs, f"[{spec.name}] our default file differs from the original's beyond the checksums key"
    ours = _our_file(ours_plain_dir, spec).read_bytes()
    if ours != theirs:
        pytest.fail(
            f"[{spec.name}, {spec.version}] our file differs from the ORIGINAL's "
            f"(pack_to_file(sd, path, None, {_short(spec.pack_kwargs(), 200)})):\n"
            + _explain_file_diff(ours, theirs, "ours", "original"),
            pytrace=False,
        )


@spec_param
def test_original_file_matches_format_md(spec_name: str, oracle_dir) -> None:
    spec = data.SPECS[spec_name]
    theirs = _oracle_file(oracle_dir, spec).read_bytes()
    model = format_md_model(spec)
    if theirs != model:
        pytest.fail(
            f"[{spec.name}, {spec.version}] the ORIGINAL's file is not what FORMAT.md describes:\n"
            + _explain_file_diff(theirs, model, "original", "FORMAT.md"),
            pytrace=False,
        )
    meta = json.loads(_footer(theirs)[1])
    assert meta["format"] == f"flashpack_{spec.version}"
