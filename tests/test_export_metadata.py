"""ExportMetadata: the entries exported files carry, pinned as files exported today hold them; the round trip; the
defaults of files that predate an entry; errors that name the file and the entry."""

import json
from dataclasses import replace

import pytest

from data.config import SHAPES_CLASSES
from layers.detection import DetectSettings
from layers.prior_box import prior_config
from ssd import ModelConfig
from utils.checkpoint import DetectorInfo
from utils.export_metadata import ExportMetadata
from utils.transforms import Preprocess

INFO = DetectorInfo(
    ModelConfig(300, len(SHAPES_CLASSES) + 1, prior_config("VOC", 300), width=0.125, batch_norm=True),
    SHAPES_CLASSES,
    postprocess=DetectSettings(conf_thresh=0.05, nms_thresh=0.45, top_k=100, keep_top_k=50),
)
# The entries of a raw ONNX export of INFO, copied from a file ``utils.deploy.export`` wrote.
RAW_ENTRIES = {
    "model_config": '{"size": 300, "num_classes": 5, "priors": {"image_size": 300, "feature_maps": [38, 19, 10, 5, 3, '
    '1], "steps": [8, 16, 32, 64, 100, 300], "min_sizes": [30, 60, 111, 162, 213, 264], "max_sizes": [60, 111, 162, '
    '213, 264, 315], "aspect_ratios": [[2], [2, 3], [2, 3], [2, 3], [2], [2]], "clip": true, "clip_centres": true}, '
    '"width": 0.125, "batch_norm": true, "backbone": "vgg16", "reduced_tail": false}',
    "class_names": '["circle", "square", "triangle", "star"]',
    "preprocess": '{"mean": [104.0, 117.0, 123.0], "std": null, "resize": "opencv"}',
    "postprocess": '{"conf_thresh": 0.05, "nms_thresh": 0.45, "top_k": 100, "keep_top_k": 50, "clip_boxes": false, '
    '"decode_clamp": null}',
    "static_batch": "0",
    "outputs": "loc,conf",
    "input": "preprocessed",
    "precision": "fp32",
}
# The graph's entries of an end-to-end export with preprocessing inside, float16, for a fixed batch of 1.
END_TO_END_ENTRIES = RAW_ENTRIES | {
    "static_batch": "1",
    "outputs": "detections",
    "input": "uint8_bgr_hwc",
    "precision": "fp16",
}


def test_the_entries_of_a_raw_export_read_and_write_unchanged() -> None:
    metadata = ExportMetadata.from_strings(RAW_ENTRIES, "raw.onnx")
    assert metadata == ExportMetadata(INFO)
    assert list(metadata.to_strings().items()) == list(RAW_ENTRIES.items())


def test_the_entries_of_an_end_to_end_export_read_and_write_unchanged() -> None:
    metadata = ExportMetadata.from_strings(END_TO_END_ENTRIES, "nms.onnx")
    assert metadata == ExportMetadata(INFO, "detections", "uint8_bgr_hwc", static_batch=1, precision="fp16")
    assert metadata.to_strings() == END_TO_END_ENTRIES
    decoded = replace(metadata, outputs="decoded", input_kind="preprocessed")  # TorchScript's --decoded
    assert decoded.to_strings()["outputs"] == "boxes,scores"


@pytest.mark.parametrize("outputs", ["raw", "decoded", "detections"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_round_trip(outputs: str, precision: str) -> None:
    info = replace(INFO, preprocess=Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "torchvision"))
    for static_batch in (None, 1, 8):
        metadata = ExportMetadata(info, outputs, "uint8_bgr_hwc", static_batch, precision)
        assert ExportMetadata.from_strings(metadata.to_strings(), "m.onnx") == metadata
        # As a .pt2 stores it: the entries as one JSON object.
        assert ExportMetadata.from_strings(json.loads(json.dumps(metadata.to_strings())), "m.pt2") == metadata


def test_files_that_predate_an_entry_read_with_the_values_they_had() -> None:
    oldest = {"model_config": RAW_ENTRIES["model_config"], "class_names": RAW_ENTRIES["class_names"]}
    metadata = ExportMetadata.from_strings(oldest | {"producer": "another tool's entry"}, "old.onnx")
    assert metadata == ExportMetadata(replace(INFO, postprocess=DetectSettings()))
    assert metadata.static_batch is None and metadata.input_kind == "preprocessed" and metadata.precision == "fp32"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_config": None}, "m.onnx lacks this project's metadata \\(no 'model_config' entry\\)"),
        ({"class_names": None}, "m.onnx: bad metadata: entry 'class_names' is missing"),
        ({"model_config": "{size: 300"}, "m.onnx: bad metadata: entry 'model_config' is not JSON"),
        ({"model_config": '{"size": 300}'}, "m.onnx: bad metadata: entry 'model_config' cannot be read \\(KeyError"),
        ({"preprocess": '{"resize": "pillow"}'}, "m.onnx: bad metadata: entry 'preprocess' cannot be read"),
        ({"postprocess": '{"conf_thresh": 2}'}, "m.onnx: bad metadata: entry 'postprocess' cannot be read"),
        ({"class_names": '["circle"]'}, "m.onnx: bad metadata: 1 class names for a network with 4 classes"),
        ({"outputs": "loc"}, "m.onnx: bad metadata: entry 'outputs' is 'loc'"),
        ({"input": "rgb"}, "m.onnx: bad metadata: entry 'input' is 'rgb'"),
        ({"static_batch": "-1"}, "m.onnx: bad metadata: entry 'static_batch' is '-1'"),
        ({"precision": "bf16"}, "m.onnx: bad metadata: entry 'precision' is 'bf16'"),
    ],
)
def test_a_missing_entry_or_bad_value_names_the_file_and_the_entry(change: dict, message: str) -> None:
    entries = {key: value for key, value in (RAW_ENTRIES | change).items() if value is not None}
    with pytest.raises(ValueError, match=message):
        ExportMetadata.from_strings(entries, "m.onnx")
