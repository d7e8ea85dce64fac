"""The examples of README and of the user guide (docs/guide/) run as written."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def guide(page: str) -> str:
    return (ROOT / "docs" / "guide" / page).read_text(encoding="utf-8")


def test_guide_python_example_runs(capsys):
    section = guide("api.md").split("# Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "docs/guide/api.md", "exec"), {})
    out = capsys.readouterr().out
    assert "tolerant" in out and "strict" in out and "baseline" in out


def test_readme_commands_match_ci():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_command = 'python3 -m pip install -q torch==2.13.0 -e ".[test]" && python3 -m pytest'
    assert test_command in readme and test_command in ci and test_command in guide("getting-started.md")


def test_readme_commands_name_real_configs_and_keys(capsys):
    """Every `kdgen run`/`kdgen sweep` line of README resolves: its config file exists, its keys (overrides and
    each grid's first value) are valid."""
    import shlex

    from kdgen.cli import main

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = [line.split("#")[0] for line in readme.splitlines() if line.startswith(("kdgen run", "kdgen sweep"))]
    assert len(commands) >= 2
    for line in commands:
        words, args = iter(shlex.split(line)[2:]), []
        for word in words:
            if word == "--config":
                args += [word, str(ROOT / next(words))]
            elif word == "--grid":
                args.append(next(words).split(",")[0])  # KEY=V1,V2,...: the key, at its first value
            elif word.startswith("-"):
                next(words, None)  # --out DIR
            else:
                args.append(word)
        assert main(["config", *args]) == 0, line
        capsys.readouterr()


def test_readme_torchrun_commands_name_real_configs_and_keys(monkeypatch, capsys):
    """Every `torchrun ... -m kdgen run ...` in README resolves: its config file exists and its overrides are keys."""
    import shlex

    from kdgen.cli import main

    root = ROOT
    text = guide("parallel.md").replace("\\\n", " ")
    commands = [line for line in text.splitlines() if "torchrun" in line and "-m kdgen run" in line]
    assert len(commands) >= 3  # one node, several nodes, Slurm
    monkeypatch.chdir(root)
    for line in commands:
        words = shlex.split(line.split("-m kdgen run", 1)[1])
        args, skip = [], False
        for word in words:
            if skip:
                skip = False
            elif word in ("--out", "--units"):  # run options, not config keys
                skip = True
            elif word != "--resume":
                args.append(word)
        assert main(["config", *args]) == 0, line
        assert "parallel:" in capsys.readouterr().out


def test_readme_load_example_runs_on_a_fresh_run(tmp_path, capsys):
    from kdgen.cli import main

    run = tmp_path / "run"
    assert main(["run", "--out", str(run), "data.name=synthetic", "data.num_train=128", "data.num_test=16",
                 "data.image_size=8", "data.channels=1", "data.num_classes=4", "model.name=cnn-tiny",
                 "train.epochs=1", "train.batch_size=16", "seeds=[0]", "generations.count=2", "tolerance.k=3",
                 "--no-progress"]) == 0
    capsys.readouterr()
    section = guide("api.md").split("# Using a trained model", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1).replace("runs/fmnist", str(run))
    exec(compile(code, "docs/guide/api.md", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.startswith("['class") and printed.count("class") == 8
