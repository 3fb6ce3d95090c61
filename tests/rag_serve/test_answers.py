"""Answer quality: the EM/F1 metric on known strings, the benchmark's four cells (and the
extractive service's) computed on the same questions with tiny models, and the service's
generative answer path behind its setting (model pinned by the initdata, over real HTTP)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coco_ai.workloads.rag_serve.answers import (
    exact_match,
    normalize_answer,
    rag_prompt,
    score_answers,
    token_f1,
)
from coco_ai.workloads.tee import EXIT_ATTESTATION, EXIT_BASE_MODEL, WorkloadError
from tests.rag_serve.conftest import service_kwargs
from tests.rag_serve.test_service import client_for

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(600)


def test_normalisation_drops_case_punctuation_articles_and_spacing() -> None:
    assert normalize_answer("  The VPN runs on  vpn-12.wic.nwa.internal, port 443. ") == (
        "vpn runs on vpn12wicnwainternal port 443"
    )
    assert normalize_answer("An apple and a pear") == "apple and pear"


def test_exact_match_and_token_f1_on_known_strings() -> None:
    reference = "Call the NOC on extension 4242 (staffed 24/7)."
    assert exact_match("call the noc on extension 4242 staffed 24/7", reference) == 1.0
    assert exact_match("Call the NOC on extension 4243 (staffed 24/7).", reference) == 0.0
    # reference tokens: call noc on extension 4242 staffed 247 (7); prediction: extension 4242
    assert token_f1("extension 4242", reference) == pytest.approx(2 * 1.0 * (2 / 7) / (1 + 2 / 7))
    assert token_f1("nothing in common", reference) == 0.0
    assert token_f1("", reference) == 0.0
    assert token_f1("", "") == 1.0
    # repeated tokens count once per occurrence in the other string
    assert token_f1("4242 4242", "4242") == pytest.approx(2 * 0.5 * 1.0 / 1.5)


def test_score_answers_means_and_refuses_mismatched_lists() -> None:
    score = score_answers(["a b", "x"], ["a b", "y"])
    assert (score.exact_match, score.f1, score.questions) == (0.5, 0.5, 2)
    with pytest.raises(ValueError, match="1 predictions for 2 references"):
        score_answers(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        score_answers([], [])


def test_rag_prompt_holds_the_chunks_in_rank_order_then_the_question() -> None:
    prompt = rag_prompt("Where is the clean room?", ["first chunk", "second chunk"])
    assert prompt.index("[1] first chunk") < prompt.index("[2] second chunk")
    assert prompt.rstrip().endswith("Question: Where is the clean room?")


def test_finetune_examples_teach_every_fact_but_never_the_held_out_phrasing() -> None:
    from coco_ai.workloads.dataset import PHRASINGS_PER_FACT
    from coco_ai.workloads.rag_index.corpus import finetune_examples, generate_repository

    repository = generate_repository(6, seed=3)
    examples = finetune_examples(repository)
    held_out = {q.question for q in repository.questions}
    assert len(examples) == len(repository.questions) * (PHRASINGS_PER_FACT - 1)
    assert not held_out & {e.instruction for e in examples}
    assert {e.response for e in examples} == {q.answer for q in repository.questions}


def test_bench_cells_are_scored_on_the_same_questions_with_tiny_models() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/bench_rag_answers.py",
            *("--tiny", "--documents", "4", "--epochs", "1"),
            *("--max-new-tokens", "8", "--threads", "1"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    cells = report["cells"]
    assert set(cells) == {
        "base",
        "base+retrieval",
        "finetuned",
        "finetuned+retrieval",
        "extractive_service",
    }
    assert report["questions"] == 4 * 3  # FACTS_PER_DOCUMENT held-out questions per document
    assert len({c["questions_sha256"] for c in cells.values()}) == 1
    assert all(c["n"] == report["questions"] for c in cells.values())
    assert all(0.0 <= c["exact_match"] <= c["f1"] <= 1.0 for c in cells.values())
    assert report["finetune"]["records"] == report["questions"] * 4
    assert report["finetune"]["steps"] > 0


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory, repository) -> Path:
    from coco_ai.workloads.models import build_tiny_model

    texts = [d.text for d in repository.documents] + [q.question for q in repository.questions]
    return build_tiny_model(tmp_path_factory.mktemp("gen") / "tiny-llama", "1m", texts)


def _start(tmp_path, stack, embedder, index_uri, manifest_digest, **override):
    from coco_ai.devstack.rag_service import start_rag_service
    from coco_ai.devstack.stack import local_image_reference

    kwargs = service_kwargs(stack, index_uri, manifest_digest, embedder, **override)
    return start_rag_service(tmp_path / "service", image=local_image_reference(), **kwargs)


def test_generative_service_answers_from_the_chunks_it_cites(
    tmp_path,
    stack,
    embedder,
    index_uri,
    manifest_digest,
    generator_dir,
    credentials,
    trust,
    caller_guests,
) -> None:
    from coco_ai.workloads.rag_serve.answers import Generator

    question = "Where is the clean room?"
    with _start(
        tmp_path, stack, embedder, index_uri, manifest_digest, generator_path=str(generator_dir)
    ) as running:
        assert running.service.retriever.answer_mode == "generative"
        with client_for(running, trust, caller_guests, "alice") as client:
            chat = client.chat([{"role": "user", "content": question}], top_k=3)
        hits = running.service.retriever.retrieve(question, 3)
    assert chat["model"] == "coco-ai-rag-generative"
    assert [(c["doc_id"], c["chunk"]) for c in chat["citations"]] == [
        (h.doc_id, h.chunk) for h in hits
    ]
    # the same greedy answer as the model loaded outside the service, from the same chunks
    expected = Generator.load(generator_dir, max_new_tokens=48).answer_with(
        question, [h.text for h in hits]
    )
    content = chat["choices"][0]["message"]["content"]
    assert content == expected + "".join(f" [{h.doc_id}#{h.chunk}]" for h in hits)


def test_generative_service_refuses_an_unpinned_or_other_model(
    tmp_path, stack, embedder, index_uri, manifest_digest, generator_dir
) -> None:
    with pytest.raises(WorkloadError) as err:
        _start(
            tmp_path,
            stack,
            embedder,
            index_uri,
            manifest_digest,
            generator_path=str(generator_dir),
            generator_digest="sha256:" + "cd" * 32,
        )
    assert err.value.exit_code == EXIT_BASE_MODEL
    assert "generator" in err.value.reason


def test_generative_mode_without_a_pinned_model_is_refused(
    tmp_path, stack, embedder, index_uri, manifest_digest, generator_dir
) -> None:
    from coco_ai.workloads.rag_serve.config import ServeConfig
    from coco_ai.workloads.rag_serve.service import ServiceStartup

    # the service's own initdata pins no generator (started extractive), its config asks for one
    with _start(tmp_path, stack, embedder, index_uri, manifest_digest) as running:
        config = ServeConfig.from_dict(
            {
                **running.config.to_dict(),
                "answer_mode": "generative",
                "generator_path": str(generator_dir),
            }
        )
        with pytest.raises(WorkloadError) as err:
            ServiceStartup(config, out=io.StringIO()).start()
    assert err.value.exit_code == EXIT_ATTESTATION
    assert "pins no io.coco-ai.rag-generator" in err.value.reason


def test_generative_config_needs_a_model_path() -> None:
    from coco_ai.workloads.finetune.config import ConfigError
    from coco_ai.workloads.rag_serve.config import ServeConfig

    base = {
        "run_id": "run-x",
        "index_uri": "file:///i",
        "embedder_path": "/e",
        "trust_anchor_file": "/a.pem",
    }
    assert ServeConfig.from_dict(base).answer_mode == "extractive"
    with pytest.raises(ConfigError, match="generator_path: required"):
        ServeConfig.from_dict({**base, "answer_mode": "generative"})
    with pytest.raises(ConfigError, match="answer_mode"):
        ServeConfig.from_dict({**base, "answer_mode": "abstractive"})
