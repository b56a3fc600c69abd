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


def test_words_split_gives_a_literal_the_same_ids_in_question_and_sql(tmp_path):
    texts = ["Q: How many passengers from Madrid or Oslo?\nSELECT COUNT(*) FROM p WHERE city = 'Madrid'"] * 40
    words = train_bpe_tokenizer(texts, vocab_size=320, folder=tmp_path / "w", split="words")
    gpt2 = train_bpe_tokenizer(texts, vocab_size=320, folder=tmp_path / "b", split="bytelevel")

    def literal_ids(tok, text, literal):
        enc = tok(text, return_offsets_mapping=True)
        start = text.index(literal)
        return [i for i, (s, e) in zip(enc["input_ids"], enc["offset_mapping"])
                if s >= start and e <= start + len(literal)]

    q, sql = "passengers from Madrid?", "city = 'Madrid'"
    assert literal_ids(words, q, "Madrid") == literal_ids(words, sql, "Madrid")
    # The GPT-2 style split carries the leading space: the ids differ (what "words" fixes).
    assert literal_ids(gpt2, q, "Madrid") != literal_ids(gpt2, sql, "Madrid")
    for tok in (words, gpt2):
        assert tok.decode(tok(texts[0])["input_ids"]) == texts[0]


def test_unknown_split_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        train_bpe_tokenizer(["a b"] * 10, vocab_size=320, folder=tmp_path / "t", split="chars")
