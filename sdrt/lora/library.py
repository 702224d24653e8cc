"""The LoRAs a pipeline can use: files named by path, or by name in its LoRA folder (searched with its subfolders,
as AUTOMATIC1111's ``models/Lora``); each file read once while it is unchanged."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserInputError
from .factors import LoraChoice
from .files import SUFFIXES, LoraFile, read_lora
from .tags import read_tags


class LoraLibrary:
    def __init__(self, folder: str | Path | None = None, allow_pickle: bool = False):
        self.folder = Path(folder) if folder else None
        if self.folder is not None and not self.folder.is_dir():
            raise UserInputError(f"the LoRA folder {self.folder} does not exist")
        self.allow_pickle = allow_pickle
        self._read: dict[Path, tuple[tuple[int, int], LoraFile]] = {}

    def available(self) -> dict[str, Path]:
        """name -> file, for every LoRA file in the folder."""
        if self.folder is None:
            return {}
        files = sorted(p for p in self.folder.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        return {p.stem: p for p in files}

    def find(self, name: str) -> Path:
        path = Path(name)
        if path.suffix in SUFFIXES and path.is_file():
            return path
        available = self.available()
        found = available.get(name)
        if found is None:
            where = f"in {self.folder}" if self.folder else "(no LoRA folder: give lora_dir= / --lora-dir, or a file)"
            known = ", ".join(available) or "none"
            raise UserInputError(f"no LoRA named {name!r} {where}; LoRAs there: {known}")
        return found

    def read(self, name: str) -> LoraFile:
        path = self.find(name).resolve()
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if path not in self._read or self._read[path][0] != stamp:
            self._read[path] = (stamp, read_lora(path, self.allow_pickle))
        return self._read[path][1]

    def choose(self, prompts: list[str], loras: dict[str, float] | None) -> tuple[LoraChoice, ...]:
        """The LoRA set of a call: the prompts' tags, then ``loras`` (name or file -> weight). A LoRA given twice
        with other weights is an error."""
        wanted: dict[str, tuple[float, float]] = {}
        given = [tag for p in prompts for tag in read_tags(p)]
        given += [(name, _weight(name, w), _weight(name, w)) for name, w in (loras or {}).items()]
        for name, te, unet in given:
            if wanted.setdefault(name, (te, unet)) != (te, unet):
                raise UserInputError(f"LoRA {name} is asked for with two weights ({wanted[name]} and {(te, unet)}); "
                                     "give it once")
        return tuple(LoraChoice(self.read(name), te, unet) for name, (te, unet) in wanted.items() if te or unet)


def _weight(name: str, weight) -> float:
    try:
        return float(weight)
    except (TypeError, ValueError):
        raise UserInputError(f"the weight of LoRA {name} is {weight!r}; give a number, such as 0.8") from None
