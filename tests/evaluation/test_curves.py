"""Training curves (``evaluation.curves``): pauses removed, held-out points on the loss axis."""

import json

import numpy as np
import pytest

from vec2face_tf.evaluation import curves


def test_active_minutes_count_a_pause_as_a_typical_interval():
    # Points every 6 min, a 70 min break between sessions, then a 3 min restart gap.
    walls = 60.0 * np.array([0, 6, 12, 82, 88, 91])
    np.testing.assert_allclose(curves.active_minutes(walls), [0, 6, 12, 18, 24, 27])
    np.testing.assert_allclose(curves.active_minutes(60.0 * np.array([0, 5, 10])), [0, 5, 10])
    assert curves.active_minutes([]).size == 0
    with pytest.raises(ValueError, match="sorted"):
        curves.active_minutes([10.0, 5.0])


@pytest.fixture
def logged_run(tmp_path):
    """A run folder with 3 epochs of 100 steps logged and two held-out entries."""
    import tensorflow as tf

    logs = tmp_path / "logs" / "stage2"
    writer = tf.summary.create_file_writer(str(logs / "train"))
    with writer.as_default():
        for epoch, (pixel, weight) in enumerate([(0.5, 1.0), (0.4, 0.8), (0.3, 0.6)]):
            tf.summary.scalar("epoch_pixel", pixel, step=epoch)
            tf.summary.scalar("epoch_w_pixel", weight, step=epoch)
            writer.flush()
    writer.close()
    (tmp_path / "config.json").write_text(json.dumps({"train": {"checkpoint_every": 100}}))
    entries = [{"step": 100, "minutes": 0.0, "sharpness_ratio": 0.1, "contrast_ratio": 0.5,
                "sar_type1@0.001": 0.9},
               {"step": 300, "minutes": 9.0, "sharpness_ratio": 0.2, "contrast_ratio": 0.6,
                "sar_type1@0.001": 1.0}]
    (logs / "held_out.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    return tmp_path


def test_run_curves_put_held_out_entries_at_their_epochs_minutes(logged_run):
    result = curves.run_curves(logged_run)
    minutes, values = result["losses"]["pixel"]
    np.testing.assert_allclose(values, [0.5, 0.4, 0.3])
    assert minutes[0] == 0.0 and np.all(np.diff(minutes) >= 0)
    np.testing.assert_allclose(result["weights"]["w_pixel"][1], [1.0, 0.8, 0.6])
    # Step 100 ended epoch 0, step 300 epoch 2: the held-out points sit at their minutes.
    np.testing.assert_allclose(result["held_out_minutes"], [minutes[0], minutes[2]])
    assert result["minutes"] == pytest.approx(minutes[-1])


def test_plot_training_draws_one_png_and_refuses_a_run_without_logs(logged_run, tmp_path):
    output = curves.plot_training([logged_run], tmp_path / "curves.png", labels=["run"])
    assert output.read_bytes().startswith(b"\x89PNG") and output.stat().st_size > 10_000
    with pytest.raises(ValueError, match="no stage-2 logs"):
        curves.plot_training([tmp_path / "empty"], tmp_path / "other.png")
    with pytest.raises(ValueError, match="at least one run"):
        curves.plot_training([], tmp_path / "none.png")
