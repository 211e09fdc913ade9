"""Text tokenization with the `tokenizers` library (no transformers needed).

Training and the runtime share this class, so a bundle's `tokenizer.json`
tokenizes exactly as the training run did.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from crab_rt.errors import BundleError

__all__ = ["TextTokenizer", "train_bpe_tokenizer"]

_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # RoBERTa's ids 0..4


class TextTokenizer:
    """A `tokenizers.Tokenizer` plus truncation to `max_length` and padding.

    Args:
        tokenizer: a `tokenizers.Tokenizer` whose post-processor adds the
            special tokens (RoBERTa's adds `<s> ... </s>`).
        max_length: longest sequence in tokens, special tokens included.
    """

    def __init__(self, tokenizer, max_length: int = 128) -> None:
        self._tok = tokenizer
        self.max_length = int(max_length)
        self._tok.no_padding()
        self._tok.enable_truncation(self.max_length)
        pad = tokenizer.token_to_id("<pad>")
        self.pad_id = 0 if pad is None else int(pad)
        # The token that word dropout writes in training: RoBERTa's <mask> (<unk> where a vocabulary lacks it).
        mask = tokenizer.token_to_id("<mask>")
        mask = tokenizer.token_to_id("<unk>") if mask is None else mask
        self.mask_id = self.pad_id if mask is None else int(mask)

    @classmethod
    def from_file(cls, path: str | Path, max_length: int = 128) -> TextTokenizer:
        """Load `tokenizer.json` (or a folder that holds one)."""
        from tokenizers import Tokenizer

        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise BundleError(f"{path}: tokenizer file not found")
        try:
            return cls(Tokenizer.from_file(str(path)), max_length)
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise BundleError(f"{path}: not a valid tokenizer.json ({e})") from e

    @classmethod
    def from_json(cls, text: str, max_length: int = 128) -> TextTokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text), max_length)

    def to_json(self) -> str:
        return self._tok.to_str()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(path))
        return path

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Tokenize and right-pad a batch.

        Returns:
            input_ids and attention_mask, int64 arrays [B, L], where L is the
            longest sequence in the batch (at most `max_length`).
        """
        encodings = self._tok.encode_batch([t or "" for t in texts])
        length = max(1, max(len(e.ids) for e in encodings)) if encodings else 1
        ids = np.full((len(encodings), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), length), dtype=np.int64)
        for i, e in enumerate(encodings):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        return ids, mask


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1024, max_length: int = 128) -> TextTokenizer:
    """Train a small RoBERTa-style byte-level BPE tokenizer on `texts`.

    For random-weight text encoders (tests, the demo, benchmarks), where no
    pretrained vocabulary is available offline. Deterministic for given texts.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([t for t in texts if t] or ["hello"], trainer=trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False)
    return TextTokenizer(tok, max_length)
