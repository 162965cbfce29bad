"""DynamicBatcher: batch forming, kinds, errors, limits, deadlines, cancellation, shutdown.

Ordering is made deterministic by a "block" job that holds the only worker inside its runner
while the test queues jobs behind it, instead of sleeping and hoping."""

import threading
import time

import pytest

from serving.batching.batcher import BatcherClosed, DeadlineExpired, DynamicBatcher, QueueFull
from serving.batching.policy import BatchPolicy

WAIT = 2.0  # seconds; only reached when something is broken


class Recorder:
    """A make_runner that records every batch. Kind "block" waits for ``release``; "bad" raises;
    "short" returns too few results; "slow" takes 0.1 s; any other kind answers (kind, target)
    per job."""

    def __init__(self):
        self.batches = []  # (kind, [Job, ...]) in the order they ran
        self.entered = threading.Event()
        self.release = threading.Event()

    def make_runner(self):
        def run(kind, jobs):
            self.batches.append((kind, list(jobs)))
            if kind == "block":
                self.entered.set()
                self.release.wait(WAIT)
            if kind == "bad":
                raise ValueError("boom")
            if kind == "short":
                return []
            if kind == "slow":
                time.sleep(0.1)
            return [(kind, job.target) for job in jobs]

        return run

    def targets(self, kind):
        return [[job.target for job in jobs] for k, jobs in self.batches if k == kind]


@pytest.fixture
def recorder():
    recorder = Recorder()
    yield recorder
    recorder.release.set()


@pytest.fixture
def make(recorder):
    made = []

    def build(**options):
        batcher = DynamicBatcher(recorder.make_runner, BatchPolicy(**options))
        made.append(batcher)
        return batcher

    yield build
    recorder.release.set()
    for batcher in made:
        batcher.close(drain=False, timeout=WAIT)


def hold_worker(batcher, recorder):
    """Park the (single) worker in a "block" batch until ``recorder.release`` is set."""
    future = batcher.submit("block", None)
    assert recorder.entered.wait(WAIT)
    return future


def test_fills_batches_up_to_max_batch_size(make, recorder):
    batcher = make(max_batch_size=4, max_queue_delay_s=0)
    sizes = []
    batcher.on_batch = lambda kind, size: sizes.append((kind, size))
    hold_worker(batcher, recorder)
    futures = [batcher.submit("c", None, target=i) for i in range(10)]
    assert batcher.queue_depth == 10
    recorder.release.set()
    assert [f.result(WAIT) for f in futures] == [("c", i) for i in range(10)]
    assert recorder.targets("c") == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert sizes == [("block", 1), ("c", 4), ("c", 4), ("c", 2)]


def test_lone_job_waits_the_delay_when_asked_to_wait_when_idle(make, recorder):
    delay = 0.02
    batcher = make(max_batch_size=8, max_queue_delay_s=delay, wait_when_idle=True)
    future = batcher.submit("c", None, target=7)
    assert future.result(WAIT) == ("c", 7)
    [(_, [job])] = recorder.batches
    assert job.started - job.enqueued >= delay


def test_on_an_idle_batcher_a_lone_job_runs_at_once(make, recorder):
    batcher = make(max_batch_size=8, max_queue_delay_s=5.0)  # would time the test out
    assert batcher.submit("c", None, target=1).result(WAIT) == ("c", 1)
    [(_, [job])] = recorder.batches
    assert job.started - job.enqueued < 1.0


def test_jobs_arriving_while_a_batch_runs_wait_for_company(make, recorder):
    batcher = make(max_batch_size=8, max_queue_delay_s=5.0)
    hold_worker(batcher, recorder)
    futures = [batcher.submit("c", None, target=i) for i in range(3)]
    recorder.release.set()  # the running batch ends: nothing runs now, so the three go together
    assert [f.result(WAIT) for f in futures] == [("c", i) for i in range(3)]
    assert [len(jobs) for _, jobs in recorder.batches][-1] == 3


def test_kinds_never_mix_and_go_first_job_first(make, recorder):
    batcher = make(max_batch_size=8, max_queue_delay_s=0)
    hold_worker(batcher, recorder)
    kinds = ["a", "b", "a", "b", "a"]
    futures = [batcher.submit(kind, None, target=i) for i, kind in enumerate(kinds)]
    recorder.release.set()
    assert [f.result(WAIT) for f in futures] == list(zip(kinds, range(5), strict=True))
    assert [(k, [j.target for j in jobs]) for k, jobs in recorder.batches[1:]] == [
        ("a", [0, 2, 4]), ("b", [1, 3])]


def test_runner_error_fails_its_whole_batch_and_the_worker_survives(make, recorder):
    batcher = make(max_batch_size=8, max_queue_delay_s=0)
    hold_worker(batcher, recorder)
    bad = [batcher.submit("bad", None) for _ in range(2)]
    short = batcher.submit("short", None)
    recorder.release.set()
    errors = [f.exception(WAIT) for f in bad]
    assert isinstance(errors[0], ValueError) and errors[1] is errors[0]
    with pytest.raises(ValueError, match="returned 0 results for 1 'short' jobs"):
        short.result(WAIT)
    assert batcher.submit("c", None, target=1).result(WAIT) == ("c", 1)


def test_full_queue_refuses_at_once_and_counts_are_kept(make, recorder):
    batcher = make(max_batch_size=8, max_queue_delay_s=0, max_queue_size=2)
    held = hold_worker(batcher, recorder)
    queued = [batcher.submit("c", None, target=i) for i in range(2)]
    assert (batcher.queue_depth, batcher.in_flight) == (2, 3)
    with pytest.raises(QueueFull, match="2 jobs queued, max_queue_size 2"):
        batcher.submit("c", None)
    recorder.release.set()
    assert held.result(WAIT) == ("block", None)
    assert [f.result(WAIT) for f in queued] == [("c", 0), ("c", 1)]
    assert (batcher.queue_depth, batcher.in_flight) == (0, 0)


def test_deadline_already_passed_at_submit(make, recorder):
    batcher = make()
    with pytest.raises(DeadlineExpired):
        batcher.submit("c", None, deadline=time.monotonic() - 0.001)
    assert (batcher.queue_depth, batcher.in_flight, recorder.batches) == (0, 0, [])


def test_deadline_passing_in_the_queue_fails_without_running(make, recorder):
    batcher = make(max_batch_size=8, max_queue_delay_s=0)
    hold_worker(batcher, recorder)
    late = batcher.submit("c", None, target=1, deadline=time.monotonic() + 0.01)
    on_time = batcher.submit("c", None, target=2, deadline=time.monotonic() + 10)
    time.sleep(0.02)
    recorder.release.set()
    with pytest.raises(DeadlineExpired, match="the deadline passed"):
        late.result(WAIT)
    assert on_time.result(WAIT) == ("c", 2)
    assert recorder.targets("c") == [[2]]


def test_a_job_whose_batch_would_end_after_its_deadline_is_not_run(make, recorder):
    """No work for a client that will have left: batches of "slow" take 0.1 s."""
    batcher = make(max_queue_delay_s=0)
    late = []
    batcher.on_late = lambda kind, count: late.append((kind, count))
    first = batcher.submit("slow", None, target=0, deadline=time.monotonic() + 0.05)
    assert first.result(WAIT) == ("slow", 0)  # no batch time known yet: it ran, and was late
    assert late == [("slow", 1)] and batcher.batch_seconds["slow"] >= 0.1
    hopeless = batcher.submit("slow", None, target=1, deadline=time.monotonic() + 0.05)
    with pytest.raises(DeadlineExpired, match="would before the batch ended"):
        hopeless.result(WAIT)
    assert batcher.submit("slow", None, target=2, deadline=time.monotonic() + 5).result(WAIT) \
        == ("slow", 2)
    assert recorder.targets("slow") == [[0], [2]] and late == [("slow", 1)]


def test_cancelled_job_never_reaches_the_runner(make, recorder):
    batcher = make(max_batch_size=8, max_queue_delay_s=0)
    hold_worker(batcher, recorder)
    cancelled = batcher.submit("c", None, target=1)
    kept = batcher.submit("c", None, target=2)
    assert cancelled.cancel()
    recorder.release.set()
    assert kept.result(WAIT) == ("c", 2)
    assert recorder.targets("c") == [[2]]
    assert batcher.in_flight == 0


def test_close_with_drain_runs_queued_jobs_without_waiting_out_the_delay(make, recorder):
    batcher = make(max_batch_size=8, max_queue_delay_s=30)
    futures = [batcher.submit("c", None, target=i) for i in range(3)]
    batcher.close(drain=True, timeout=WAIT)
    assert [f.result(0) for f in futures] == [("c", i) for i in range(3)]
    with pytest.raises(BatcherClosed):
        batcher.submit("c", None)
    batcher.close()  # idempotent


def test_close_without_drain_fails_queued_jobs_and_lets_running_ones_finish(make, recorder):
    batcher = make(max_batch_size=8, max_queue_delay_s=0)
    held = hold_worker(batcher, recorder)
    queued = [batcher.submit("c", None) for _ in range(3)]
    closer = threading.Thread(target=batcher.close, kwargs={"drain": False, "timeout": WAIT})
    closer.start()
    assert all(isinstance(f.exception(WAIT), BatcherClosed) for f in queued)
    assert not held.done()
    recorder.release.set()
    closer.join(WAIT)
    assert held.result(0) == ("block", None)
    assert recorder.targets("c") == []
    assert (batcher.queue_depth, batcher.in_flight) == (0, 0)


def test_submit_after_close(make):
    batcher = make()
    batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.submit("c", None)


def test_each_worker_builds_and_uses_its_own_runner():
    workers = 3
    makers = []
    all_running = threading.Barrier(workers, timeout=WAIT)

    def make_runner():
        maker = threading.current_thread()
        makers.append(maker)

        def run(kind, jobs):
            all_running.wait()  # three batches at once: one on each worker
            return [threading.current_thread() is maker for _ in jobs]

        return run

    batcher = DynamicBatcher(make_runner, BatchPolicy(workers=workers, max_batch_size=1,
                                                       max_queue_delay_s=0))
    try:
        assert len(makers) == workers  # built before __init__ returned
        assert len(set(makers)) == workers and threading.main_thread() not in makers
        futures = [batcher.submit("c", None) for _ in range(workers)]
        assert [f.result(WAIT) for f in futures] == [True] * workers
    finally:
        batcher.close(drain=False, timeout=WAIT)


def test_failing_make_runner_fails_construction():
    def make_runner():
        raise RuntimeError("no model file")

    with pytest.raises(RuntimeError, match="no model file"):
        DynamicBatcher(make_runner, BatchPolicy(workers=2))


def test_broken_on_batch_hook_does_not_fail_requests(make):
    batcher = make(max_queue_delay_s=0)
    batcher.on_batch = lambda kind, size: 1 / 0
    assert batcher.submit("c", None, target=3).result(WAIT) == ("c", 3)


@pytest.mark.parametrize("setting, value", [
    ("max_batch_size", 0), ("max_queue_delay_s", -0.001), ("max_queue_size", 0), ("workers", 0)])
def test_rejects_bad_settings(setting, value):
    with pytest.raises(ValueError, match=f"{setting} must be >= .*got {value}"):
        BatchPolicy(**{setting: value})
