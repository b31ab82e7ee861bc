"""The results schema: one tidy row per (cell, checkpoint, task, split, metric).

Trainers produce the measurement columns, the flow adds the grid coordinates of the cell, the
analysis layer reads only this. Types are given as names (``"str"``, ``"int"``, ``"float"``) so
this module stays free of dataframe libraries.
"""

from __future__ import annotations

# Columns that identify the cell in the study grid.
CELL_COLUMNS: dict[str, str] = {
    "study": "str",          # study name from the spec
    "cell_id": "str",        # hash of the canonical cell config
    "modality": "str",       # "clip" | "lm"
    "bias_type": "str",      # corruptor type, "none" for the clean control
    "bias_level": "float",   # corruptor level in [0, 1] (0 = clean)
    "model": "str",          # model rung name
    "data_scale": "float",   # samples seen in training (see data_scale_kind)
    "unique_samples": "int", # size of the unique pool the samples were drawn from
    "seed": "int",
    "params": "int",         # trainable parameters of the model
}

# Columns of one measurement.
MEASURE_COLUMNS: dict[str, str] = {
    "checkpoint_step": "int",   # optimizer step of the evaluated checkpoint
    "samples_seen": "int",      # samples seen up to that checkpoint
    "flops": "float",           # training FLOPs up to that checkpoint (6·N·D style estimate)
    "task": "str",              # zeroshot | linear_probe | retrieval_i2t | retrieval_t2i | ...
    "split": "str",             # id | ood | train | leaked | clean ...
    "metric": "str",            # acc1 | recall@1 | recall@5 | loss | ...
    "value": "float",
}

RESULT_COLUMNS: dict[str, str] = {**CELL_COLUMNS, **MEASURE_COLUMNS}

# An optional column of a cell's results file: the seed of one draw of a sampled adaptation
# (few-shot's k samples per class), null for a measurement that is not a draw. A cell's value
# for such a task is the mean over its draws (``analysis.results.load_results``); the draws
# themselves stay in the file (``load_results(..., draws=True)``).
DRAW_COLUMN = "draw_seed"
