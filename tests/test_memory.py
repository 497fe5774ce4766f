"""CRD's momentum memory, the FIFO queue and the DDP gather (distiller_zoo/memory.py)."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from distiller_zoo.memory import ContrastMemory, FIFOQueue, concat_all_gather


def test_concat_all_gather_is_identity_in_one_process():
    tensor = torch.randn(3, 4, requires_grad=True)
    assert not dist.is_initialized()
    assert concat_all_gather(tensor) is tensor


def test_contrast_memory_initial_state():
    memory = ContrastMemory(feat_dim=12, n_data=50, nce_k=7, nce_t=0.07, nce_m=0.5)
    sigma = 1 / math.sqrt(12 / 3)
    torch.testing.assert_close(memory.params, torch.tensor([7.0, 0.07, -1.0, -1.0, 0.5]))
    for bank in (memory.memory_v1, memory.memory_v2):
        assert bank.shape == (50, 12)
        assert bank.abs().max() <= sigma
        assert bank.min() < -sigma / 2 and bank.max() > sigma / 2  # spread over [-σ, σ]
    assert not torch.equal(memory.memory_v1, memory.memory_v2)


def test_momentum_update_matches_the_formula_and_touches_only_batch_rows():
    memory = ContrastMemory(feat_dim=2, n_data=5, nce_k=2, nce_m=0.25)
    bank_v1 = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0], [0.0, -1.0]]
    bank_v2 = [[0.0, 1.0], [1.0, 0.0], [0.8, 0.6], [0.0, -1.0], [-1.0, 0.0]]
    memory.memory_v1.copy_(torch.tensor(bank_v1))
    memory.memory_v2.copy_(torch.tensor(bank_v2))
    v1 = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    v2 = torch.tensor([[1.0, 1.0], [2.0, -2.0]])
    y = torch.tensor([3, 1])

    memory.update(v1, v2, y)

    def expected(bank, v):
        rows = [list(r) for r in bank]
        for b, row in enumerate(y.tolist()):
            mixed = [0.25 * m + 0.75 * x for m, x in zip(bank[row], v[b].tolist())]
            norm = math.sqrt(sum(c * c for c in mixed))
            rows[row] = [c / norm for c in mixed]
        return torch.tensor(rows)

    torch.testing.assert_close(memory.memory_v1, expected(bank_v1, v1))
    torch.testing.assert_close(memory.memory_v2, expected(bank_v2, v2))
    for untouched in (0, 2, 4):
        assert torch.equal(memory.memory_v1[untouched], torch.tensor(bank_v1[untouched]))
        assert torch.equal(memory.memory_v2[untouched], torch.tensor(bank_v2[untouched]))


def test_fifo_queue_initialisation_normalises_columns():
    queue = FIFOQueue(nce_k=16, feat_dim=4)
    torch.testing.assert_close(queue.queue.norm(dim=0), torch.ones(4))
    assert queue.queue_ptr.dtype == torch.long and queue.queue_ptr.tolist() == [0]


def test_fifo_queue_wraps_around_and_keeps_the_newest_entries():
    queue = FIFOQueue(nce_k=8, feat_dim=2)
    seen = []
    for step in range(5):  # 15 entries into 8 rows: wraps twice, 8 mod 3 != 0
        batch = torch.tensor([[3.0 * step + i, -(3.0 * step + i)] for i in range(3)])
        queue.enqueue(batch)
        seen.extend(batch.tolist())
        newest = seen[-8:]
        first = len(seen) - len(newest)
        for offset, row in enumerate(newest):
            assert queue.queue[(first + offset) % 8].tolist() == row
        assert queue.queue_ptr.tolist() == [len(seen) % 8]
    assert sorted(r[0] for r in queue.queue.tolist()) == list(range(7, 15))


def test_fifo_queue_keeps_the_last_k_rows_of_a_batch_larger_than_k():
    queue = FIFOQueue(nce_k=4, feat_dim=1)
    queue.enqueue(torch.arange(3.0).unsqueeze(1))  # pointer at 3
    queue.enqueue(torch.arange(10.0, 16.0).unsqueeze(1))  # 6 rows into 4: rows 12..15 survive
    # entry i of the second batch goes to (3 + i) mod 4; 12 is i=2 → row 1.
    assert queue.queue.squeeze(1).tolist() == [15.0, 12.0, 13.0, 14.0]
    assert queue.queue_ptr.tolist() == [(3 + 6) % 4]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)  # identical initial memories on every rank, as DDP would broadcast
        memory = ContrastMemory(feat_dim=3, n_data=10, nce_k=2)
        normalised = ContrastMemory(feat_dim=3, n_data=10, nce_k=2)
        queue = FIFOQueue(nce_k=8, feat_dim=3)
        v1 = torch.full((2, 3), float(rank + 1))
        v2 = torch.full((2, 3), -float(rank + 1))
        y = torch.tensor([2 * rank, 2 * rank + 1])
        gathered = concat_all_gather(y)
        memory.update(v1, v2, y)
        queue.enqueue(v1)
        unit = torch.nn.functional.normalize(v1 * torch.tensor([1.0, -1.0, 0.5]) ** rank, dim=1)
        normalised(unit, -unit, y, torch.tensor([[2 * rank, 5], [2 * rank + 1, 7]]))
        results[rank] = (gathered, memory.memory_v1.clone(), queue.queue.clone(), queue.queue_ptr.clone(),
                         normalised.params.clone())
    finally:
        dist.destroy_process_group()


def test_every_rank_applies_every_ranks_update():
    """Under a 2-process gloo group, banks and queues update with both ranks' batches."""
    context = mp.get_context("fork")  # spawn would re-import torch and the package: many seconds
    with context.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_ddp_worker, args=(2, _free_port(), results), nprocs=2, start_method="fork")
        results = dict(results)
    gathered_0, bank_0, queue_0, ptr_0, params_0 = results[0]
    gathered_1, bank_1, queue_1, ptr_1, params_1 = results[1]
    assert gathered_0.tolist() == gathered_1.tolist() == [0, 1, 2, 3]
    assert torch.equal(bank_0, bank_1) and torch.equal(queue_0, queue_1)
    assert ptr_0.tolist() == ptr_1.tolist() == [4]

    torch.manual_seed(0)
    initial = ContrastMemory(feat_dim=3, n_data=10, nce_k=2).memory_v1
    for row, value in enumerate([1.0, 1.0, 2.0, 2.0]):  # rows 0,1 from rank 0; rows 2,3 from rank 1
        mixed = 0.5 * initial[row] + 0.5 * torch.full((3,), value)
        torch.testing.assert_close(bank_0[row], mixed / mixed.norm())
    assert torch.equal(bank_0[4:], initial[4:])
    assert torch.equal(queue_0[:2], torch.ones(2, 3)) and torch.equal(queue_0[2:4], torch.full((2, 3), 2.0))

    # CRD's Z: the mean over both ranks' first-batch scores times N, the same on every rank
    torch.manual_seed(0)
    ContrastMemory(feat_dim=3, n_data=10, nce_k=2)
    banks = ContrastMemory(feat_dim=3, n_data=10, nce_k=2)
    means = []
    for rank, scale in enumerate([torch.ones(3), torch.tensor([1.0, -1.0, 0.5])]):
        unit = scale / scale.norm()
        rows = [[2 * rank, 5], [2 * rank + 1, 7]]
        out_v1 = [[math.exp(float(banks.memory_v2[r] @ unit) / 0.07) for r in row] for row in rows]
        out_v2 = [[math.exp(float(banks.memory_v1[r] @ -unit) / 0.07) for r in row] for row in rows]
        means.append([sum(map(sum, out_v1)) / 4, sum(map(sum, out_v2)) / 4])
    expected_z = torch.tensor([(means[0][0] + means[1][0]) / 2 * 10, (means[0][1] + means[1][1]) / 2 * 10])
    assert torch.equal(params_0, params_1)
    torch.testing.assert_close(params_0[2:4], expected_z)


@pytest.mark.parametrize("n_data", [10, 100])  # bank smaller / larger than the B·(K+1) rows drawn
def test_scores_take_the_same_values_on_both_paths(n_data):
    torch.manual_seed(0)
    memory = ContrastMemory(feat_dim=8, n_data=n_data, nce_k=4, nce_t=0.07)
    anchor = F.normalize(torch.randn(3, 8), dim=1).requires_grad_()
    contrast_idx = torch.randint(0, n_data, (3, 5))
    scores = memory.scores(anchor, memory.memory_v2, contrast_idx)
    expected = torch.stack([torch.exp(memory.memory_v2[contrast_idx[b]] @ anchor[b] / 0.07) for b in range(3)])
    torch.testing.assert_close(scores, expected)
    scores.sum().backward()
    assert anchor.grad is not None and torch.isfinite(anchor.grad).all()
