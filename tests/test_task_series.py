"""The ``series`` task: splits in time, training-split statistics, imputed and flagged
inputs, masked (never zero-filled) missing targets, baselines, learning on airline
passengers, forecasts from saved models, and clear errors for bad CSV files."""
from pathlib import Path

import numpy as np
import pytest

from unrolled import io
from unrolled.cli import main
from unrolled.config import resolve_config
from unrolled.data import bundled_path
from unrolled.tasks import get_task
from unrolled.tasks.series import SeriesTask, baselines, forward_fill
from unrolled.train import Trainer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def config(**over):
    base = {"progress": "false", "checkpoint_every": "0"}
    base.update({k: str(v) for k, v in over.items()})
    return resolve_config(SeriesTask, None, base)


def write_csv(path, rows, header="time,temp,wind,load"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def synthetic(tmp_path, n=120):
    """A daily-cycle series with missing values in an input and in the target, and a
    categorical column."""
    t = np.arange(n)
    temp = 10 + 5 * np.sin(2 * np.pi * t / 12)
    load = 100 + 20 * np.sin(2 * np.pi * (t - 1) / 12) + t * 0.5
    rows = []
    for i in range(n):
        tv = "NA" if i in (5, 6, 40) else f"{temp[i]:.3f}"
        lv = "NA" if i in (30, 31, 100) else f"{load[i]:.3f}"
        rows.append(f"{i},{tv},{'N' if i % 3 else 'S'},{lv}")
    return write_csv(tmp_path / "s.csv", rows)


def test_registered():
    assert get_task("series") is SeriesTask


def test_forward_fill_and_baselines():
    v = np.array([[np.nan, 1.0], [2.0, np.nan], [np.nan, np.nan], [4.0, 3.0]])
    np.testing.assert_array_equal(forward_fill(v, fill=-9),
                                  [[-9, 1], [2, 1], [2, 1], [4, 3]])
    y = np.arange(10.0) * 10
    naive, seas = baselines(y, origins=np.array([5, 6]), targets_at=np.array([7, 8]),
                            season=4)
    np.testing.assert_array_equal(naive, [50, 60])
    np.testing.assert_array_equal(seas, [30, 40])  # one season before the forecast time
    _, seas = baselines(y, np.array([2]), np.array([8]), season=4)  # horizon 6 > season
    np.testing.assert_array_equal(seas, [0])  # two seasons back, never past the origin


def test_missing_values_imputed_flagged_and_masked(tmp_path):
    task = SeriesTask(config(target="load", features="temp,wind", categorical="wind",
                             index="time", window=6, season=12))
    task.load(synthetic(tmp_path))
    d = task.data
    assert d["channels"] == ["temp", "wind=N", "wind=S", "load", "load change",
                             "temp missing", "load missing"]
    assert np.isfinite(d["X"]).all()
    # indicator channels are 1 exactly where a value was imputed
    np.testing.assert_array_equal(np.flatnonzero(d["X"][:, 5]), [5, 6, 40])
    np.testing.assert_array_equal(np.flatnonzero(d["X"][:, 6]), [30, 31, 100])
    # an imputed input repeats the last observation (normalised)
    assert d["X"][5, 0] == d["X"][4, 0] == d["X"][6, 0]
    text = "\n".join(task.describe())
    assert "temp: 3 of 120" in text and "load: 3 of 120" in text
    # missing targets: kept in the batches, masked out of the loss, not zero
    miss = [m for m in range(len(d["origins"])) if d["targets_at"][m] in (30, 31, 100)]
    assert len(miss) == 3
    b = task.get_batch("train", np.array(miss[:2] + [0]))
    assert b.loss_mask.tolist() == [[False], [False], [True]]
    assert np.isnan(b.Y[:2]).all() and np.isfinite(b.Y[2]).all()
    assert "missing targets, masked" in text


def test_statistics_come_from_the_training_rows(tmp_path):
    p = synthetic(tmp_path)
    a = SeriesTask(config(target="load", features="temp", window=6))
    a.load(p)
    # change only the rows of the test windows: the statistics must not move
    lines = p.read_text().splitlines()
    for i in range(100, 121):
        f = lines[i].split(",")
        f[3] = "99999"
        lines[i] = ",".join(f)
    q = tmp_path / "q.csv"
    q.write_text("\n".join(lines) + "\n", encoding="utf-8")
    b = SeriesTask(config(target="load", features="temp", window=6))
    b.load(q)
    assert a.data["stats"] == b.data["stats"]
    assert b.data["splits"]["test"][0] + 6 > 95  # the test windows forecast the late rows


@pytest.fixture(scope="module")
def airline():
    cfg = config(log="true", epochs=80, patience=0, seed=0)
    task = SeriesTask(cfg)
    task.load(bundled_path("airline-passengers"))
    untrained = task.evaluate(task.build_model(), "test")
    trainer = Trainer(task, cfg, out_dir=None, log=lambda *a: None)
    trainer.fit()
    return task, trainer.model, untrained


def test_airline_learns_and_beats_the_baselines(airline, tmp_path):
    task, model, untrained = airline
    m = task.evaluate(model, "test")
    assert m["loss"] < 0.5 * untrained["loss"]
    assert m["rmse"] < m["naive_rmse"]
    assert m["rmse"] < m["seasonal_naive_rmse"]
    files = task.report(model, tmp_path)
    png = Path(files["forecast plot"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "seasonal naive" in task.last_report["text"]


def test_saved_model_forecasts_new_data_the_same_way(airline, tmp_path):
    task, model, _ = airline
    io.save_model(model, tmp_path, config=task.config, task_state=task.state())
    loaded, meta = io.load_model(tmp_path)
    again = SeriesTask(meta["config"], meta["task_state"])
    again.load_eval(bundled_path("airline-passengers"))
    f_eval = again.forecast(loaded, "eval")
    f_test = task.forecast(model, "test")
    n = len(f_test["pred"])
    np.testing.assert_allclose(f_eval["pred"][-n:], f_test["pred"], rtol=1e-5)
    line = again.predict(loaded, [str(bundled_path("airline-passengers"))])[0]
    assert "Passengers 1 row(s) after the last row" in line


def test_bad_csv_inputs(tmp_path, capsys):
    p = synthetic(tmp_path)
    with pytest.raises(ValueError, match="no column 'pressure'"):
        SeriesTask(config(target="pressure")).load(p)
    bad = write_csv(tmp_path / "bad.csv", [f"{i},1.5,N,{i}" for i in range(30)]
                    + ["30,warm,N,31"])
    with pytest.raises(ValueError, match=r"line 32, column 'temp': 'warm' is not a number"):
        SeriesTask(config(target="load", features="temp", window=4)).load(bad)
    with pytest.raises(ValueError, match="too few"):
        SeriesTask(config(target="load", features="temp", window=40)).load(
            write_csv(tmp_path / "short.csv", [f"{i},1,N,{i}" for i in range(20)]))
    # through the command: one line, exit code 2, no traceback
    code = main(["train", "series", "--data", str(p), "--target", "pressure",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "pressure" in err
    assert "Traceback" not in err


@pytest.mark.skipif(not (SHARED / "beijing-pm25").is_dir(), reason="shared data absent")
def test_beijing_missing_values_are_counted_and_flagged():
    task = SeriesTask(config(target="pm2.5", features="DEWP,TEMP,PRES,cbwd,Iws,Is,Ir,hour",
                             categorical="cbwd", window=48, horizon=24, season=24))
    task.load(SHARED / "beijing-pm25" / "pollution.csv")
    d = task.data
    assert task.saved["missing"]["pm2.5"] == 2067
    assert "pm2.5 missing" in d["channels"] and np.isfinite(d["X"]).all()
    assert int(d["X"][:, d["channels"].index("pm2.5 missing")].sum()) == 2067
    lines = "\n".join(task.describe())
    assert "pm2.5: 2067 of 43824" in lines
    # every window with a missing target stays, masked
    n_missing = sum(task._missing_targets(s) for s in ("train", "val", "test"))
    n_windows = sum(len(v) for v in d["splits"].values())
    assert n_windows == 43824 - 48 - 24 + 1 and n_missing > 0
