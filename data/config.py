"""Dataset presets, chosen by name: the class names, the prior family (a name from
:data:`layers.prior_box.PRIOR_FAMILIES`), the annotation names whose boxes are dropped or renamed, and the default
image sets of each dataset. A model's priors are never guessed from the number of classes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
# COCO's category id of each of COCO_CLASSES: 1..90 without the 10 ids that name no category in the released sets.
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))


def coco_names_by_id() -> tuple[str, ...]:
    """The names of COCO category ids 1..90 (``names[id - 1]``), ``unused_<id>`` for the 10 ids without a category:
    the classes of a detector whose class ``c`` is category id ``c``, as torchvision's COCO models are."""
    by_id = dict(zip(COCO_CATEGORY_IDS, COCO_CLASSES, strict=True))
    return tuple(by_id.get(i, f"unused_{i}") for i in range(1, 91))


# The 8 instance classes of the Cityscapes detection benchmark (as used for Cityscapes -> Foggy Cityscapes).
CITYSCAPES_CLASSES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")

SHAPES_CLASSES = ("circle", "square", "triangle", "star")

# The 6 classes of Watercolor2k and Comic2k: naoto0804/cross-domain-detection opt.py:5 (commit 3bdd4f1),
# bam_contents_classes = ('bicycle', 'bird', 'car', 'cat', 'dog', 'person').
BAM_CLASSES = ("bicycle", "bird", "car", "cat", "dog", "person")

# The car-only benchmarks (Sim10k -> Cityscapes, KITTI -> Cityscapes) keep one class. czzbb/I3Net data/sim.py:20-21
# SIM_CLASSES = ('car',), data/kitti.py:20-21 KITTI_CLASSES = ('car',), data/cityscape_car.py:20-21
# CSCAR_CLASSES = ('car',); each skips every other name (sim.py:56-57, kitti.py:56-57, cityscape_car.py:56-57:
# `if name not in ..._CLASSES: continue`).
CAR_CLASSES = ("car",)

# Every object type of a KITTI label_2 file: "'Car', 'Van', 'Truck', 'Pedestrian', 'Person_sitting', 'Cyclist',
# 'Tram', 'Misc' or 'DontCare'", the KITTI object devkit's readme.txt as public repositories quote it (the devkit
# itself was not read here). utils/prepare_kitti_to_voc.py writes all but DontCare.
KITTI_TYPES = ("Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc", "DontCare")


def annotation_labels(
    class_names: Sequence[str], rename: Sequence[tuple[str, str]] = (), drop: Sequence[str] = ()
) -> dict[str, int | None]:
    """What each annotation name (lower case) becomes: its 0-based label, or None for a name whose boxes are dropped.

    A class's own name gives its label; ``rename`` maps other annotation names to a class (``("van", "car")``); a
    name in ``drop`` has its boxes dropped. Any other name is unknown: the datasets refuse it (an unexpected name
    is a configuration error, never a silent drop).

    Raises:
        ValueError: ``rename`` names a class outside ``class_names``, or a name is declared twice.
    """
    labels: dict[str, int | None] = {name.lower(): label for label, name in enumerate(class_names)}
    for name, target in rename:
        if target.lower() not in labels:
            raise ValueError(f"rename {name!r} -> {target!r}: {target!r} is not among the classes {list(class_names)}")
    declared = [name.lower() for name, _ in rename] + [name.lower() for name in drop]
    clashes = sorted({name for name in declared if declared.count(name) > 1 or name in labels})
    if clashes:
        raise ValueError(f"annotation names {clashes} are declared twice (a class, a rename or a drop): keep one")
    labels.update({name.lower(): labels[target.lower()] for name, target in rename})
    labels.update(dict.fromkeys((name.lower() for name in drop), None))
    return labels


@dataclass(frozen=True)
class DatasetPreset:
    """What a dataset name fixes: its foreground classes, the prior family its models use, what becomes of the
    annotation names that are not its classes, and its default image sets.

    Args:
        name: the ``--dataset`` value.
        class_names: foreground classes; the network's class ``c`` is ``class_names[c - 1]``.
        prior_family: a family of :data:`layers.prior_box.PRIOR_CONFIGS`.
        rename: ``(annotation name, class name)`` pairs: boxes of that name are boxes of that class.
        drop: annotation names whose boxes are dropped (a preset that keeps a subset of a dataset's classes).
            Any name that is neither a class, renamed nor dropped is an error when the annotations are read.
        train_split, test_split: the image sets ``--dataset`` reads for training and testing, None where the
            dataset has no such split (then ``--image_set`` must name one). VOC: ``YEAR:SPLIT`` pairs; COCO: a set
            name; everything else: a file name under ``ImageSets/Main``.
    """

    name: str
    class_names: tuple[str, ...]
    prior_family: str = "VOC"
    rename: tuple[tuple[str, str], ...] = ()
    drop: tuple[str, ...] = ()
    train_split: str | None = "trainval"
    test_split: str | None = "test"

    def __post_init__(self) -> None:
        annotation_labels(self.class_names, self.rename, self.drop)  # refuses an inconsistent preset

    @property
    def num_classes(self) -> int:
        """C, including the background."""
        return len(self.class_names) + 1

    def annotation_labels(self) -> dict[str, int | None]:
        """:func:`annotation_labels` of this preset: lower-case annotation name -> label, None when dropped."""
        return annotation_labels(self.class_names, self.rename, self.drop)

    def image_set(self, split: str) -> str | None:
        """The default image set of ``split`` (``"train"`` or ``"test"``)."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return self.train_split if split == "train" else self.test_split


# czzbb/I3Net data/config.py keeps SSD300's VOC priors (min_sizes [30, 60, 111, 162, 213, 264]) for every benchmark
# below: clipart (line 36), water (line 51), comic (line 66), sim (line 111), kitti (line 126), cscar (line 141).
_DA_PRIORS = "VOC"

DATASETS: dict[str, DatasetPreset] = {
    "VOC": DatasetPreset("VOC", VOC_CLASSES, "VOC", train_split="2007:trainval,2012:trainval", test_split="2007:test"),
    # COCO's category ids (1..90 with gaps) are mapped to labels 0..79 by data/coco.py, from the file.
    "COCO": DatasetPreset("COCO", COCO_CLASSES, "COCO", train_split="train2017", test_split="val2017"),
    # Cityscapes objects are small; the COCO family has the smaller first prior (21 px at SSD300). The
    # fork's released Cityscapes weights were also trained with these priors (picked there by its
    # `num_classes == 21` test), so they evaluate correctly only with this choice. The splits are those
    # utils/prepare_cityscapes_to_voc.py writes: trainval = Cityscapes train, test = Cityscapes val.
    "Cityscapes": DatasetPreset("Cityscapes", CITYSCAPES_CLASSES, "COCO"),
    "FoggyCityscapes": DatasetPreset("FoggyCityscapes", CITYSCAPES_CLASSES, "COCO"),
    "Shapes": DatasetPreset("Shapes", SHAPES_CLASSES, "VOC"),
    # naoto0804/cross-domain-detection's folders: datasets/README.md:36 (commit 1b70f1e) "`ImageSets/Main`: list of
    # ids for each subset (i.e., `train`/`test`/`extra`)"; its eval_model.py:38 (commit 7a03747) scores 'test'.
    # Clipart1k is annotated with the 20 VOC classes (czzbb/I3Net data/cliaprt.py:20-25 CLP_CLASSES = VOC's 20).
    "Clipart1k": DatasetPreset("Clipart1k", VOC_CLASSES, _DA_PRIORS, train_split="train", test_split="test"),
    # Watercolor2k and Comic2k annotate only BAM_CLASSES. (czzbb/I3Net data/water.py:23-28 and data/comic.py:23-28
    # list VOC's 20 classes, the 6-class tuple commented out at lines 20-21, and its water and comic models keep
    # VOC's 20 classes, config.py:45 and :60 'num_classes': 21; eval.py scores such a model here on the 6 by name.)
    "Watercolor2k": DatasetPreset("Watercolor2k", BAM_CLASSES, _DA_PRIORS, train_split="train", test_split="test"),
    "Comic2k": DatasetPreset("Comic2k", BAM_CLASSES, _DA_PRIORS, train_split="train", test_split="test"),
    # Sim10k: cars only; its XMLs also name motorbike and person, whose boxes are dropped (czzbb/I3Net
    # data/sim.py:56-57 skips every name but 'car'; the two names are not checked here against the data: any
    # other name is refused, naming its file). All 10k images train (ImageSets/Main/trainval.txt; SWDA's
    # copy lists them as train.txt: VisionLearningGroup/DA_Detection lib/model/utils/parser_func.py:153
    # imdb_name = "sim10k_train"). The source of a benchmark, it has no test split of its own.
    "Sim10k": DatasetPreset("Sim10k", CAR_CLASSES, _DA_PRIORS, drop=("motorbike", "person"), test_split=None),
    # KITTI (utils/prepare_kitti_to_voc.py: every labelled training image in trainval): Car only. Van, Truck
    # and the other types are dropped, not mapped to car: czzbb/I3Net data/kitti.py:20-21 KITTI_CLASSES = ('car',)
    # and kitti.py:55-57 keep a box only if its lower-cased name is in it.
    "KITTI": DatasetPreset(
        "KITTI",
        CAR_CLASSES,
        _DA_PRIORS,
        drop=tuple(t for t in KITTI_TYPES if t not in ("Car", "DontCare")),
        test_split=None,
    ),
    # Cityscapes through utils/prepare_cityscapes_to_voc.py, car only (czzbb/I3Net data/cityscape_car.py:20-21
    # CSCAR_CLASSES = ('car',)): the target of Sim10k -> Cityscapes and KITTI -> Cityscapes, scored on Cityscapes
    # val (the test split). The other 7 classes' boxes are dropped.
    "CityscapesCar": DatasetPreset(
        "CityscapesCar", CAR_CLASSES, _DA_PRIORS, drop=tuple(c for c in CITYSCAPES_CLASSES if c != "car")
    ),
}


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """Read one class name per line (blank lines and ``#`` comments skipped; a UTF-8 byte-order mark is fine).

    Names are matched to annotations case-insensitively, so two names that differ only in case are refused, and
    so are names with a path separator (eval.py writes one results file per class, named after it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class-names file {path} does not exist; write one class name per line")
    names = tuple(
        line.strip()
        for line in path.read_text(encoding="utf-8-sig").splitlines()
        if line.strip() and not line.startswith("#")
    )
    if not names:
        raise ValueError(f"class-names file {path} lists no classes; write one class name per line")
    lowered = [n.lower() for n in names]
    if len(set(lowered)) != len(names):
        clashes = sorted({n for n in names if lowered.count(n.lower()) > 1})
        raise ValueError(
            f"class-names file {path} repeats {clashes} (names are matched case-insensitively); "
            "each class must appear once"
        )
    for name in names:
        if any(c in name for c in "/\\") or not name.isprintable():
            raise ValueError(
                f"class-names file {path}: class {name!r} contains a path separator or a control character; "
                "rename it (eval.py writes a results file named after each class)"
            )
    return names


def get_preset(name: str, classes_file: str | Path | None = None, prior_family: str = "VOC") -> DatasetPreset:
    """The preset for ``--dataset name``; ``Custom`` reads its classes from ``classes_file``."""
    if name.lower() == "custom":
        if classes_file is None:
            raise ValueError("--dataset Custom needs --classes <file> with one class name per line")
        return DatasetPreset("Custom", read_class_names(classes_file), prior_family)
    by_lower = {key.lower(): preset for key, preset in DATASETS.items()}
    if name.lower() not in by_lower:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS) + ['Custom']}")
    preset = by_lower[name.lower()]
    if classes_file is not None:
        # The file's classes replace the preset's, and with them its renames and drops: every annotation name must
        # then be one of the file's classes. The folder layout and default image sets stay the preset's.
        return replace(preset, class_names=read_class_names(classes_file), rename=(), drop=())
    return preset
