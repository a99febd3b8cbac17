"""Run the slideproc CLI and SIGKILL the whole run (this process group: the driver,
the local Dask cluster's nannies and workers) at a chosen point.

    python killer.py MODULE:ATTR N -- CLI ARGS...

The N-th call of MODULE.ATTR (a function, or Class.method) kills the process
group before it runs: a deterministic stand-in for the power cut or the OOM
killer hitting at that moment. Started with start_new_session=True by the test.
"""

import importlib
import os
import signal
import sys


def main() -> None:
    target, nth = sys.argv[1], int(sys.argv[2])
    cli_args = sys.argv[sys.argv.index("--") + 1:]
    module_name, attr = target.split(":")
    owner = importlib.import_module(module_name)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] >= nth:
            sys.stderr.flush()
            os.killpg(os.getpgid(0), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)
    from slideproc.cli import main as cli

    sys.exit(cli(cli_args))


if __name__ == "__main__":
    main()
