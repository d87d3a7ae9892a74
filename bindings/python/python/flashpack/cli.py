"""The ``flashpack`` command of the Python package: the same command as the Rust binary.

Its parser and every engine-side subcommand are the binary's (``flashpack._engine.run_command``): ``convert``
of safetensors and FlashPack files (bit-exact, ``__metadata__`` kept), ``revert`` to safetensors,
``metadata``, ``inspect``, ``verify``, ``bench``. What needs Python comes back from there and is
done by :mod:`flashpack.commands`: torch files, ``--dtype`` casts, model folders
(``--use-transformers`` / ``--use-diffusers``) and Hugging Face Hub ids.

    flashpack convert model.safetensors                       # -> model.flashpack
    flashpack convert ./bert-dir ./bert-fp --use-transformers  # -> ./bert-fp/{config.json,model.flashpack}
    flashpack convert org/repo ./out --subfolder unet          # a Hub id (or its cached snapshot)
    flashpack revert model.flashpack model.safetensors
    flashpack metadata model.flashpack -i
    flashpack verify model.flashpack                           # footer, layout and checksums

Failures exit with status 1 and one line on stderr, ``flashpack: error: <what>`` (``-v`` adds
the traceback for what Python did).
"""

from __future__ import annotations

import json
import re
import sys
import traceback

from . import _engine
from .commands import CommandError, carry_out

_VERBOSE = re.compile(r"^(--verbose|-[a-zA-Z]*v[a-zA-Z]*)$")


def one_line(error: BaseException) -> str:
    """An exception as the one line the command prints."""
    if isinstance(error, ModuleNotFoundError) and error.name in ("diffusers", "transformers", "safetensors"):
        extra = f"flashpack[{error.name}]" if error.name != "safetensors" else "safetensors"
        return f"this needs {error.name}, which is not installed (pip install '{extra}')"
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        text = f"{error.filename}: {error.strerror}"
    else:
        text = str(error)
    text = " ".join(text.split()) or type(error).__name__
    return text if isinstance(error, (CommandError, OSError, ValueError)) else f"{type(error).__name__}: {text}"


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    options = args[: args.index("--")] if "--" in args else args
    verbose = any(_VERBOSE.match(a) for a in options)
    sys.stdout.flush()  # the engine may print (bench) straight to the same stream
    try:
        outcome = _engine.run_command(args)
        if outcome["kind"] == "exit":
            sys.stdout.write(outcome["stdout"])
            sys.stderr.write(outcome["stderr"])
            return int(outcome["code"])
        done = outcome["kind"] == "done"
        report = outcome["stdout"] if done else carry_out(json.loads(outcome["request"])).report
    except KeyboardInterrupt:
        print("flashpack: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every failure becomes one line (and a traceback with -v)
        if verbose:
            traceback.print_exc()
        print(f"flashpack: error: {one_line(e)}", file=sys.stderr)
        return 1
    if report:
        print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
