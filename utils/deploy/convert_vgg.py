"""Convert torchvision's ImageNet VGG-16 into SSD's reduced-fc base (a replacement for vgg16_reducedfc.pth).

SSD §3 ("Base network"): fc6 and fc7 become convolutions, sub-sampled from the fully connected weights
(a 3x3 dilated fc6 of 1024 filters, a 1x1 fc7 of 1024). The output has ssd.pytorch's bare keys
``0.weight`` ... ``33.bias`` and loads with ``utils.checkpoint.load_base_weights``.

These weights expect torchvision's preprocessing (RGB in [0, 1], minus mean (0.485, 0.456, 0.406), divided
by std (0.229, 0.224, 0.225)), not the Caffe mean subtraction that ssd.pytorch's vgg16_reducedfc.pth
expects.

Usage:
    python -m utils.deploy.convert_vgg --input vgg16-397923af.pth --output weights/vgg16_reducedfc_torchvision.pth
(torchvision's file: https://download.pytorch.org/models/vgg16-397923af.pth, or
``torchvision.models.vgg16(weights="IMAGENET1K_V1").state_dict()`` saved with torch.save.)
"""

from __future__ import annotations

import argparse
import sys

from torch import Tensor

from utils.checkpoint import StateDict, atomic_save, extract_state_dict, read_checkpoint
from utils.cli import run_cli

# torchvision vgg16.features indices of the 13 convolutions; ssd.vgg uses the same indices.
FEATURE_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
FC6_INDEX, FC7_INDEX = 31, 33  # where ssd.pytorch's vgg puts the converted fc6 and fc7


def convert_torchvision_vgg16(state: StateDict) -> StateDict:
    """Map torchvision's ``vgg16`` state_dict to the reduced-fc base.

    * conv1_1 ... conv5_3 are copied unchanged;
    * fc6 (4096 x 25088) is viewed as 4096 x 512 x 7 x 7, then every 4th filter and every 3rd tap are kept:
      a 1024 x 512 x 3 x 3 kernel, applied with dilation 6 ("atrous", SSD §3);
    * fc7 (4096 x 4096) keeps every 4th output and every 4th input: 1024 x 1024 x 1 x 1;
    * the biases keep every 4th value.

    Args:
        state: keys ``features.{i}.weight/bias`` and ``classifier.{0,3}.weight/bias``.

    Returns:
        Keys ``{i}.weight/bias`` for the 13 convolutions, ``31.*`` (fc6) and ``33.*`` (fc7).
    """
    needed = [f"features.{i}.{p}" for i in FEATURE_CONVS for p in ("weight", "bias")]
    needed += [f"classifier.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")]
    missing = [k for k in needed if k not in state]
    if missing:
        raise ValueError(
            f"not a torchvision VGG-16 state_dict: missing {missing[:3]} (and {max(0, len(missing) - 3)} more)"
        )
    fc6: Tensor = state["classifier.0.weight"]
    fc7: Tensor = state["classifier.3.weight"]
    if tuple(fc6.shape) != (4096, 512 * 7 * 7) or tuple(fc7.shape) != (4096, 4096):
        raise ValueError(
            f"fc6/fc7 have shapes {tuple(fc6.shape)}/{tuple(fc7.shape)}, expected (4096, 25088)/(4096, 4096): "
            "this is not VGG-16 (VGG-16-BN and other variants are not supported)"
        )
    out: StateDict = {}
    for i in FEATURE_CONVS:
        out[f"{i}.weight"] = state[f"features.{i}.weight"].clone()
        out[f"{i}.bias"] = state[f"features.{i}.bias"].clone()
    out[f"{FC6_INDEX}.weight"] = fc6.view(4096, 512, 7, 7)[::4, :, ::3, ::3].contiguous()  # [1024, 512, 3, 3]
    out[f"{FC6_INDEX}.bias"] = state["classifier.0.bias"][::4].clone()  # [1024]
    out[f"{FC7_INDEX}.weight"] = fc7[::4, ::4].contiguous().view(1024, 1024, 1, 1)  # [1024, 1024, 1, 1]
    out[f"{FC7_INDEX}.bias"] = state["classifier.3.bias"][::4].clone()  # [1024]
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="torchvision vgg16 state_dict (e.g. vgg16-397923af.pth)")
    parser.add_argument(
        "--output", default="weights/vgg16_reducedfc_torchvision.pth", help="where to write the reduced-fc base"
    )
    return parser


def main(args: argparse.Namespace) -> int:
    state = extract_state_dict(read_checkpoint(args.input), args.input)
    converted = convert_torchvision_vgg16(state)
    atomic_save(converted, args.output)
    print(f"wrote {args.output} ({len(converted)} tensors); these weights expect torchvision's preprocessing")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
