"""Benchmarks (`python -m harness.bench`): per-step cost of every method through the harness's
own loop, the harness against a hand-written loop, bilevel against its FLOP-count theory,
evaluation throughput, per-cell overhead, and an SD 2.1-scale GPU mode.

    measure.py          loops in turns, repeats, peak memory, FLOP counts, the machine
    steps.py            a method's stage and the hand-written loop, advanced and timed in turns
    plain_loop.py       the distillation step written without harness code
    training.py         the training section: variants, ratios, whole-method cost
    evaluation.py       generation, feature extraction and metric throughput
    cell_overhead.py    what a cell costs besides training and evaluation
    gpu.py              SD 2.1-base architecture at random weights, MFU
    report.py           Markdown tables of the figures
"""
