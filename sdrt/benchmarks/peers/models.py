"""The benchmark model's very weights in each peer's format: a diffusers folder, then optimum-intel's OpenVINO IR
(made by its own ``optimum-cli export openvino``; OpenVINO GenAI reads the same folder, as its documentation
says to make it) or an original-layout single-file checkpoint (stable-diffusion.cpp's input)."""

from __future__ import annotations

import gc
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from . import PEERS, PeerConfig
from .environment import PeerUnavailable, last_lines, peer_python


def model_folder(root: Path, source: str) -> Path:
    return root / "models" / source.replace("/", "_")


def peer_model(config: PeerConfig, source: str, root: Path, log: Callable) -> Path:
    """The model ``source`` (what the export was made from) in ``config``'s peer's format, made once under
    ``root``."""
    folder = model_folder(root, source)
    if config.peer.model_format == "single-file":
        path = folder / "model.safetensors"
        if not path.is_file():
            log(f"  writing {source} as a single-file checkpoint for {config.peer.name}")
            _with_pipeline(source, lambda pipe: _write_single_file(pipe, path))
        return path
    path = folder / "openvino-ir"
    if not (path / "model_index.json").is_file():
        diffusers = _diffusers_folder(source, folder, log)
        python = peer_python(PEERS["optimum-intel"], root, log)
        log(f"  converting {source} to OpenVINO IR with optimum-cli (fp32 weights) for {config.peer.name}")
        partial = path.with_name(path.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        log_file = folder / "optimum-cli.log"
        with open(log_file, "w") as f:
            done = subprocess.run([str(python.parent / "optimum-cli"), "export", "openvino", "--model", str(diffusers),
                                   "--task", "text-to-image", "--weight-format", "fp32", str(partial)],
                                  stdout=f, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise PeerUnavailable(f"optimum-cli could not convert {source}: {last_lines(log_file)}")
        partial.rename(path)
    return path


def _diffusers_folder(source: str, folder: Path, log: Callable) -> Path:
    path = folder / "diffusers"
    if not (path / "model_index.json").is_file():
        log(f"  saving {source} as a diffusers folder")
        partial = path.with_name("diffusers.partial")
        shutil.rmtree(partial, ignore_errors=True)
        _with_pipeline(source, lambda pipe: pipe.save_pretrained(partial))
        for encoder in partial.glob("text_encoder*"):
            _hub_key_names(encoder)
        partial.rename(path)
    return path


def _hub_key_names(folder: Path) -> None:
    """A CLIP text encoder's weights under the names the hub's checkpoints use (``text_model.…``). transformers 5.2x
    saves them without the prefix and reads either; the older transformers a peer pins reads only the prefixed
    names and silently leaves the others random (measured: optimum-intel's export of `tiny` got a random text
    encoder, 27 dB from diffusers' image)."""
    import json

    from safetensors.numpy import load_file, save_file

    def hub_name(key: str) -> str:
        return key if key.startswith(("text_model.", "text_projection.")) else "text_model." + key

    for shard in folder.glob("*.safetensors"):
        save_file({hub_name(k): v for k, v in load_file(shard).items()}, str(shard), metadata={"format": "pt"})
    for index in folder.glob("*.safetensors.index.json"):
        data = json.loads(index.read_text())
        data["weight_map"] = {hub_name(k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2))


def _with_pipeline(source: str, use: Callable) -> None:
    from ...export.sources import load_model

    pipe = load_model(source).pipe
    use(pipe)
    del pipe
    gc.collect()  # GBs of torch weights the benchmark should not keep


def _write_single_file(pipe, path: Path) -> None:
    from ...export.ldm_layout import write_single_file

    write_single_file(pipe, path)
