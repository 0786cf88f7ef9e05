"""tgllava.eval: VLMEvalKit-compatible benchmark evaluation.

Reads VLMEvalKit's dataset TSVs, builds the prompts its LLaVA wrapper
builds, extracts answers and computes scores by its rules, and writes
files that line up with its own - with batched inference, reuse of the
vision features of repeated pictures, resume after a kill and sharding
over processes, GPUs and nodes.

    import tgllava, tgllava.eval
    model = tgllava.load("path/to/tg-llava-7b", device="cuda")
    result = tgllava.eval.run(model, "MMBench_DEV_EN", batch_size=16)
    result["headline"]                     # {'Overall': 0.662}, as in the _acc.csv
    tgllava.eval.score("MME", "work_dir/m/m_MME.xlsx")   # re-score any file
    tgllava.eval.merge("./work_dir", "m", "MMBench_DEV_EN")  # join shards

Modules: benchmarks (the table of dataset families: name rule, kind,
prompt, answer budget, scoring), data (dataset files, images), prompts,
extract (answer extraction), metrics (scores), judge (optional LLM judge),
scoring (score files), runner (run, merge, resume), settings (what a
checkpoint records, so a resume never mixes answers), shard (launchers),
tables (TSV/XLSX/JSON without pandas), protocol (the model interface),
cli (`tgllava eval`).
"""

from .cli import add_subparser, main, run_cli
from .data import Dataset, load_dataset
from .errors import DatasetError, EvalError, JudgeError, ShardError
from .protocol import EvalModel
from .runner import merge, run
from .scoring import format_summary, score

__all__ = [
    "run", "score", "merge", "load_dataset", "Dataset", "EvalModel", "format_summary",
    "add_subparser", "run_cli", "main",
    "EvalError", "DatasetError", "JudgeError", "ShardError",
]
