"""Padding-free packing: no record attends to another, exactly the prompt is masked, and the
packed loss is the unpacked loss (same weights, tiny model)."""

from __future__ import annotations

import itertools
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


def _logits(model, ids: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    decoder, head = core._decoder_and_head(model)
    with torch.no_grad():
        hidden = decoder(input_ids=ids, position_ids=positions, use_cache=False)
    return head(hidden.last_hidden_state)


def _spans(batch: core.Batch) -> list[tuple[int, int, int]]:
    """(row, start, end) of every block of restarting position ids, padding included."""
    out = []
    for row, pos in enumerate(batch.position_ids.tolist()):
        starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
        out += [(row, a, b) for a, b in itertools.pairwise(starts)]
    return out


def test_packing_places_every_record_once_and_masks_exactly_the_prompt(lora_model, records):
    _, tok = lora_model
    batch = core.pack_batch(records, 64, tok.pad_token_id)
    assert batch.input_ids.shape[0] > 1  # several rows at this pack length
    assert batch.tokens == sum(len(r.input_ids) for r in records) and batch.records == 12
    found = []
    for row, a, b in _spans(batch):
        ids = batch.input_ids[row, a:b].tolist()
        match = [r for r in records if r.input_ids == ids]
        if not match:  # the padded tail of a row: never a target
            assert set(ids) == {tok.pad_token_id}
            assert (batch.targets[row, a:b] == core.IGNORE_INDEX).all()
            continue
        r = match[0]
        found.append(ids)
        # position i is trained to predict token i+1 of the same record, only where that token
        # is a response token; the last token of a record predicts nothing
        assert batch.targets[row, a:b].tolist() == [*r.labels[1:], core.IGNORE_INDEX]
        prompt = r.labels.index(next(x for x in r.labels if x != core.IGNORE_INDEX))
        assert (batch.targets[row, a : a + prompt - 1] == core.IGNORE_INDEX).all()
        assert (batch.targets[row, a + prompt - 1 : b - 1] != core.IGNORE_INDEX).all()
    assert sorted(found) == sorted(r.input_ids for r in records)
    assert batch.input_ids.shape[1] <= max(64, max(len(r.input_ids) for r in records))


def test_no_record_attends_to_another(lora_model, records):
    model, tok = lora_model
    batch = core.pack_batch(records, 10_000, tok.pad_token_id)  # all in one row
    assert batch.input_ids.shape[0] == 1
    packed = _logits(model, batch.input_ids, batch.position_ids)
    spans = _spans(batch)
    assert len(spans) == len(records)
    for row, a, b in spans:
        alone = _logits(model, batch.input_ids[row : row + 1, a:b], None)
        torch.testing.assert_close(packed[row, a:b], alone[0], rtol=1e-4, atol=1e-4)
    # changing one record's tokens changes no other record's logits
    row, a, b = spans[0]
    changed = batch.input_ids.clone()
    changed[row, a:b] = torch.flip(changed[row, a:b], [0])
    after = _logits(model, changed, batch.position_ids)
    assert not torch.allclose(after[row, a:b], packed[row, a:b])
    torch.testing.assert_close(after[row, b:], packed[row, b:], rtol=0, atol=0)


def test_packed_loss_equals_the_unpacked_loss_record_by_record(lora_model, records):
    model, tok = lora_model
    batch = core.pack_batch(records, 64, tok.pad_token_id)
    with torch.no_grad():
        total, count = core.summed_loss(model, batch, RUNTIME)
    expected_total, expected_count = 0.0, 0
    for row, a, b in _spans(batch):
        if batch.targets[row, a:b].eq(core.IGNORE_INDEX).all():
            continue  # padding
        only = torch.full_like(batch.targets, core.IGNORE_INDEX)  # score this record alone
        only[row, a:b] = batch.targets[row, a:b]
        per_record = core.Batch(batch.input_ids, batch.position_ids, only, 0, 1)
        with torch.no_grad():
            packed_loss, n = core.summed_loss(model, per_record, RUNTIME)
        ids = batch.input_ids[row : row + 1, a:b]
        labels = torch.tensor([[core.IGNORE_INDEX, *only[row, a : b - 1].tolist()]])
        with torch.no_grad():
            mean = model(input_ids=ids, labels=labels).loss  # transformers' own shift and mask
        assert n == int((labels != core.IGNORE_INDEX).sum()) > 0
        torch.testing.assert_close(packed_loss / n, mean, rtol=1e-5, atol=1e-5)
        expected_total += float(mean) * n
        expected_count += n
    assert count == expected_count
    assert float(total) == pytest.approx(expected_total, rel=1e-5)


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
