"""Train an SSD, on one device or with DistributedDataParallel under `torchrun`.

    python train.py --dataset VOC --dataset_root ~/data/VOCdevkit --end_epoch 100 --lr 1e-2
    torchrun --nproc_per_node=8 train.py --dataset VOC --dataset_root ~/data/VOCdevkit --batch_size 32 --amp
    python train.py --resume auto
    python train.py --dataset Cityscapes --dataset_root data/cityscapes_in_voc \
        --target_root data/foggy_cityscapes_in_voc --da grl mean_teacher      # domain adaptation (docs/domain_adaptation.md)

A run writes ``runs/train/exp<N>/``: ``args.json``, ``last.pth``, ``best.pth`` (by mAP), ``log.txt`` (one JSON
line per epoch), ``results.csv`` and ``results.png``.
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from data.config import DATASETS
from layers.prior_box import PRIOR_FAMILIES
from ssd import BACKBONES, SIZES
from utils.augmentations import CROP_SAMPLERS
from utils.cli import (
    NON_NEGATIVE_FLOAT,
    NON_NEGATIVE_INT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    add_hyphen_aliases,
    bounded,
    make_parser,
    run_cli,
)
from utils.engine.config import TrainConfig
from utils.engine.da_config import DA_METHODS, AdaptationConfig
from utils.engine.distributed import cleanup, init_distributed
from utils.engine.resume import resolve_run
from utils.engine.trainer import NonFiniteLossError, Trainer
from utils.evaluation.evaluate import METRICS
from utils.flags import add_dataset_flags, add_device_flags, add_run_flags, add_workers_flag
from utils.runs import select_device
from utils.transforms import PIXEL_NORMS


def get_args_parser() -> argparse.ArgumentParser:
    parser = make_parser("Train SSD300/SSD512.")
    add_dataset_flags(parser, "train")
    data = parser.add_argument_group("data")
    data.add_argument("--keep_difficult", action="store_true", help="train on VOC 'difficult' objects too")
    data.add_argument("--skip_bad", action="store_true", help="skip unreadable images/annotations with a warning")
    data.add_argument("--max_expand", type=bounded(float, 1), default=4.0,
                      help="largest zoom-out of the expand augmentation (SSD: 4; 1 turns it off, for short schedules)")  # fmt: skip
    data.add_argument("--crop_samplers", choices=sorted(CROP_SAMPLERS), default="paper",
                      help="random crop: paper (SSD §2.2, Caffe: 7 samplers, one passing patch picked) or ssd_pytorch (6 modes, one drawn at a time)")  # fmt: skip
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", choices=sorted(BACKBONES), default="vgg16",
                       help="vgg16: SSD300/512; mobilenet_v3_large: SSDLite320; resnet50: NVIDIA's SSD300 (docs/backbones.md, 'Backbones')")  # fmt: skip
    model.add_argument("--size", type=int, default=None, choices=SIZES,
                       help="input size; default the backbone's (vgg16 and resnet50: 300, mobilenet_v3_large: 320)")  # fmt: skip
    model.add_argument("--priors", choices=PRIOR_FAMILIES, default=None,
                       help="prior sizes (COCO's start smaller: better for small objects); default: the backbone's (SSDLITE for mobilenet_v3_large), else the dataset's")  # fmt: skip
    model.add_argument("--width", type=bounded(float, 0, 8, low_open=True), default=1.0, help="channel multiplier (1.0 = the paper's network)")  # fmt: skip
    model.add_argument("--batch_norm", action="store_true", help="vgg16: BatchNorm after every base/extra conv (from scratch)")  # fmt: skip
    model.add_argument("--basenet", default=None,
                       help="ImageNet base network file, or 'none' to train from scratch; default weights/vgg16_reducedfc.pth, "
                            "weights/mobilenet_v3_large-8738ca79.pth or weights/resnet50-0676ba61.pth (by backbone)")  # fmt: skip
    model.add_argument("--pixel_norm", choices=sorted(PIXEL_NORMS), default=None,
                       help="input normalisation: caffe for vgg16_reducedfc.pth, torchvision for torchvision's weights "
                            "(utils/deploy/convert_vgg.py output, MobileNetV3, ResNet-50); default by backbone")  # fmt: skip
    model.add_argument("--finetune", default=None,
                       help="detector checkpoint to start from, all but its conf heads; a checkpoint of this project "
                            "(or converted from torchvision) brings its network, preprocessing and test settings")  # fmt: skip
    adapt = parser.add_argument_group("domain adaptation (docs/domain_adaptation.md, 'Domain adaptation')")
    adapt.add_argument("--target_root", default=None,
                       help="the unlabeled target domain's images: a VOC-format folder (its trainval images, or its "
                            "train images without a trainval.txt; annotations never read) or any folder of images; they "
                            "feed --da, and a VOC-format target's val split (else its test split) is scored beside the "
                            "source's")  # fmt: skip
    adapt.add_argument("--target_dataset", choices=sorted(DATASETS) + ["Custom"], default=None,
                       help="the target's dataset name (it must share classes with the source; they are scored by name); "
                            "default: --dataset")  # fmt: skip
    adapt.add_argument("--da", nargs="+", choices=DA_METHODS, default=None,
                       help="methods: grl (adversarial alignment: DA-Faster, or SWDA with --swda), i3net (I3Net), "
                            "mean_teacher (pseudo-labels), adabn (target BatchNorm statistics), target_bn (a "
                            "control: target images through BatchNorm, no loss); mean_teacher combines with grl or "
                            "i3net")  # fmt: skip
    adapt.add_argument("--da_batch", choices=("separate", "joint"), default=AdaptationConfig.da_batch, help="source and target batches through separate forward passes, as the references do, or one joint (concatenated) pass")  # fmt: skip
    adapt.add_argument("--grl_weight", type=POSITIVE_FLOAT, default=AdaptationConfig.grl_weight, help="grl: weight of the domain loss (default: DA-Faster's 0.1; with --swda, SWDA's 1.0 for Cityscapes)")  # fmt: skip
    adapt.add_argument("--grl_levels", type=POSITIVE_INT, default=AdaptationConfig.grl_levels, help="grl: image-level domain classifiers on this many source maps from conv4_3")  # fmt: skip
    adapt.add_argument("--swda", action="store_true", help="grl: SWDA's local (least squares, relu(conv3_2)) and global (focal, relu(conv4_3)) classifiers instead, where I3Net puts them on SSD")  # fmt: skip
    adapt.add_argument("--grl_lambda", type=POSITIVE_FLOAT, default=AdaptationConfig.grl_lambda, help="grl, i3net: the gradient reversal's factor")  # fmt: skip
    adapt.add_argument("--focal_gamma", type=NON_NEGATIVE_FLOAT, default=AdaptationConfig.focal_gamma, help="grl --swda: the global classifier's focal loss gamma (SWDA: 5)")  # fmt: skip
    adapt.add_argument("--dcbr_weight", type=NON_NEGATIVE_FLOAT, default=AdaptationConfig.dcbr_weight, help="i3net: weight of the target's DCBR-weighted global domain loss (I3Net: 0.05)")  # fmt: skip
    adapt.add_argument("--gcr_weight", type=NON_NEGATIVE_FLOAT, default=AdaptationConfig.gcr_weight, help="i3net: weight of DCBR's multi-label loss on the source (I3Net: 1)")  # fmt: skip
    adapt.add_argument("--gf_weight", type=NON_NEGATIVE_FLOAT, default=AdaptationConfig.gf_weight, help="i3net: weight of RJCA's joint-feature loss (I3Net: 38)")  # fmt: skip
    adapt.add_argument("--kl_weight", type=NON_NEGATIVE_FLOAT, default=AdaptationConfig.kl_weight, help="i3net: weight of RJCA's KL term between the --pa_layers maps (I3Net: 0.1)")  # fmt: skip
    adapt.add_argument("--pa_layers", type=NON_NEGATIVE_INT, nargs=2, default=list(AdaptationConfig.pa_layers), help="i3net: the two source maps of COPM's prototypes and the KL term (I3Net: 1 3, fc7 and conv9_2)")  # fmt: skip
    adapt.add_argument("--i3net_start", type=NON_NEGATIVE_INT, default=AdaptationConfig.i3net_start, help="i3net: DCBR's weights, COPM and the KL term apply after this many epochs (default: 2/7 of the run, I3Net's 20 of 70)")  # fmt: skip
    adapt.add_argument("--ema_decay", type=bounded(float, 0, 1, high_open=True), default=AdaptationConfig.ema_decay, help="mean_teacher: the teacher's EMA keep rate per step (Adaptive Teacher: 0.9996)")  # fmt: skip
    adapt.add_argument("--pseudo_threshold", type=bounded(float, 0, 1, high_open=True), default=AdaptationConfig.pseudo_threshold, help="mean_teacher: a teacher detection above this score is a pseudo-label (Adaptive Teacher's Cityscapes -> Foggy config: 0.8)")  # fmt: skip
    adapt.add_argument("--unsup_weight", type=NON_NEGATIVE_FLOAT, default=AdaptationConfig.unsup_weight, help="mean_teacher: weight of the pseudo-label loss")  # fmt: skip
    adapt.add_argument("--burn_in", type=NON_NEGATIVE_INT, default=AdaptationConfig.burn_in, help="mean_teacher: source-only iterations before the teacher is copied from the student (default: a fifth of the run, Adaptive Teacher's 20k of 100k)")  # fmt: skip
    adapt.add_argument("--teacher_bn", choices=("train", "eval"), default=AdaptationConfig.teacher_bn, help="mean_teacher: the teacher's BatchNorm normalises each weak batch with its own statistics (train, Adaptive Teacher's) or uses its running ones (eval)")  # fmt: skip
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--end_epoch", "--epochs", dest="end_epoch", type=POSITIVE_INT, default=100)
    optim.add_argument("--batch_size", type=POSITIVE_INT, default=32, help="global batch, split over processes")
    optim.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    optim.add_argument("--lr", type=POSITIVE_FLOAT, default=1e-3)
    optim.add_argument("--momentum", type=bounded(float, 0, 1, high_open=True), default=0.9)
    optim.add_argument("--weight_decay", type=NON_NEGATIVE_FLOAT, default=5e-4)
    optim.add_argument("--schedule", choices=["cosine", "multistep", "paper_voc"], default="cosine",
                       help="paper_voc: lr 1e-3, x0.1 at 80k and 100k of 120k iterations of 32 images, in epochs")  # fmt: skip
    optim.add_argument(
        "--milestones", type=POSITIVE_INT, nargs="*", default=[], help="multistep: epochs of the x gamma drops"
    )
    optim.add_argument("--gamma", type=POSITIVE_FLOAT, default=0.1)
    optim.add_argument("--warmup_epochs", type=NON_NEGATIVE_FLOAT, default=None,
                       help="linear lr warmup; default 1 epoch, none with --schedule paper_voc (the paper has none)")  # fmt: skip
    optim.add_argument(
        "--max_grad_norm", type=NON_NEGATIVE_FLOAT, default=0.0, help="clip gradients to this norm (0: off)"
    )
    optim.add_argument("--no_channels_last", action="store_true", help="keep NCHW memory format")
    optim.add_argument("--fused_optimizer", action="store_true",
                       help="one fused kernel for the whole optimizer step (a GPU lever; the same update up to rounding)")  # fmt: skip
    optim.add_argument("--cuda_graph", action="store_true",
                       help="a GPU lever: record the step once as a CUDA graph and replay it (targets padded, --amp in "
                            "bfloat16, the optimizer fused; docs/performance.md, 'Training fast on one GPU'); on a CPU the same step runs eagerly")  # fmt: skip
    run = parser.add_argument_group("run")
    add_device_flags(run)
    add_workers_flag(run)
    run.add_argument("--seed", type=NON_NEGATIVE_INT, default=0)
    run.add_argument("--sync_bn", action="store_true",
                     help="with torchrun: BatchNorm statistics over the global batch, so N processes train as one")  # fmt: skip
    run.add_argument("--resume", default=None, help="a last.pth, or 'auto' for the newest under --project")
    run.add_argument(
        "--save_period", type=POSITIVE_INT, default=1, help="save last.pth every N epochs (and at the end)"
    )
    run.add_argument("--eval_interval", type=NON_NEGATIVE_INT, default=1, help="evaluate every N epochs (0: never)")
    run.add_argument("--eval_batch_size", type=POSITIVE_INT, default=32)
    run.add_argument(
        "--eval_metric", choices=METRICS, default=None, help="default: the dataset's (coco for COCO, else voc07)"
    )
    run.add_argument(
        "--epochs_per_run",
        type=NON_NEGATIVE_INT,
        default=0,
        help="stop after N epochs and save, for time-limited jobs (0: off)",
    )
    run.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard (if installed)")
    add_run_flags(run, "runs/train")
    return add_hyphen_aliases(parser)


def main(args: argparse.Namespace) -> int:
    device = select_device(args.device)
    dist = init_distributed(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    if not dist.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        defaults = TrainConfig.from_dict(vars(get_args_parser().parse_args([])))
        typed = getattr(args, "typed_flags", frozenset())  # utils.cli.parse_args records them
        settings, checkpoint, resume_path = resolve_run(TrainConfig.from_dict(vars(args)), typed, defaults,
                                                        device, dist)  # fmt: skip
        return Trainer(settings, device, dist, checkpoint, resume_path).fit()
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        cleanup()


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
