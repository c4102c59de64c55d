"""utils/engine/config.py: train.py's flags as one typed TrainConfig."""

from dataclasses import fields

import pytest

import train
from utils.engine.config import TrainConfig


def test_every_train_flag_is_a_setting_and_every_setting_a_flag() -> None:
    flags = set(vars(train.get_args_parser().parse_args([])))
    settings = {f.name for f in fields(TrainConfig)}
    assert settings - flags == {"length_changes"}  # what --resume --end_epoch records, not a flag
    assert flags - settings == set()


def test_the_saved_dict_gives_back_the_same_settings() -> None:
    args = train.get_args_parser().parse_args(["--dataset_root", "data", "--da", "grl", "--milestones", "3", "5"])
    settings = TrainConfig.from_dict(vars(args))
    assert settings.da == ["grl"] and settings.milestones == [3, 5] and settings.dataset_root == "data"
    assert TrainConfig.from_dict(settings.to_dict()) == settings


def test_keys_that_are_no_settings_are_left_out_and_a_missing_one_is_named() -> None:
    saved = TrainConfig.from_dict(vars(train.get_args_parser().parse_args([]))).to_dict()
    assert TrainConfig.from_dict({**saved, "typed_flags": frozenset(), "a_removed_flag": 1}) == TrainConfig.from_dict(saved)
    del saved["lr"]
    with pytest.raises(ValueError, match=r"lack \['lr'\]"):
        TrainConfig.from_dict(saved)


def test_a_resumed_run_is_not_refused_for_paths_of_where_it_started(tmp_path) -> None:  # noqa: ANN001
    # A run that only evaluated a target folder (no --da) resumes from another directory, where that folder is not:
    # training logs that it cannot evaluate there, instead of refusing a flag the user cannot change on --resume.
    import torch

    from utils.engine.distributed import DistInfo
    from utils.engine.resume import resolve_run

    parser = train.get_args_parser()
    saved = vars(parser.parse_args(["--dataset_root", "data/elsewhere", "--target_root", "data/foggy_elsewhere"]))
    torch.save({"optimizer": {}, "epoch": 1, "args": saved}, tmp_path / "last.pth")
    resume = TrainConfig.from_dict(vars(parser.parse_args(["--resume", str(tmp_path / "last.pth")])))
    defaults = TrainConfig.from_dict(vars(parser.parse_args([])))
    settings, _, _ = resolve_run(resume, frozenset({"resume"}), defaults, torch.device("cpu"), DistInfo())
    assert settings.target_root == "data/foggy_elsewhere" and settings.resume == str(tmp_path / "last.pth")
