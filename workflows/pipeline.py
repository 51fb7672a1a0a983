"""The workflow end to end: data -> extract -> train -> tune (the best model is registered
as the registry's champion) -> serve (deploy the champion with Ray Serve and score a test
clip over HTTP), one MLflow parent run with a child run per stage.

Run it locally (``make demo``) or as a Ray job on a cluster::

    python -m workflows.pipeline --config workflows/configs/demo.yaml
    ray job submit --working-dir . -- python -m workflows.pipeline --config workflows/configs/demo.yaml

Idempotent: each stage writes a marker ``<output_dir>/stages/<stage>.json`` holding the
hash of the configuration it depends on and its result; a re-run skips a stage whose
marker matches, ``--force`` redoes them, ``--stages`` selects some. The ``serve`` stage is
live state, not an output: it always runs. Outputs are written aside and renamed into
place (the generated data, feature parts, model artifacts, markers), so an interrupted
run never leaves a half-written output that a re-run would trust.

On a local Ray (started by the pipeline) the service lives as long as the process:
``--keep-serving`` keeps it up until Ctrl-C. On a cluster (a Ray job, ``RAY_ADDRESS``) the
deployment stays up after the job; ``serve shutdown`` removes it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avarnet.config import Config, config_to_dict, load_config, save_config
from glue import console
from glue.errors import (
    EXIT_BAD_INPUT,
    handle_sigterm,
    interrupt_name,
    interrupt_status,
    known_errors,
)

STAGES = ("data", "extract", "train", "tune", "serve")

# The config sections each stage's output depends on (a change re-runs the stage).
_DEPENDS = {
    "data": ("data", "synth"),
    "extract": ("data", "synth", "features"),
    "train": ("data", "synth", "features", "model", "train"),
    "tune": ("data", "synth", "features", "model", "train", "tune"),
    "serve": ("data", "synth", "features", "model", "train", "tune", "serve"),
}
_ALWAYS = {"serve"}  # live state: redeployed on every run
# Where and with how many CPUs or threads work runs: no stage's output depends on these, so
# moving a finished run to other nodes (or giving it more cores) redoes nothing.
_PLACEMENT_ONLY = {
    "features": (
        "decode_labels",
        "encoder_labels",
        "encoder_cpus",
        "decode_cpus",
        "decode_workers",
        "threads_per_worker",
        "clips_per_task",
        "fit_resources",
    ),
    "train": ("worker_labels", "cpus_per_worker", "threads_per_worker", "cache_mb"),
}


@dataclass
class StageResult:
    stage: str
    status: str  # ran | skipped
    seconds: float
    metric: str
    outputs: str
    data: dict[str, Any]


def _stage_hash(cfg: Config, stage: str) -> str:
    full = config_to_dict(cfg)
    part = {k: full[k] for k in _DEPENDS[stage]}
    for section, keys in _PLACEMENT_ONLY.items():
        if section in part:
            part[section] = {k: v for k, v in part[section].items() if k not in keys}
    part["output_dir"] = str(Path(cfg.output_dir).resolve())
    return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:16]


class Pipeline:
    """Runs the stages of one configuration under ``cfg.output_dir``."""

    def __init__(self, cfg: Config, *, force: bool = False, progress: bool = True):
        self.cfg = cfg
        self.root = Path(cfg.output_dir).resolve()
        self.force = force
        self.progress = progress
        self.results: list[StageResult] = []
        self.state: dict[str, dict] = {}

    # -- paths
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    def _marker(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"

    def _done(self, stage: str) -> dict | None:
        m = self._marker(stage)
        if self.force or stage in _ALWAYS or not m.exists():
            return None
        data = json.loads(m.read_text())
        return data if data.get("hash") == _stage_hash(self.cfg, stage) else None

    def _mark(self, stage: str, data: dict) -> None:
        m = self._marker(stage)
        m.parent.mkdir(parents=True, exist_ok=True)
        tmp = m.with_name(m.name + ".tmp")
        tmp.write_text(
            json.dumps({"hash": _stage_hash(self.cfg, stage), **data}, default=str, indent=2)
        )
        os.replace(tmp, m)

    # -- stages
    def stage_data(self, parent_run_id: str | None, run) -> dict:
        from avarnet.data.manifest import read_manifest, write_manifest_csv

        if self.cfg.data.path:
            result = read_manifest(
                self.cfg.data.path,
                format=self.cfg.data.format,
                annotations=self.cfg.data.annotations,
                seed=self.cfg.data.split_seed,
                split_fractions=self.cfg.data.split_fractions,
            )
            manifest = self.data_dir / "manifest.csv"
            write_manifest_csv(result.rows, manifest)
        else:
            from avarnet.data.synthetic import generate_benchmark

            s = self.cfg.synth
            # Written aside, then renamed: a half-generated benchmark is never mistaken for one.
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".data-", dir=self.root))
            try:
                generate_benchmark(
                    tmp,
                    clips_per_class=s.clips_per_class,
                    seconds=s.seconds,
                    seed=s.seed,
                    fps=s.fps,
                    degrade_fraction=s.degrade_fraction,
                    no_audio_fraction=s.no_audio_fraction,
                    split_fractions=self.cfg.data.split_fractions,
                )
                if self.data_dir.exists():
                    shutil.rmtree(self.data_dir)
                os.replace(tmp, self.data_dir)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            manifest = self.data_dir / "manifest.csv"
            result = read_manifest(manifest)
        summary = result.summary()
        run.log_params({"clips": summary["clips"], "source": self.cfg.data.path or "generated"})
        run.log_dict(summary, "manifest_summary.json")
        return {
            "manifest": str(manifest),
            "clips": summary["clips"],
            "metric": f"{summary['clips']} clips",
            "outputs": str(manifest),
        }

    def stage_extract(self, parent_run_id: str | None, run) -> dict:
        from avarnet.data.manifest import read_manifest
        from workflows.extract import extract_with_config

        rows = read_manifest(self.data_dir / "manifest.csv").rows
        summary = extract_with_config(
            self.cfg, rows, self.features_dir, progress=self.progress, logger=run
        )
        d = summary.to_dict()
        d["metric"] = (
            f"{d['clips_ok'] + d['clips_skipped']} ok, {d['clips_failed']} failed, {d['clip_seconds_per_s']} clip-s/s"
        )
        d["outputs"] = str(self.features_dir)
        return d

    def stage_train(self, parent_run_id: str | None, run) -> dict:
        from glue.train import run_training_seeds

        res = run_training_seeds(
            self.cfg,
            self.features_dir,
            tracking_uri=run.tracking_uri,
            parent_run_id=parent_run_id,
            progress=self.progress,
        )
        self.state["train_report"] = res.pop("report")
        self.state["train_result"] = res
        res["metric"] = f"test acc {res['accuracy']:.3f}, macro-F1 {res['macro_f1']:.3f}"
        if res.get("summary"):
            acc = res["summary"]["accuracy"]
            res["metric"] = (
                f"test acc {acc['mean']:.3f} ± {acc['std']:.3f} over seeds {res['seeds']}; "
                f"registered seed {res['selected_seed']} (best on validation): "
                f"{res['accuracy']:.3f}"
            )
        res["outputs"] = res["model_uri"]
        return res

    def stage_tune(self, parent_run_id: str | None, run) -> dict:
        from tune.search import run_search

        # One search per configuration: an interrupted one resumes, a changed one is new.
        name = f"search-{_stage_hash(self.cfg, 'tune')[:8]}"
        trained = dict(self.state.get("train_result") or self._done("train") or {})
        keys = ("val_score", "val_macro_f1", "accuracy", "macro_f1", "artifact_dir", "model_uri")
        baseline = None
        if trained.get("best_val_score") is not None and self.cfg.tune.baseline:
            # The train stage trained the default configuration: the search's baseline.
            trained["val_score"] = trained["best_val_score"]
            trained["val_macro_f1"] = trained["best_val_macro_f1"]
            baseline = {k: trained[k] for k in keys}
        res = run_search(
            self.cfg,
            self.features_dir,
            tracking_uri=run.tracking_uri,
            parent_run_id=parent_run_id,
            name=name,
            progress=self.progress,
            baseline=baseline,
        )
        report = res.pop("report", None)
        if report is None and res["champion_is_default"]:
            report = self.state.get("train_report")  # the train stage's model is champion
        if report is not None:
            self.state["champion_report"] = report
        res["metric"] = (
            f"best val F1 {res['best_macro_f1']:.3f}, {res['eval_split']} acc "
            f"{res['accuracy']:.3f}; {res['trials_completed']} completed, "
            f"{res['trials_stopped_early']} stopped early"
        )
        if res.get("default"):
            who = "the default" if res["champion_is_default"] else "a searched trial"
            res["metric"] += (
                f"; champion = {who} (selected on validation), default's "
                f"{res['eval_split']} acc {res['default']['accuracy']:.3f}"
            )
        res["outputs"] = f"{res['model_uri']} (@champion)"
        return res

    def stage_serve(self, parent_run_id: str | None, run) -> dict:
        from avarnet.data.manifest import read_manifest
        from serve.client import score_file
        from serve.deploy import app_args, deploy

        sc = self.cfg.serve
        args = app_args(self.cfg, run.tracking_uri)
        run.log_params({"model_uri": sc.model_uri, "port": sc.port})
        t0 = time.perf_counter()
        url = deploy(args, host=sc.host, port=sc.port)
        deploy_s = time.perf_counter() - t0
        rows = read_manifest(self.data_dir / "manifest.csv").rows
        clip = next((r for r in rows if r.get("split") == "test"), rows[0])
        t0 = time.perf_counter()
        res = score_file(url, clip["path"])
        latency_ms = 1e3 * (time.perf_counter() - t0)
        run.log_metrics({"deploy_seconds": deploy_s, "smoke_latency_ms": latency_ms})
        run.log_dict(res, "smoke_score.json")
        run.set_tags({"avarnet.serve_url": url, "avarnet.model_version": res["model"]["version"]})
        self.state["serve_url"] = url
        return {
            "url": url,
            "clip": clip["path"],
            "expected": clip["label"],
            "label": res["label"],
            "latency_ms": round(latency_ms, 1),
            "model_version": res["model"]["version"],
            "metric": (
                f"v{res['model']['version']} at {url}; {Path(clip['path']).name} -> "
                f"{res['label']} (true {clip['label']}) in {latency_ms:.0f} ms"
            ),
            "outputs": f"{url}/",
        }

    # -- driver
    def run(
        self, stages: list[str] | None = None, then: Callable[[], None] | None = None
    ) -> list[StageResult]:
        """Run ``stages`` (default: all); ``then`` runs afterwards, still inside the Ray
        session (the service is up)."""
        from glue import tracking
        from glue.runtime import ray_session

        wanted = list(stages or STAGES)
        unknown = sorted(set(wanted) - set(STAGES))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
        self.root.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.root / "config.yaml")
        uri = tracking.resolve_tracking_uri(self.cfg.tracking, self.root)
        # The data stage runs without Ray, and so does training in this process on a small
        # table (train.workers=0): a re-run with nothing else to do starts no Ray and no
        # actors.
        pending = [s for s in wanted if self._done(s) is None]
        needs_ray = any(s != "data" and not self._without_ray(s) for s in pending)
        if not pending:
            self._say("[pipeline] nothing to do: every stage is up to date (--force redoes)")
        with (
            ray_session() if needs_ray else contextlib.nullcontext(),
            tracking.start_run(
                uri, self.cfg.tracking.experiment, "pipeline", tags={"avarnet.stage": "pipeline"}
            ) as parent,
        ):
            parent.log_config(self.cfg)
            self.parent_run_id = parent.run_id
            self.tracking_uri = uri
            for stage in STAGES:
                if stage in wanted:
                    self._run_stage(stage, uri, parent)
            if then is not None:
                then()
        return self.results

    def _without_ray(self, stage: str) -> bool:
        from glue.train import trains_without_ray

        return stage == "train" and trains_without_ray(self.cfg, self.features_dir)

    def _run_stage(self, stage: str, uri: str, parent) -> None:
        """Run one stage (or skip it when up to date) under the pipeline's MLflow run
        ``parent``, appending its :class:`StageResult`."""
        from glue import tracking

        runners: dict[str, Callable] = {
            "data": self.stage_data,
            "extract": self.stage_extract,
            "train": self.stage_train,
            "tune": self.stage_tune,
            "serve": self.stage_serve,
        }
        t0 = time.perf_counter()
        done = self._done(stage)
        if done is not None:
            self.results.append(
                StageResult(
                    stage, "skipped", 0.0, done.get("metric", ""), done.get("outputs", ""), done
                )
            )
            self._say(f"[{stage}] up to date, skipped ({done.get('outputs', '')})")
            return
        self._say(f"[{stage}] running ...")
        if stage in ("train", "tune"):  # these open their own (nested) runs
            data = runners[stage](parent.run_id, parent)
        else:
            with tracking.start_run(
                uri,
                self.cfg.tracking.experiment,
                stage,
                parent_run_id=parent.run_id,
                tags={"avarnet.stage": stage},
            ) as child:
                data = runners[stage](parent.run_id, child)
        seconds = time.perf_counter() - t0
        self._mark(stage, data)
        parent.log_metrics({f"{stage}_seconds": seconds})
        self.results.append(
            StageResult(
                stage, "ran", seconds, data.get("metric", ""), data.get("outputs", ""), data
            )
        )

    def _say(self, msg: str) -> None:
        if self.progress:
            console.say(msg)

    def summary_table(self) -> str:
        rows = [("stage", "status", "seconds", "result", "outputs")]
        rows += [(r.stage, r.status, f"{r.seconds:.1f}", r.metric, r.outputs) for r in self.results]
        widths = [max(len(str(r[i])) for r in rows) for i in range(4)]
        lines = [
            "  ".join(str(c).ljust(w) for c, w in zip(r[:4], widths)) + "  " + str(r[4])
            for r in rows
        ]
        return "\n".join(lines)


DESCRIPTION = (
    "Run the avarnet workflow end to end (data -> extract -> train -> tune -> serve) "
    "with one MLflow parent run and a child run per stage. Stages whose outputs exist "
    "and match the config are skipped; an interrupted run resumes where it stopped. "
    "The serve stage deploys the champion with Ray Serve and scores a test clip over "
    "HTTP. Runs on the Ray cluster in RAY_ADDRESS (a Ray job) or a local Ray."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The pipeline's options (``python -m workflows.pipeline`` and ``avarnet pipeline``)."""
    parser.add_argument("--config", help="YAML config (e.g. workflows/configs/demo.yaml)")
    parser.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--force", action="store_true", help="redo stages even when up to date")
    parser.add_argument(
        "--keep-serving",
        action="store_true",
        help="after the last stage, keep the service up until Ctrl-C",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def _report(pipe: Pipeline, as_json: bool, keep_serving: bool) -> None:
    out = console.out()
    log = console.log_path()
    if as_json:
        print(
            json.dumps(
                {
                    "stages": [r.__dict__ for r in pipe.results],
                    "tracking_uri": pipe.tracking_uri,
                    "parent_run_id": pipe.parent_run_id,
                    "serve_url": pipe.state.get("serve_url"),
                    "log": str(log) if log else None,
                },
                default=str,
            ),
            file=out,
            flush=True,
        )
        return
    print(pipe.summary_table(), file=out)
    report, whose = pipe.state.get("champion_report"), "the champion (Tune)"
    if report is None:
        report, whose = pipe.state.get("train_report"), "the trained model"
    if report is not None:
        from avarnet.evaluation import format_report

        print(f"\n{whose} on the test split:\n" + format_report(report), file=out)
    print(
        f"\nMLflow: mlflow ui --backend-store-uri {pipe.tracking_uri}   "
        f"(parent run {pipe.parent_run_id})",
        file=out,
    )
    print(f"outputs: {pipe.root}", file=out)
    if log is not None:
        print(f"log:     {log}", file=out)
    url = pipe.state.get("serve_url")
    if url:
        if keep_serving:
            print(
                f"serving: {url}/  (web page; API docs at {url}/docs). Ctrl-C stops it.", file=out
            )
        elif os.environ.get("RAY_ADDRESS"):
            print(f"serving on the cluster: {url}/  (remove with `serve shutdown`)", file=out)
        else:
            print(f"served at {url}/ during the run; --keep-serving keeps it up", file=out)
    out.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflows.pipeline", description=DESCRIPTION)
    add_arguments(parser)
    console.add_verbose_flag(parser)
    return run_from_args(parser.parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    """Run the pipeline for parsed options; returns the exit status."""

    def then() -> None:
        _report(pipe, args.json, args.keep_serving)
        if args.keep_serving and pipe.state.get("serve_url"):
            import threading

            threading.Event().wait()  # until Ctrl-C

    handle_sigterm()
    pipe: Pipeline | None = None
    try:
        cfg = load_config(args.config, args.overrides)
        stages = args.stages.split(",") if args.stages else None
        check_settings(cfg, stages)
        pipe = Pipeline(cfg, force=args.force, progress=not args.json)
        with console.capture(pipe.root / "logs", "pipeline", verbose=args.verbose):
            pipe.run(stages, then=then)
    except known_errors() + (ValueError,) as err:
        console.say(f"avarnet: error: {err}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as err:
        if pipe is not None and args.keep_serving and pipe.state.get("serve_url"):
            console.say("avarnet: service stopped")
            return 0
        done = [r.stage for r in pipe.results] if pipe is not None else []
        console.say(
            f"avarnet: {interrupt_name(err)} after {', '.join(done) or 'no stage'}; run the "
            f"same command again to resume (finished stages are skipped){console.log_hint()}"
        )
        return interrupt_status(err)
    except Exception as err:
        if args.verbose:
            raise
        return console.report_failure(err)
    return 0


def check_settings(cfg: Config, stages: list[str] | None = None) -> None:
    """Refuse, before anything runs, settings that cannot work together."""
    from glue.runtime import check_durable_path
    from tune.search import check_search_settings

    check_durable_path(cfg.output_dir, "output_dir")
    if "tune" in (stages or STAGES):
        check_search_settings(cfg)


if __name__ == "__main__":
    sys.exit(main())
