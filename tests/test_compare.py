"""scripts/compare_norms.py: the drift probe shows LayerNorm bounding the features and no normalization exploding,
and the report/plots are written from run directories."""

import json

import numpy as np

from jtd3 import compare


def test_drift_probe_and_report(tmp_path):
    camera = compare.collect_camera_batch(8, seed=0, every=5)
    assert camera.shape == (8, 4, 84, 84) and camera.dtype == np.uint8 and camera.std() > 10
    rows = compare.drift_probe(camera, ("none", "layernorm", "batchnorm"), factors=(1.0, 10.0))
    l2 = {(r["norm"], r["scope"], r["factor"]): r["l2_norm"] for r in rows}
    # three conv layers scaled by 10 each: 10^3 without normalization; LayerNorm: unchanged
    assert l2[("none", "conv", 10.0)] / l2[("none", "conv", 1.0)] > 900, l2
    assert abs(l2[("layernorm", "all", 10.0)] / l2[("layernorm", "all", 1.0)] - 1) < 1e-3, l2
    assert l2[("layernorm", "all", 10.0)] <= 2 * np.sqrt(512), l2
    # BatchNorm normalizes the convs but nothing after the dense layer
    assert abs(l2[("batchnorm", "conv", 10.0)] / l2[("batchnorm", "conv", 1.0)] - 1) < 1e-3, l2
    assert l2[("batchnorm", "all", 10.0)] / l2[("batchnorm", "all", 1.0)] > 9, l2

    (tmp_path / "run").mkdir()
    from jtd3.logging import RunLogger, append_csv_row

    log = RunLogger(tmp_path / "run")
    for step in (10, 20):
        log.scalars({"debug/critic_cnn_features_l2_norm": step * 1.5, "losses/critic_loss": 1.0 / step}, step)
    log.close()
    append_csv_row(tmp_path / "run" / "eval.csv", {"env_steps": 20, "success_rate": 0.5, "route_completion": 0.7,
                                                   "return_mean": 3.0})
    summary = compare.summarise_runs({"layernorm": tmp_path / "run"})
    assert summary["layernorm"]["critic_l2_first"] == 15.0 and summary["layernorm"]["critic_l2_last"] == 30.0
    paths = compare.plot_runs(summary, rows, tmp_path)
    assert all(p.stat().st_size > 10_000 for p in paths)
    import matplotlib.image

    def panels(path):  # 5.5 inches at 110 dpi per panel
        return round(matplotlib.image.imread(path).shape[1] / (5.5 * 110))

    assert panels(tmp_path / "features.png") == 2  # shared encoder: no empty actor-encoder panel
    separate = {"separate": {**summary["layernorm"], "curves": {**summary["layernorm"]["curves"],
                                                                "actor features L2": [(10, 2.0), (20, 3.0)]}}}
    compare.plot_runs(separate, rows, tmp_path / "run")
    assert panels(tmp_path / "run" / "features.png") == 3
    report = compare.write_report(tmp_path, rows, summary, "cmd").read_text()
    assert "| none | conv | " in report and "| layernorm | 15 -> 30 (30) | 0.50 | 0.700 |" in report, report
    assert json.loads((tmp_path / "summary.json").read_text())["layernorm"]["final_eval"]["success_rate"] == 0.5
