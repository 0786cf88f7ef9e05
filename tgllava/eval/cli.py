"""The `tgllava eval` command line.

tgllava/cli.py registers it with `add_subparser(subparsers)`, which makes
`run_cli(args)` the subcommand's function; `main(argv)` runs it on its own
(``python -m tgllava.eval ...``) through the same parser.  DESCRIPTION is
what `tgllava eval --help` says.
"""

import argparse
import os
import sys

from tgllava.errors import TgError

from .prompts import PROMPT_STYLES
from .tables import PRED_FORMATS

DESCRIPTION = """\
Run a TG-LLaVA or LLaVA-1.5 checkpoint on VLMEvalKit benchmarks and score the answers as
VLMEvalKit does, or score a predictions file made elsewhere.

examples:
  tgllava eval --model LLM_DIR --clip CLIP_DIR --data MMBench_DEV_EN --data MME --batch-size 16
  tgllava eval --data MMBench_DEV_EN --predictions work_dir/NAME/NAME_MMBench_DEV_EN.xlsx   (score a file again)
  tgllava eval --model LLM_DIR --data MME --shard 0/2     (and --shard 1/2 on another GPU or machine)
  tgllava eval --merge --model-name NAME --data MME       (join finished shards by hand)

A dataset is a VLMEvalKit TSV: give its path, or its name to read NAME.tsv from $LMUData
(default ~/LMUData).  Files go to WORK_DIR/MODEL_NAME/: the predictions MODEL_NAME_DATASET.xlsx,
as VLMEvalKit writes them (--pred-format tsv or json for another format), and next to them
VLMEvalKit's score files (*_acc.csv, *_score.csv, ...).  Answers are checkpointed as they come:
rerun the same command after a crash or a kill and it goes on where it stopped.  Under torchrun,
srun or mpirun each process evaluates its share of the rows (on cuda:LOCAL_RANK with --device
cuda) and the last one to finish writes the merged files.

The table printed at the end shows each score as the dataset's score csv holds it: multiple-choice
accuracy from 0 to 1 (0.75 = 75 %), the other accuracies in percent, MME and OCRBench in points.

exit status: 0 when every row was answered; 1 on an error or when some rows failed (a picture
that cannot be read: each one is listed on stderr with its reason, and rerunning the command
retries them).
"""


def add_subparser(subparsers):
    """Register `eval` on an argparse subparsers object; returns the parser."""
    from tgllava.cli import add_options

    p = subparsers.add_parser("eval", help="evaluate on VLMEvalKit benchmarks, or score predictions",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, "--model", required=False)
    add_options(p, "--clip")
    p.add_argument("--data", action="append", default=[], metavar="NAME_OR_TSV",
                   help="dataset: a name under $LMUData (default ~/LMUData) or a TSV path; repeat for several")
    p.add_argument("--predictions", default=None, metavar="FILE",
                   help="score this predictions file (ours or VLMEvalKit's xlsx/tsv/json) instead of running a model")
    p.add_argument("--merge", action="store_true",
                   help="join the answers of finished shards (--shard or a launcher) into the final files and score")
    p.add_argument("--work-dir", default=None, metavar="DIR", help="output folder (default ./work_dir; with "
                   "--predictions: the file's folder)")
    p.add_argument("--model-name", default=None, metavar="NAME",
                   help="name in output paths, WORK_DIR/NAME/NAME_DATASET.xlsx (default: the model folder's name)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="answers generated together (a finished one's slot goes to the next row at once) and "
                        "checkpointed at a time (default 8)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N rows of each dataset")
    p.add_argument("--judge", default="exact_matching", metavar="URL",
                   help="exact_matching (default: rules only, as VLMEvalKit without an API key) or the URL of an "
                        "OpenAI-compatible endpoint to use as VLMEvalKit's judge (MathVista, MMVet and LLaVABench "
                        "scores need one)")
    p.add_argument("--judge-model", default=None, metavar="NAME", help="model name for a URL judge "
                   "(default gpt-4o-mini)")
    p.add_argument("--prompt-style", choices=PROMPT_STYLES, default="llava",
                   help="how a row becomes a prompt: llava (default) = the checkpoint's chat template, as "
                        "LLaVA's own evaluation; vlmevalkit = the prompt of VLMEvalKit's LLaVA wrapper")
    add_options(p, "--conv-mode", help="chat template for --prompt-style llava: vicuna_v1, llava_v1, "
                "llava_v0, llama_3, qwen_2, plain (default: chosen from the model config)")
    add_options(p, "--device", "--dtype")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="evaluate part I (from 0) of N; run every part with the same --work-dir, and the last "
                        "to finish writes the merged files (default: from torchrun, srun or mpirun, else 0/1)")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="answer length limit (default: the dataset's: 128 for multiple-choice, yes/no and "
                        "short-answer sets such as TextVQA or OCRBench, 1024 for MathVista, MMVet and LLaVABench, "
                        "512 for other open questions)")
    add_options(p, "--no-fom", "--no-dp")
    p.add_argument("--pred-format", choices=PRED_FORMATS, default=None,
                   help="format of the predictions and per-row score files (default: $PRED_FORMAT, else xlsx "
                        "as VLMEvalKit)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    p.set_defaults(func=run_cli)
    return p


def _check_run_arguments(args):
    """Refuse bad --batch-size/--limit/--max-new-tokens/--shard/--pred-format and unknown --data before loading a model."""
    from .data import resolve_dataset_path
    from .runner import resolve_pred_format
    from .shard import detect_shard

    if args.batch_size is None or args.batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.limit is not None and args.limit < 0:
        raise ValueError(f"--limit must be >= 0, got {args.limit}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    for d in args.data:
        resolve_dataset_path(d)  # DatasetError when the name or file does not exist
    detect_shard(args.shard)  # ShardError for a bad --shard or launcher environment
    resolve_pred_format(args.pred_format)  # xlsx without openpyxl


def run_cli(args):
    """Carry out a parsed `tgllava eval` command; returns the exit status."""
    import tgllava
    from tgllava.cli import report_error

    from .runner import merge, run
    from .scoring import format_summary, score
    from .shard import detect_shard, resolve_device

    name = args.model_name or (os.path.basename(os.path.normpath(args.model)) if args.model else None)
    try:
        if not args.data:
            raise ValueError("give at least one --data NAME_OR_TSV")
        if args.predictions:
            if len(args.data) != 1:
                raise ValueError("--predictions scores one dataset: give exactly one --data")
            results = [score(args.data[0], args.predictions, judge=args.judge, work_dir=args.work_dir,
                             judge_model=args.judge_model)]
        elif args.merge:
            if not name:
                raise ValueError("--merge needs --model-name (or --model)")
            results = [merge(args.work_dir or "./work_dir", name, d, judge=args.judge, limit=args.limit,
                             pred_format=args.pred_format, judge_model=args.judge_model) for d in args.data]
        else:
            if not args.model:
                raise ValueError("give --model DIR (or --predictions FILE to score a file)")
            _check_run_arguments(args)  # before the (slow) model load
            device = resolve_device(args.device, detect_shard(args.shard).local_rank)
            model = tgllava.load(args.model, clip_dir=args.clip, device=device, dtype=args.dtype)
            results = [run(model, d, work_dir=args.work_dir or "./work_dir", model_name=name,
                           batch_size=args.batch_size, limit=args.limit, judge=args.judge,
                           prompt_style=args.prompt_style, conv_mode=args.conv_mode, shard=args.shard,
                           progress=not args.no_progress, use_fom=not args.no_fom, use_dp=not args.no_dp,
                           max_new_tokens=args.max_new_tokens, pred_format=args.pred_format,
                           judge_model=args.judge_model) for d in args.data]
    except (TgError, ValueError, OSError) as e:
        return report_error("eval", e, getattr(args, "debug", False))
    scored = [r for r in results if "headline" in r]
    for r in results:
        if r.get("merged") is False:
            i, n = r["shard"]
            print(f"{r['dataset']}: shard {i}/{n} done ({r['rows']} rows); the last shard to finish "
                  "writes the merged files (or run `tgllava eval --merge`)")
    if scored:
        print(format_summary(scored))
        for r in scored:
            for f in ([r["predictions"]] if r.get("predictions") else []) + r["files"]:
                print(f"wrote {f}")
    failed = [row for r in results for row in r.get("failed") or []]
    for row in failed:
        print(f"tgllava eval: failed: {row['reason']}", file=sys.stderr)  # the reason names dataset and row
    if failed:
        print(f"tgllava eval: {len(failed)} rows failed; fix them and rerun the same command to retry them",
              file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    """Stand-alone entry, python -m tgllava.eval [args]: the same as `tgllava eval [args]`."""
    from tgllava.cli import main as tgllava_main

    return tgllava_main(["eval"] + list(sys.argv[1:] if argv is None else argv))
