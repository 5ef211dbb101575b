"""Tuning with Optuna: a sweep file with a `tune:` block runs workers that share one study.

- spec.py: the block, parsed and checked before anything starts;
- study.py: study identity, storage (a journal file by default), sampler, the janitor;
- worker.py: one worker's ask / run the cell / tell loop;
- launch.py: `python -m harness -m sweep=tune_*` starts the workers and reports the study."""
