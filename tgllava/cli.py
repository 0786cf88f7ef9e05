"""The `tgllava` command line (also `python -m tgllava`).

`build_parser()` makes the parser: generate, info and demo are defined here; eval, viz and serve
register themselves (tgllava.eval.cli, tgllava.viz, tgllava.serve).  What commands share is here:
`command_parser` (a --help with example lines), `add_options` (the options of SHARED_OPTIONS),
`load_model` and `report_error`: every failure is one line on stderr with exit status 1, in
command-line terms (`_in_cli_terms`: the loader's `clip_dir=...` is `--clip DIR` here); `--debug`
shows the traceback instead.  DESCRIPTION and EPILOG are what `tgllava --help` says, the exit
statuses `main()` keeps included.
"""

import argparse
import json
import os
import sys
import textwrap

from . import _C

DESCRIPTION = """\
Run TG-LLaVA and LLaVA-1.5 checkpoints: answer questions about pictures, describe a
checkpoint, evaluate on VLMEvalKit benchmarks, draw attention maps, serve an OpenAI-compatible
API.  `tgllava COMMAND --help` explains a command and its options.  A failure prints one line
on stderr and ends with exit status 1 (--debug shows the traceback instead)."""

EPILOG = """\
first steps:
  tgllava demo --keep demo        a tiny random-weight TG-LLaVA, kept in ./demo; it prints what to try next
  tgllava info demo/llm           what a checkpoint folder holds and whether it loads

exit status:
  0    success (also for --help and --version)
  1    an error or bad arguments; for eval also rows that could not be answered (listed on stderr)
  130  interrupted with Ctrl-C (serve, once it listens, stops cleanly on Ctrl-C and exits 0)"""


def command_parser(sub, name, summary, description, examples, func):
    """A subcommand parser on argparse subparsers `sub` that runs `func(args)`: its one-line `summary` (in
    `tgllava --help`), `description` (one paragraph, wrapped) and `examples`, command lines (the epilog)."""
    epilog = "examples:\n" + "\n".join("  " + line for line in examples)
    p = sub.add_parser(name, help=summary, description=textwrap.fill(description, 90), epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    return p


# the options several commands share: name -> add_argument keywords
SHARED_OPTIONS = {
    "--model": dict(required=True, metavar="DIR",
                    help="LLM checkpoint folder (official TG-LLaVA / LLaVA-1.5 layout, or llava-hf)"),
    "--clip": dict(metavar="DIR", default=None, help="CLIP tower folder (default: mm_vision_tower of the "
                   "config, locally or in the HF cache)"),
    "--device": dict(default="cpu", help="cpu, cuda or cuda:N (default cpu)"),
    "--dtype": dict(default=None, choices=_C.DTYPES,
                    help="weight storage (int8/int4: cpu only; default: float32 on cpu up to 1.5 B "
                         "parameters, the checkpoint's 16-bit dtype up to 4 B, int8 above; bfloat16 on "
                         "cuda)"),
    "--conv-mode": dict(default=None, metavar="NAME",
                        help="chat template: vicuna_v1, llava_v1, llava_v0, llama_3, qwen_2, plain "
                             "(default: chosen from the model config)"),
    "--no-fom": dict(action="store_true", help="switch TG-FOM off"),
    "--no-dp": dict(action="store_true", help="switch TG-DP off"),
    "--stream": dict(action="store_true", help="print the answer as it is generated"),
}


def add_options(p, *names, **changes):
    """Add the shared options `names` to parser p, the keywords `changes` (e.g. help=...) replacing theirs."""
    for name in names:
        p.add_argument(name, **dict(SHARED_OPTIONS[name], **changes))


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line on stderr and exit status 1."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(1)


def _add_generate(sub):
    p = command_parser(
        sub, "generate", "answer a question about a picture",
        "Answer one question about one picture with a TG-LLaVA or LLaVA-1.5 checkpoint; the answer goes to stdout.",
        ["tgllava generate --model demo/llm --clip demo/clip --image demo/image.png --question 'What is in this image?'",
         "tgllava generate --model LLM_DIR --image photo.jpg --question 'Describe it.' --stream --no-dp"],
        _run_generate)
    add_options(p, "--model", "--clip")
    p.add_argument("--image", default=None, metavar="PATH", help="picture file (without it: a text-only question)")
    p.add_argument("--question", required=True, metavar="TEXT", help="the question (without <image>)")
    add_options(p, "--device", "--dtype")
    p.add_argument("--max-new-tokens", type=int, default=512, metavar="N", help="answer length limit (default 512)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default 1.0)")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    add_options(p, "--conv-mode", "--no-fom", "--no-dp", "--stream")
    p.add_argument("--timings", action="store_true", help="print per-stage timings on stderr")


def _add_info(sub):
    p = command_parser(
        sub, "info", "describe a checkpoint folder (no weights are read)",
        "Architecture, parameter counts, TG modules, the CLIP tower folders and whether the checkpoint passes the "
        "checks loading makes, read from config.json and tensor headers only.",
        ["tgllava info demo/llm",
         "tgllava info LLM_DIR --dtype int4        (how int4 storage would hold it)"], _run_info)
    p.add_argument("folder", metavar="DIR", help="LLM, llava-hf or CLIP checkpoint folder")
    add_options(p, "--clip",
                help="CLIP tower folder, as for generate (default: the towers the LLM config names)")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    add_options(p, "--dtype", help="also show how loading with this weight storage would store the tensors")


def _add_demo(sub):
    p = command_parser(
        sub, "demo", "run a tiny random-weight TG-LLaVA end to end",
        "Build a tiny TG-LLaVA with RANDOM weights (CLIP towers, FOM, DP, LLM, tokenizers) in a temporary folder "
        "and answer a question about a synthetic picture, printing stage timings.  The answer is meaningless by "
        "design.  With --keep the checkpoint stays, for trying the other commands on it.",
        ["tgllava demo", "tgllava demo --keep demo --question 'What colour is the disc?'"], _run_demo)
    p.add_argument("--question", default="What is in this image?", metavar="TEXT",
                   help="the question about the demo picture (default 'What is in this image?')")
    p.add_argument("--max-new-tokens", type=int, default=24, metavar="N", help="answer length limit (default 24)")
    p.add_argument("--keep", default=None, metavar="DIR",
                   help="write the demo checkpoint (DIR/llm, DIR/clip, DIR/image.png) here and keep it")
    add_options(p, "--stream", "--device")
    p.add_argument("--tower", default="clip", choices=["clip", "siglip"],
                   help="the vision and text towers: CLIP (default) or SigLIP")


def build_parser():
    from . import __version__, serve, viz
    from .eval import cli as eval_cli

    parser = _Parser(prog="tgllava", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", default=False, help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    _add_generate(sub)
    _add_info(sub)
    _add_demo(sub)
    for module in (eval_cli, viz, serve):  # the commands that register themselves
        module.add_subparser(sub)
    for p in sub.choices.values():  # every command also takes --debug, after its own options
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback on errors")
    return parser


def load_model(args, dtype=None, image=None):
    """tgllava.load (it recognises every layout) of args.model and args.clip on args.device, after checking
    in command-line terms, without reading weights, the folders, the --image file `image`, args.conv_mode
    and everything chat needs (loader.preflight: configs, towers, tensor shapes, tokenizer files)."""
    import tgllava

    from .errors import CheckpointError
    from .loader import preflight

    if not os.path.isdir(args.model):
        raise CheckpointError(f"--model {args.model}: no such folder")
    if args.clip is not None and not os.path.isdir(args.clip):
        raise CheckpointError(f"--clip {args.clip}: no such folder")
    if image is not None and not os.path.isfile(image):
        raise FileNotFoundError(f"--image {image}: no such file")
    if args.conv_mode is not None:
        from .conversation import get_template
        get_template(args.conv_mode)
    preflight(args.model, args.clip)
    return tgllava.load(args.model, clip_dir=args.clip, device=args.device, dtype=dtype)


def _in_cli_terms(text):
    """The loader's advice, which names load()'s arguments, in command-line terms: options."""
    return text.replace("clip_dir=...", "--clip DIR").replace("llm_dir=...", "--model DIR")


def _run_generate(args):
    if not args.question.strip():
        raise ValueError("--question is empty: ask something")
    from .model import check_sampling
    check_sampling(args.max_new_tokens, args.temperature, args.top_p, min_new_tokens=1)  # bad values: before loading
    model = load_model(args, args.dtype, args.image)
    answer = print_answer(model, args.image, args.question, args.stream, conv_mode=args.conv_mode,
                          max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                          use_fom=not args.no_fom, use_dp=not args.no_dp, seed=args.seed)
    if args.timings:
        stages = ", ".join(f"{k} {v:.3f} s" for k, v in answer.timings.items())
        print(f"timings: {stages}; {len(answer.token_ids)} tokens ({answer.finish_reason})", file=sys.stderr)
    return 0


def print_answer(model, image, question, stream=False, prefix="", out=print, **settings):
    """chat()'s Answer to `question` about `image`, printed after `prefix`: with stream on stdout as it is
    generated, else whole through `out`."""
    from .chat import chat

    answer = chat(model, image, question, stream=stream, **settings)
    if not stream:
        out(prefix + answer.text)
        return answer
    print(prefix, end="", flush=True)
    for piece in answer:
        print(piece, end="", flush=True)
    print()
    return answer.answer


def _run_info(args):
    from .info import describe, format_info

    info = describe(args.folder, args.dtype, args.clip)
    print(json.dumps(info, indent=1, default=str) if args.json else _in_cli_terms(format_info(info)))
    return 0


def _run_demo(args):
    from . import demo

    if args.max_new_tokens < 1:
        raise ValueError("--max-new-tokens must be at least 1")
    demo.run(question=args.question, max_new_tokens=args.max_new_tokens, keep=args.keep, stream=args.stream,
             device=args.device, tower=args.tower)
    return 0


def report_error(command, e, debug=False):
    """Print exception `e` as the one-line error of `tgllava command` on stderr and return exit status 1;
    with debug, raise it again instead (the traceback)."""
    if debug:
        raise e
    msg = str(e) or type(e).__name__
    if isinstance(e, (FileNotFoundError, PermissionError)) and e.filename and e.strerror:
        msg = f"{e.filename}: {e.strerror}"
    print(f"tgllava {command}: error: {_in_cli_terms(' '.join(msg.split()))}", file=sys.stderr)
    return 1


def main(argv=None):
    """Run the command line; returns the exit status (also used by the console script)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 1
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("tgllava: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:
        return report_error(args.command, e, getattr(args, "debug", False))


if __name__ == "__main__":
    sys.exit(main())
