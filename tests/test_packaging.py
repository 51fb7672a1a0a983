"""Packaging: our `tune`, `workflows` and `glue` packages (names shared with unrelated
PyPI projects) resolve to this repository, and importing the library does nothing heavy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_packages_resolve_to_this_repository():
    import avarnet
    import glue
    import serve
    import tune
    import workflows
    import workflows.commands

    for mod in (avarnet, glue, tune, workflows, workflows.commands, serve):
        assert Path(mod.__file__).resolve().is_relative_to(ROOT), mod.__file__


def test_library_imports_without_ray_mlflow_fastapi(tmp_path):
    """`avarnet` never imports ray, mlflow or fastapi, and importing it creates nothing."""
    code = f"""
import sys, os, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('ray', 'mlflow', 'fastapi'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
sys.path.insert(0, {str(ROOT)!r})
os.chdir({str(tmp_path)!r})
import avarnet, avarnet.config, avarnet.data.decode, avarnet.data.manifest, avarnet.data.synthetic
import avarnet.features.spec, avarnet.features.backbones, avarnet.features.table
import avarnet.models, avarnet.metrics, avarnet.predictor, avarnet.evaluation, avarnet.batching
import avarnet.scoring, avarnet.training, avarnet.features.imported
assert os.listdir('.') == [], os.listdir('.')
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_cli_help_is_fast_and_lists_verbs():
    out = subprocess.run(
        [sys.executable, "-m", "workflows.cli", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0
    verbs = ("synth", "manifest", "inspect", "extract", "train", "evaluate", "tune", "serve")
    for verb in (*verbs, "score", "pipeline"):
        assert verb in out.stdout
