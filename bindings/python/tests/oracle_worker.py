"""Drive the ORIGINAL flashpack package (PyPI 0.4.5) for the interop tests.

Run with the oracle venv's python (scripts/oracle-venv.sh), never with the project venv:

    .venv-oracle/bin/python bindings/python/tests/oracle_worker.py info
    .venv-oracle/bin/python bindings/python/tests/oracle_worker.py write DIR [SPEC ...]
    .venv-oracle/bin/python bindings/python/tests/oracle_worker.py read FILE OUT.json
    .venv-oracle/bin/python bindings/python/tests/oracle_worker.py read-many OUT.json FILE ...

``write`` packs every spec of interop_data.SPECS (or the named ones) with the original
``pack_to_file`` into DIR/<spec>.flashpack and writes DIR/oracle_write.json:
``{"flashpack": version, "torch": version, "skipped_dtypes": {...}, "results": {spec: "ok" | error}}``.

``read`` loads FILE with the original ``revert_from_file`` and writes the manifest
``{name: {"dtype", "shape", "sha256"}}`` (in the order the original returns them; sha256 of the
tensor's raw bytes). ``read-many`` writes ``{basename: {"manifest": ...} | {"error": ...}}``
for several files in one process (one torch import instead of one per file).
"""

from __future__ import annotations

import json
import os
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import interop_data  # noqa: E402
import torch  # noqa: E402

EXPECTED_VERSION = os.environ.get("ORACLE_FLASHPACK_VERSION", "0.4.5")


def _import_original():
    import flashpack
    import flashpack.deserialization

    where = os.path.realpath(flashpack.__file__)
    prefix = os.path.realpath(sys.prefix)
    if getattr(flashpack, "__version__", None) != EXPECTED_VERSION or not where.startswith(prefix + os.sep):
        raise SystemExit(
            f"oracle_worker: imported flashpack {getattr(flashpack, '__version__', '?')} from {where}; "
            f"expected the original {EXPECTED_VERSION} inside {prefix}. Run with the oracle venv's python "
            "(scripts/oracle-venv.sh) and without PYTHONPATH."
        )
    return flashpack


def cmd_info() -> int:
    fp = _import_original()
    print(
        json.dumps(
            {
                "flashpack": fp.__version__,
                "flashpack_file": fp.__file__,
                "torch": torch.__version__,
                "torch_file": torch.__file__,
                "skipped_dtypes": interop_data.SKIPPED_DTYPES,
            }
        )
    )
    return 0


def cmd_write(out_dir: str, only: list[str]) -> int:
    fp = _import_original()
    os.makedirs(out_dir, exist_ok=True)
    names = only or list(interop_data.SPECS)
    results: dict[str, str] = {}
    for name in names:
        spec = interop_data.SPECS[name]
        try:
            fp.pack_to_file(spec.state_dict(), os.path.join(out_dir, spec.filename), None, **spec.pack_kwargs())
            results[name] = "ok"
        except Exception:
            results[name] = traceback.format_exc()
    report = {
        "flashpack": fp.__version__,
        "torch": torch.__version__,
        "skipped_dtypes": interop_data.SKIPPED_DTYPES,
        "results": results,
    }
    with open(os.path.join(out_dir, "oracle_write.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
    failed = [n for n, r in results.items() if r != "ok"]
    if failed:
        print(f"oracle_worker: original pack_to_file failed for {failed}", file=sys.stderr)
    return 1 if failed else 0


def _manifest(fp, path: str) -> dict:
    from flashpack.deserialization import revert_from_file

    sd = revert_from_file(path, silent=True)
    return {name: interop_data.describe(t) for name, t in sd.items()}


def cmd_read(path: str, out_json: str) -> int:
    fp = _import_original()
    manifest = _manifest(fp, path)
    with open(out_json, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
    return 0


def cmd_read_many(out_json: str, paths: list[str]) -> int:
    fp = _import_original()
    out: dict[str, dict] = {}
    for path in paths:
        try:
            out[os.path.basename(path)] = {"manifest": _manifest(fp, path)}
        except Exception:
            out[os.path.basename(path)] = {"error": traceback.format_exc()}
    with open(out_json, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 1 and argv[0] == "info":
        return cmd_info()
    if len(argv) >= 2 and argv[0] == "write":
        return cmd_write(argv[1], argv[2:])
    if len(argv) == 3 and argv[0] == "read":
        return cmd_read(argv[1], argv[2])
    if len(argv) >= 2 and argv[0] == "read-many":
        return cmd_read_many(argv[1], argv[2:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
