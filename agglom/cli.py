"""`agglom <command> [recipe=PATH] key=value ...`: one way to pass options to every subcommand."""
from __future__ import annotations

import errno
import importlib
import os
import sys
from typing import List, Optional, Sequence

from agglom import __version__
from agglom.commands import COMMANDS, Command
from agglom.config.load import ConfigError, describe, load_config
from agglom.data.urls import ALLOW_REMOTE_ENV, ALLOW_REMOTE_FLAG
from agglom.errors import ReadableError


def _usage() -> str:
    lines = [f"agglom {__version__}: knowledge agglomeration with subgroup parity", "",
             "usage: agglom <command> [recipe=PATH] [key=value ...]   (agglom <command> --help lists the keys)",
             f"       {ALLOW_REMOTE_FLAG}: also read pipe:/network shard URLs (never taken from a recipe or a run)", "",
             "commands:"]
    for name, (module, attr) in COMMANDS.items():
        try:
            cmd: Command = getattr(importlib.import_module(module), attr)
            lines.append(f"  {name:<16} {cmd.help}")
        except (ImportError, AttributeError):
            lines.append(f"  {name:<16} (not built yet)")
    return "\n".join(lines)


#: what a Ctrl-C leaves, by command family (the writers remove partial output; runs and caches continue)
AFTER_INTERRUPT = {
    "train": "the same command resumes the run from its last checkpoint",
    "finetune": "the same command resumes the run from its last checkpoint",
    "sweep": "the same command resumes: finished runs are kept, the interrupted one resumes from its checkpoint",
    "cache": "the same command continues: finished cache shards are kept",
    "data": "the partial output of this command was removed; run it again",
}


def _resolve(argv: List[str]) -> tuple:
    """Longest command name that prefixes argv."""
    for n in (2, 1):
        name = " ".join(argv[:n])
        if len(argv) >= n and name in COMMANDS:
            return name, argv[n:]
    return None, argv


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [a for a in argv if not (a.startswith("--local_rank") or a.startswith("--local-rank"))]
    if ALLOW_REMOTE_FLAG in argv:  # the only way to read pipe:/network shards: said on this command line
        argv = [a for a in argv if a != ALLOW_REMOTE_FLAG]
        os.environ[ALLOW_REMOTE_ENV] = "1"
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    name, rest = _resolve(argv)
    if name is None:
        print(f"agglom: unknown command {' '.join(argv[:2])!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, attr = COMMANDS[name]
    cmd: Command = getattr(importlib.import_module(module), attr)
    if any(a in ("-h", "--help") for a in rest):
        print(f"agglom {name}: {cmd.help}\n\noptions (key=value, dotted for nesting; defaults shown):")
        if cmd.positional:
            print(f"  (the first bare argument sets {cmd.positional})")
        print(describe(cmd.schema))
        return 0
    if cmd.positional and rest and "=" not in rest[0]:
        rest = [f"{cmd.positional}={rest[0]}"] + rest[1:]
    try:
        cfg = load_config(cmd.schema, rest)
        code = cmd.run(cfg)
    except (ConfigError, ReadableError) as e:  # messages that name the key or file, the cause and the fix
        print(f"agglom {name}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"agglom {name}: interrupted; {AFTER_INTERRUPT.get(name.split()[0], 'nothing of it was completed')}",
              file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - known failure kinds become one line; anything else is a bug: a traceback
        known = failure_message(e)
        if known is None or os.environ.get("AGGLOM_DEBUG"):
            raise
        print(f"agglom {name}: error: {known[0]}", file=sys.stderr)
        return known[1]
    return int(code or 0)


TEACHER_ERROR_MODULES = ("teachers.errors", "teachers.safe_load")  # where teachers.build.USER_ERRORS are defined


def failure_message(e: BaseException) -> Optional[tuple]:
    """(one line, exit code) for a failure the user or the machine must act on, or None for a bug: a card or weights
    file to fix (2), the operating system's refusal (1), memory the request cannot have (1)."""
    if any(c.__module__ in TEACHER_ERROR_MODULES for c in type(e).__mro__):  # a card, a weights file, a checkpoint
        return str(e).splitlines()[0] if str(e) else type(e).__name__, 2
    if isinstance(e, OSError):
        return os_error_message(e), 1
    text = str(e).splitlines()[0] if str(e) else ""
    if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and ("can't allocate memory" in text
                                                                         or "out of memory" in text.lower())):
        return (f"out of memory ({text[:160] or type(e).__name__}); a size in the recipe, a card or a run folder "
                "asks for more than this machine has (image_size, batch_size, model_args, input_size)"), 1
    if isinstance(e, RecursionError):
        return "an input is nested too deeply to be read (a hostile or damaged file); AGGLOM_DEBUG=1 shows where", 2
    return None


def os_error_message(e: OSError) -> str:
    """One line for an operating-system refusal: what, on which file, and what to do."""
    if not e.strerror:  # raised with a message of its own (e.g. "weights file not found: PATH")
        return f"{str(e) or type(e).__name__}; set AGGLOM_DEBUG=1 for a traceback"
    where = f" {e.filename!r}" if e.filename else ""
    fix = {errno.ENOSPC: "free some space and run the same command again",
           errno.EACCES: "check the permissions of that file or folder, or choose another out_dir/out",
           errno.EPERM: "check the permissions of that file or folder, or choose another out_dir/out",
           errno.EROFS: "the file system is read-only; choose another out_dir/out",
           errno.ENOTDIR: "a file is where agglom expects a folder; move it or choose another path",
           errno.EISDIR: "a folder is where agglom expects a file; give the file's path",
           errno.EEXIST: "move that file away or choose another path"}.get(e.errno, "set AGGLOM_DEBUG=1 for a traceback")
    return f"{e.strerror or type(e).__name__}:{where}; {fix}"


def entry() -> int:
    """Console-script entry: `agglom ... | head` ends quietly instead of with a BrokenPipeError traceback."""
    try:
        return main()
    except BrokenPipeError:
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(entry())
