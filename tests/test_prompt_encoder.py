"""Prompts to ids: through a chat template (split around the user content, shared ids the same
for every question of a group, no extra BOS) or plain; stop ids from every config; a pad token
when the tokenizer has none."""

import json

import pytest

from zorro_jax.tokenizer import PromptEncoder, ensure_pad_token, stop_token_ids, train_bpe_tokenizer

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    tok = train_bpe_tokenizer(["schema: t(a, b)\nQ: how many rows?", "system text here"] * 20, 300,
                              tmp_path_factory.mktemp("tok"))
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return tok


def test_chat_template_prompt_is_the_rendered_conversation(tok):
    tok.chat_template = CHATML
    enc = PromptEncoder(tok)
    assert enc.chat
    ids, n = enc.encode("schema: t(a, b)\n", "Q: how many rows?", system="Be brief.")
    text = tok.apply_chat_template([{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "schema: t(a, b)\nQ: how many rows?"}],
                                   tokenize=False, add_generation_prompt=True)
    assert tok.decode(ids) == text
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and tok.bos_token_id not in ids
    assert tok.decode(ids[n:]).startswith("Q: how many rows?<|im_end|>")  # the question starts the own part
    other, m = enc.encode("schema: t(a, b)\n", "Q: and columns?", system="Be brief.")
    assert m == n and other[:m] == ids[:n]  # one shared prefix for the group
    assert enc.count("Be brief.", "schema: t(a, b)\nQ: how many rows?") == len(ids)
    plain, k = PromptEncoder(tok, "none").encode("schema: t(a, b)\n", "Q: how many rows?", system="Be brief.")
    assert plain[0] == tok.bos_token_id and tok.decode(plain[1:k]) == "Be brief.\n\nschema: t(a, b)\n"
    with pytest.raises(ValueError, match="chat_template"):
        PromptEncoder(tok, "chatml")


def test_template_must_render_the_content_once(tok):
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ValueError, match="exactly once"):
        PromptEncoder(tok).encode("a", "b")
    tok.chat_template = None
    assert not PromptEncoder(tok).chat  # no template: plain prompts


def test_stop_ids_come_from_every_config(tok, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 7}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9]}))
    assert stop_token_ids(tok, tmp_path) == (tok.eos_token_id, 7, 9)
    assert stop_token_ids(tok) == (tok.eos_token_id,)


def test_missing_tokens_are_handled(tok, tmp_path):
    class NoEos:
        eos_token_id, eos_token, pad_token_id = None, None, None

    with pytest.raises(ValueError, match="no EOS"):
        stop_token_ids(NoEos(), tmp_path)
    with pytest.raises(ValueError, match="neither a pad nor an EOS"):
        ensure_pad_token(NoEos())
    tok.pad_token = None
    with pytest.warns(UserWarning, match="no pad token"):
        ensure_pad_token(tok)
    assert tok.pad_token_id == tok.eos_token_id
