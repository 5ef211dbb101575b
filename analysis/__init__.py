"""Tables, figures and notebooks from a sweep's MLflow runs (records.py: the runs as records;
tables.py, figures.py: the paper's outputs; notebooks.py: executes the notebooks; ui.py: the
MLflow UI on a run's store)."""
