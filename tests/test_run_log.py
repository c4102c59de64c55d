"""utils/engine/run_log.py: a run's record on disk."""

import json
from pathlib import Path

from utils.engine.run_log import RunLog


def record(epoch: int, mean_ap: float | None = None) -> dict:
    return {"epoch": epoch, "iteration": 10 * epoch, "loss": 3.0 / epoch, "loss_l": 1.0 / epoch,
            "loss_c": 2.0 / epoch, "lr": 0.1, "images_per_s": 5.0, "time_s": 1.0, "map": mean_ap}  # fmt: skip


def test_epochs_are_logged_as_json_lines_and_a_table(tmp_path: Path) -> None:
    log = RunLog(tmp_path, ("loss_l", "loss_c"))
    log.write_args({"lr": 0.1, "dataset_root": tmp_path})
    log.add_epoch(record(1))
    log.add_epoch(record(2, 0.5))
    assert json.loads((tmp_path / "args.json").read_text()) == {"lr": 0.1, "dataset_root": str(tmp_path)}
    assert [json.loads(line) for line in (tmp_path / "log.txt").read_text().splitlines()] == [record(1), record(2, 0.5)]
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[0] == "epoch,iteration,loss,loss_l,loss_c,lr,images_per_s,map,target_map"
    assert rows[2] == "2,20,1.5,0.5,1.0,0.1,5.0,0.5,"
    assert (tmp_path / "results.png").is_file()


def test_a_resumed_run_keeps_the_epochs_its_checkpoint_covers(tmp_path: Path) -> None:
    first = RunLog(tmp_path, ("loss_l", "loss_c"))
    for epoch in (1, 2, 3):
        first.add_epoch(record(epoch))
    resumed = RunLog(tmp_path, ("loss_l", "loss_c"))
    resumed.resume(2)  # the checkpoint was saved after epoch 2; epoch 3 is trained again
    assert resumed.records == [record(1), record(2)]
    resumed.add_epoch(record(3, 0.7))
    assert [json.loads(line)["map"] for line in (tmp_path / "log.txt").read_text().splitlines()] == [None, None, 0.7]
