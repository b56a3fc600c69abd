"""Tokenizer helper: train a byte-level BPE, save as an HF folder, reload, round-trip text."""

import pytest

from zorro_jax.tokenizer import load_tokenizer, train_bpe_tokenizer


def test_train_save_load_roundtrip(tmp_path):
    texts = ["SELECT name FROM city WHERE population > 1000;", "SELECT count(*) FROM orders;"] * 50
    tok = train_bpe_tokenizer(texts, vocab_size=320, folder=tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    text = "SELECT name FROM orders WHERE id = 42; -- ünïcode"
    ids = again(text)["input_ids"]
    assert again.decode(ids) == text
    assert tok.pad_token_id == 0 and tok.eos_token_id == 2
    assert len(again) <= 320
    # A frequent word becomes one token: the BPE really learned merges.
    assert len(again("SELECT")["input_ids"]) == 1


def test_missing_tokenizer_folder_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_tok"):
        load_tokenizer(tmp_path / "no_such_tok")
