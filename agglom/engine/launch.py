"""Build (and run) the `deepspeed` launcher command for `agglom train`.

    python -m agglom.engine.launch recipe=PATH [num_gpus=N] [num_nodes=M] [hostfile=FILE] [master_port=P]
                                   [include=SPEC] [dry_run=true|false] [-- key=value ...]

becomes

    [DS_ACCELERATOR=cpu] deepspeed [--hostfile FILE] [--num_nodes M] [--num_gpus N] [--master_port P]
                                   [--include SPEC] --module agglom.cli train recipe=PATH engine.name=deepspeed key=value ...

Empty values (`hostfile=`, `num_gpus=`) mean "not given": the launcher then uses the local machine and all of
its accelerators (on a CPU-only machine set num_gpus to the number of processes). The launcher appends
`--local_rank=N` to each process's arguments, which `agglom.cli` ignores. `DS_ACCELERATOR=cpu` is added to
the environment when no GPU is visible. `dry_run=true` prints the command and exits 0; otherwise the current
process is replaced by it (exit code = the launcher's).
"""
from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

KEYS = ("recipe", "num_gpus", "num_nodes", "hostfile", "master_port", "include", "dry_run")
TRUE, FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


class LaunchError(ValueError):
    exit_code = 2


def deepspeed_executable() -> str:
    """The `deepspeed` script of this interpreter's environment, else the one on PATH."""
    here = Path(sys.executable).parent / "deepspeed"
    if here.is_file():
        return str(here)
    return shutil.which("deepspeed") or "deepspeed"


def gpu_visible() -> bool:
    if os.environ.get("DS_ACCELERATOR", "").lower() == "cpu":
        return False
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return bool(torch.cuda.is_available())


def parse_args(argv: Sequence[str]) -> Tuple[Dict[str, str], List[str]]:
    """Split `key=value ... -- passthrough ...` into the launcher's options and agglom's arguments."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        own, rest = argv[:i], argv[i + 1:]
    else:
        own, rest = argv, []
    opts: Dict[str, str] = {}
    for a in own:
        if "=" not in a:
            raise LaunchError(f"expected key=value, got {a!r} (agglom's own options go after '--')")
        k, v = a.split("=", 1)
        if k not in KEYS:
            raise LaunchError(f"unknown launcher option {k!r}; known: {', '.join(KEYS)} (agglom's own options go "
                              f"after '--')")
        opts[k] = v.strip()
    return opts, [a for a in rest if a.strip()]


def _int_opt(opts: Dict[str, str], key: str) -> Optional[int]:
    v = opts.get(key, "")
    if v == "":
        return None
    try:
        n = int(v)
    except ValueError:
        raise LaunchError(f"{key}={v!r} must be an integer") from None
    if n < 1:
        raise LaunchError(f"{key}={n} must be >= 1")
    return n


def build_command(opts: Dict[str, str], train_args: Sequence[str],
                  gpu: Optional[bool] = None) -> Tuple[List[str], Dict[str, str]]:
    """(argv, extra environment) for the launcher."""
    recipe = opts.get("recipe", "")
    if not recipe:
        raise LaunchError("recipe=PATH is required")
    if not Path(recipe).is_file():
        raise LaunchError(f"recipe file not found: {recipe}")
    for a in train_args:
        if a.startswith("engine.name=") and a != "engine.name=deepspeed":
            raise LaunchError(f"{a} contradicts the DeepSpeed launcher (it always runs engine.name=deepspeed)")
        if a.startswith("recipe="):
            raise LaunchError("give the recipe as the launcher's recipe=PATH, not after '--'")
    cmd = [deepspeed_executable()]
    hostfile = opts.get("hostfile", "")
    if hostfile:
        if not Path(hostfile).is_file():
            raise LaunchError(f"hostfile not found: {hostfile}")
        cmd += ["--hostfile", hostfile]
    num_nodes, num_gpus, port = _int_opt(opts, "num_nodes"), _int_opt(opts, "num_gpus"), _int_opt(opts, "master_port")
    if num_nodes is not None:
        cmd += ["--num_nodes", str(num_nodes)]
    if num_gpus is not None:
        cmd += ["--num_gpus", str(num_gpus)]
    if port is not None:
        cmd += ["--master_port", str(port)]
    if opts.get("include"):
        cmd += ["--include", opts["include"]]
    cmd += ["--module", "agglom.cli", "train", f"recipe={recipe}", "engine.name=deepspeed"]
    cmd += [a for a in train_args if a != "engine.name=deepspeed"]
    env: Dict[str, str] = {}
    if not (gpu_visible() if gpu is None else gpu):
        env["DS_ACCELERATOR"] = "cpu"
    return cmd, env


def format_command(cmd: Sequence[str], env: Dict[str, str]) -> str:
    return " ".join([f"{k}={shlex.quote(v)}" for k, v in env.items()] + [shlex.quote(c) for c in cmd])


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv[: argv.index("--") if "--" in argv else len(argv)]):
        print(__doc__)
        return 0
    try:
        opts, train_args = parse_args(argv)
        dry = opts.get("dry_run", "false").lower()
        if dry not in TRUE + FALSE:
            raise LaunchError(f"dry_run={opts['dry_run']!r} must be true or false")
        cmd, env = build_command(opts, train_args)
    except LaunchError as e:
        print(f"agglom.engine.launch: error: {e}", file=sys.stderr)
        return LaunchError.exit_code
    print(format_command(cmd, env), flush=True)
    if dry in TRUE:
        return 0
    os.execvpe(cmd[0], cmd, {**os.environ, **env})
    return 0  # pragma: no cover (exec does not return)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
