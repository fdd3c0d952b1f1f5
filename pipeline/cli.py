"""python -m pipeline COMMAND: the CLI contract of docs/DESIGN.md.

Exit codes: 0 success, 1 a gate/smoke/promotion check said no, 2 bad usage,
params or data, 3 the infrastructure failed. Errors are one line on stderr,
with any credentials redacted; --debug adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from api.release.redact import redact, redact_logging
from api.settings import apply_mlflow_http_defaults
from pipeline.core import interrupts
from pipeline.core.errors import PipelineError
from pipeline.failures import classify

if TYPE_CHECKING:  # loaded per command (dispatch), not at import
    from pipeline.core.config import Params


@dataclass(frozen=True)
class Command:
    """One command of the CLI: its help, the stage module that runs it and how, and what it needs first."""

    name: str
    help: str
    stage: str  # the module of pipeline.stages that runs it
    call: Callable[[ModuleType, Params | None, argparse.Namespace], str | None]  # (module, params, args) -> stdout
    arguments: Callable[[argparse.ArgumentParser], object] = lambda _: None  # its own options
    loads_models: bool = False  # loads a logged model through skops (see dispatch)
    takes_params: bool = True  # False: reads no params file (it runs where there may be none)


def _make_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="overwrite an existing file")


def _gate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-id", required=True)
    p.add_argument(
        "--base-params", metavar="FILE", help="list every gate threshold this params file loosens or tightens vs FILE"
    )


def _run_id_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-id", required=True)


def _smoke_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--base-url", help="a running API")
    target.add_argument("--image", metavar="TAG", help="start a container of this image, pinned to the version")


def _image_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tag")
    p.add_argument("--base-image", help="default: python:3.11-slim-bookworm, or a local Debian base offline")


def _publish_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", required=True)
    p.add_argument("--image", required=True, metavar="TAG", help="the local image `smoke --image` tested")
    p.add_argument(
        "--repository", help="HOST/PATH (default: IMAGE_REPOSITORY, else ghcr.io/OWNER/REPO in GitHub Actions)"
    )


def _tracking_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default="build/mlflow-server", help="where the ephemeral server keeps its data")
    p.add_argument("--stop", action="store_true", help="stop the ephemeral server started here")
    p.add_argument("--ephemeral", action="store_true", help="always start an ephemeral server (pull request checks)")


def _pr_comment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--file", default="reports/gate.md")


def _version_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", required=True)


def _rollback_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--to", metavar="V", help="a version (empty: the previous good version)")
    p.add_argument("--reason", required=True)
    p.add_argument(
        "--if-serving",
        metavar="V",
        help="only while production still serves V; otherwise exit 0 saying it already moved (alert-driven rollbacks)",
    )


def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, metavar="FILE", help="CSV, or Parquet (.parquet, .pq)")
    p.add_argument("--output", required=True, metavar="PATH")
    p.add_argument(
        "--format", dest="output_format", metavar="FORMAT", help="csv or parquet (default: by the output's suffix)"
    )
    p.add_argument("--engine", default="local", metavar="ENGINE", help="local (default) or spark")
    p.add_argument("--master", metavar="URL", help="Spark master for --engine spark (default: local[*])")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", metavar="V")
    which.add_argument("--alias", metavar="A", help="default: registry.production_alias")


def _api_urls_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--api-url", action="append", default=[], metavar="URL", help="a replica to read /metrics from (repeatable)"
    )


def _rollout_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", required=True)
    _api_urls_args(p)


def _keygen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/release.key and DIR/release.pub")


def _features_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("build", "apply", "materialize"), help="build | apply | materialize")
    p.add_argument("--config", metavar="YAML", help="a feature_store.yaml other than the repo's (the team's)")
    p.add_argument("--full", action="store_true", help="materialize: everything, not only what is new")
    p.add_argument("--end", metavar="ISO", help="materialize: up to this time (default: now)")
    p.add_argument("--snapshot", metavar="ISO", help="build: when the features were observed (default: a day ago)")
    p.add_argument("--history", action="store_true", help="build: add an older snapshot per customer")


def _outcomes_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--labels",
        required=True,
        metavar="FILE",
        help="CSV or Parquet: prediction_id, or entity_id and observed_at; and outcome",
    )


def _since_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", metavar="T", help="only predictions made at or after T (ISO 8601; no zone: UTC)")


def _quality_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", metavar="V", help="judge only this version (default: every logged version)")
    _since_args(p)


def _training_set_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="PATH", help="the CSV to write (shaped like data.path)")
    _since_args(p)


def _relay_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9095, help="port (default 9095; 0: a free one)")


# Every command, in the order `--help` lists them.
COMMANDS: tuple[Command, ...] = (
    Command("run", "the whole flow: train, gate, register, smoke, promote", "flow",
            lambda m, p, _: m.run_all(p), loads_models=True),
    Command("make-data", "write the generated churn data set to data.path (if missing)", "training",
            lambda m, p, a: str(m.make_data(p, a.force)), _make_data_args),
    Command("train", "fit and log a run; prints the run id", "training",
            lambda m, p, _: m.train_stage(p), loads_models=True),
    Command("gate", "evaluate gates for a run; writes reports/gate.{json,md} and reports/model_card.md", "gate",
            lambda m, p, a: _none(m.gate_stage(p, a.run_id, base_params=_base_params(a))), _gate_args,
            loads_models=True),
    Command("register", "register a gated run and set the candidate alias; prints the version", "release",
            lambda m, p, a: m.register_stage(p, a.run_id), _run_id_args, loads_models=True),
    Command("smoke", "smoke-test a served version (default: the candidate)", "smoke",
            lambda m, p, a: _none(m.smoke_stage(p, a.version, base_url=a.base_url, image=a.image)), _smoke_args,
            loads_models=True),
    Command("image", "build the API image (docker, else podman); prints the tag", "images",
            lambda m, _, a: m.image_stage(a.tag, a.base_image), _image_args),
    Command("publish", "push the image smoke tested for a version, tagged with the git sha; prints REF@DIGEST",
            "images", lambda m, p, a: m.publish_stage(p, a.version, a.image, a.repository), _publish_args,
            loads_models=True),
    Command("tracking-server", "use MLFLOW_TRACKING_URI if set, else start an ephemeral local MLflow server", "admin",
            lambda m, p, a: m.tracking_server_stage(p, a.dir, a.stop, a.ephemeral), _tracking_server_args),
    Command("pr-comment", "post or update the gate report as the pull request's one comment", "gate",
            lambda m, _, a: m.pr_comment_stage(a.file), _pr_comment_args),
    Command("promote", "move production to a version (compare-and-set)", "release",
            lambda m, p, a: m.promote_stage(p, a.version), _version_args, loads_models=True),
    Command("rollback", "move production back to the previous good version, or --to V", "release",
            lambda m, p, a: m.rollback_stage(p, a.reason, a.to or None, a.if_serving or None), _rollback_args,
            loads_models=True),
    Command("status", "versions, aliases, gate and smoke results, history", "admin",
            lambda m, p, a: m.status_stage(p, a.json), _status_args),
    Command("score", "batch-score a CSV or Parquet file with a released version; bad rows go to OUTPUT.rejects.EXT",
            "scoring",
            lambda m, p, a: m.score_stage(p, a.input, a.output, a.version, a.alias, a.output_format, a.engine,
                                          a.master),
            _score_args, loads_models=True),
    Command("rollout", "shadow, then canary steps judged on live metrics, then promote (exit 1 on abort)", "rollout",
            lambda m, p, a: m.rollout_stage(p, a.version, a.api_url), _rollout_args, loads_models=True),
    Command("watch", "the bake after a promotion: roll back when a bake rule fails (exit 1)", "rollout",
            lambda m, p, a: m.watch_stage(p, a.api_url), _api_urls_args, loads_models=True),
    Command("keygen", "write an Ed25519 key pair for signed release verdicts", "admin",
            lambda m, _, a: m.keygen_stage(a.out), _keygen_args, takes_params=False),
    Command("features", "the feature store: build its data, apply its definitions, materialize (incremental)",
            "features",
            lambda m, p, a: m.features_stage(p, a.action, config=a.config, full=a.full, end=a.end,
                                             snapshot=a.snapshot, history=a.history),
            _features_args),
    Command("outcomes", "record a labels file in the prediction log (once), then join it and count what was used",
            "outcomes", lambda m, p, a: m.outcomes_stage(p, a.labels), _outcomes_args),
    Command("quality", "live quality per version from the labelled log; signed verdicts (exit 1 when one fails)",
            "quality", lambda m, p, a: m.quality_stage(p, a.version, a.since), _quality_args),
    Command("training-set", "write data.path plus the labelled prediction log as one training CSV", "outcomes",
            lambda m, p, a: m.training_set_stage(p, a.out, a.since), _training_set_args),
    Command("alert-relay",
            "relay Alertmanager's action=rollback/retrain alerts (POST /alert) to GitHub as repository_dispatch",
            "relay", lambda m, _, a: m.alert_relay_stage(a.host, a.port), _relay_args, takes_params=False),
)  # fmt: skip
BY_NAME = {command.name: command for command in COMMANDS}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: every command of COMMANDS, each with --params, --set and --debug."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    common.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a params key, e.g. --set gates.metrics.f1.min=0.9 (repeatable)",
    )
    common.add_argument("--debug", action="store_true", help="print the traceback of an error")
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="Gated training and deployment.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.arguments(sub.add_parser(command.name, parents=[common], help=command.help, description=command.help))
    return parser


def main(argv: list[str] | None = None, *, process_ends: bool = False) -> int:
    """Run the command `argv` names (default: sys.argv); returns the exit code.

    `process_ends`: `python -m pipeline`, which exits with the code; a signal after the command is done is ignored.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    apply_mlflow_http_defaults()
    try:
        # Libraries print (MLflow's "View run" links); stdout carries only our answer.
        # SIGINT/SIGTERM: exit 3 with one line, an alias move and its ledger entry never split.
        with contextlib.redirect_stdout(sys.stderr), interrupts.handled(then_block=process_ends):
            answer = dispatch(args)
    except Exception as exc:
        exc = interrupts.within(exc) or exc  # a signal is the cause, whatever library it interrupted
        code, message = (exc.exit_code, str(exc)) if isinstance(exc, PipelineError) else classify(exc)
        if args.debug:
            print(redact("".join(traceback.format_exception(exc))), file=sys.stderr)
        print(f"error: {redact(message)}", file=sys.stderr)
        return code
    if answer is not None:
        print(redact(answer))
    return 0


def dispatch(args: argparse.Namespace) -> str | None:
    """Run one command; returns what it prints on stdout."""
    from pipeline.core.params_file import load_params

    command = BY_NAME[args.command]
    with _without_pyspark(args.command == "score" and args.engine != "spark"):
        if command.loads_models and args.command != "score":  # score: once it has started reading its input
            # skops finds each scipy ufunc's module by scanning sys.modules when it is imported:
            # before MLflow's thousands of modules are loaded, a command starts ~0.2-0.3 s sooner (measured on gate).
            import skops.io  # noqa: F401
        # Imported per command: `--help` loads no MLflow, `status` no scikit-learn, nothing loads matplotlib but
        # training.
        module = importlib.import_module(f"pipeline.stages.{command.stage}")
        redact_logging("mlflow")  # MLflow's handlers exist once it is imported
        params = load_params(args.params, args.overrides) if command.takes_params else None
        return command.call(module, params, args)


@contextlib.contextmanager
def _without_pyspark(block: bool) -> Iterator[None]:
    """While `block`: pyspark, when installed and not yet imported, cannot be imported (ImportError).

    MLflow's schema module imports pyspark whenever it is installed (~0.1 s of a
    start-up) only to recognise Spark values; the local scoring engine has none.
    Afterwards pyspark imports again (a Spark score in the same process works:
    it imports pyspark itself), but MLflow modules imported meanwhile keep their
    HAS_PYSPARK flags False for the life of the process.
    """
    if not block or "pyspark" in sys.modules:
        yield
        return
    sys.modules["pyspark"] = None  # type: ignore[assignment]  # Python's own way to make an import fail
    try:
        yield
    finally:
        if sys.modules.get("pyspark", False) is None:
            del sys.modules["pyspark"]


def _base_params(args: argparse.Namespace) -> Params | None:
    """The gate's --base-params, loaded like params.yaml (exit 2 naming the file when it is bad)."""
    from pipeline.core.errors import ConfigError
    from pipeline.core.params_file import load_params

    if not args.base_params:
        return None
    try:
        return load_params(args.base_params)
    except ConfigError as exc:
        raise ConfigError(f"--base-params {args.base_params}: {exc}") from None


def _none(_: object) -> None:
    """For stages whose result the CLI does not print (their report goes to the summary and stderr)."""
    return None
