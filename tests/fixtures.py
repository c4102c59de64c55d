"""Writers of small datasets in the real on-disk formats (VOC XML + JPEG/PNG, COCO JSON, Cityscapes gtFine)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np


def write_image(path: Path, width: int, height: int, seed: int = 0) -> np.ndarray:
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return cv2.imread(str(path))


def voc_xml(width: int, height: int, objects: list[tuple[str, tuple, int]]) -> str:
    """A VOC annotation: objects are (name, (xmin, ymin, xmax, ymax) 1-based, difficult)."""
    parts = [f"<annotation><folder>VOC2007</folder><filename>x.jpg</filename><size><width>{width}</width>"
             f"<height>{height}</height><depth>3</depth></size>"]  # fmt: skip
    for name, (x0, y0, x1, y1), difficult in objects:
        parts.append(
            f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated><difficult>{difficult}</difficult>"
            f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        )
    parts.append("</annotation>")
    return "".join(parts)


def write_voc_folder(folder: Path, split: str, samples: dict[str, tuple[int, int, list]], suffix: str = ".jpg") -> None:
    """samples: image_id -> (width, height, objects) ; writes image, XML and the split file."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for k, (image_id, (width, height, objects)) in enumerate(samples.items()):
        write_image(folder / "JPEGImages" / f"{image_id}{suffix}", width, height, seed=k)
        (folder / "Annotations" / f"{image_id}.xml").write_text(voc_xml(width, height, objects))
    listing = folder / "ImageSets" / "Main" / f"{split}.txt"
    with listing.open("a") as handle:
        handle.writelines(f"{image_id}\n" for image_id in samples)


def write_coco(
    root: Path,
    image_set: str,
    images: list[dict],
    annotations: list[dict],
    categories: list[dict],
    nested: bool = False,
) -> None:
    """A COCO instances file and its images (``root/<set>`` or, nested, ``root/images/<set>``)."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    image_dir = root / "images" / image_set if nested else root / image_set
    for k, info in enumerate(images):
        write_image(image_dir / info["file_name"], info["width"], info["height"], seed=k)
    payload = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / f"instances_{image_set}.json").write_text(json.dumps(payload))


def write_cityscapes_image(root: Path, tree: str, split: str, city: str, name: str, width: int, height: int) -> None:
    write_image(root / tree / split / city / name, width, height)


def write_gtfine(
    root: Path, split: str, city: str, image_id: str, width: int, height: int, objects: list[dict]
) -> None:
    path = root / "gtFine" / split / city / f"{image_id}_gtFine_polygons.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"imgHeight": height, "imgWidth": width, "objects": objects}))


def oracle_ssd(
    num_classes: int, box: tuple[float, float, float, float], label: int, size: int = 300, width: float = 0.125
):
    """An SSD whose only detection, for any input, is ``box`` (relative xyxy) of class ``label`` (1..C-1).

    All weights are zero, so every head outputs its bias. Every prior is confidently background except
    anchor 0 of the last source layer (a 1x1 map: one prior), whose loc bias encodes ``box``.
    """
    import torch

    from layers.box_utils import encode
    from ssd import build_ssd

    model = build_ssd(size, num_classes, width=width)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        for conf in model.conf:
            conf.bias.view(-1, num_classes)[:, 0] = 10.0  # background everywhere
        last = model.conf[-1].bias.view(-1, num_classes)
        last[0, 0], last[0, label] = 0.0, 10.0
        prior = model.priors[-model.config.priors.boxes_per_location[-1]].unsqueeze(0)
        model.loc[-1].bias.view(-1, 4)[0] = encode(torch.tensor([box]), prior)[0]
    return model.eval()


def save_detector(model, path, class_names) -> None:  # noqa: ANN001
    """Write ``model`` as a checkpoint of this project, as train.py does (without training state)."""
    from utils.checkpoint import DetectorInfo, save_checkpoint

    save_checkpoint(path, model, DetectorInfo(model.config, tuple(class_names)))


def write_scenes(folder: Path, sizes: list[tuple[int, int]], seed: int = 0) -> list[Path]:
    """Real-looking PNG images (shapes on gradient, noisy, cluttered backgrounds; data.shapes) of (width, height)
    each; PNG, so that every decoder gives the same pixels."""
    from data.shapes import draw_sample

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (width, height) in enumerate(sizes):
        image = draw_sample(np.random.default_rng(seed + k), max(width, height))[0][:height, :width]
        paths.append(folder / f"scene{k}_{width}x{height}.png")
        assert cv2.imwrite(str(paths[-1]), np.ascontiguousarray(image))
    return paths


def calibrate_batch_norm(model, run) -> None:  # noqa: ANN001
    """Set every BatchNorm's running statistics to those of the batch ``run()`` feeds ``model``, then eval mode.

    Freshly initialised BatchNorm layers (running mean 0, variance 1) let activations shrink layer by layer in
    eval mode (torchvision's SSDLite init ends in denormal numbers, flat scores and slow arithmetic); with the
    statistics of real images they stay in range and the scores spread, as a trained model's do.
    """
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: after one batch, that batch's statistics
    model.train()
    with torch.no_grad():
        run()
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.eval()
