"""The domain-adaptation benchmarks' presets (Clipart1k, Watercolor2k, Comic2k, Sim10k, KITTI, CityscapesCar) on
fixtures in their real formats, the KITTI converter, unlabeled target folders, and scoring a model by class name."""

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from data.build import build_dataset
from data.config import BAM_CLASSES, VOC_CLASSES, DatasetPreset, get_preset
from data.unlabeled import TARGET_SPLIT, UnlabeledImages
from data.voc import UnknownClassError
from tests.fixtures import (
    oracle_ssd,
    save_detector,
    write_cityscapes_image,
    write_gtfine,
    write_image,
    write_voc_folder,
)
from utils.augmentations import TargetViews
from utils.checkpoint import DetectorInfo
from utils.cli import run_cli
from utils.evaluation.evaluate import evaluate
from utils.predict import Predictor

BOX = (0.2, 0.3, 0.6, 0.9)  # what the oracle detects, relative xyxy
DOG_AT_BOX = ("dog", (21, 16, 61, 46), 0)  # BOX on a 100x50 image, 1-based VOC corners


def boxes_and_labels(dataset, index: int = 0) -> tuple[list[list[float]], list[int]]:  # noqa: ANN001
    anno = dataset.pull_anno(index)
    return anno.boxes.tolist(), anno.labels.tolist()


# --- presets -----------------------------------------------------------------------------------------------------


def test_presets_fix_classes_splits_and_drops() -> None:
    assert get_preset("clipart1k").class_names == VOC_CLASSES
    assert BAM_CLASSES == ("bicycle", "bird", "car", "cat", "dog", "person")
    for name in ("Watercolor2k", "Comic2k"):
        preset = get_preset(name)
        assert preset.class_names == BAM_CLASSES and preset.drop == ()
        assert (preset.image_set("train"), preset.image_set("test")) == ("train", "test")
    sim10k, kitti, cityscapes_car = get_preset("Sim10k"), get_preset("KITTI"), get_preset("CityscapesCar")
    assert sim10k.class_names == kitti.class_names == cityscapes_car.class_names == ("car",)
    assert sim10k.drop == ("motorbike", "person") and (sim10k.train_split, sim10k.test_split) == ("trainval", None)
    assert kitti.drop == ("Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc")
    assert (kitti.train_split, kitti.test_split) == ("trainval", None)
    assert cityscapes_car.drop == ("person", "rider", "truck", "bus", "train", "motorcycle", "bicycle")
    assert (cityscapes_car.train_split, cityscapes_car.test_split) == ("trainval", "test")
    assert get_preset("VOC").image_set("train") == "2007:trainval,2012:trainval"
    assert get_preset("COCO").image_set("test") == "val2017"
    # What each annotation name becomes: a label, or None (its boxes are dropped); any other name is an error.
    assert sim10k.annotation_labels() == {"car": 0, "motorbike": None, "person": None}


def test_a_classes_file_replaces_the_drops_but_keeps_the_splits(tmp_path: Path) -> None:
    (tmp_path / "classes.txt").write_text("car\nperson\n")
    preset = get_preset("Sim10k", tmp_path / "classes.txt")
    assert preset.class_names == ("car", "person") and preset.drop == () and preset.test_split is None


def test_an_inconsistent_preset_is_refused() -> None:
    with pytest.raises(ValueError, match="'truck' is not among the classes"):
        DatasetPreset("X", ("car",), rename=(("lorry", "truck"),))
    with pytest.raises(ValueError, match=r"annotation names \['car'\] are declared twice"):
        DatasetPreset("X", ("car",), drop=("Car",))


def test_a_dataset_without_a_test_split_asks_for_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--dataset KITTI has no test split of its own .* with --image_set"):
        build_dataset(get_preset("KITTI"), tmp_path, "test")


# --- VOC-format benchmarks: what each preset reads, drops and refuses ----------------------------------------------


def test_watercolor_reads_its_six_classes_and_refuses_a_seventh(tmp_path: Path) -> None:
    root = tmp_path / "watercolor"
    write_voc_folder(root, "train", {"1": (100, 50, [("bicycle", (1, 2, 30, 40), 0), ("Person", (5, 6, 50, 45), 1)])})
    write_voc_folder(root, "test", {"2": (100, 50, [DOG_AT_BOX, ("cat", (60, 5, 99, 49), 0)])})
    train = build_dataset(get_preset("Watercolor2k"), root, "train", keep_difficult=True)
    assert train.ids == ["1"] and boxes_and_labels(train) == ([[0, 1, 29, 39], [4, 5, 49, 44]], [0, 5])
    test = build_dataset(get_preset("Watercolor2k"), root, "test")
    assert test.ids == ["2"] and boxes_and_labels(test) == ([[20, 15, 60, 45], [59, 4, 98, 48]], [4, 3])
    write_voc_folder(root, "test", {"3": (100, 50, [("horse", (1, 1, 9, 9), 0)])})  # a VOC class, not Watercolor's
    with pytest.raises(UnknownClassError, match=r"3\.xml has an object of class 'horse', which is not among the 6"):
        build_dataset(get_preset("Watercolor2k"), root, "test")
    assert boxes_and_labels(build_dataset(get_preset("Clipart1k"), root, "test"), 1) == ([[0, 0, 8, 8]], [12])


@pytest.mark.parametrize("listed", ["3384827", "3384827.jpg"])  # SWDA's lists keep the suffix
def test_sim10k_keeps_cars_and_drops_the_names_it_declares(tmp_path: Path, listed: str) -> None:
    root = tmp_path / "sim10k"
    objects = [("car", (11, 21, 110, 80), 0), ("motorbike", (1, 1, 5, 5), 0), ("person", (2, 2, 9, 30), 0),
               ("car", (150, 40, 199, 99), 0)]  # fmt: skip
    write_voc_folder(root, "trainval", {"3384827": (200, 100, objects)})
    (root / "ImageSets/Main/trainval.txt").write_text(f"{listed}\n")
    dataset = build_dataset(get_preset("Sim10k"), root, "train")
    assert dataset.ids == ["3384827"]
    assert boxes_and_labels(dataset) == ([[10, 20, 109, 79], [149, 39, 198, 98]], [0, 0])


def test_sim10k_refuses_a_name_it_does_not_declare(tmp_path: Path) -> None:
    root = tmp_path / "sim10k"
    write_voc_folder(root, "trainval", {"1": (200, 100, [("car", (11, 21, 110, 80), 0), ("truck", (1, 1, 9, 9), 0)])})
    message = (f"annotation {root / 'Annotations' / '1.xml'} has an object of class 'truck', which is not among the 1 "
               "classes (car) nor among the names whose boxes this dataset drops (motorbike, person); pass the right "
               "--dataset or --classes file")  # fmt: skip
    with pytest.raises(UnknownClassError) as error:
        build_dataset(get_preset("Sim10k"), root, "train")
    assert str(error.value) == message


def test_a_preset_can_rename_an_annotation_name_to_a_class(tmp_path: Path) -> None:
    write_voc_folder(tmp_path, "trainval", {"1": (100, 50, [("Van", (1, 2, 30, 40), 0), ("car", (5, 6, 50, 45), 0)])})
    preset = DatasetPreset("Custom", ("car",), rename=(("van", "car"),), drop=("bus",))
    assert boxes_and_labels(build_dataset(preset, tmp_path, "train")) == ([[0, 1, 29, 39], [4, 5, 49, 44]], [0, 0])
    write_voc_folder(tmp_path, "trainval", {"2": (100, 50, [("truck", (1, 2, 30, 40), 0)])})
    with pytest.raises(UnknownClassError, match=r"'truck', which is not among the 1 classes \(car\), the names read as "
                                                r"one of them \(van -> car\) nor among the names whose boxes this "
                                                r"dataset drops \(bus\)"):  # fmt: skip
        build_dataset(preset, tmp_path, "train")


def test_a_missing_split_names_those_the_folder_has(tmp_path: Path) -> None:
    write_voc_folder(tmp_path, "train", {"1": (100, 50, [])})
    write_voc_folder(tmp_path, "test", {"2": (100, 50, [])})
    with pytest.raises(
        FileNotFoundError, match=r"trainval\.txt does not exist; .* Its ImageSets/Main has test, train$"
    ):
        build_dataset(DatasetPreset("Custom", ("car",)), tmp_path, "train")


def test_cityscapes_car_reads_the_converters_folder_for_cars_only(tmp_path: Path) -> None:
    from utils.prepare_cityscapes_to_voc import convert

    root = tmp_path / "cityscapes"
    objects = [{"label": "car", "polygon": [[10, 5], [30, 4], [28, 20], [12, 22]]},
               {"label": "person", "polygon": [[40, 2], [50, 2], [45, 30]]},
               {"label": "truck", "polygon": [[2, 3], [8, 9]]},
               {"label": "car", "polygon": [[50, 10], [70, 12], [60, 40]]}]  # fmt: skip
    write_gtfine(root, "val", "frankfurt", "frankfurt_000000_000294", 64, 32, objects)
    write_cityscapes_image(root, "leftImg8bit", "val", "frankfurt", "frankfurt_000000_000294_leftImg8bit.png", 64, 32)
    convert(root, tmp_path / "cs", None, "0.02")
    dataset = build_dataset(get_preset("CityscapesCar"), tmp_path / "cs", "test")
    # The second car runs off the 64x32 image: clipped by the converter to x 63, y 31.
    assert boxes_and_labels(dataset) == ([[10, 4, 30, 22], [50, 10, 63, 31]], [0, 0])
    assert len(build_dataset(get_preset("Cityscapes"), tmp_path / "cs", "test").pull_anno(0).labels) == 4


# --- KITTI -> VOC ------------------------------------------------------------------------------------------------

KITTI_LABELS = {
    "000000": [
        "Car 0.00 0 1.55 10.40 5.60 40.20 30.70 1.50 1.60 3.90 -1.00 1.70 20.00 1.50",
        "Van 0.50 1 -1.20 50.00 10.00 70.00 20.00 2.00 1.80 4.50 2.00 1.70 25.00 -1.20",
        "DontCare -1 -1 -10 0.00 0.00 20.00 10.00 -1 -1 -1 -1000 -1000 -1000 -10",
        "Car 0.30 2 0.10 80.70 20.20 120.00 49.90 1.40 1.60 3.50 4.00 1.60 15.00 0.20",  # runs off the image
        "Person_sitting 0.00 0 0.00 0.00 0.00 5.00 5.00 1.00 1.00 1.00 1.00 1.00 1.00 1.00",
    ],
    "000001": [],  # no objects: a background-only image
}


def write_kitti(root: Path, labels: dict[str, list[str]]) -> None:
    (root / "training" / "label_2").mkdir(parents=True)
    for k, (image_id, lines) in enumerate(labels.items()):
        (root / "training" / "label_2" / f"{image_id}.txt").write_text("".join(f"{line}\n" for line in lines))
        write_image(root / "training" / "image_2" / f"{image_id}.png", 100, 50, seed=k)


def kitti_cli(*args: str) -> int:
    from utils.prepare_kitti_to_voc import get_args_parser, main

    return run_cli(main, get_args_parser(), list(args))


def test_kitti_converter_writes_voc_corners_and_the_preset_keeps_cars(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    write_kitti(tmp_path / "kitti", KITTI_LABELS)
    assert kitti_cli("--kitti_root", str(tmp_path / "kitti"), "--out", str(tmp_path / "voc")) == 0
    assert "2 images in ImageSets/Main/trainval.txt; objects: Car 2, Van 1, Truck 0" in capsys.readouterr().out
    out = tmp_path / "voc"
    assert (out / "ImageSets/Main/trainval.txt").read_text() == "000000\n000001\n"
    assert (out / "JPEGImages/000000.png").read_bytes() == (tmp_path / "kitti/training/image_2/000000.png").read_bytes()
    xml = ET.parse(out / "Annotations/000000.xml").getroot()
    written = [(o.findtext("name"), [int(o.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")])
               for o in xml.iter("object")]  # fmt: skip
    # 0-based KITTI floats -> rounded, clipped to 0..99 x 0..49, + 1: VOC's 1-based corners. DontCare is not written.
    assert written == [("Car", [11, 7, 41, 32]), ("Van", [51, 11, 71, 21]), ("Car", [82, 21, 100, 50]),
                       ("Person_sitting", [1, 1, 6, 6])]  # fmt: skip
    dataset = build_dataset(get_preset("KITTI"), out, "train")
    assert dataset.ids == ["000000", "000001"]
    assert boxes_and_labels(dataset, 0) == ([[10, 6, 40, 31], [81, 20, 99, 49]], [0, 0])  # Van, Person_sitting dropped
    assert boxes_and_labels(dataset, 1) == ([], [])
    with pytest.raises(UnknownClassError, match="class 'Van'"):  # Sim10k declares no Van
        build_dataset(get_preset("Sim10k"), out, "train")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("Car 0.00 0 1.55 10.40 5.60 40.20", "7 fields, but a KITTI label line has 15 (type truncated occluded"),
        ("Bus 0 0 0 1 1 2 2 1 1 1 1 1 1 1", "unknown object type 'Bus'; KITTI's are Car, Van, Truck"),
        ("Car 0.00 0 1.55 ten 5.60 40.20 30.70 1.50 1.60 3.90 -1.00 1.70 20.00 1.50", "a field is not a number"),
        ("Car 0.00 0 1.55 40.20 5.60 10.40 30.70 1.50 1.60 3.90 -1.00 1.70 20.00 1.50", "ends before it starts"),
    ],
)
def test_a_bad_kitti_line_is_one_error_naming_file_and_line(tmp_path: Path, capsys, line: str, message: str) -> None:  # noqa: ANN001
    write_kitti(tmp_path / "kitti", {"000000": [KITTI_LABELS["000000"][0], line]})
    assert kitti_cli("--kitti_root", str(tmp_path / "kitti"), "--out", str(tmp_path / "voc")) == 2
    stderr = capsys.readouterr().err.strip().splitlines()
    assert len(stderr) == 1 and stderr[0].startswith(f"error: {tmp_path / 'kitti/training/label_2/000000.txt'}:2: ")
    assert message in stderr[0]


def test_kitti_without_labels_is_one_error(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    assert kitti_cli("--kitti_root", str(tmp_path), "--out", str(tmp_path / "voc")) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {tmp_path / 'training' / 'label_2'} does not exist; unzip data_object_label_2.zip and "
        "data_object_image_2.zip under --kitti_root"
    ]


# --- the unlabeled target ----------------------------------------------------------------------------------------


def test_any_folder_of_images_is_a_target(tmp_path: Path) -> None:
    for name in ("b/x.png", "a/deeper/y.jpg", "c.JPG", ".cache/z.png"):
        write_image(tmp_path / "target" / name, 20, 10)
    (tmp_path / "target" / "notes.txt").write_text("not an image")
    target = UnlabeledImages([(tmp_path / "target", TARGET_SPLIT)], TargetViews(32))
    assert [p.relative_to(tmp_path / "target").as_posix() for p in target.paths] == [
        "a/deeper/y.jpg",
        "b/x.png",
        "c.JPG",
    ]
    assert target[0].shape == (1, 3, 32, 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty holds no images"):
        UnlabeledImages([(tmp_path / "empty", TARGET_SPLIT)], TargetViews(32))


def test_a_target_without_trainval_gives_its_train_split(tmp_path: Path) -> None:
    # Watercolor2k's folder: train.txt and test.txt only (I3Net adapts to the train images).
    write_voc_folder(tmp_path / "watercolor", "train", {"1": (20, 10, []), "2": (20, 10, [])})
    write_voc_folder(tmp_path / "watercolor", "test", {"3": (20, 10, [])})
    target = UnlabeledImages([(tmp_path / "watercolor", TARGET_SPLIT)], TargetViews(32))
    assert [p.name for p in target.paths] == ["1.jpg", "2.jpg"]
    (tmp_path / "watercolor/ImageSets/Main/train.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"trainval\.txt does not exist; .* Its ImageSets/Main has test$"):
        UnlabeledImages([(tmp_path / "watercolor", TARGET_SPLIT)], TargetViews(32))


# --- scoring a model on the classes it shares with the dataset ------------------------------------------------------


def watercolor_test(tmp_path: Path) -> Path:
    """Two images, each with a dog at BOX and a person elsewhere."""
    write_voc_folder(tmp_path / "watercolor", "test", {
        "a": (100, 50, [DOG_AT_BOX, ("person", (70, 2, 95, 20), 0)]),
        "b": (100, 50, [DOG_AT_BOX, ("person", (1, 1, 15, 12), 0)]),
    })  # fmt: skip
    return tmp_path / "watercolor"


@pytest.mark.parametrize(
    "model_classes",
    [
        VOC_CLASSES,  # the source model of VOC -> Watercolor2k: dog is its class 12, Watercolor's is 5
        tuple(reversed(VOC_CLASSES)),
        ("bicycle", "bird", "car", "cat", "person", "dog"),  # Watercolor's order with dog and person swapped
    ],
)
def test_detections_of_dog_are_scored_against_the_datasets_dog(tmp_path: Path, model_classes: tuple) -> None:
    model = oracle_ssd(len(model_classes) + 1, BOX, label=1 + model_classes.index("dog"))
    predictor = Predictor.for_model(model, DetectorInfo(model.config, model_classes))
    dataset = build_dataset(get_preset("Watercolor2k"), watercolor_test(tmp_path), "test", predictor.transform)
    result = evaluate(predictor, dataset, batch_size=2, progress=False)
    shared = tuple(name for name in BAM_CLASSES if name in model_classes)
    assert list(result["ap"]) == list(shared) == result["classes"]["scored"]
    assert result["ap"]["dog"] == 1.0 and result["ap"]["person"] == 0.0
    assert result["map"] == pytest.approx(0.5)  # dog and person; the 4 classes without ground truth are left out
    assert [d["labels"].tolist() for d in result["detections"]] == [[4], [4]]  # Watercolor's dog


def test_a_model_with_fewer_classes_is_scored_on_those_it_has(tmp_path: Path) -> None:
    model = oracle_ssd(3, BOX, label=2)
    predictor = Predictor.for_model(model, DetectorInfo(model.config, ("sheep", "dog")))
    dataset = build_dataset(get_preset("Watercolor2k"), watercolor_test(tmp_path), "test", predictor.transform)
    result = evaluate(predictor, dataset, batch_size=2, progress=False)
    assert result["ap"] == {"dog": 1.0} and result["map"] == 1.0  # person is not scored: the model has no person
    assert result["classes"] == {"scored": ["dog"], "model_only": ["sheep"],
                                 "dataset_only": ["bicycle", "bird", "car", "cat", "person"]}  # fmt: skip


def test_eval_py_reports_the_shared_classes_and_refuses_none(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    import eval as eval_script

    weights, unrelated = tmp_path / "voc.pth", tmp_path / "shapes.pth"
    save_detector(oracle_ssd(21, BOX, 1 + VOC_CLASSES.index("dog")), weights, VOC_CLASSES)
    save_detector(oracle_ssd(5, BOX, 1), unrelated, ("circle", "square", "triangle", "star"))
    common = ["--dataset", "Watercolor2k", "--dataset_root", str(watercolor_test(tmp_path)), "--num_workers", "0",
              "--device", "cpu", "--project", str(tmp_path / "runs")]  # fmt: skip
    assert run_cli(eval_script.main, eval_script.get_args_parser(), ["--weights", str(weights), *common]) == 0
    out = capsys.readouterr().out
    assert ("scored on the 6 classes the model and the dataset share by name: bicycle, bird, car, cat, dog, person; "
            "the model's 14 other classes are not scored (aeroplane, boat, bottle, bus, chair, cow, diningtable, "
            "horse, motorbike, pottedplant and 4 more)") in out  # fmt: skip
    assert "voc07 mAP = 0.5000 (area mAP 0.5000) over 2 images" in out
    assert run_cli(eval_script.main, eval_script.get_args_parser(), ["--weights", str(unrelated), *common]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {unrelated} was trained for 4 classes but the dataset has 6, and they share no class name (model: "
        "circle, square, triangle, star; dataset: bicycle, bird, car, cat, dog, person); pick the matching --dataset "
        "or --classes"
    ]
    table = (tmp_path / "runs/exp1/ap.csv").read_text().splitlines()
    assert table[1:] == ["bicycle,,0", "bird,,0", "car,,0", "cat,,0", "dog,1.000000,2", "person,0.000000,2",
                         "mean,0.500000,"]  # fmt: skip
