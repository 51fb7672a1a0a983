"""``avarnet tune``: the Ray Tune hyperparameter search."""

from __future__ import annotations

import argparse

from workflows.commands._common import (
    SubParsers,
    add_config_args,
    add_placement_args,
    beside,
    emit,
    feature_table_config,
    say_error,
)


def add(sub: SubParsers) -> None:
    p = sub.add_parser(
        "tune",
        help="search hyperparameters with Ray Tune; the best model becomes the champion",
        description=(
            "Search the training hyperparameters (learning rate, stages, layers, filters, "
            "dropout, smoothing weight, modality dropout, fusion mode; tune.space in the "
            "config) with Ray Tune: Optuna (TPE) proposes, ASHA stops weak trials on "
            "validation macro-F1. Every trial trains with the same trainer as `avarnet "
            "train`. The best trial's model is evaluated on the test split and registered in "
            "MLflow as a new version of 'avarnet' with the alias 'champion'. Interrupted "
            "(Ctrl-C)? Run the same command again: the search resumes where it stopped."
        ),
    )
    p.add_argument("--features", required=True, help="feature table folder (avarnet extract)")
    p.add_argument("--trials", type=int, help="number of trials (default 8)")
    p.add_argument("--max-concurrent", type=int, help="trials running at once (default 1)")
    p.add_argument("--time-budget-s", type=float, help="stop starting trials after this long")
    p.add_argument("--epochs", type=int, help="epochs per trial (ASHA's max_t)")
    p.add_argument("--name", default="search", help="search name; the same name resumes it")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    placement = add_placement_args(p, "train")
    add_config_args(p)
    p.set_defaults(func=_run_tune, log_dir=lambda a: beside(a.features), placement=placement)


def _run_tune(args: argparse.Namespace) -> int:

    from glue.runtime import ray_session
    from glue.train import check_training_data
    from tune.search import SearchInterrupted, check_search_settings, run_search

    features, cfg, uri = feature_table_config(
        args,
        (
            ("trials", "tune.trials"),
            ("max_concurrent", "tune.max_concurrent"),
            ("time_budget_s", "tune.time_budget_s"),
            ("epochs", "train.epochs"),
            *args.placement,
        ),
    )
    check_search_settings(cfg)  # settings that cannot work fail here, before Ray starts
    facts = check_training_data(features)  # bad data fails here, before Ray starts
    try:
        with ray_session():
            res = run_search(
                cfg,
                features,
                tracking_uri=uri,
                name=args.name,
                progress=not args.json,
                facts=facts,  # checked once, above
            )
    except SearchInterrupted as err:
        say_error(str(err))
        return 130
    emit(args, _result(res), lambda r: _human(r, res, uri))
    return 0


def _result(res: dict) -> dict:
    """The command's result (``--json``) from :func:`tune.search.run_search`'s."""
    keys = ("best_config", "best_macro_f1", "model_uri", "trials_completed", "trials_stopped_early")
    result = {k: res[k] for k in keys}
    result.update(
        {
            "accuracy": res["accuracy"],
            "macro_f1": res["macro_f1"],
            "trials_failed": res["trials_failed"],
            "run_id": res["run_id"],
            "wall_seconds": round(res["wall_seconds"], 1),
            "resumed": res["resumed"],
            "default": res["default"],
            "champion_is_default": res["champion_is_default"],
            "selected_on": res["selected_on"],
        }
    )
    return result


def _human(r: dict, res: dict, uri: str) -> str:
    """The result ``r`` for a person: a line per trial of ``res`` (and the default
    baseline), the champion, the MLflow run."""
    lines = [f"{'trial':<12}{'outcome':<15}{'epochs':>7}{'val F1':>8}  values"]
    for t in res["trials"]:
        vals = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.items() if "." in k
        )
        f1 = t["val_macro_f1"]
        lines.append(
            f"{t['trial_id']:<12}{t['outcome']:<15}{t['epochs']:>7}"
            f"{'' if f1 is None else f'{f1:.3f}':>8}  {vals}"
        )
    split = res["eval_split"]
    if r["default"]:
        d = r["default"]
        lines.append(
            f"{'default':<12}{'baseline':<15}{'':>7}{d['val_macro_f1']:>8.3f}  "
            f"(the configuration as given; {split} accuracy {d['accuracy']:.3f})"
        )
    who = "the default" if r["champion_is_default"] else "the best searched trial"
    lines.append(
        f"champion: {who}, selected on validation (val macro-F1 {r['best_macro_f1']:.3f}); "
        f"{split} accuracy {r['accuracy']:.3f}, macro-F1 {r['macro_f1']:.3f}; {r['model_uri']}"
    )
    lines.append(f"MLflow run {r['run_id']}: mlflow ui --backend-store-uri {uri}")
    return "\n".join(lines)
