"""Padding-free packing: no record attends to another, exactly the prompt is masked, and the
packed loss is the unpacked loss (same weights, tiny model)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from coco_ai.workloads.finetune import train as core
from coco_ai.workloads.finetune.config import LoraSettings

RUNTIME = core.select_runtime("cpu", "fp32")


@pytest.fixture(scope="module")
def lora_model(tiny_model: Path):
    model, tok = core.load_model(tiny_model, RUNTIME)
    # LoRA B starts at zero: perturb it so the adapter is part of what is compared
    model = core.add_lora(model, LoraSettings(), seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
    return model.eval(), tok


@pytest.fixture(scope="module")
def records(lora_model, examples):
    _, tok = lora_model
    enc = core.encode_examples(tok, examples[:12], 96)
    assert len({len(r.input_ids) for r in enc}) > 3  # lengths vary: the packing is non-trivial
    return enc


def _logits(model, ids, positions=None, mask=None) -> torch.Tensor:
    decoder, head = core._decoder_and_head(model)
    with torch.no_grad():
        hidden = decoder(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
        )
    return head(hidden.last_hidden_state)


def _chat_like(records: list[core.Encoded]) -> list[core.Encoded]:
    """The same records behind a common system-prompt-like prefix (the tiny tokenizer has no
    chat template), so the shared-prefix path is exercised."""
    head = records[0].input_ids[:6]
    return [core.Encoded(head + r.input_ids, [core.IGNORE_INDEX] * 6 + r.labels) for r in records]


def _distinct_starts(records: list[core.Encoded]) -> list[core.Encoded]:
    """The same records with a different first token each: nothing is shared."""
    return [core.Encoded([10 + i, *r.input_ids[1:]], r.labels) for i, r in enumerate(records)]


@pytest.fixture(scope="module", params=["as encoded", "long shared prefix", "nothing shared"])
def packed_records(request, records):
    if request.param == "long shared prefix":
        return _chat_like(records)
    if request.param == "nothing shared":
        return _distinct_starts(records)
    return records  # BOS and the instruction header are shared


def test_packing_places_every_record_once_and_masks_exactly_the_prompt(lora_model, packed_records):
    _, tok = lora_model
    recs = packed_records
    batch = core.pack_batch(recs, 64, tok.pad_token_id)
    assert batch.input_ids.shape[0] > 1  # several rows at this pack length
    assert batch.tokens == sum(len(r.input_ids) for r in recs) and batch.records == len(recs)
    assert sorted(seg.record for seg in batch.segments) == list(range(len(recs)))
    assert batch.shared == core.shared_prefix_length(recs)
    if all(r.input_ids[:6] == recs[0].input_ids[:6] for r in recs):
        assert batch.shared >= 6
    covered = torch.zeros_like(batch.input_ids, dtype=torch.bool)
    for seg in batch.segments:
        r, row = recs[seg.record], seg.row
        covered[row, seg.start : seg.end] = True
        # the shared prefix at the row's start plus the segment are exactly the record
        tokens = batch.input_ids[row, : batch.shared].tolist()
        tokens += batch.input_ids[row, seg.start : seg.end].tolist()
        assert tokens == r.input_ids
        positions = batch.position_ids[row, : batch.shared].tolist()
        positions += batch.position_ids[row, seg.start : seg.end].tolist()
        assert positions == list(range(len(r.input_ids)))
        # position i predicts token i+1 of the same record, only where that is a response token
        assert batch.targets[row, seg.start : seg.end].tolist() == [
            *r.labels[batch.shared + 1 :],
            core.IGNORE_INDEX,
        ]
        # the prompt is masked and nothing else: exactly the response tokens are targets
        assert int((batch.targets[row, seg.start : seg.end] != core.IGNORE_INDEX).sum()) == sum(
            1 for x in r.labels if x != core.IGNORE_INDEX
        )
    # nothing else is a target: the prefix copies and the padding at row ends
    assert (batch.targets[~covered] == core.IGNORE_INDEX).all()
    assert (batch.targets[:, : batch.shared] == core.IGNORE_INDEX).all()
    assert batch.input_ids.shape[1] <= max(64, max(len(r.input_ids) for r in recs))


def test_the_mask_lets_a_record_see_only_itself_and_the_shared_prefix(lora_model, packed_records):
    _, tok = lora_model
    batch = core.pack_batch(packed_records, 10_000, tok.pad_token_id)
    mask = batch.attention_mask[:, 0]
    owner = torch.full(batch.input_ids.shape, -1)
    for seg in batch.segments:
        owner[seg.row, seg.start : seg.end] = seg.record
    for seg in batch.segments:
        seen = mask[seg.row, seg.start : seg.end]  # (queries of this record, all keys)
        keys = torch.arange(batch.input_ids.shape[1])
        allowed = (owner[seg.row] == seg.record) | (keys < batch.shared)
        assert not seen[:, ~allowed].any()
        assert seen[:, : batch.shared].all()  # the whole prefix
        own = seen[:, seg.start : seg.end]
        assert torch.equal(own, torch.ones_like(own).tril())  # causal within the record


def test_no_record_attends_to_another(lora_model, packed_records):
    model, tok = lora_model
    batch = core.pack_batch(packed_records, 10_000, tok.pad_token_id)  # all in one row
    assert batch.input_ids.shape[0] == 1
    packed = _logits(model, batch.input_ids, batch.position_ids, batch.attention_mask)
    for seg in batch.segments:
        alone = _logits(model, torch.tensor([packed_records[seg.record].input_ids]))[0]
        torch.testing.assert_close(packed[0, : batch.shared], alone[: batch.shared])
        torch.testing.assert_close(
            packed[0, seg.start : seg.end], alone[batch.shared :], rtol=1e-4, atol=1e-4
        )
    # changing one record's tokens changes no other record's logits, not by one bit
    first = batch.segments[0]
    changed = batch.input_ids.clone()
    changed[0, first.start : first.end] = torch.flip(changed[0, first.start : first.end], [0])
    after = _logits(model, changed, batch.position_ids, batch.attention_mask)
    assert not torch.allclose(after[0, first.start : first.end], packed[0, first.start : first.end])
    others = torch.ones(batch.input_ids.shape[1], dtype=torch.bool)
    others[first.start : first.end] = False
    torch.testing.assert_close(after[0, others], packed[0, others], rtol=0, atol=0)


def test_packed_loss_equals_the_unpacked_loss_record_by_record(lora_model, packed_records):
    model, tok = lora_model
    batch = core.pack_batch(packed_records, 64, tok.pad_token_id)
    with torch.no_grad():
        total, count = core.summed_loss(model, batch, RUNTIME)
    expected_total, expected_count = 0.0, 0
    for seg in batch.segments:
        only = torch.full_like(batch.targets, core.IGNORE_INDEX)  # score this record alone
        only[seg.row, seg.start : seg.end] = batch.targets[seg.row, seg.start : seg.end]
        per_record = dataclasses.replace(batch, targets=only)
        with torch.no_grad():
            packed_loss, n = core.summed_loss(model, per_record, RUNTIME)
            r = packed_records[seg.record]
            mean = model(  # transformers' own forward, shift and mask, on the record alone
                input_ids=torch.tensor([r.input_ids]), labels=torch.tensor([r.labels])
            ).loss
        assert n == sum(1 for x in r.labels[1:] if x != core.IGNORE_INDEX) > 0
        torch.testing.assert_close(packed_loss / n, mean, rtol=1e-5, atol=1e-5)
        expected_total += float(mean) * n
        expected_count += n
    assert count == expected_count
    assert float(total) == pytest.approx(expected_total, rel=1e-5)


def test_shared_prefix_stops_before_the_first_trained_position():
    a = core.Encoded([1, 2, 3, 4, 5], [-100, -100, -100, 4, 5])
    b = core.Encoded([1, 2, 3, 4, 6, 7], [-100, -100, -100, -100, 6, 7])
    # 1 2 3 4 are common, but position 2 predicts a's response token 4: only 1 2 are shared
    assert core.shared_prefix_length([a, b]) == 2
    assert core.shared_prefix_length([a, core.Encoded([9, 2, 3], [-100, -100, 3])]) == 0


def test_chunked_linear_cross_entropy_matches_torch():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=g, requires_grad=True)
    weight = torch.randn(50, 16, generator=g)
    targets = torch.randint(0, 50, (37,), generator=g)
    ours = core._LinearCrossEntropy.apply(hidden, weight, targets, 8)  # 5 chunks
    (grad_ours,) = torch.autograd.grad(ours * 3.0, hidden)
    ref = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    (grad_ref,) = torch.autograd.grad(ref * 3.0, hidden)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(grad_ours, grad_ref)


def test_pack_rows_fills_rows_first_fit_without_splitting():
    rows = core.pack_rows([5, 9, 3, 12, 2, 7], 12)
    assert sorted(i for row in rows for i in row) == list(range(6))
    assert all(sum([5, 9, 3, 12, 2, 7][i] for i in row) <= 12 for row in rows)
    assert len(rows) == 4  # 38 tokens need at least 4 rows of 12
    assert core.pack_rows([30, 4], 8) == [[0], [1]]  # a longer record gets a row of its own


def test_batched_answers_equal_one_by_one(lora_model, examples):
    model, tok = lora_model
    questions = [e.instruction for e in examples[:5]]
    assert len({len(core.prompt_ids(tok, q)) for q in questions}) > 1  # left padding is used
    batched = core.answer(model, tok, questions, RUNTIME, max_new_tokens=12)
    single = [core.answer(model, tok, [q], RUNTIME, max_new_tokens=12)[0] for q in questions]
    assert batched == single
    assert any(batched)


def test_packing_holds_in_bf16(tiny_model: Path, records):
    """The same code path in bf16 (autocast, frozen base weights in bf16: what "auto" picks on a
    CPU with native bf16): records stay isolated bit for bit, and each record's packed loss is
    its unpacked loss up to bf16 rounding."""
    runtime = core.select_runtime("cpu", "bf16")
    model, tok = core.load_model(tiny_model, runtime)
    assert next(model.parameters()).dtype == torch.bfloat16
    model = core.add_lora(model, LoraSettings(), seed=0).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
    batch = core.pack_batch(records, 10_000, tok.pad_token_id)  # all in one row
    assert batch.input_ids.shape[0] == 1
    with runtime.autocast():
        packed = _logits(model, batch.input_ids, batch.position_ids, batch.attention_mask)
        first = batch.segments[0]
        changed = batch.input_ids.clone()
        changed[0, first.start : first.end] = torch.flip(changed[0, first.start : first.end], [0])
        after = _logits(model, changed, batch.position_ids, batch.attention_mask)
    others = torch.ones(batch.input_ids.shape[1], dtype=torch.bool)
    others[first.start : first.end] = False
    assert not torch.equal(after[0, ~others], packed[0, ~others])
    torch.testing.assert_close(after[0, others], packed[0, others], rtol=0, atol=0)
    for seg in batch.segments:
        only = torch.full_like(batch.targets, core.IGNORE_INDEX)
        only[seg.row, seg.start : seg.end] = batch.targets[seg.row, seg.start : seg.end]
        r = records[seg.record]
        with torch.no_grad():
            packed_loss, n = core.summed_loss(model, dataclasses.replace(batch, targets=only),
                                              runtime)  # fmt: skip
            with runtime.autocast():
                mean = model(input_ids=torch.tensor([r.input_ids]),
                             labels=torch.tensor([r.labels])).loss  # fmt: skip
        torch.testing.assert_close(packed_loss / n, mean.float(), rtol=2e-2, atol=2e-2)
