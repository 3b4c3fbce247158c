"""`deepgate ARGS...` in this process, SIGKILLed by itself when the flow reaches a given function.

Usage: python kill_probe.py MODULE.FUNCTION deepgate-args...

The function is replaced by a SIGKILL of the whole process: no `finally`, no `except`, no
Prefect state change, no MLflow run end; what a crash or the OOM killer leaves behind.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys


def main() -> None:
    """Patch the kill point, then run the CLI on the remaining arguments."""
    module_name, function = sys.argv[1].rsplit(".", 1)
    module = importlib.import_module(module_name)
    getattr(module, function)  # a typo in the kill point fails loudly, never a run that is not killed

    def die(*args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    setattr(module, function, die)
    from flows.cli import main as deepgate

    sys.argv = ["deepgate", *sys.argv[2:]]
    deepgate()


if __name__ == "__main__":
    main()
