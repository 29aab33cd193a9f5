"""Unit tests of dagm_serve.batcher.Batcher with a fake `send` (no model server, no HTTP).

Every image carries its request's id in pixel [0, 0] and its index within the request in
pixel [0, 1], so what `send` received and what each caller got back can be traced to the
request it came from.
"""

from __future__ import annotations

import asyncio
import random
import time

import numpy as np
import pytest

from dagm_serve.batcher import Batcher, Closed, Outputs, QueueFull

SIZE = 4  # images are SIZE x SIZE; maps are MAP x MAP
MAP = 2


def request(rid: int, count: int) -> np.ndarray:
    images = np.full((count, SIZE, SIZE), 7, dtype=np.uint8)
    images[:, 0, 0] = rid
    images[:, 0, 1] = np.arange(count)
    return images


def expected_scores(images: np.ndarray) -> np.ndarray:
    return images[:, 0, 0].astype(np.float32) * 1000 + images[:, 0, 1]


def expected_maps(images: np.ndarray) -> np.ndarray:
    return images[:, :MAP, :MAP].astype(np.float32) / 255


class FakeModel:
    """A `send` that records every batch; `hold()` makes the next calls wait for `release()`."""

    def __init__(self, delay: float = 0.0, fail_calls: tuple[int, ...] = (), short_calls: tuple[int, ...] = ()):
        self.calls: list[np.ndarray] = []
        self.delay = delay
        self.fail_calls = fail_calls
        self.short_calls = short_calls
        self.gate: asyncio.Event | None = None
        self.in_flight = 0
        self.most_in_flight = 0

    def hold(self) -> None:
        self.gate = asyncio.Event()

    def release(self) -> None:
        assert self.gate is not None
        self.gate.set()
        self.gate = None

    async def send(self, images: np.ndarray) -> tuple[str, np.ndarray, np.ndarray]:
        index = len(self.calls)
        self.calls.append(images.copy())
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            if index in self.fail_calls:
                raise RuntimeError(f"model server broke on call {index}")
            scores, maps = expected_scores(images), expected_maps(images)
            if index in self.short_calls:
                scores = scores[:-1]
            return f"forward-{index}", scores, maps
        finally:
            self.in_flight -= 1

    def request_ids(self, call: int) -> list[int]:
        """The request ids in call `call`, one per request, in order."""
        ids = self.calls[call][:, 0, 0].tolist()
        return [rid for i, rid in enumerate(ids) if i == 0 or ids[i - 1] != rid]

    def sizes(self) -> list[int]:
        return [len(call) for call in self.calls]


async def until(predicate, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)


def assert_own(outputs: Outputs, images: np.ndarray) -> None:
    np.testing.assert_array_equal(outputs.scores, expected_scores(images))
    np.testing.assert_array_equal(outputs.maps, expected_maps(images))


def submit_task(batcher: Batcher, images: np.ndarray, timeout: float = 5.0) -> asyncio.Task:
    return asyncio.get_running_loop().create_task(batcher.submit(images, timeout))


async def start_blocked(batcher: Batcher, model: FakeModel, rid: int = 200, count: int = 1) -> asyncio.Task:
    """Occupy a slot: a request whose send waits for model.release()."""
    model.hold()
    calls = len(model.calls)
    task = submit_task(batcher, request(rid, count))
    await until(lambda: len(model.calls) == calls + 1)
    return task


def test_batch_holds_at_most_max_images_and_carries_the_request_that_does_not_fit():
    async def main():
        model = FakeModel()
        batcher = Batcher(model.send, max_images=4, max_delay_s=0, slots=1, max_queued=100)
        first = await start_blocked(batcher, model, rid=1)
        reqs = {2: request(2, 2), 3: request(3, 3), 4: request(4, 1)}
        tasks = {}
        for rid, images in reqs.items():
            tasks[rid] = submit_task(batcher, images)
            await until(lambda: batcher.queued == len(tasks))
        model.release()
        results = {rid: await task for rid, task in tasks.items()}
        await first
        # 2 (2 images) + 3 (3 images) > 4: 3 waits for the next batch, where 4 joins it.
        assert model.sizes() == [1, 2, 4]
        assert [model.request_ids(i) for i in range(3)] == [[1], [2], [3, 4]]
        for rid, images in reqs.items():
            assert_own(results[rid], images)
        assert results[2].batch_images == 2 and results[2].forward_id == "forward-1"
        assert results[3].batch_images == results[4].batch_images == 4
        assert results[3].forward_id == results[4].forward_id == "forward-2"
        await batcher.close()

    asyncio.run(main())


def test_a_request_larger_than_max_images_goes_alone():
    async def main():
        model = FakeModel()
        batcher = Batcher(model.send, max_images=4, max_delay_s=0, slots=1, max_queued=100)
        first = await start_blocked(batcher, model, rid=1)
        big, small = request(2, 7), request(3, 2)
        big_task = submit_task(batcher, big)
        await until(lambda: batcher.queued == 1)
        small_task = submit_task(batcher, small)
        await until(lambda: batcher.queued == 2)
        model.release()
        big_out, small_out, _ = await big_task, await small_task, await first
        assert model.sizes() == [1, 7, 2]
        assert [model.request_ids(i) for i in range(3)] == [[1], [2], [3]]
        assert_own(big_out, big)
        assert_own(small_out, small)
        assert big_out.batch_images == 7
        # and when it is the first in line with an idle batcher
        alone = await batcher.submit(request(4, 9), 5)
        assert model.sizes()[-1] == 9 and alone.batch_images == 9
        await batcher.close()

    asyncio.run(main())


def test_batches_grow_while_every_slot_is_busy_and_shrink_when_idle():
    async def main():
        model = FakeModel()
        batcher = Batcher(model.send, max_images=64, max_delay_s=0, slots=1, max_queued=100)
        lone = await batcher.submit(request(1, 1), 5)
        assert lone.batch_images == 1
        first = await start_blocked(batcher, model, rid=2)
        reqs = [request(10 + i, 1 + i % 3) for i in range(10)]
        tasks = [submit_task(batcher, images) for images in reqs]
        await until(lambda: batcher.queued == len(reqs))
        assert len(model.calls) == 2  # nothing more is sent while the only slot is busy
        model.release()
        results = await asyncio.gather(*tasks)
        await first
        # all ten waiting requests went in one forward pass
        assert len(model.calls) == 3
        assert model.request_ids(2) == [10 + i for i in range(10)]
        for out, images in zip(results, reqs):
            assert_own(out, images)
            assert out.forward_id == "forward-2"
            assert out.batch_images == sum(len(r) for r in reqs)
        # idle again: a lone request is sent alone, at once
        again = await batcher.submit(request(30, 1), 5)
        assert again.batch_images == 1 and len(model.calls) == 4
        await batcher.close()

    asyncio.run(main())


def test_slots_bound_the_concurrent_sends():
    async def main():
        model = FakeModel(delay=0.05)
        batcher = Batcher(model.send, max_images=1, max_delay_s=0, slots=2, max_queued=100)
        reqs = [request(i, 1) for i in range(6)]
        results = await asyncio.gather(*(batcher.submit(images, 5) for images in reqs))
        for out, images in zip(results, reqs):
            assert_own(out, images)
        assert len(model.calls) == 6
        assert model.most_in_flight == 2
        await batcher.close()

    asyncio.run(main())


def test_max_delay_waits_for_company_but_not_once_the_batch_is_full():
    async def main():
        # with a delay, a request that comes a little later joins the first
        model = FakeModel()
        batcher = Batcher(model.send, max_images=8, max_delay_s=0.5, slots=1, max_queued=100)
        start = time.monotonic()
        a = submit_task(batcher, request(1, 1))
        await asyncio.sleep(0.05)
        b = submit_task(batcher, request(2, 2))
        a_out, b_out = await a, await b
        waited = time.monotonic() - start
        assert model.sizes() == [3]
        assert a_out.forward_id == b_out.forward_id and a_out.batch_images == 3
        assert 0.4 <= waited < 2.0  # it waited for company, about max_delay_s
        await batcher.close()
        # a full batch goes at once, without waiting out max_delay_s
        model = FakeModel()
        batcher = Batcher(model.send, max_images=3, max_delay_s=5.0, slots=1, max_queued=100)
        start = time.monotonic()
        outs = await asyncio.gather(batcher.submit(request(1, 1), 10), batcher.submit(request(2, 2), 10))
        assert time.monotonic() - start < 1.0
        assert model.sizes() == [3] and outs[0].forward_id == outs[1].forward_id
        await batcher.close()

    asyncio.run(main())


def test_without_max_delay_a_later_request_is_not_waited_for():
    async def main():
        model = FakeModel()
        batcher = Batcher(model.send, max_images=8, max_delay_s=0, slots=1, max_queued=100)
        a = submit_task(batcher, request(1, 1))
        await asyncio.sleep(0.05)
        b = submit_task(batcher, request(2, 2))
        a_out, b_out = await a, await b
        assert model.sizes() == [1, 2]
        assert a_out.forward_id != b_out.forward_id
        await batcher.close()

    asyncio.run(main())


def test_queue_full_once_max_queued_requests_wait():
    async def main():
        model = FakeModel()
        batcher = Batcher(model.send, max_images=64, max_delay_s=0, slots=1, max_queued=3)
        first = await start_blocked(batcher, model, rid=1)  # in a slot, no longer queued
        reqs = [request(2 + i, 1) for i in range(3)]
        tasks = [submit_task(batcher, images) for images in reqs]
        await until(lambda: batcher.queued == 3)
        start = time.monotonic()
        with pytest.raises(QueueFull):
            await batcher.submit(request(9, 1), 5)
        assert time.monotonic() - start < 0.5  # refused at once, not after a wait
        model.release()
        results = await asyncio.gather(*tasks)
        await first
        for out, images in zip(results, reqs):
            assert_own(out, images)
        assert 9 not in np.concatenate(model.calls)[:, 0, 0]
        # room again once the queue drained
        assert_own(await batcher.submit(request(10, 1), 5), request(10, 1))
        await batcher.close()

    asyncio.run(main())


def test_a_request_whose_caller_timed_out_is_never_sent():
    async def main():
        model = FakeModel()
        batcher = Batcher(model.send, max_images=64, max_delay_s=0, slots=1, max_queued=100)
        first = await start_blocked(batcher, model, rid=1)
        late = submit_task(batcher, request(2, 3), timeout=0.05)
        kept = submit_task(batcher, request(3, 1), timeout=5)
        with pytest.raises(asyncio.TimeoutError):
            await late
        model.release()
        kept_out = await kept
        await first
        assert_own(kept_out, request(3, 1))
        assert model.sizes() == [1, 1]
        assert model.request_ids(1) == [3]
        assert kept_out.batch_images == 1
        await batcher.close()

    asyncio.run(main())


def test_a_request_abandoned_while_its_batch_waits_for_company_is_not_sent():
    async def main():
        model = FakeModel()
        batcher = Batcher(model.send, max_images=64, max_delay_s=0.3, slots=1, max_queued=100)
        late = submit_task(batcher, request(1, 2), timeout=0.05)
        kept = submit_task(batcher, request(2, 1), timeout=5)
        with pytest.raises(asyncio.TimeoutError):
            await late
        assert model.calls == []  # the batch is still waiting for company
        out = await kept
        assert_own(out, request(2, 1))
        assert model.sizes() == [1] and model.request_ids(0) == [2]
        assert out.batch_images == 1
        await batcher.close()

    asyncio.run(main())


def test_abandoned_requests_take_no_room_in_a_batch():
    async def main():
        model = FakeModel()
        batcher = Batcher(model.send, max_images=4, max_delay_s=0, slots=1, max_queued=100)
        first = await start_blocked(batcher, model, rid=1)
        late = submit_task(batcher, request(2, 3), timeout=0.05)
        kept = [submit_task(batcher, request(3, 1)), submit_task(batcher, request(4, 2))]
        with pytest.raises(asyncio.TimeoutError):
            await late
        model.release()
        outs = await asyncio.gather(*kept)
        await first
        # 1 + 2 images fit one batch of 4 once the abandoned 3 images are left out
        assert model.sizes() == [1, 3]
        assert model.request_ids(1) == [3, 4]
        assert_own(outs[0], request(3, 1))
        assert_own(outs[1], request(4, 2))
        await batcher.close()

    asyncio.run(main())


def test_a_batch_whose_requests_were_all_abandoned_sends_nothing_and_frees_its_slot():
    async def main():
        model = FakeModel()
        batcher = Batcher(model.send, max_images=64, max_delay_s=0.2, slots=1, max_queued=100)
        # taken into a batch that waits for company; both callers give up meanwhile
        late = [submit_task(batcher, request(2 + i, 1), timeout=0.05) for i in range(2)]
        for task in late:
            with pytest.raises(asyncio.TimeoutError):
                await task
        await asyncio.sleep(0.25)  # the batch's max_delay_s is over: it was "sent"
        out = await batcher.submit(request(9, 2), 2)
        assert_own(out, request(9, 2))
        assert model.sizes() == [2]
        assert model.request_ids(0) == [9]
        await batcher.close()

    asyncio.run(main())


def test_a_cancelled_submitters_request_is_dropped():
    async def main():
        model = FakeModel()
        batcher = Batcher(model.send, max_images=64, max_delay_s=0, slots=1, max_queued=100)
        first = await start_blocked(batcher, model, rid=1)
        gone = submit_task(batcher, request(2, 2))
        kept = submit_task(batcher, request(3, 2))
        await until(lambda: batcher.queued == 2)
        gone.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await gone
        model.release()
        kept_out = await kept
        await first
        assert_own(kept_out, request(3, 2))
        assert model.sizes() == [1, 2]
        assert model.request_ids(1) == [3]
        await batcher.close()

    asyncio.run(main())


def test_a_failing_send_fails_every_request_of_its_batch_and_the_next_batch_succeeds():
    async def main():
        model = FakeModel(fail_calls=(1,))
        batcher = Batcher(model.send, max_images=64, max_delay_s=0, slots=1, max_queued=100)
        first = await start_blocked(batcher, model, rid=1)
        failing = [submit_task(batcher, request(2 + i, 1 + i)) for i in range(3)]
        await until(lambda: batcher.queued == 3)
        model.release()
        assert_own(await first, request(1, 1))
        errors = await asyncio.gather(*failing, return_exceptions=True)
        assert all(isinstance(e, RuntimeError) and "call 1" in str(e) for e in errors), errors
        assert model.sizes() == [1, 6]  # the three went in one batch, which failed
        out = await batcher.submit(request(9, 2), 5)
        assert_own(out, request(9, 2))
        assert out.forward_id == "forward-2"
        await batcher.close()

    asyncio.run(main())


def test_a_send_that_answers_the_wrong_number_of_rows_fails_its_batch():
    async def main():
        model = FakeModel(short_calls=(0,))
        batcher = Batcher(model.send, max_images=64, max_delay_s=0, slots=1, max_queued=100)
        with pytest.raises(RuntimeError, match="scores"):
            await batcher.submit(request(1, 3), 5)
        assert_own(await batcher.submit(request(2, 3), 5), request(2, 3))
        await batcher.close()

    asyncio.run(main())


def test_close_sends_what_is_queued_then_refuses_new_requests():
    async def main():
        model = FakeModel(delay=0.02)
        batcher = Batcher(model.send, max_images=64, max_delay_s=0, slots=2, max_queued=100)
        first = await start_blocked(batcher, model, rid=1)
        second = submit_task(batcher, request(2, 1))  # the other slot, held by the same gate
        await until(lambda: len(model.calls) == 2)
        reqs = [request(3, 1), request(4, 2)]
        tasks = [submit_task(batcher, images) for images in reqs]
        await until(lambda: batcher.queued == 2)
        closing = asyncio.get_running_loop().create_task(batcher.close())
        await asyncio.sleep(0.01)
        assert not closing.done()  # waits for the queued requests
        with pytest.raises(Closed):
            await batcher.submit(request(9, 1), 5)
        model.release()
        await asyncio.wait_for(closing, 2)
        assert all(task.done() for task in tasks)  # answered before close() returned
        for task, images in zip(tasks, reqs):
            assert_own(task.result(), images)
        assert_own(first.result(), request(1, 1))
        assert_own(second.result(), request(2, 1))
        assert model.sizes() == [1, 1, 3]
        with pytest.raises(Closed):
            await batcher.submit(request(10, 1), 5)
        assert len(model.calls) == 3

    asyncio.run(main())


def test_close_does_not_wait_out_max_delay_or_lose_a_carried_request():
    async def main():
        model = FakeModel()
        batcher = Batcher(model.send, max_images=4, max_delay_s=5.0, slots=1, max_queued=100)
        first = await start_blocked(batcher, model, rid=1, count=4)  # full: sent without delay
        a, b = request(2, 3), request(3, 3)  # b does not fit a's batch: carried
        tasks = [submit_task(batcher, a), submit_task(batcher, b)]
        await until(lambda: batcher.queued == 2)
        model.release()
        await until(lambda: len(model.calls) == 2)
        start = time.monotonic()
        await asyncio.wait_for(batcher.close(), 2)
        assert time.monotonic() - start < 1.0
        outs = [task.result() for task in tasks]
        assert_own(outs[0], a)
        assert_own(outs[1], b)
        assert model.sizes() == [4, 3, 3]
        assert_own(await first, request(1, 4))

    asyncio.run(main())


def test_close_of_an_idle_batcher_returns_at_once():
    async def main():
        model = FakeModel()
        batcher = Batcher(model.send, max_images=4, max_delay_s=5.0, slots=1, max_queued=100)
        await asyncio.wait_for(batcher.close(), 1)
        with pytest.raises(Closed):
            await batcher.submit(request(1, 1), 1)
        assert model.calls == []

    asyncio.run(main())


@pytest.mark.parametrize("slots,max_delay_s", [(1, 0.0), (2, 0.0), (3, 0.002)])
def test_many_concurrent_submitters_each_get_their_own_rows(slots, max_delay_s):
    max_images = 8

    async def main():
        rng = random.Random(slots)
        model = FakeModel(delay=0.002)
        batcher = Batcher(model.send, max_images=max_images, max_delay_s=max_delay_s, slots=slots,
                          max_queued=1000)
        reqs = {rid: request(rid, rng.randint(1, 11)) for rid in range(1, 51)}
        assert any(len(images) > max_images for images in reqs.values())
        pauses = {rid: rng.random() * 0.02 for rid in reqs}

        async def client(rid: int) -> Outputs:
            await asyncio.sleep(pauses[rid])
            return await batcher.submit(reqs[rid], 10)

        results = dict(zip(reqs, await asyncio.gather(*(client(rid) for rid in reqs))))
        await batcher.close()

        for rid, images in reqs.items():
            assert_own(results[rid], images)
        forwards = {f"forward-{i}": call for i, call in enumerate(model.calls)}
        for rid, out in results.items():
            call = forwards[out.forward_id]
            assert out.batch_images == len(call)
            assert rid in model.request_ids(int(out.forward_id.split("-")[1]))
        # every request sent exactly once, nothing else sent
        sent = [rid for i in range(len(model.calls)) for rid in model.request_ids(i)]
        assert sorted(sent) == sorted(reqs)
        assert sum(model.sizes()) == sum(len(r) for r in reqs.values())
        for i, call in enumerate(model.calls):
            ids = model.request_ids(i)
            assert len(call) <= max_images or len(ids) == 1, (i, ids, len(call))
        assert model.most_in_flight <= slots
        # load made batches of several requests
        assert max(len(model.request_ids(i)) for i in range(len(model.calls))) > 1

    asyncio.run(main())


def test_abandoned_requests_do_not_hold_places_in_a_full_queue():
    async def scenario():
        release = asyncio.Event()
        sent: list[int] = []

        async def send(images):
            sent.append(len(images))
            await release.wait()
            return "f", images[:, 0, 0].astype(np.float32), np.zeros((len(images), 2, 2), np.float32)

        batcher = Batcher(send, max_images=1, max_delay_s=0, slots=1, max_queued=2)
        busy = asyncio.ensure_future(batcher.submit(np.zeros((1, 4, 4), np.uint8), 10))
        while not sent:
            await asyncio.sleep(0.01)
        for _ in range(2):  # callers that give up while the only slot is busy
            with pytest.raises(asyncio.TimeoutError):
                await batcher.submit(np.zeros((1, 4, 4), np.uint8), 0.01)
        waiting = asyncio.ensure_future(batcher.submit(np.full((1, 4, 4), 7, np.uint8), 10))
        await asyncio.sleep(0.01)
        release.set()
        assert (await waiting).scores.tolist() == [7.0]
        await busy
        assert sent == [1, 1]  # the abandoned two were never sent
        await batcher.close()

    asyncio.run(scenario())
