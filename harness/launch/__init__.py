"""Where cells run beyond this process: SLURM submission (slurm.py), the job a cell becomes
(job.py), the records that tie cells to scheduler jobs (records.py), and the frozen copy of
the code a sweep's jobs run (snapshot.py)."""
