"""Tokenizers: load a Hugging Face tokenizer folder, or train a small byte-level BPE one; and how
a prompt becomes token ids (`PromptEncoder`: the tokenizer's chat template, or plain text).

The built-in tasks train their own tokenizer (nothing can be downloaded at run time); any other
policy brings its tokenizer folder with its checkpoint.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
# How text is cut before BPE merges (merges never cross a cut):
#   "words"      every run of word characters, every punctuation character and every whitespace
#                character is its own piece, so a word gets the same tokens wherever it stands:
#                `Madrid` in "passengers from Madrid?" and in `city = 'Madrid'` are the same ids,
#                which makes copying a literal from the question into the SQL a token copy.
#                ~45% more tokens per SQL answer (every space is a token).
#   "bytelevel"  GPT-2 style, the default: a word carries its leading space (" Madrid" vs
#                "Madrid" after a quote are different tokens); fewer tokens per text.
SPLITS = ("words", "bytelevel")


def load_tokenizer(folder: str | Path):
    """transformers.AutoTokenizer from a local folder; never reaches a hub."""
    from transformers import AutoTokenizer

    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer folder {path.resolve()} does not exist")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, folder: str | Path,
                        min_frequency: int = 2, split: str = "bytelevel"):
    """Train a byte-level BPE tokenizer and save it as a Hugging Face tokenizer folder.

    `split` is one of `SPLITS` (how text is cut before merging). Returns the loaded
    `PreTrainedTokenizerFast`. Special tokens: <pad>=0, <s>=1, </s>=2, <unk>=3.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise ValueError(f"vocab_size must be at least 300 for byte-level BPE, got {vocab_size}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    if split == "words":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"[^\w\s]|\s"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return load_tokenizer(folder)


# Stands in for the user turn's content when a chat template is split around it.
_CONTENT = "\x00zorro-user-content\x00"


class PromptEncoder:
    """(token ids, shared length) of a prompt given as system text, a shared part and a question
    part, every path encoding prompts the same way (SFT, rollouts, training, evaluation).

    With a chat template (`chat_template="auto"` and the tokenizer has one): the template renders
    [system message when given, user message = shared + question] with the generation prompt;
    the text before the user content and the shared part form the shared ids, the question and
    the text after it (end of turn, assistant header) the rest. The template owns the special
    tokens, so no BOS is added. Without one ("none", or a tokenizer without a template): BOS, then
    the system text and a blank line when given, the shared part, the question. The parts are
    tokenised apart, so every prompt of a group has the same shared ids."""

    def __init__(self, tok, chat_template: str = "auto"):
        if chat_template not in ("auto", "none"):
            raise ValueError(f"chat_template must be auto or none, got {chat_template!r}")
        self.tok = tok
        self.chat = chat_template == "auto" and bool(getattr(tok, "chat_template", None))
        self._frames: dict[str, tuple[str, str]] = {}

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    def frame(self, system: str = "") -> tuple[str, str]:
        """The chat template's text before and after the user content (cached per system text)."""
        if system not in self._frames:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": _CONTENT}]
            text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            if text.count(_CONTENT) != 1:
                raise ValueError("the chat template must render the user content exactly once")
            head, tail = text.split(_CONTENT)
            self._frames[system] = (head, tail)
        return self._frames[system]

    def encode(self, shared: str, question: str, system: str = "") -> tuple[list[int], int]:
        """(ids, shared length): ids[:shared length] are the same for every prompt with this
        system text and shared part."""
        if self.chat:
            head, tail = self.frame(system)
            shared_ids, own = self._ids(head + shared), self._ids(question + tail)
        else:
            bos = [self.tok.bos_token_id] if self.tok.bos_token_id is not None else []
            shared_ids = bos + self._ids(f"{system}\n\n{shared}" if system else shared)
            own = self._ids(question)
        return shared_ids + own, len(shared_ids)

    def count(self, system: str, text: str) -> int:
        """Tokens of a prompt whose user turn is `text` (shared + question), as `encode` writes it."""
        return len(self.encode(text, "", system)[0])


def stop_token_ids(tok, checkpoint: str | Path | None = None) -> tuple[int, ...]:
    """Every end-of-sequence id the tokenizer and the checkpoint's config.json and
    generation_config.json name (chat models often end a turn with another token than the
    tokenizer's EOS); the tokenizer's first. A clear error when none is named."""
    ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
    for name in ("config.json", "generation_config.json"):
        path = Path(checkpoint) / name if checkpoint else None
        if path is not None and path.is_file():
            value = json.loads(path.read_text()).get("eos_token_id")
            ids += value if isinstance(value, list) else [] if value is None else [value]
    if not ids:
        raise ValueError("the tokenizer names no EOS token (and the checkpoint's configs none): generation "
                         "could not stop; give the tokenizer an eos_token")
    return tuple(dict.fromkeys(int(i) for i in ids))


def ensure_pad_token(tok):
    """The tokenizer, with its EOS as pad token (and a warning) when it has none: batches need a
    pad id, and pad positions are masked out everywhere."""
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token")
        warnings.warn(f"tokenizer has no pad token: using its EOS {tok.eos_token!r} (id {tok.eos_token_id})",
                      stacklevel=2)
        tok.pad_token = tok.eos_token
    return tok
