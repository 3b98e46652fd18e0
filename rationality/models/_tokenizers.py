"""BERT tokenizers for the transformers-based adapters (BLIP, ALBEF), with two guards.

* transformers 5's ``BertTokenizer(vocab_file=...)`` ignores the file (every token becomes
  ``[UNK]``): a vocabulary file is passed under the keyword the installed version takes.
* offline, with nothing in the cache, ``from_pretrained`` can return a 5-token tokenizer without an
  error: :func:`check_tokenizer` refuses one that maps a plain English prompt to ``[UNK]``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from transformers import BertTokenizer

from rationality.errors import ConfigError

#: A prompt every real (and the shipped tiny) BERT vocabulary tokenises without ``[UNK]``.
PROBE_PROMPT = "a photo of a dog."


def bert_tokenizer_from_vocab(vocab_file: Path) -> BertTokenizer:
    """A WordPiece tokenizer from one vocabulary file (one token per line)."""
    keyword = "vocab" if "vocab" in inspect.signature(BertTokenizer.__init__).parameters else "vocab_file"
    return check_tokenizer(BertTokenizer(**{keyword: str(vocab_file)}), str(vocab_file))


def check_tokenizer(tokenizer: Any, source: str) -> Any:
    """Return ``tokenizer``; raise ConfigError naming ``source`` if it maps :data:`PROBE_PROMPT` to [UNK]."""
    ids = tokenizer(PROBE_PROMPT, add_special_tokens=False)["input_ids"]
    if not ids or tokenizer.unk_token_id in ids:
        raise ConfigError(f"the tokenizer from {source!r} maps {PROBE_PROMPT!r} to [UNK] ({len(tokenizer)} tokens): "
                          f"was its vocabulary found (Hugging Face cache, HF_HUB_OFFLINE, a local directory)?")
    return tokenizer
