"""The documentation site builds in strict mode (a broken link fails), its configuration reference is generated
from the code, and every public name the API reference shows has a docstring."""

import importlib
import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
API_PAGE = ROOT / "docs" / "reference" / "api.md"


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("mkdocs", "material", "mkdocstrings")),
                    reason="the docs extra is not installed (pip install -e '.[docs]')")
def test_the_site_builds_in_strict_mode_with_a_generated_configuration_reference(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                           "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    reference = (site / "reference" / "configuration" / "index.html").read_text(encoding="utf-8")
    from kdgen.config import Config, RuntimeConfig

    # every key of the code is on the page (a new key appears without anyone editing the docs)
    for key in list(RuntimeConfig.model_fields) + list(Config.model_fields):
        assert key in reference, key
    api = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    assert "top_score_difference" in api and "decoupled_kd" in api and "GenerationLoss" in api


def test_a_broken_link_fails_the_strict_build(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    shutil.copytree(ROOT / "docs" / "guide", tmp_path / "docs" / "guide")
    (tmp_path / "docs" / "index.md").write_text("# x\n\n[gone](guide/no-such-page.md)\n", encoding="utf-8")
    (tmp_path / "mkdocs.yml").write_text("site_name: x\nstrict: true\ntheme: {name: material}\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0 and "no-such-page.md" in done.stderr


def _documented_names() -> list[tuple[str, str]]:
    """(module, name) of every public name the API page renders: its ``members`` lists, or the module's
    public functions and classes where it lists none."""
    found = []
    for block in re.finditer(r"^::: ([\w.]+)\n((?:    .*\n)*)", API_PAGE.read_text(encoding="utf-8"), re.M):
        module_name, options = block.group(1), block.group(2)
        members = re.search(r"members: \[(.*?)\]", options)
        if members:
            names = [n.strip() for n in members.group(1).split(",")]
        else:
            module = importlib.import_module(module_name)
            names = [n for n, obj in vars(module).items() if not n.startswith("_")
                     and (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module_name]
        found += [(module_name, name) for name in names]
    return found


@pytest.mark.parametrize("module_name, name", _documented_names())
def test_every_public_name_in_the_api_reference_has_a_docstring(module_name, name):
    obj = getattr(importlib.import_module(module_name), name)
    if inspect.isclass(obj) or inspect.isfunction(obj):
        assert (obj.__doc__ or "").strip(), f"{module_name}.{name} has no docstring"


def test_the_config_reference_reads_the_comments_above_the_keys():
    sys.path.insert(0, str(ROOT / "docs" / "hooks"))
    import config_reference

    page = config_reference.reference()
    assert "| `runtime.save_every_s` |" in page and "always on a stop" in page
    assert "### `distill.method: dkd`" in page and "### `tolerance.method: tsd`" in page
