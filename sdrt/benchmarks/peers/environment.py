"""A peer's own virtual environment, installed on demand from the package registries (stable-diffusion-cpp-python
builds stable-diffusion.cpp from source: minutes) and reused while its requirements stay the same."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

from ...errors import SdrtError
from . import Peer

STAMP = ".sdrt-requirements"


class PeerUnavailable(SdrtError):
    """A peer that could not be installed, converted to or run: the benchmark reports it as not run, with why."""


def peer_python(peer: Peer, root: Path, log: Callable) -> Path:
    """The interpreter of ``peer``'s environment under ``root``, installed first when missing or outdated."""
    env = root / peer.name / "venv"
    python = env / "bin" / "python"
    wanted = "\n".join(peer.requirements + tuple(f"-{name}" for name in peer.uninstall))
    stamp = env / STAMP
    if python.is_file() and stamp.is_file() and stamp.read_text() == wanted:
        return python
    log(f"  installing {peer.name} ({' '.join(peer.requirements)}) into {env}")
    shutil.rmtree(env, ignore_errors=True)
    (env.parent / "install.log").unlink(missing_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)  # a venv of the base interpreter, not of sdrt's venv
    _run([base, "-m", "venv", str(env)], env.parent / "install.log", f"creating {peer.name}'s environment")
    _run([str(python), "-m", "pip", "install", "--disable-pip-version-check", *peer.requirements],
         env.parent / "install.log", f"installing {peer.name}")
    if peer.uninstall:
        _run([str(python), "-m", "pip", "uninstall", "--yes", *peer.uninstall], env.parent / "install.log",
             f"removing {', '.join(peer.uninstall)} from {peer.name}")
    stamp.write_text(wanted)
    return python


def _run(cmd: list[str], log_file: Path, what: str) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise PeerUnavailable(f"{what} failed (exit {done.returncode}): {last_lines(log_file)} — see {log_file}")


def last_lines(path: Path, n: int = 3) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return " / ".join(lines[-n:])[-600:]
