"""A cell as a SLURM job.

The job carries only the cell's resolved config. Training state always comes from the cell's
folder (its latest checkpoint), never from this object: a requeue by submitit (time limit,
preemption) and a bare `scontrol requeue` (which restarts the original submission) resume
the same way."""

from __future__ import annotations

import os

from submitit.helpers import DelayedSubmission

from harness.launch import requeue


class CellJob:
    def __init__(self, config: dict, cell_id: str, cwd: str):
        self.config, self.cell_id, self.cwd = config, cell_id, cwd

    def __call__(self) -> dict:
        from omegaconf import OmegaConf

        from harness import tracker_process

        tracker_process.start(OmegaConf.create(self.config), self.cwd)  # MLflow's start-up beside the imports below

        from harness import distributed
        from harness.logs import setup_logging
        from harness.cell import Cell
        from harness.runner import run_cell

        # The snapshot's code is imported by now; relative paths in the config mean what
        # they meant where the sweep was submitted.
        os.chdir(self.cwd)
        if "OMP_NUM_THREADS" not in os.environ and os.environ.get("SLURM_CPUS_PER_TASK"):
            # the CPUs SLURM gave the task, not every core of the node (nothing binds them here)
            import torch

            torch.set_num_threads(int(os.environ["SLURM_CPUS_PER_TASK"]))
        setup_logging()
        distributed.from_slurm_tasks()  # a job of several tasks trains one cell data-parallel
        distributed.setup()
        cfg = OmegaConf.create(self.config)
        found = Cell(cfg).id
        if found != self.cell_id:
            raise RuntimeError(f"cell {self.cell_id} was submitted, but its config now makes cell {found} "
                               "(trained weights it reads changed since submission): submit the sweep again")
        results = run_cell(cfg)
        if results is None:  # another rank than 0: rank 0 reports
            return {"cell_id": self.cell_id, "rank": distributed.world().rank}
        return {"cell_id": results["cell_id"], "metrics": results["metrics"]}

    def checkpoint(self):
        """Called by submitit on the time-limit or preemption signal, just before it requeues
        the job and exits: the exit is a requeue, not a failure. It imports nothing: the signal
        can come while __call__ is still importing (harness/launch/requeue.py)."""
        requeue.mark_pending()
        return DelayedSubmission(self)


class TuneWorkerJob:
    """A tuning worker as a SLURM job (harness/tune/worker.py). Requeued on a time limit or a
    preemption like a cell; its job id stays, so it finds and finishes its own trial."""

    def __init__(self, folder: str, index: int, cwd: str):
        self.folder, self.index, self.cwd = folder, index, cwd

    def __call__(self) -> int:
        from pathlib import Path

        from harness.tune.worker import run

        os.chdir(self.cwd)
        return run(Path(self.folder), self.index)

    def checkpoint(self):
        requeue.mark_pending()  # the cell under way ends its attempt as requeued
        return DelayedSubmission(self)
