"""The metadata of an exported file: what its detector is and what its graph takes and returns.

ONNX (``metadata_props``), ``torch.export`` (the extra file ``ssd.json``) and TorchScript (``_extra_files``) each
store a map of strings to strings. :class:`ExportMetadata` is the one place that names its entries:
``utils.deploy.export`` writes it, ``utils.predict`` reads it back. The detector's entries are
:class:`utils.checkpoint.DetectorInfo`'s, as JSON; the others are plain strings::

    {"model_config": "{...}", "class_names": "[...]", "preprocess": "{...}", "postprocess": "{...}",
     "static_batch": "0", "outputs": "loc,conf", "input": "preprocessed", "precision": "fp32"}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.checkpoint import DetectorInfo

# What a graph returns, by kind: its output names. The ``outputs`` entry joins them with commas, except for the
# end-to-end graph (NMS inside, TensorRT EfficientNMS's padded layout), which it calls "detections".
OUTPUT_NAMES: dict[str, tuple[str, ...]] = {
    "raw": ("loc", "conf"),
    "decoded": ("boxes", "scores"),
    "detections": ("num_detections", "boxes", "scores", "labels"),
}
# What a graph takes: the preprocessed batch [B, 3, S, S], or uint8 BGR images [B, H, W, 3] it preprocesses itself.
INPUT_KINDS: tuple[str, ...] = ("preprocessed", "uint8_bgr_hwc")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")


def _outputs_entry(outputs: str) -> str:
    return "detections" if outputs == "detections" else ",".join(OUTPUT_NAMES[outputs])


@dataclass(frozen=True)
class ExportMetadata:
    """What an exported file records about itself.

    Args:
        info: the detector; its ``postprocess`` are the export's Detect settings, which a ``detections`` graph
            applies inside.
        outputs: a key of :data:`OUTPUT_NAMES`: ``raw`` ``(loc [B, P, 4], conf [B, P, C])``, ``decoded`` (relative
            xyxy boxes [B, P, 4], softmax scores [B, P, C]) or ``detections``.
        input_kind: one of :data:`INPUT_KINDS`.
        static_batch: the graph's fixed batch size; None: a dynamic batch.
        precision: one of :data:`PRECISIONS`, the network's arithmetic (post-processing stays float32).
    """

    info: DetectorInfo
    outputs: str = "raw"
    input_kind: str = "preprocessed"
    static_batch: int | None = None
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.outputs not in OUTPUT_NAMES:
            raise ValueError(f"outputs must be one of {sorted(OUTPUT_NAMES)}, got {self.outputs!r}")
        if self.input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {self.input_kind!r}")
        if self.static_batch is not None and self.static_batch < 1:
            raise ValueError(f"static_batch must be at least 1 or None, got {self.static_batch}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def to_strings(self) -> dict[str, str]:
        """The entries as the file formats store them: the :class:`DetectorInfo` entries as JSON, then the graph's."""
        return {key: json.dumps(value) for key, value in self.info.to_dict().items()} | {
            "static_batch": str(self.static_batch or 0),  # 0: dynamic
            "outputs": _outputs_entry(self.outputs),
            "input": self.input_kind,
            "precision": self.precision,
        }

    @classmethod
    def from_strings(cls, entries: Mapping[str, str], source: str | Path) -> ExportMetadata:
        """Inverse of :meth:`to_strings`. Entries of other tools are ignored; the graph's entries that files
        exported before them lack take the values those files had (``loc,conf``, ``preprocessed``, a dynamic
        batch, ``fp32``), as the detector's do (:meth:`DetectorInfo.from_dict`).

        Raises:
            ValueError: naming ``source`` and the entry, where an entry is missing (a file without
                ``model_config`` was not exported by this project) or holds a value that cannot be read.
        """
        if "model_config" not in entries:
            raise ValueError(
                f"{source} lacks this project's metadata (no 'model_config' entry); export it with "
                "python -m utils.deploy.export"
            )

        def bad(key: str, problem: str) -> ValueError:
            return ValueError(
                f"{source}: bad metadata: entry {key!r} {problem}; re-export it (python -m utils.deploy.export)"
            )

        detector: dict[str, Any] = {}
        for key in DetectorInfo.KEYS:
            if key in entries:
                try:
                    detector[key] = json.loads(entries[key])
                except json.JSONDecodeError as error:
                    raise bad(key, f"is not JSON ({error})") from error
        try:
            info = DetectorInfo.from_dict(detector)
        except ValueError as error:
            raise ValueError(
                f"{source}: bad metadata: {error}; re-export it (python -m utils.deploy.export)"
            ) from error

        kinds = {_outputs_entry(kind): kind for kind in OUTPUT_NAMES}
        outputs = entries.get("outputs", _outputs_entry("raw"))
        if outputs not in kinds:
            raise bad("outputs", f"is {outputs!r}, not one of {sorted(kinds)}")
        input_kind = entries.get("input", "preprocessed")
        if input_kind not in INPUT_KINDS:
            raise bad("input", f"is {input_kind!r}, not one of {list(INPUT_KINDS)}")
        static_batch = entries.get("static_batch", "0")
        if not (static_batch.isascii() and static_batch.isdigit()):
            raise bad("static_batch", f"is {static_batch!r}, not a batch size (0: dynamic)")
        precision = entries.get("precision", "fp32")
        if precision not in PRECISIONS:
            raise bad("precision", f"is {precision!r}, not one of {list(PRECISIONS)}")
        return cls(info, kinds[outputs], input_kind, int(static_batch) or None, precision)
