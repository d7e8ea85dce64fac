"""MLflow tracking (``log.mlflow``, the ``[mlflow]`` extra): what a run records, resume without duplicates, and a
failing or missing MLflow never costing the run."""

import json
import sys

import pytest

pytest.importorskip("mlflow", reason="MLflow tracking is tested with the [mlflow] extra: pip install -e '.[mlflow]'")
from mlflow.tracking import MlflowClient  # noqa: E402

from kdgen.config import load_config  # noqa: E402
from kdgen.running.runner import run_experiment  # noqa: E402
from kdgen.running.tracking import MlflowTracker, shown_uri  # noqa: E402
from kdgen.running.unit_cache import unit_key  # noqa: E402
from kdgen.training.loop import StopFlag  # noqa: E402

TINY = ["data.name=synthetic", "data.num_train=48", "data.num_test=16", "data.image_size=8", "data.channels=1",
        "data.num_classes=4", "data.val_fraction=0.25", "model.name=cnn-tiny", "train.epochs=2",
        "train.batch_size=16", "seeds=[0]", "generations.count=1", "generations.arms=[strict,tolerant]",
        "tolerance.k=3", "log.progress=false"]
UNITS = ["strict-seed0-gen0", "strict-seed0-gen1", "tolerant-seed0-gen0", "tolerant-seed0-gen1"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One local MLflow store for the module (creating its database takes seconds); one experiment per test."""
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture
def tracked(store, monkeypatch):
    """The overrides that log to experiment NAME of the module's store."""
    monkeypatch.chdir(store)  # MLflow puts a local store's artifacts under ./mlruns

    def overrides(experiment):
        return ["log.mlflow=true", f"log.mlflow_uri=sqlite:///{store}/mlflow.db",
                f"log.mlflow_experiment={experiment}"]

    return overrides


def runs_of(store, experiment):
    """(client, the parent runs, the nested runs by name) of ``experiment``."""
    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def test_a_run_records_a_parent_run_nested_unit_runs_and_the_report(tmp_path, store, tracked, kdgen_cli):
    out = tmp_path / "run"
    result = kdgen_cli("run", "--out", str(out), *TINY, *tracked("main"))
    assert result.returncode == 0, result.stderr
    client, parents, children = runs_of(store, "main")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_name == "run"
    assert parent.data.params["train.epochs"] == "2" and parent.data.params["generations.arms"] == '["strict", "tolerant"]'
    assert parent.data.tags["data"] == "synthetic" and parent.data.tags["model"] == "cnn-tiny"
    assert parent.data.tags["kdgen.run_dir"] == str(out.resolve())
    assert "test_top1.tolerant.gen1" in parent.data.metrics and "best_val_top1" in parent.data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.html", "report.md", "results.json", "plots"} <= artifacts
    assert client.list_artifacts(parent.info.run_id, "plots")

    assert sorted(r.info.run_name for r in children) == UNITS
    rows = json.loads((out / "results.json").read_text())["rows"]
    for run in children:
        tags, metrics = run.data.tags, run.data.metrics
        assert tags["mlflow.parentRunId"] == parent.info.run_id and run.info.status == "FINISHED"
        assert run.info.run_name == f"{tags['arm']}-seed{tags['seed']}-gen{tags['generation']}"
        assert tags["model"] == "cnn-tiny" and run.data.params["arm"] == tags["arm"]
        assert {"val_top1", "test_top1", "val_nll", "val_ece", "lr", "loss_ce"} <= set(metrics)
        row = next(r for r in rows if r["arm"] == tags["arm"] and r["generation"] == int(tags["generation"])
                   and r["split"] == "test" and r["kind"] == "single")
        assert metrics["test_top1"] == pytest.approx(row["top1"])
        assert [m.step for m in client.get_metric_history(run.info.run_id, "lr")] == [1, 2]
    report = (out / "report.md").read_text()
    assert f"MLflow: parent run `{parent.info.run_id}`" in report


def test_a_resumed_run_continues_the_same_runs(tmp_path, store, tracked, monkeypatch):
    out = tmp_path / "run"
    cfg = load_config(None, TINY + tracked("resume"))
    stop, original = StopFlag(), MlflowTracker.epoch

    def epoch_then_stop(self, unit, epoch, losses, lr):  # as a SIGTERM after the second unit's first epoch
        original(self, unit, epoch, losses, lr)
        if unit.name == "strict-seed0-gen1":
            stop.set()

    monkeypatch.setattr(MlflowTracker, "epoch", epoch_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, out, stop=stop, echo=False)
    client, parents, children = runs_of(store, "resume")
    assert [p.info.status for p in parents] == ["KILLED"]
    parent_id = parents[0].info.run_id
    stopped = {r.info.run_name: r for r in children}
    assert sorted(stopped) == UNITS[:2] and stopped["strict-seed0-gen1"].info.status == "KILLED"

    monkeypatch.setattr(MlflowTracker, "epoch", original)
    run_experiment(cfg, out, resume=True, echo=False)
    client, parents, children = runs_of(store, "resume")
    assert [p.info.run_id for p in parents] == [parent_id]  # the same parent run, reopened
    assert parents[0].info.status == "FINISHED" and parents[0].data.tags["kdgen.resumed"] == "true"
    assert sorted(r.info.run_name for r in children) == UNITS  # no duplicates
    assert all(r.info.status == "FINISHED" for r in children)
    resumed = next(r for r in children if r.info.run_name == "strict-seed0-gen1")
    assert resumed.info.run_id == stopped["strict-seed0-gen1"].info.run_id
    assert [m.step for m in client.get_metric_history(resumed.info.run_id, "lr")] == [1, 2]  # each epoch once


def test_an_unreachable_server_costs_nothing_but_the_tracking(tmp_path, kdgen_cli, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    out = tmp_path / "run"
    # nothing listens on port 9 (discard): the connection is refused at once
    result = kdgen_cli("run", "--out", str(out), *TINY, "log.mlflow=true", "log.mlflow_uri=http://127.0.0.1:9")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "MLflow" in line]
    assert len(warnings) == 1 and warnings[0].startswith("kdgen: warning: MLflow could not open the parent run")
    assert json.loads((out / "results.json").read_text())["complete"]
    assert len(list((out / "checkpoints").glob("*.safetensors"))) == 4
    for page in ("report.md", "report.html"):
        assert "MLflow: not logged" in (out / page).read_text() and "127.0.0.1:9" in (out / page).read_text()


def test_a_failing_call_mid_run_switches_tracking_off_and_the_report_says_so(tmp_path, store, tracked, kdgen_cli,
                                                                             monkeypatch):
    def refused(self, *args, **kwargs):
        raise ConnectionError("the tracking server went away")

    monkeypatch.setattr(MlflowClient, "set_terminated", refused)  # first used when the first unit finishes
    out = tmp_path / "run"
    result = kdgen_cli("run", "--out", str(out), *TINY, *tracked("failing"))
    assert result.returncode == 0, result.stderr
    assert sum("MLflow" in line for line in result.stderr.splitlines()) == 1
    assert "the tracking server went away" in (out / "report.md").read_text()
    _, _, children = runs_of(store, "failing")
    assert [r.info.run_name for r in children] == ["strict-seed0-gen0"]  # nothing after the failure


def test_without_mlflow_the_run_stops_with_one_line_before_training(tmp_path, kdgen_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the [mlflow] extra were not installed
    out = tmp_path / "run"
    result = kdgen_cli("run", "--out", str(out), *TINY, "log.mlflow=true")
    assert result.returncode == 2
    assert result.stderr.strip() == "kdgen: error: log.mlflow needs the mlflow package: pip install 'kdgen[mlflow]'"
    assert not (out / "checkpoints").exists()


def test_the_tracking_keys_change_neither_unit_keys_nor_an_untracked_config_yaml():
    plain = load_config(None, TINY)
    tracked = load_config(None, TINY + ["log.mlflow=true", "log.mlflow_uri=http://host:5000",
                                        "log.mlflow_experiment=x"])
    assert unit_key(plain, "tolerant", 0, 1) == unit_key(tracked, "tolerant", 0, 1)
    assert set(plain.to_dict()["log"]) == {"tensorboard", "progress", "mlflow"}


def test_a_password_in_the_tracking_uri_stays_out_of_the_run_folder_and_report():
    assert shown_uri("https://me:secret@mlflow.example:5000") == "https://me:***@mlflow.example:5000"
    assert shown_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
