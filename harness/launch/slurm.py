"""The SLURM launcher (`launcher=slurm`): every pending cell of a sweep becomes a task of one
job array.

In order, and nothing is written before step 2 passes:
  1. the sweeper plans and validates every cell;
  2. `sbatch --test-only` checks the job request (partition, memory, GPUs, time): a request
     the scheduler would reject fails here, in one line with the scheduler's reason;
  3. the code is frozen (snapshot.py) and the jobs are told to run that copy;
  4. the submission is recorded, submitted, and its job ids recorded (records.py);
  5. with `wait: false` the command returns; otherwise it follows the jobs to the end.
A cell whose job is still queued or running is not submitted again; completed cells never are.

A job of several tasks (`tasks_per_node`; by default one per GPU of `gpus_per_node`) trains its
cell data-parallel, one process per task (harness/distributed.py).

Built on hydra-submitit-launcher's SlurmLauncher: the preset keys are its keys, plus `wait`
and `freeze_code`."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf

from harness.errors import fail
from harness.launch import records
from harness.launch.job import CellJob
from harness.launch.snapshot import freeze

POLL_S = 3.0


class HarnessSlurmLauncher(SlurmLauncher):
    def __init__(self, wait: bool = False, freeze_code: bool = True, **params):
        super().__init__(**params)
        self.wait, self.freeze_code = wait, freeze_code

    # -- the executor: hydra-submitit-launcher's mapping of preset keys to submitit ---------
    def executor(self, folder: str, name: str = "harness", setup: list[str] = (), gpus: int | None = None,
                 dependency: str | None = None):
        """`gpus`: this array's GPUs per node, when its cells use fewer than the preset's;
        `dependency`: sbatch's --dependency for it."""
        import submitit

        params = dict(self.params)
        if gpus is not None:
            params["gpus_per_node"] = gpus
        if dependency:
            params["additional_parameters"] = {**(params.get("additional_parameters") or {}), "dependency": dependency}
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=params.pop("max_num_timeout"))
        params.pop("submitit_folder")
        params["name"] = name
        if (params.get("gpus_per_node") or 0) > 1 and params.get("tasks_per_node", 1) == 1:
            params["tasks_per_node"] = params["gpus_per_node"]  # one process per GPU, data-parallel
        params["setup"] = [*(params.get("setup") or []), *setup]
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
        if params.get("tasks_per_node", 1) * params.get("nodes", 1) > 1:
            # one failing rank ends the job, rather than leaving the others waiting on it
            executor.update_parameters(slurm_srun_args=["--kill-on-bad-exit=1"])
        return executor

    def gpu_groups(self, cells: list) -> dict[int, list]:
        """[(cell, ...)] by the GPUs each cell's job asks for: the preset's, or fewer where a
        cell's batch does not split over them (harness.validate.processes_for)."""
        from harness.validate import processes_for

        gpus = int(self.params.get("gpus_per_node") or 0)
        groups: dict[int, list] = {}
        for item in cells:
            use = processes_for(item[0].cfg, gpus) if gpus > 1 and int(self.params.get("nodes") or 1) == 1 else gpus
            groups.setdefault(use, []).append(item)
        return groups

    def test_only(self, cells: int, gpus: int | None = None) -> None:
        """Ask the scheduler whether it would accept the array, without submitting it."""
        from harness.internals import sbatch_script

        if shutil.which("sbatch") is None:
            fail("launcher=slurm needs SLURM's sbatch on PATH: run from a login node, or start the local "
                 "cluster (slurm/cluster/start.sh) and source its env.sh")
        executor = self.executor(str(self.params["submitit_folder"]), gpus=gpus)
        script = sbatch_script(executor, "true", tempfile.gettempdir(), cells)
        with tempfile.NamedTemporaryFile("w", suffix=".sbatch") as handle:
            handle.write(script)
            handle.flush()
            checked = subprocess.run(["sbatch", "--test-only", handle.name], capture_output=True, text=True, timeout=60)
        if checked.returncode != 0:
            reason = (checked.stderr.strip() or checked.stdout.strip()).splitlines()[-1].removeprefix("sbatch: error: ")
            asked = {k: self.params.get(k) for k in ("partition", "gpus_per_node", "mem_gb", "mem_per_gpu", "cpus_per_task", "timeout_min")}
            if gpus is not None:
                asked["gpus_per_node"] = gpus
            asked = ", ".join(f"{k}={v}" for k, v in asked.items() if v is not None)
            fail(f"SLURM rejects the job request ({asked}): {reason}")

    # -- submission ---------------------------------------------------------------------------
    def submit_cells(self, cells: list, sweep_id: str, out_dir: Path) -> list[records.Submission]:
        """Submit [(cell, config dict)] as job arrays, one per GPU count (gpu_groups); returns
        their records. A cell that starts from or is compared with another cell being submitted
        (its method's `reference`: two-stage's and bilevel's distill cell) goes in an array that
        waits for the references' arrays to end (--dependency=afterany): otherwise its job would
        train the reference itself, on its own GPUs, while the reference's job waited."""
        from harness.cell import cell_id
        from harness.method import get_method

        submitting = {cell.id for cell, _ in cells}

        def waits(cell) -> bool:
            ref = get_method(cell.cfg.method.name).reference(cell.cfg)
            return ref is not None and cell_id(ref) in submitting

        full = int(self.params.get("gpus_per_node") or 0)
        subs: list[records.Submission] = []
        for later in (False, True):
            group = [item for item in cells if waits(item[0]) == later]
            first = sorted({job.split("_")[0] for sub in subs for job in sub.job_ids.values()})
            dependency = f"afterany:{':'.join(first)}" if later and first else None
            for gpus, part in sorted(self.gpu_groups(group).items()):
                subs.append(self._submit_array(part, sweep_id, out_dir, None if gpus == full else gpus, dependency))
        return subs

    def _submit_array(self, cells: list, sweep_id: str, out_dir: Path, gpus: int | None,
                      dependency: str | None = None) -> records.Submission:
        setup, code = [], {}
        if self.freeze_code:
            code = freeze(out_dir / "slurm" / "code")
            # cwd first on sys.path (python -m), so the job starts in the snapshot
            setup = [f"cd {code['path']}", f"export PYTHONPATH={code['path']}${{PYTHONPATH:+:$PYTHONPATH}}"]
        if any((config.get("runtime") or {}).get("reproducible") for _, config in cells):
            from harness import numerics

            setup = [*setup, *numerics.shell_exports()]  # kernels pinned before the job's Python starts
        sub = records.Submission.create(out_dir, sweep_id, [c.id for c, _ in cells], code)
        executor = self.executor(str(self.params["submitit_folder"]), sub.job_name, setup, gpus, dependency)
        cwd = os.getcwd()
        try:
            with executor.batch():
                jobs = [executor.submit(CellJob(config, cell.id, cwd)) for cell, config in cells]
        except Exception:
            # sbatch may or may not have gone through: ask the scheduler, adopt or abandon
            found = records.find_jobs_named(sub.job_name, sub.created, len(cells))
            if found is None:
                sub.state = "abandoned"
                sub.save()
                raise
            jobs = None
        sub.submitted([j.job_id for j in jobs] if jobs else found)
        return sub

    def submit_workers(self, folder: Path, workers: int, out_dir: Path, reproducible: bool = False) -> list[str]:
        """A tuning study's workers as one job array (frozen code, like cells); their job ids."""
        from harness.launch.job import TuneWorkerJob

        setup = []
        if self.freeze_code:
            code = freeze(out_dir / "slurm" / "code")
            setup = [f"cd {code['path']}", f"export PYTHONPATH={code['path']}${{PYTHONPATH:+:$PYTHONPATH}}"]
        if reproducible:
            from harness import numerics

            setup = [*setup, *numerics.shell_exports()]
        executor = self.executor(str(self.params["submitit_folder"]), f"tune-{folder.name}", setup)
        cwd = os.getcwd()
        with executor.batch():
            jobs = [executor.submit(TuneWorkerJob(str(folder), i, cwd)) for i in range(workers)]
        return [j.job_id for j in jobs]

    def follow(self, cells: list, out_dir: Path) -> list[tuple]:
        """Wait until every cell is completed or its job ended without completing it;
        returns [(cell, reason)] for those that did not complete. One sacct call per poll."""
        waiting = {c.id: c for c in cells}
        failed = []
        while waiting:
            latest = records.latest_jobs(records.load_submissions(out_dir))
            states = records.job_states({latest[i][0] for i in waiting if i in latest})
            for cid, cell in list(waiting.items()):
                job = latest.get(cid, (None,))[0]
                state = states.get(job)
                if cell.done:
                    del waiting[cid]
                elif state in records.TERMINAL:
                    time.sleep(0.5)  # the marker is written before the job ends: look once more
                    if not cell.done:
                        error = (cell.path("FAILED").read_text().splitlines()[0] if cell.failed else f"job {job} {state}"
                                 + (f": {why}" if (why := records.job_error(self.params["submitit_folder"], job)) else ""))
                        failed.append((cell, error))
                    del waiting[cid]
            if waiting:
                time.sleep(POLL_S)
        return failed

    def launch(self, job_overrides, initial_job_idx):
        raise NotImplementedError("the harness sweeper submits cells with submit_cells(); run sweeps with -m")
