"""The `opswap` command line: the only place that parses arguments or prints.

One module per subcommand (`opswap/cli/<name>.py`), each with `add_arguments(parser)` and
`main(args) -> int`, listed explicitly in `COMMANDS`; only the chosen one is imported, so
`opswap --help` stays fast. Exit codes: 0 done (a diverged run is a result), 1 a run started and
failed (its record says why), 2 refused before any work (nothing written). Set OPSWAP_DEBUG=1
for full tracebacks.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

__all__ = ["main", "COMMANDS"]

# name: (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "ops": ("opswap.cli.ops", "list the candidate operations and their parameters"),
    "positions": ("opswap.cli.positions", "list a model's block positions and the candidates that fit"),
    "train": ("opswap.cli.train", "train one model (one run) and write its record"),
    "distill": ("opswap.cli.distill", "distil candidates into a weight bank from a teacher checkpoint"),
    "assemble": ("opswap.cli.assemble", "pick the best network within a budget from a weight bank (MILP)"),
    "export-csr": ("opswap.cli.export_csr", "export a checkpoint's weights as CSR arrays (safetensors)"),
    "run": ("opswap.cli.run", "run a study (TOML file): all trials, resumable"),
    "status": ("opswap.cli.status", "show a study's progress: done / running / failed / pending"),
    "report": ("opswap.cli.report", "write a study's HTML and Markdown report"),
    "predict": ("opswap.cli.predict", "predict Δ, with intervals, of a partial study's pending cells"),
    "worker": ("opswap.cli.worker", "claim and run a study's pending trials until none is left (any host)"),
    "export": ("opswap.cli.export", "mirror a study's finished records into MLflow or TensorBoard"),
}


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help with every option's default shown (none for flags and unset options)."""

    def _get_help_string(self, action):
        if action.default in (None, False, [], argparse.SUPPRESS) or action.const is not None \
                or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _overview() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: opswap <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `opswap <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the `opswap` command with `argv` (default: sys.argv[1:]) and return its exit code."""
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:  # `opswap ... | head`: the reader left, nothing is wrong
        try:  # no second error when Python flushes stdout at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever `sys.stderr` is when a message comes (callers may swap it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _logging() -> None:
    """Domain modules log to the "opswap" logger; the command line shows it on stderr."""
    logger = logging.getLogger("opswap")
    if not any(getattr(h, "_opswap_cli", False) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._opswap_cli = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _main(argv: list[str]) -> int:
    if not argv:  # a command is required: the overview, as for any malformed command line
        print(_overview(), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(_overview())
        return 0
    if argv[0] == "--version":
        from opswap._version import __version__

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
    parser = argparse.ArgumentParser(prog=f"opswap {name}", description=help_, formatter_class=_Formatter)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])  # exits 2 with a usage line for a malformed command
    _logging()
    try:
        return int(module.main(args) or 0)
    except KeyboardInterrupt as err:
        if not getattr(err, "explained", False):
            print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise
    except (ValueError, KeyError, OSError) as err:
        if os.environ.get("OPSWAP_DEBUG"):
            raise
        # Errors at the edge are for people: one clear line, no traceback.
        print(f"opswap {name}: error: {_message(err)}", file=sys.stderr)
        return 2


def _message(err: BaseException) -> str:
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    if isinstance(err, OSError) and err.filename and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return str(err)


if __name__ == "__main__":
    raise SystemExit(main())
