"""The `tgllava eval` command line.

tgllava/cli.py registers the subcommand with `add_subparser(subparsers)`
and calls `run_cli(args)`; `main(argv)` runs it on its own
(``python -m tgllava.eval ...``).  Three modes:

    tgllava eval --model DIR --data NAME_OR_TSV [--data ...] [options]   # run and score
    tgllava eval --data NAME_OR_TSV --predictions FILE [--judge ...]     # score a file
    tgllava eval --merge --model-name NAME --data NAME_OR_TSV            # join shards

Under torchrun, srun or mpirun each process evaluates its shard on
``cuda:<local rank>`` (with --device cuda) and the last one to finish
writes the merged files; ``--shard i/n`` does the same by hand.

Exit status: 0 when every row was answered, 1 when some rows failed (bad
rows: each is listed with its reason, counted in the summary, and retried
by the next run), 2 on an error (nothing is scored).
"""

import argparse
import os
import sys

from tgllava import _C
from tgllava.errors import TgError

from .prompts import PROMPT_STYLES
from .tables import PRED_FORMATS


def add_arguments(p):
    p.add_argument("--model", help="model folder (TG-LLaVA or LLaVA-1.5 checkpoint)")
    p.add_argument("--clip", default=None, help="CLIP folder for the TG text tower, if not found next to the model")
    p.add_argument("--data", action="append", default=[], metavar="NAME_OR_TSV",
                   help="dataset name under $LMUData (default ~/LMUData) or a TSV path; repeatable")
    p.add_argument("--predictions", default=None, metavar="FILE",
                   help="score this predictions file (ours or VLMEvalKit's xlsx/tsv/json) instead of running")
    p.add_argument("--merge", action="store_true", help="merge finished shards into the final files and score")
    p.add_argument("--work-dir", default=None, help="output folder (default ./work_dir; with --predictions: "
                   "next to the file)")
    p.add_argument("--model-name", default=None, help="name used in output paths (default: the model folder's name)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="answers generated together (continuous batching: a finished one's slot goes to the next "
                        "row at once); also how many answers are checkpointed at a time (default 8)")
    p.add_argument("--limit", type=int, default=None, help="only the first N rows of each dataset")
    p.add_argument("--judge", default="exact_matching",
                   help="exact_matching (default) or the URL of an OpenAI-compatible endpoint")
    p.add_argument("--judge-model", default=None, help="model name for a URL judge (default gpt-4o-mini)")
    p.add_argument("--prompt-style", choices=PROMPT_STYLES, default="llava")
    p.add_argument("--conv-mode", default=None, help="chat template for --prompt-style llava")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default=None, choices=_C.DTYPES,
                   help="weight storage (int8/int4: cpu only; default: the rule of tgllava.load)")
    p.add_argument("--shard", default=None, metavar="I/N", help="run part I (from 0) of N")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--no-fom", action="store_true", help="switch TG-FOM off")
    p.add_argument("--no-dp", action="store_true", help="switch TG-DP off")
    p.add_argument("--pred-format", choices=PRED_FORMATS, default=None,
                   help="predictions file format (default $PRED_FORMAT or tsv)")
    p.add_argument("--no-progress", action="store_true")
    return p


def add_subparser(subparsers):
    """Register `eval` on an argparse subparsers object; returns the parser."""
    p = subparsers.add_parser("eval", help="evaluate on VLMEvalKit benchmarks, or score predictions",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run_cli)
    return p


def _load_model(args):
    import tgllava
    from .shard import detect_shard, resolve_device

    info = detect_shard(args.shard)
    kwargs = {"clip_dir": args.clip}
    device = resolve_device(args.device, info.local_rank) if args.device else None
    if device is not None:
        kwargs["device"] = device
    if args.dtype is not None:
        kwargs["dtype"] = args.dtype
    return tgllava.load(args.model, **kwargs)


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
    from .runner import merge, run
    from .scoring import format_summary, score

    try:
        if not args.data:
            raise ValueError("give at least one --data NAME_OR_TSV")
        if args.predictions:
            if len(args.data) != 1:
                raise ValueError("--predictions scores one dataset: give exactly one --data")
            results = [score(args.data[0], args.predictions, judge=args.judge, work_dir=args.work_dir,
                             judge_model=args.judge_model)]
        elif args.merge:
            name = args.model_name or (os.path.basename(os.path.normpath(args.model)) if args.model else None)
            if not name:
                raise ValueError("--merge needs --model-name (or --model)")
            results = [merge(args.work_dir or "./work_dir", name, d, judge=args.judge, limit=args.limit,
                             pred_format=args.pred_format, judge_model=args.judge_model) for d in args.data]
        else:
            if not args.model:
                raise ValueError("give --model DIR (or --predictions FILE to score a file)")
            _check_run_arguments(args)  # before the (slow) model load
            model = _load_model(args)
            name = args.model_name or os.path.basename(os.path.normpath(args.model))
            results = []
            for d in args.data:
                results.append(run(
                    model, d, work_dir=args.work_dir or "./work_dir", model_name=name,
                    batch_size=args.batch_size, limit=args.limit, judge=args.judge,
                    prompt_style=args.prompt_style, conv_mode=args.conv_mode, shard=args.shard,
                    progress=not args.no_progress, use_fom=not args.no_fom, use_dp=not args.no_dp,
                    max_new_tokens=args.max_new_tokens, pred_format=args.pred_format,
                    judge_model=args.judge_model))
    except (TgError, ValueError, OSError) as e:
        print(f"tgllava eval: error: {e}", file=sys.stderr)
        return 2
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
    """Stand-alone entry: python -m tgllava.eval [args]."""
    p = add_arguments(argparse.ArgumentParser(prog="tgllava eval", description=__doc__,
                                              formatter_class=argparse.RawDescriptionHelpFormatter))
    return run_cli(p.parse_args(argv))
