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
