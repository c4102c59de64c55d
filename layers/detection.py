"""Turning raw network outputs into detections: softmax, decode, per-class NMS (SSD §3, "Inference").

:class:`Detect` gives per-image detections, :class:`PaddedDetect` the fixed-size outputs of an exported graph;
both run the NMS kernels of :mod:`layers.nms`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor, nn

from layers.box_utils import DEFAULT_VARIANCES, Variances, decode
from layers.cuda_graph import record_graph
from layers.nms import STATIC_NMS_ROUNDS, multiclass_nms, nms_within_groups, order_keys, rank_within, static_detect

logger = logging.getLogger(__name__)

Detections = dict[str, Tensor]


@dataclass(frozen=True)
class DetectSettings:
    """The test-time settings of :class:`Detect`, one set per model: a checkpoint stores them
    (``utils.checkpoint.DetectorInfo.postprocess``) and command-line flags override single fields.

    The defaults are Caffe SSD's test settings (``ssd_pascal.py``: score 0.01, NMS 0.45, 400 candidates per
    class, 200 detections per image). :data:`SSD_PYTORCH_SETTINGS` are ssd.pytorch's.

    Args:
        conf_thresh: a candidate's softmax score must be strictly above this.
        nms_thresh: a box whose IoU with a better box of its class exceeds this is suppressed.
        top_k: candidates per class and image that enter NMS.
        keep_top_k: detections kept per image after NMS, across classes; ``None`` keeps all.
        clip_boxes: clip decoded boxes to the image before NMS, as torchvision's SSD does (Caffe SSD and
            ssd.pytorch do not).
        decode_clamp: clamp the log-size offsets at this before decoding (``layers.box_utils.decode``); torchvision
            clamps at ``log(1000 / 16)``, Caffe SSD and ssd.pytorch not at all (None).
    """

    conf_thresh: float = 0.01
    nms_thresh: float = 0.45
    top_k: int = 400
    keep_top_k: int | None = 200
    clip_boxes: bool = False
    decode_clamp: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.conf_thresh < 1.0:
            raise ValueError(f"conf_thresh must lie in [0, 1), got {self.conf_thresh}")
        if not 0.0 <= self.nms_thresh <= 1.0:
            raise ValueError(f"nms_thresh must lie in [0, 1], got {self.nms_thresh}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        if self.keep_top_k is not None and self.keep_top_k < 1:
            raise ValueError(f"keep_top_k must be at least 1 or None, got {self.keep_top_k}")

    def override(
        self,
        conf_thresh: float | None = None,
        nms_thresh: float | None = None,
        top_k: int | None = None,
        keep_top_k: int | None = None,
    ) -> DetectSettings:
        """These settings with the fields that are not None replaced; ``keep_top_k=0`` means keep all."""
        given = {"conf_thresh": conf_thresh, "nms_thresh": nms_thresh, "top_k": top_k}
        changes = {k: v for k, v in given.items() if v is not None}
        if keep_top_k is not None:
            changes["keep_top_k"] = keep_top_k or None
        return replace(self, **changes)

    def to_dict(self) -> dict[str, float | int | bool | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DetectSettings:
        keep, clamp = data.get("keep_top_k", cls.keep_top_k), data.get("decode_clamp", cls.decode_clamp)
        return cls(float(data.get("conf_thresh", cls.conf_thresh)), float(data.get("nms_thresh", cls.nms_thresh)),
                   int(data.get("top_k", cls.top_k)), None if keep is None else int(keep),
                   bool(data.get("clip_boxes", cls.clip_boxes)), None if clamp is None else float(clamp))  # fmt: skip


# ssd.pytorch's test settings: 200 candidates per class and no per-image cap.
SSD_PYTORCH_SETTINGS = DetectSettings(top_k=200, keep_top_k=None)


class Detect:
    """Post-process ``(loc, conf)`` logits into per-image detections, on the inputs' device.

    Per image and per foreground class: keep priors with score > ``conf_thresh``, keep the ``top_k`` best,
    suppress overlaps above ``nms_thresh`` (greedy, IoU in float64); then keep the ``keep_top_k`` best detections
    of the image across classes. Equal scores rank the lower prior index first, then the lower class. The result
    is exactly that of this loop over images and classes, for any boxes (negative, huge, tiny), so an image gives
    the same detections alone and anywhere in a batch. All classes of all images go through NMS together
    (:func:`layers.nms.nms_within_groups`, on the CPU whatever the device), and with a ``keep_top_k`` cap only as many of each
    image's best candidates as it takes to fill the cap (exact too, see ``_suppress``).

    The defaults are Caffe SSD's test settings. ``Detect(C, top_k=200, keep_top_k=None)`` reproduces
    ssd.pytorch's ``Detect`` (whose cross-class top-k step has no effect).

    On a GPU that path would wait for the device several times per call, and torchvision's CUDA NMS kernel is not
    exact (it compares the IoU with the threshold rounded to float32). There, with a ``keep_top_k`` cap, Detect
    runs :func:`layers.nms.static_detect` instead, recorded once per input shape as a CUDA graph and replayed, reads back once
    which images it settled, and recomputes the others by the path above: the same detections, bit for bit, as
    that path on that device (tested on the CPU, where ``static=True`` runs the same tensor operations).

    Args:
        num_classes: C, including the background.
        conf_thresh: a candidate's softmax score must be strictly above this.
        nms_thresh: a box whose IoU with a better box of its class exceeds this is suppressed.
        top_k: candidates per class and image that enter NMS.
        keep_top_k: detections kept per image after NMS, across classes; ``None`` keeps all.
        variances: decoding variances.
        clip_boxes: clip the decoded boxes to the image (``[0, 1]``) before NMS, as torchvision's SSD does.
        decode_clamp: clamp of the log-size offsets in decoding (torchvision: ``log(1000 / 16)``); None: no clamp.
        static: run :func:`static_detect` (and the exact path for the images it does not settle): True, False, or
            None for on a GPU with a ``keep_top_k`` cap only (on a CPU the exact path is faster, and True there
            tests the GPU's logic; without a cap an image settles only when all its candidates fit in
            ``candidates``, so most would be computed twice). On a GPU it is recorded as a CUDA graph.
        candidates: the best (prior, class) pairs per image that :func:`static_detect` looks at. By default
            ``4 * keep_top_k``, the first prefix the exact path tries, enough unless NMS removes three candidates in
            four; without a cap 1024, as the [M, M] IoU matrix grows with the square. Without a cap an image
            settles only when all its candidates fit (those above ``conf_thresh`` and among the ``top_k`` of
            their class), so a model with more needs a larger value or falls back to the exact path.
        rounds: iterations of :func:`static_detect`'s NMS; an image whose NMS needs more is recomputed exactly.
    """

    def __init__(
        self,
        num_classes: int,
        conf_thresh: float = 0.01,
        nms_thresh: float = 0.45,
        top_k: int = 400,
        keep_top_k: int | None = 200,
        variances: Variances = DEFAULT_VARIANCES,
        clip_boxes: bool = False,
        decode_clamp: float | None = None,
        static: bool | None = None,
        candidates: int | None = None,
        rounds: int = STATIC_NMS_ROUNDS,
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must count the background and at least one class, got {num_classes}")
        if candidates is not None and candidates < 1:
            raise ValueError(f"candidates must be at least 1 or None, got {candidates}")
        if rounds < 0:
            raise ValueError(f"rounds must be at least 0, got {rounds}")
        self.num_classes = num_classes
        self.settings = DetectSettings(conf_thresh, nms_thresh, top_k, keep_top_k, clip_boxes, decode_clamp)
        self.variances = variances
        self.static = static
        if candidates is None:
            candidates = 1024 if keep_top_k is None else 4 * keep_top_k
        self.candidates, self.rounds = candidates, rounds
        # (input shapes, dtypes, device, priors) -> (graph, its input buffers, the priors it reads, its outputs)
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor, tuple[Tensor, ...]]] = {}
        # One memory pool for all of them: they never run at the same time, and what a replay leaves is read (the
        # summary) or copied (the detections) before the next.
        self._pool = None

    # The settings' fields, read where Detect applies them.
    conf_thresh = property(lambda self: self.settings.conf_thresh)
    nms_thresh = property(lambda self: self.settings.nms_thresh)
    top_k = property(lambda self: self.settings.top_k)
    keep_top_k = property(lambda self: self.settings.keep_top_k)
    clip_boxes = property(lambda self: self.settings.clip_boxes)
    decode_clamp = property(lambda self: self.settings.decode_clamp)

    @classmethod
    def from_settings(cls, num_classes: int, settings: DetectSettings, static: bool | None = None) -> Detect:
        """The Detect of ``settings`` for a network with ``num_classes`` outputs per prior."""
        return cls(num_classes, settings.conf_thresh, settings.nms_thresh, settings.top_k, settings.keep_top_k,
                   clip_boxes=settings.clip_boxes, decode_clamp=settings.decode_clamp, static=static)  # fmt: skip

    @torch.no_grad()
    def __call__(self, loc_preds: Tensor, conf_preds: Tensor, priors: Tensor) -> list[Detections]:
        """Detect objects.

        Args:
            loc_preds (Tensor[B, P, 4]): regression logits.
            conf_preds (Tensor[B, P, C]): class logits (softmax is applied here).
            priors (Tensor[P, 4]): cxcywh.

        Returns:
            B dicts with ``boxes`` (Tensor[K, 4], xyxy, relative, clipped only with ``clip_boxes``), ``scores``
            (Tensor[K], descending) and ``labels`` (Tensor[K], int64 in 1..C-1).
        """
        num_classes = conf_preds.shape[2]
        if num_classes != self.num_classes:
            raise ValueError(f"conf_preds has {num_classes} classes but Detect was built for {self.num_classes}")
        on_gpu = conf_preds.device.type == "cuda"
        if not (on_gpu and self.keep_top_k is not None if self.static is None else self.static):
            return self._exact(loc_preds, conf_preds, priors)
        if on_gpu:
            replayed = self._replay(loc_preds, conf_preds, priors)
            if replayed is None:  # the graph could not be recorded
                return self._exact(loc_preds, conf_preds, priors)
            summary, boxes, scores, labels = replayed
        else:
            summary, boxes, scores, labels = self._static_outputs(loc_preds, conf_preds, priors)
        counts, settled = summary.tolist()  # the one wait for the device
        results: list[Detections] = [
            {"boxes": boxes[i, :count], "scores": scores[i, :count], "labels": labels[i, :count]}
            for i, count in enumerate(counts)
        ]
        unsettled = [i for i, done in enumerate(settled) if not done]
        if unsettled:
            index = torch.tensor(unsettled, device=conf_preds.device)
            for i, result in zip(unsettled, self._exact(loc_preds[index], conf_preds[index], priors), strict=True):
                results[i] = result
        return results

    def _static_outputs(self, loc_preds: Tensor, conf_preds: Tensor, priors: Tensor) -> tuple[Tensor, ...]:
        """:func:`static_detect` with ``num_detections`` and ``settled`` stacked (Tensor[2, B], int64), so that
        one copy to the host reads both; then boxes, scores and labels."""
        num_detections, boxes, scores, labels, settled = static_detect(
            loc_preds, conf_preds, priors, self.settings, self.variances, self.candidates, self.rounds
        )
        return torch.stack((num_detections, settled.long())), boxes, scores, labels

    def _replay(self, loc_preds: Tensor, conf_preds: Tensor, priors: Tensor) -> tuple[Tensor, ...] | None:
        """:meth:`_static_outputs` by this input shape's CUDA graph, recorded at the first call. The graph reads
        ``priors`` where they lie (the key holds their address, the cache a reference that keeps it theirs); the
        logits are copied into its buffers. Boxes, scores and labels are copies; the summary is the graph's own
        buffer, to be read before the next replay. None, and the exact path from then on, where the graph cannot
        be recorded (this GPU or PyTorch build refuses an operation, or memory runs out)."""
        key = (loc_preds.shape, loc_preds.dtype, conf_preds.shape, conf_preds.dtype, conf_preds.device,
               priors.shape, priors.dtype, priors.stride(), priors.data_ptr())  # fmt: skip
        # Buffers made under inference_mode would be inference tensors, which a later call outside it could not
        # copy into; leaving inference_mode turns gradients on, so no_grad again.
        with torch.inference_mode(False), torch.no_grad():
            if key not in self._graphs:
                try:
                    self._graphs[key] = self._capture(loc_preds, conf_preds, priors)
                except RuntimeError as error:
                    logger.warning("Detect could not record its CUDA graph (%s); it runs its exact path from now on",
                                   str(error).splitlines()[0] if str(error) else type(error).__name__)  # fmt: skip
                    self.static, self._graphs, self._pool = False, {}, None
                    return None
            graph, static_loc, static_conf, _, (summary, *outputs) = self._graphs[key]
            static_loc.copy_(loc_preds)
            static_conf.copy_(conf_preds)
            graph.replay()
            return summary, *(output.clone() for output in outputs)  # the next replay overwrites them

    def _capture(
        self, loc_preds: Tensor, conf_preds: Tensor, priors: Tensor
    ) -> tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
        """Record :meth:`_static_outputs` at these inputs' shapes (:func:`layers.cuda_graph.record_graph`)."""
        static_loc, static_conf = loc_preds.clone(), conf_preds.clone()
        graph, outputs = record_graph(
            lambda: self._static_outputs(static_loc, static_conf, priors), conf_preds.device, pool=self._pool
        )
        self._pool = self._pool if self._pool is not None else graph.pool()
        return graph, static_loc, static_conf, priors, outputs

    def _exact(self, loc_preds: Tensor, conf_preds: Tensor, priors: Tensor) -> list[Detections]:
        """The detections by NMS of the candidates that pass, on the CPU in float64 (:func:`nms_within_groups`),
        with as few of each image's candidates as the ``keep_top_k`` cap needs (:meth:`_suppress`)."""
        batch_size, num_priors, num_classes = conf_preds.shape
        scores = conf_preds.float().softmax(dim=-1)[..., 1:]  # [B, P, C-1]
        passing = scores > self.conf_thresh  # [B, P, C-1]
        num_groups = batch_size * (num_classes - 1)  # one NMS group per (image, class)
        if self.top_k < num_priors and passing.sum() > 2 * self.top_k * num_groups:
            # So many candidates that sorting them all costs more than a topk per column: drop those below their
            # column's top_k-th best score first (ties at that score stay; the cut below picks among them).
            passing &= scores >= scores.topk(self.top_k, dim=1).values[:, -1:]
        image_idx, prior_idx, class_idx = passing.nonzero(as_tuple=True)  # [M] each
        cand_scores = scores[image_idx, prior_idx, class_idx]  # [M]
        # Best score first; equal scores by prior, then class, as the per-class loop meets them.
        order = order_keys(cand_scores, prior_idx * (num_classes - 1) + class_idx).argsort(descending=True)
        image_idx, prior_idx, class_idx, cand_scores = (
            t[order] for t in (image_idx, prior_idx, class_idx, cand_scores)
        )
        group = image_idx * (num_classes - 1) + class_idx  # [M]
        per_group = torch.bincount(group, minlength=num_groups)  # [B * (C-1)]
        if per_group.max() > self.top_k:
            top = rank_within(group, per_group) < self.top_k  # each group's top_k best
            image_idx, prior_idx, class_idx, cand_scores, group = (
                t[top] for t in (image_idx, prior_idx, class_idx, cand_scores, group)
            )
        cand_boxes = decode(
            loc_preds[image_idx, prior_idx].float(), priors[prior_idx].float(), self.variances, self.decode_clamp
        )
        if self.clip_boxes:  # torchvision's SSD clips before NMS, so NMS sees the clipped boxes
            cand_boxes = cand_boxes.clamp(min=0.0, max=1.0)

        kept = self._suppress(cand_boxes, group, image_idx, batch_size).sort().values  # score desc.
        kept = kept[torch.sort(image_idx[kept], stable=True).indices]  # grouped by image
        counts = torch.bincount(image_idx[kept], minlength=batch_size).tolist()
        results: list[Detections] = []
        for per_image in torch.split(kept, counts):
            if self.keep_top_k is not None:
                per_image = per_image[: self.keep_top_k]
            results.append(
                {"boxes": cand_boxes[per_image], "scores": cand_scores[per_image], "labels": class_idx[per_image] + 1}
            )
        return results

    def _suppress(self, boxes: Tensor, group: Tensor, image_idx: Tensor, batch_size: int) -> Tensor:
        """Greedy NMS within each group: the indices kept, in no particular order.

        The candidates must come best first. A box's fate depends only on the better boxes of its group, so the
        NMS of an image's best ``n`` candidates decides those ``n`` exactly as the NMS of all of them does. With a
        ``keep_top_k`` cap, NMS runs on growing prefixes of each image's candidates until ``keep_top_k`` survive or
        the prefix is the whole list: the result is the full NMS truncated to ``keep_top_k``, for a fraction of
        the work when most candidates survive (the costly case for greedy NMS).
        """
        if self.keep_top_k is None:
            return nms_within_groups(boxes, group, self.nms_thresh)
        per_image = torch.bincount(image_idx, minlength=batch_size)  # [B] candidates of each image
        rank = rank_within(image_idx, per_image)  # position of each candidate in its image's list
        pending = torch.ones(batch_size, dtype=torch.bool, device=boxes.device)
        kept_parts: list[Tensor] = []
        prefix = 4 * self.keep_top_k  # then x4 per round: enough for one round unless NMS removes most boxes
        while True:
            take = ((rank < prefix) & pending[image_idx]).nonzero().squeeze(1)
            kept = take[nms_within_groups(boxes[take], group[take], self.nms_thresh)]
            finished = (torch.bincount(image_idx[kept], minlength=batch_size) >= self.keep_top_k) | (
                per_image <= prefix
            )
            kept_parts.append(kept[(finished & pending)[image_idx[kept]]])
            pending &= ~finished
            if not pending.any():
                return torch.cat(kept_parts)
            prefix *= 4


class PaddedDetect(nn.Module):
    """:class:`Detect` as one graph of tensor operations with fixed-size outputs: the post-processing of an
    exported end-to-end model (ONNX, ``torch.export``), in the layout of TensorRT's EfficientNMS.

    Per image and foreground class, the ``top_k`` best priors are candidates; :func:`multiclass_nms` keeps those
    above ``conf_thresh`` that survive NMS; the image keeps its ``keep_top_k`` best. The same detections as
    :class:`Detect`, up to the order of equal scores.

    Args:
        num_classes: C, including the background.
        settings: the Detect settings; ``keep_top_k`` None keeps room for every candidate.
        priors (Tensor[P, 4]): cxcywh.

    Returns (``forward(loc_preds [B, P, 4], conf_preds [B, P, C])``):
        num_detections (Tensor[B]): int64, how many rows of each image are detections.
        boxes (Tensor[B, K, 4]): relative xyxy, by descending score; padding rows are 0.
        scores (Tensor[B, K]): padding 0.
        labels (Tensor[B, K]): int64 0-based foreground class (``class_names[label]``); padding -1.
    """

    def __init__(self, num_classes: int, settings: DetectSettings, priors: Tensor) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must count the background and at least one class, got {num_classes}")
        self.num_classes, self.settings = num_classes, settings
        self.register_buffer("priors", priors, persistent=False)
        self.top_k = min(settings.top_k, priors.shape[0])
        candidates = (num_classes - 1) * self.top_k
        self.keep_top_k = min(settings.keep_top_k or candidates, candidates)

    def forward(self, loc_preds: Tensor, conf_preds: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        batch_size, num_classes, k = conf_preds.shape[0], self.num_classes - 1, self.top_k
        boxes = decode(loc_preds.float(), self.priors, clamp=self.settings.decode_clamp)  # [B, P, 4]
        if self.settings.clip_boxes:  # torchvision's SSD clips before NMS
            boxes = boxes.clamp(0.0, 1.0)
        scores = conf_preds.float().softmax(dim=-1)[..., 1:]  # [B, P, F]
        top_scores, top_priors = scores.topk(k, dim=1)  # [B, k, F]
        top_priors = top_priors.transpose(1, 2).reshape(batch_size, num_classes * k)  # [B, F*k], class-major
        cand_boxes = boxes.gather(1, top_priors.unsqueeze(-1).expand(-1, -1, 4))  # [B, F*k, 4]
        # Each class scores its own block of candidates; the other blocks score 0 (never above the threshold).
        eye = torch.eye(num_classes, dtype=top_scores.dtype, device=top_scores.device)
        cand_scores = (top_scores.transpose(1, 2).unsqueeze(2) * eye[None, :, :, None]).flatten(2)  # [B, F, F*k]
        selected = multiclass_nms(cand_boxes, cand_scores, k, self.settings.nms_thresh, self.settings.conf_thresh)
        image_idx, class_idx, box_idx = selected[:, 0], selected[:, 1], selected[:, 2]  # [M] each
        kept_scores = torch.zeros(batch_size, num_classes * k, dtype=scores.dtype, device=scores.device)
        kept_scores = kept_scores.index_put((image_idx, box_idx), cand_scores[image_idx, class_idx, box_idx])
        out_scores, out_idx = kept_scores.topk(self.keep_top_k, dim=1)  # [B, K]
        valid = out_scores > 0
        out_boxes = cand_boxes.gather(1, out_idx.unsqueeze(-1).expand(-1, -1, 4)) * valid.unsqueeze(-1)  # [B, K, 4]
        out_labels = torch.where(valid, out_idx // k, -1)
        return valid.sum(dim=1), out_boxes, out_scores, out_labels
