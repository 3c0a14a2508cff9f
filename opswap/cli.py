"""The `opswap` command line.

Each subcommand lives with the code it drives: the module named below defines
`add_<name>_arguments(parser)` and `<name>_main(args) -> int`. Only the chosen subcommand's
module is imported, so `opswap --help` stays fast. Set OPSWAP_DEBUG=1 for full tracebacks.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# name: (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "ops": ("opswap.cli_tables", "list the candidate operations and their parameters"),
    "positions": ("opswap.cli_tables", "list a model's block positions and the candidates that fit"),
    "train": ("opswap.trial", "train one model (one run) and write its record"),
    "distill": ("opswap.distill", "distil candidates into a weight bank from a teacher checkpoint"),
    "export-csr": ("opswap.sparse.csr", "export a checkpoint's weights as CSR arrays (safetensors)"),
    "run": ("opswap.study.runner", "run a study (TOML file): all trials, resumable"),
    "status": ("opswap.study.runner", "show a study's progress: done / running / failed / pending"),
    "report": ("opswap.report", "write a study's HTML and Markdown report"),
}


def _overview() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: opswap <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `opswap <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:  # `opswap ... | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_overview())
        return 0
    if argv[0] == "--version":
        from opswap import __version__

        print(f"opswap {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        print(f"opswap: unknown command {name!r}.{hint}\n\n{_overview()}", file=sys.stderr)
        return 2
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    key = name.replace("-", "_")
    parser = argparse.ArgumentParser(prog=f"opswap {name}", description=help_)
    getattr(module, f"add_{key}_arguments")(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(getattr(module, f"{key}_main")(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, KeyError) as err:
        if os.environ.get("OPSWAP_DEBUG"):
            raise
        # Errors at the edge are for people: one clear line, no traceback.
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"opswap {name}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
