"""workflows.cli at the parser level: every verb's --help, bad verbs and flags, and which
config key each flag sets (the real config is built; nothing heavy runs)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from workflows import cli

VERBS = [
    "synth",
    "manifest",
    "import-features",
    "inspect",
    "extract",
    "train",
    "tune",
    "evaluate",
    "predict",
    "serve",
    "score",
    "pipeline",
]


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_lists_every_verb_with_its_purpose(capsys):
    out = _help([], capsys)
    assert out.startswith("usage: avarnet")
    listed = re.findall(r"^    (\S+)", out, flags=re.M)
    assert [v for v in listed if v in VERBS] == VERBS  # every verb, in this order
    for verb in VERBS:  # each with a one-line purpose (on its line or the next)
        after = re.split(r"\n    \S", out.split(f"\n    {verb}", 1)[1], maxsplit=1)[0]
        assert len(after.strip()) > 15, (verb, after)
    assert "train AVAR-Net (early fusion + MTCN) with Ray Train" in out


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help_that_exits_0_and_names_its_purpose(verb, capsys):
    out = _help([verb], capsys)
    assert out.startswith(f"usage: avarnet {verb}")
    paragraphs = out.split("\n\n")
    description = paragraphs[1]  # after the usage block
    assert not description.startswith(("options:", "positional")), f"{verb}: no description"
    assert len(description.split()) >= 6, f"{verb}: {description!r}"
    assert "--verbose" in out  # every verb can show Ray's output live


def test_help_imports_nothing_heavy():
    code = (
        "import sys; from workflows.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'ray', 'mlflow', 'fastapi', 'timm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err.strip().splitlines()
    assert not any("Traceback" in line for line in err)
    return [line for line in err if "error:" in line]


def test_an_unknown_verb_exits_2_with_one_error_line(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["fit"])
    assert exc.value.code == 2
    [line] = _error_lines(capsys)
    assert line.startswith("avarnet: error: argument VERB: invalid choice: 'fit'")
    assert "'train'" in line  # names the verbs there are


def test_an_unknown_flag_exits_2_with_one_error_line(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--features", "f", "--learning-rate"])
    assert exc.value.code == 2
    [line] = _error_lines(capsys)
    assert line == "avarnet: error: unrecognized arguments: --learning-rate"


def test_a_missing_required_flag_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train"])
    assert exc.value.code == 2
    [line] = _error_lines(capsys)
    assert line == "avarnet train: error: the following arguments are required: --features"


def test_a_bad_flag_value_is_one_line_naming_the_config_key(tmp_path, capfd):
    code = cli.main(["train", "--features", str(tmp_path / "f"), "--seeds", "0,x"])
    assert code == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err == ["avarnet: error: train.seeds[1]: expected an integer, got 'x'"]


class _Stop(Exception):
    pass


@pytest.fixture
def built_config(monkeypatch):
    """Run a verb up to its config: the real ``load_cfg`` builds it, then the verb stops."""
    from workflows.commands import _common

    seen = {}
    real = _common.load_cfg

    def spy(args, extra):
        seen["cfg"] = real(args, extra)
        raise _Stop

    def run(argv):
        args = cli.build_parser().parse_args(argv)
        module = sys.modules[args.func.__module__]
        # Verbs on a feature table build theirs through _common.feature_table_config.
        monkeypatch.setattr(_common, "load_cfg", spy)
        if hasattr(module, "load_cfg"):
            monkeypatch.setattr(module, "load_cfg", spy)
        with pytest.raises(_Stop):
            args.func(args)
        return seen["cfg"]

    return run


def test_train_flags_set_their_config_keys(built_config, tmp_path):
    features = tmp_path / "features"
    cfg = built_config(
        ["train", "--features", str(features), "--seeds", "0,1,2", "--epochs", "3"]
        + ["--model", "avarnet_base", "--fusion", "late", "--workers", "2", "train.lr=0.01"]
    )
    assert list(cfg.train.seeds) == [0, 1, 2]
    assert (cfg.train.epochs, cfg.train.workers, cfg.train.lr) == (3, 2, 0.01)
    assert (cfg.model.name, cfg.model.fusion) == ("avarnet_base", "late")
    assert cfg.output_dir == str(tmp_path)  # beside the feature table


def test_flags_left_out_keep_the_config_files_values(built_config, tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("train:\n  epochs: 7\n  seed: 5\n")
    cfg = built_config(["train", "--features", str(tmp_path / "f"), "--config", str(conf)])
    assert (cfg.train.epochs, cfg.train.seed) == (7, 5)
    cfg = built_config(["train", "--features", "f", "--config", str(conf), "--epochs", "2"])
    assert (cfg.train.epochs, cfg.train.seed) == (2, 5)  # a flag wins over the file


def test_tune_flags_set_their_config_keys(built_config, tmp_path):
    cfg = built_config(
        ["tune", "--features", str(tmp_path / "f"), "--trials", "6", "--max-concurrent", "2"]
        + ["--time-budget-s", "90", "--epochs", "4"]
    )
    assert (cfg.tune.trials, cfg.tune.max_concurrent, cfg.tune.time_budget_s) == (6, 2, 90.0)
    assert cfg.train.epochs == 4


def test_extract_flags_set_their_config_keys(built_config, tmp_path):
    cfg = built_config(
        ["extract", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--preset", "paper"]
        + ["--workers", "3", "--gpus-per-worker", "0.5"]
    )
    assert (cfg.features.preset, cfg.features.workers, cfg.features.gpus_per_worker) == (
        "paper",
        3,
        0.5,
    )


def test_serve_flags_set_their_config_keys(built_config):
    cfg = built_config(
        ["serve", "--model", "models:/avarnet/3", "--port", "8123", "--max-upload-mb", "5"]
    )
    assert (cfg.serve.model_uri, cfg.serve.port, cfg.serve.max_upload_mb) == (
        "models:/avarnet/3",
        8123,
        5.0,
    )


def test_score_against_a_closed_port_is_one_plain_line(tmp_path, capfd):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00" * 64)
    assert cli.main(["score", str(clip), "--url", url, "--timeout-s", "5"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("avarnet: error: cannot reach the scoring service")
    assert "nothing answers there" in err[0] and "Max retries" not in err[0]


def test_score_of_a_missing_file_exits_2(tmp_path, capfd):
    assert cli.main(["score", str(tmp_path / "none.mp4"), "--url", "http://127.0.0.1:9"]) == 2
    assert (
        capfd.readouterr().err.strip() == f"avarnet: error: {tmp_path / 'none.mp4'}: no such file"
    )


def test_format_score():
    from workflows.commands.serve import format_score

    answer = {
        "label": "Fight",
        "probabilities": {"Normal": 0.1, "Fight": 0.7, "Riot": 0.15, "Crash": 0.05},
        "model": {"name": "avarnet", "version": "3"},
        "duration_s": 4.04,
        "has_audio": False,
        "timings_ms": {"total": 123.4},
        "segments": [{"anomaly_score": s} for s in (0.0, 0.5, 1.0, 0.25)],
    }
    assert format_score(answer).splitlines() == [
        "label: Fight   (model avarnet v3, 4.0 s, audio: none, 123 ms)",
        "top:   Fight 0.700, Riot 0.150, Normal 0.100",
        "anomaly timeline (per segment):",
        "   ▄█▂  max 1.000",
    ]
