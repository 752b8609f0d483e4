"""Batcher: batches across requests by token budget, bounded queue (BUSY), per-request reassembly."""

import numpy as np
import pytest

from sidecar.batcher import Batcher, Busy, Closed, Job

pytestmark = pytest.mark.unit


def job(model, n, tokens=10, tag=0):
    seqs = [f"{tag}-{i}" for i in range(n)]
    return Job(model, [f"id{tag}-{i}" for i in range(n)], seqs, [tokens] * n, dim=2)


def fake_vectors(batch):
    """Row = (job tag, row index) so the test can see where every vector went."""
    return np.array([[float(s.split("-")[0]), float(s.split("-")[1])] for s in batch.seqs], np.float32)


def test_batches_span_requests_up_to_the_token_budget():
    b = Batcher(max_batch_tokens=50)
    jobs = [job("esm2", 2, tag=t) for t in range(4)]  # 8 sequences of 10 tokens
    for j in jobs:
        b.submit(j)
    first = b.next_batch(0)
    assert len(first) == 5 and first.tokens == 50
    assert [(j_ is jobs[0], row) for j_, row in first.parts][:2] == [(True, 0), (True, 1)]
    assert {id(j_) for j_, _ in first.parts} == {id(jobs[0]), id(jobs[1]), id(jobs[2])}
    done = b.complete(first, fake_vectors(first))
    assert done == [jobs[0], jobs[1]]  # job 2 is half done
    second = b.next_batch(0)
    assert len(second) == 3
    done = b.complete(second, fake_vectors(second))
    assert done == [jobs[2], jobs[3]]
    for t, j in enumerate(jobs):
        assert j.result.tolist() == [[t, 0], [t, 1]]
    assert b.next_batch(0) is None


def test_one_model_per_batch_in_arrival_order():
    b = Batcher(max_batch_tokens=1000)
    a1, d1, a2 = job("esm2", 1, tag=1), job("dnabert_s", 1, tag=2), job("esm2", 1, tag=3)
    for j in (a1, d1, a2):
        b.submit(j)
    first = b.next_batch(0)
    assert first.model == "esm2" and [j for j, _ in first.parts] == [a1, a2]
    assert b.next_batch(0).model == "dnabert_s"


def test_the_oldest_parts_jobs_go_first_whenever_they_arrive():
    """A job's priority (when the sidecar first saw its part) orders the queue before arrival: a part's
    later requests overtake the requests of parts that started after it, so parts finish one after another."""
    b = Batcher(max_batch_tokens=20)
    newer = [Job("esm2", [f"n{i}"], [f"2-{i}"], [10], dim=2, priority=2.0) for i in range(3)]
    for j in newer:
        b.submit(j)
    older = Job("esm2", ["o0", "o1"], ["1-0", "1-1"], [10, 10], dim=2, priority=1.0)
    b.submit(older)  # arrives last, from the part that came first
    first = b.next_batch(0)
    assert [j for j, _ in first.parts] == [older, older]
    assert b.complete(first, fake_vectors(first)) == [older]
    second = b.next_batch(0)
    assert [j for j, _ in second.parts] == newer[:2]  # equal priorities: arrival order


def test_oversized_sequence_still_gets_a_batch_of_its_own():
    b = Batcher(max_batch_tokens=5)
    j = job("esm2", 2, tokens=100)
    b.submit(j)
    assert len(b.next_batch(0)) == 1 and len(b.next_batch(0)) == 1


def test_backpressure_by_tokens_and_requests_until_released():
    b = Batcher(max_batch_tokens=100, max_queued_tokens=50, max_queued_requests=3)
    big = job("esm2", 10, tokens=10)  # 100 tokens: admitted because the queue is empty
    b.submit(big)
    with pytest.raises(Busy, match="queue full"):
        b.submit(job("esm2", 1))
    batch = b.next_batch(0)
    assert b.complete(batch, fake_vectors(batch)) == [big]
    with pytest.raises(Busy):  # done but not yet replied to: still holds memory
        b.submit(job("esm2", 1))
    b.release(big)
    for t in range(3):
        b.submit(job("esm2", 1, tag=t))
    with pytest.raises(Busy, match="3 requests"):
        b.submit(job("esm2", 1))
    assert b.depth() == {"requests": 3, "tokens": 30, "pending_requests": 3}


def test_failed_rows_fail_only_their_request():
    b = Batcher(max_batch_tokens=1000)
    ok, bad = job("esm2", 2, tag=1), job("esm2", 2, tag=2)
    b.submit(ok)
    b.submit(bad)
    batch = b.next_batch(0)
    done = b.complete(batch, fake_vectors(batch), errors={3: "boom"})
    assert done == [ok, bad]
    assert ok.error is None and ok.result.tolist() == [[1, 0], [1, 1]]
    assert bad.error == "boom"


def test_close_and_cancel_pending_leaves_in_flight_rows_to_finish():
    b = Batcher(max_batch_tokens=10)
    running, queued = job("esm2", 2, tag=1), job("esm2", 1, tag=2)
    b.submit(running)
    b.submit(queued)
    batch = b.next_batch(0)  # first row of `running`
    b.close()
    with pytest.raises(Closed):
        b.submit(job("esm2", 1))
    cancelled = b.cancel_pending("shutting down")
    assert cancelled == [queued] and queued.cancelled  # `running` still has a row in flight
    assert b.complete(batch, fake_vectors(batch)) == [running]
    assert running.error == "shutting down"
