"""Tokenizers: load a Hugging Face tokenizer folder, or train a small byte-level BPE one.

The built-in text-to-SQL benchmark trains its own tokenizer (nothing can be downloaded at run
time); any other policy brings its tokenizer folder with its checkpoint.
"""

from __future__ import annotations

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
