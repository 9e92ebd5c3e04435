"""Run logging: TensorBoard scalars survive a resume without duplicated steps; CSV tables stay aligned."""

import pytest

from jtd3.logging import RunLogger, append_csv_row, read_scalars


def test_resume_purges_steps_written_after_the_checkpoint(tmp_path):
    first = RunLogger(tmp_path)
    for step in range(0, 110, 10):  # the killed process got to step 100
        first.scalars({"train/x": step, "train/y": -step}, step)
    first.close()
    resumed = RunLogger(tmp_path, purge_step=50)  # checkpoint was at step 50
    for step in range(50, 130, 10):
        resumed.scalars({"train/x": step + 0.5}, step)
    resumed.close()

    scalars = read_scalars(tmp_path)
    steps = [s for s, _ in scalars["train/x"]]
    assert steps == sorted(set(steps)) == list(range(0, 130, 10)), steps
    values = dict(scalars["train/x"])
    assert values[40] == 40 and values[50] == 50.5 and values[120] == 120.5
    assert [s for s, _ in scalars["train/y"]] == [0, 10, 20, 30, 40]


def test_csv_rows_keep_columns(tmp_path):
    path = tmp_path / "eval.csv"
    append_csv_row(path, {"step": 1, "success_rate": 0.5})
    append_csv_row(path, {"success_rate": 1.0, "step": 2})
    assert path.read_text().splitlines() == ["step,success_rate", "1,0.5", "2,1.0"]
    with pytest.raises(ValueError, match="differ from the file's columns"):
        append_csv_row(path, {"step": 3})
