"""The `tunegraph` command line.

    tunegraph example-data [--if-empty]   write the stdlib-docs example corpus into landing/
    tunegraph run [--select A,B] [--full] [--set KEY=VALUE]
                                          what Dagster reports stale, and what follows it, behind passed gates
    tunegraph report [--json]             the latest state
    tunegraph lineage PATH                model versions trained on each content version of a landing file
    tunegraph compare A B [--json]        what changed between two model versions (or aliases)
    tunegraph leaderboard [--json]        every prompt variant and trained model on one table, held-out
    tunegraph chat [--model M] [--prompt P] [QUESTION]
                                          answer with a registered version (champion by default) or the
                                          base model, through a registered prompt (NAME, NAME/3, @best-base)
    tunegraph push REPO [--model M]       upload a registered version, its card and GGUF files to the hub
    tunegraph ui                          Dagster UI + daemon and MLflow UI on 127.0.0.1

Every command takes --config PATH (default $TUNEGRAPH_CONFIG or configs/default.yaml); state lives
in $TUNEGRAPH_HOME (default ./data).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from resources.settings import REPO_ROOT, Paths, default_config_path, default_home


def configure_environment(home: Path, config: Path) -> None:
    """Point Dagster at the repository's dagster.yaml, whose storage follows $TUNEGRAPH_HOME."""
    os.environ["TUNEGRAPH_HOME"] = str(home)
    os.environ["TUNEGRAPH_CONFIG"] = str(config)
    os.environ["DAGSTER_HOME"] = str(REPO_ROOT)  # so any working directory finds dagster.yaml
    (home / "dagster" / "logs").mkdir(parents=True, exist_ok=True)


def cmd_example_data(args: argparse.Namespace, paths: Paths) -> int:
    from stages.example_corpus import stdlib_records, write_shards

    existing = [p for p in paths.landing.rglob("*") if p.is_file()] if paths.landing.is_dir() else []
    if existing and args.if_empty:
        print(f"landing folder already has {len(existing)} files; leaving it as it is")
        return 0
    records, skipped = stdlib_records()
    written = write_shards(records, paths.landing, args.shards)
    print(f"wrote {len(records)} stdlib documentation records to {len(written)} shards in {paths.landing}")
    if skipped:
        print(f"modules not importable here (skipped): {', '.join(skipped)}")
    return 0


def cmd_run(args: argparse.Namespace, paths: Paths) -> int:
    import dagster as dg

    from pipelines.report import build_report, format_summary
    from pipelines.runner import PipelineError, Runner
    from resources.settings import TunegraphSettings
    from stages.config import parse_overrides

    overrides = parse_overrides(args.set or [])
    settings = TunegraphSettings(home=str(paths.home), config_path=str(args.config), overrides=overrides)
    settings.config()  # fail on a bad config or override before anything runs
    select = [s.strip() for s in args.select.split(",")] if args.select else None
    with dg.DagsterInstance.get() as instance:
        try:
            record = Runner(settings, instance).run(select=select, full=args.full)
        except PipelineError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(format_summary(build_report(instance)))
    for check in record.get("failed_checks", []):
        print(f"check failed: {check} (see its metadata in the Dagster UI)", file=sys.stderr)
    print(
        "\nDagster UI and MLflow UI: make ui (http://127.0.0.1:3000, http://127.0.0.1:5000); report: tunegraph report --json"
    )
    return 0 if record["status"] in ("success", "up_to_date") else 1


def cmd_report(args: argparse.Namespace, paths: Paths) -> int:
    import dagster as dg

    from pipelines.report import build_report, format_summary

    with dg.DagsterInstance.get() as instance:
        report = build_report(instance)
    print(json.dumps(report, indent=2, default=str) if args.json else format_summary(report))
    return 0


def _registry(args: argparse.Namespace, paths: Paths) -> tuple:  # noqa: ANN001
    from resources.tracking import MlflowTracking
    from stages.config import load_config

    return MlflowTracking(home=str(paths.home)).client(), load_config(args.config).tracking.registered_model


def cmd_lineage(args: argparse.Namespace, paths: Paths) -> int:
    from pipelines.lineage import lineage_of_file

    client, name = _registry(args, paths)
    rows = lineage_of_file(client, name, args.path)
    if not rows:
        print(f"no registered version of {name} was trained on {args.path}")
        return 1
    print(f"{'version':>8}  {'aliases':<20} {'content hash':<18} {'train records':>13}")
    for r in rows:
        print(f"{r['version']:>8}  {r['aliases']:<20} {r['content_hash']:<18} {r['train_records']:>13}")
    return 0


def cmd_compare(args: argparse.Namespace, paths: Paths) -> int:
    from pipelines.lineage import compare

    client, name = _registry(args, paths)
    result, markdown = compare(client, name, args.a, args.b)
    print(json.dumps(result, indent=2, default=str) if args.json else markdown)
    return 0


def cmd_chat(args: argparse.Namespace, paths: Paths) -> int:
    from pipelines.model_commands import chat

    return chat(paths, args.config, args.model, args.question, args.system, args.prompt)


def cmd_leaderboard(args: argparse.Namespace, paths: Paths) -> int:
    import dagster as dg

    from pipelines.report import summary
    from stages.leaderboard import format_leaderboard

    with dg.DagsterInstance.get() as instance:
        evaluation = summary(instance, "model_evaluation")
    if not evaluation.get("leaderboard"):
        print("no leaderboard yet: run `tunegraph run` (model_evaluation builds it)", file=sys.stderr)
        return 1
    if args.json:
        keys = ("leaderboard", "best_prompts", "prompt_search", "primary_metric")
        print(json.dumps({k: evaluation.get(k) for k in keys}, indent=2, default=str))
    else:
        print(format_leaderboard(evaluation))
    return 0


def cmd_push(args: argparse.Namespace, paths: Paths) -> int:
    from pipelines.model_commands import push

    return push(paths, args.config, args.model, args.repo, args.private, args.dry_run)


def cmd_ui(args: argparse.Namespace, paths: Paths) -> int:
    from resources.tracking import MlflowTracking
    from stages.processes import stop_groups

    uri = MlflowTracking(home=str(paths.home)).uri()
    artifacts = (paths.mlflow / "artifacts").as_uri()
    bin_dir = Path(sys.executable).parent
    dagster = [str(bin_dir / "dagster"), "dev", "-w", str(REPO_ROOT / "workspace.yaml"),
               "-h", "127.0.0.1", "-p", str(args.dagster_port)]  # fmt: skip
    mlflow = [str(bin_dir / "mlflow"), "ui", "--backend-store-uri", uri, "--default-artifact-root", artifacts,
              "--host", "127.0.0.1", "--port", str(args.mlflow_port)]  # fmt: skip
    # Each server in a process group of its own, so stopping one stops all its children too.
    procs = [
        subprocess.Popen(dagster, cwd=paths.home / "dagster", start_new_session=True),  # its logs stay there
        subprocess.Popen(mlflow, start_new_session=True),
    ]
    print(f"Dagster: http://127.0.0.1:{args.dagster_port}   MLflow: http://127.0.0.1:{args.mlflow_port} "
          "(Model training -> the experiment's Runs)   Ctrl-C stops both", flush=True)  # fmt: skip
    signal.signal(signal.SIGTERM, lambda *_: _raise_interrupt())
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print("a server exited; stopping the other", file=sys.stderr)
    except KeyboardInterrupt:
        print("stopping the servers", file=sys.stderr)
    finally:
        stop_groups(procs)  # within ~5 s, children included
    return 0


def _raise_interrupt() -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunegraph", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--config", type=Path, default=None, help="pipeline YAML (default configs/default.yaml)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("example-data", help="write the example corpus into the landing folder")
    p.add_argument("--if-empty", action="store_true", help="do nothing if the landing folder has files")
    p.add_argument("--shards", type=int, default=8)
    p = sub.add_parser("run", help="materialise what is new or stale")
    p.add_argument("--select", help="comma-separated asset names: only those are materialised (if stale)")
    p.add_argument(
        "--full", action="store_true", help="redo the selected assets (all by default) even if up to date"
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key for this run, e.g. --set training.max_steps=10 (repeatable)")  # fmt: skip
    p = sub.add_parser("report", help="print the latest state")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser(
        "lineage", help="which model versions were trained on which versions of a landing file"
    )
    p.add_argument("path", help="landing file path relative to landing/, e.g. stdlib-03.jsonl")
    p = sub.add_parser("compare", help="what changed between two model versions (numbers or aliases)")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("chat", help="answer with a registered version: its chat template and saved decoding")
    p.add_argument("question", nargs="?", help="one question; without it, an interactive session")
    p.add_argument("--model", default="champion",
                   help="an alias or version number (default champion), or 'base' for the base model")  # fmt: skip
    p.add_argument("--system", help="a system message before the conversation")
    p.add_argument(
        "--prompt", help="a registered prompt variant: NAME, NAME/VERSION, NAME@ALIAS or @best-base"
    )
    p = sub.add_parser("leaderboard", help="every prompt variant and trained model, held-out, ranked")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("push", help="upload a registered version (weights, tokenizer, card, GGUF) to the hub")
    p.add_argument("repo", help="hub repository id, e.g. your-name/stdlib-docs-smollm2")
    p.add_argument("--model", default="champion", help="an alias or version number (default champion)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--dry-run", action="store_true", help="fill the upload folder and stop")
    p = sub.add_parser("ui", help="start the Dagster and MLflow UIs on loopback")
    p.add_argument("--dagster-port", type=int, default=3000)
    p.add_argument("--mlflow-port", type=int, default=5000)
    for name in sub.choices:
        sub.choices[name].add_argument("--config", type=Path, default=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    from stages.config import ConfigError

    args.config = (args.config or default_config_path()).resolve()
    home = default_home()
    configure_environment(home, args.config)
    handlers = {
        "example-data": cmd_example_data,
        "run": cmd_run,
        "report": cmd_report,
        "lineage": cmd_lineage,
        "compare": cmd_compare,
        "chat": cmd_chat,
        "leaderboard": cmd_leaderboard,
        "push": cmd_push,
        "ui": cmd_ui,
    }
    try:
        return handlers[args.command](args, Paths(home))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
