"""One definition per flag: every script shares the flag groups of utils/flags.py."""

import argparse

import pytest

import eval as eval_script
import inference
import train
from layers.detection import DetectSettings
from utils.deploy import export
from utils.flags import detect_settings

PARSERS = {
    "train": train.get_args_parser(),
    "eval": eval_script.get_args_parser(),
    "inference": inference.get_args_parser(),
    "export": export.get_args_parser(),
}


def actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {option: action for action in parser._actions for option in action.option_strings}


# Flags that mean the same in every script that has them. (--project's default names the script's folder,
# --image_set's help names its split, and train.py's --size is the model's, not a raw state_dict's.)
SHARED = ("--weights", "--dataset", "--dataset_root", "--classes", "--conf_thresh", "--nms_thresh", "--top_k",
          "--keep_top_k", "--device", "--amp", "--num_workers", "--name", "--verbose")  # fmt: skip


def test_shared_flags_have_one_name_default_and_help() -> None:
    by_script = {name: actions(parser) for name, parser in PARSERS.items()}
    for flag in SHARED:
        present = [a[flag] for a in by_script.values() if flag in a]
        assert len(present) >= 2, flag
        assert len({(a.dest, repr(a.default), a.help, tuple(a.option_strings)) for a in present}) == 1, flag
    for flag in ("--dataset", "--dataset_root", "--classes", "--image_set", "--verbose"):
        assert all(flag in a for a in by_script.values()), flag


@pytest.mark.parametrize("script", sorted(PARSERS))
def test_every_underscore_flag_has_its_hyphen_spelling(script: str) -> None:
    options = actions(PARSERS[script])
    for option in options:
        assert option.replace("_", "-") in options, option


def test_documented_spellings_keep_working() -> None:
    args = eval_script.get_args_parser().parse_args(
        ["--trained_model", "w.pth", "--voc_root", "d", "--dataset", "coco"]
    )
    assert args.weights == "w.pth" and args.dataset_root == "d" and args.dataset == "COCO"
    args = train.get_args_parser().parse_args(["--end-epoch", "3", "--dataset-root", "d"])
    assert args.end_epoch == 3 and args.dataset_root == "d"
    args = inference.get_args_parser().parse_args(["--image", "a.jpg", "--trained-model", "w.pth"])
    assert args.image == "a.jpg" and args.weights == "w.pth"


def test_detect_flags_override_only_what_is_given() -> None:
    model_settings = DetectSettings(conf_thresh=0.001, nms_thresh=0.55, top_k=300, keep_top_k=300)
    parser = inference.get_args_parser()
    assert detect_settings(parser.parse_args([]), model_settings) == model_settings
    given = detect_settings(parser.parse_args(["--nms_thresh", "0.5", "--keep_top_k", "0"]), model_settings)
    assert given == DetectSettings(conf_thresh=0.001, nms_thresh=0.5, top_k=300, keep_top_k=None)


def test_choices_come_from_the_registries() -> None:
    from layers.prior_box import PRIOR_FAMILIES
    from ssd import BACKBONES, SIZES

    options = actions(PARSERS["train"])
    assert tuple(options["--priors"].choices) == PRIOR_FAMILIES
    assert list(options["--size"].choices) == list(SIZES) == [300, 320, 512]  # every backbone's sizes
    assert list(options["--backbone"].choices) == sorted(BACKBONES)
    with pytest.raises(SystemExit):
        train.get_args_parser().parse_args(["--dataset", "NoSuchDataset"])
