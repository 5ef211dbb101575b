"""Whether the scheduler is about to requeue this process.

submitit's signal handler (time limit, preemption) calls the job's `checkpoint`
(harness/launch/job.py), which marks the requeue here; the runner then reads the SystemExit
that follows as the end of an attempt, not a failure of the cell.

This module imports nothing, and neither may the handler: the signal can arrive while the job
is still importing torch or the runner, and an import inside the handler then re-enters a
half-imported module (AttributeError: partially initialized module), which fails the job
instead of requeueing it. Seen on the local cluster under load, where start-up took longer
than the 30-60 s before a 2-minute job's warning."""

_pending = False


def mark_pending() -> None:
    global _pending
    _pending = True


def pending() -> bool:
    return _pending
