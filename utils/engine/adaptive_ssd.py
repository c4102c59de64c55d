"""The network a domain adaptation step runs: the detector and the modules its methods train, as one module
(:class:`AdaptiveSSD`), so that one DistributedDataParallel forward covers the source and the target passes."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from layers.domain import GlobalDomainClassifier, ImageDomainClassifier, LocalDomainClassifier, grad_reverse
from layers.i3net import ClassPresenceHead, Prototypes, RandomLayer, joint_feature
from ssd import SSD
from utils.engine.da_config import TAPS, AdaptationConfig

Outputs = dict[str, Tensor | list[Tensor]]


class AdaptiveSSD(nn.Module):
    """The detector and the modules its adaptation trains, as one module, so that one DistributedDataParallel
    forward covers both domains.

    ``forward(source, target)`` returns one dict of outputs per domain (``target``'s is None without target
    images): the detector's ``loc`` [B, P, 4] and ``conf`` [B, P, C], and what the method's losses read: the
    domain classifiers' logits (reached through the gradient reversal), I3Net's class-presence logits, joint
    features and prototype maps.

    Args:
        detector: the student network.
        config: the methods and hyperparameters.
        seed: seeds I3Net's random layer.
    """

    def __init__(self, detector: SSD, config: AdaptationConfig, seed: int = 0) -> None:
        super().__init__()
        self.detector, self.config = detector, config
        self.parts = nn.ModuleDict()
        methods = config.methods
        taps = getattr(detector, "tap_channels", {})  # Backbone.tap_names' channels (check_network: present)
        local, glob = TAPS
        width = detector.config.width
        if "grl" in methods and not config.swda:
            channels = detector.source_channels()
            if not 1 <= config.grl_levels <= len(channels):
                raise ValueError(f"--grl_levels {config.grl_levels} must lie in 1..{len(channels)}, the source maps")
            self.parts["image"] = nn.ModuleList(ImageDomainClassifier(channels[i]) for i in range(config.grl_levels))
        if config.swda or "i3net" in methods:
            self.parts["local"] = LocalDomainClassifier(taps[local], width)
            self.parts["global"] = GlobalDomainClassifier(taps[glob], width)
        if "i3net" in methods:
            num_foreground = detector.num_classes - 1
            self.priors_per_location = [head.out_channels // 4 for head in detector.loc]
            channels = detector.source_channels()
            if not all(0 <= layer < len(channels) for layer in config.pa_layers):
                raise ValueError(f"--pa_layers {list(config.pa_layers)} must name source maps 0..{len(channels) - 1}")
            self.parts["presence"] = ClassPresenceHead(taps[glob], num_foreground)
            self.parts["random"] = RandomLayer((taps[glob], self.priors_per_location[0] * detector.num_classes),
                                               seed=seed)  # fmt: skip
            self.parts["prototypes"] = nn.ModuleList(Prototypes(num_foreground, channels[i]) for i in config.pa_layers)

    def forward(self, source: Tensor, target: Tensor | None) -> tuple[Outputs, Outputs | None]:
        """source (Tensor[B, 3, S, S]) and target (Tensor[B_t, 3, S, S] | None) -> their outputs."""
        if target is None:
            return self._pass(source), None
        if "target_bn" in self.config.methods:  # the control: BatchNorm sees the target, no loss does
            with torch.no_grad():
                self.detector(target)
            return self._pass(source), None
        if self.config.da_batch == "joint":
            both = self._pass(torch.cat([source, target]))
            return _split(both, 0, source.shape[0]), _split(both, source.shape[0], None)
        return self._pass(source), self._pass(target)

    def _pass(self, images: Tensor) -> Outputs:
        parts, config = self.parts, self.config
        taps: dict[str, Tensor] = {}
        sources = self.detector.sources(images, taps if "local" in parts else None)
        loc, conf = self.detector.heads(sources)
        out: Outputs = {"loc": loc, "conf": conf}
        if "image" in parts:
            out["image"] = [clf(grad_reverse(sources[i], config.grl_lambda)) for i, clf in enumerate(parts["image"])]
        local, glob = TAPS
        if "local" in parts:
            out["local"] = parts["local"](grad_reverse(taps[local], config.grl_lambda))
            out["global"] = parts["global"](grad_reverse(taps[glob], config.grl_lambda))
        if "presence" in parts:
            layers = self._layer_conf(sources, conf)
            out["presence"] = parts["presence"](taps[glob])
            # ssd_I3N.py:266: ``self.get_feature_vector(feat1, feat2.detach())`` (feat2: the first head's logits); in
            # float32 whatever the autocast (its random map's products are small differences of large numbers).
            with torch.autocast(images.device.type, enabled=False):
                out["joint"] = joint_feature(taps[glob], layers[0].detach(), parts["random"])
            out["pa_features"] = [sources[i] for i in config.pa_layers]
            out["pa_conf"] = [layers[i] for i in config.pa_layers]
        return out

    def _layer_conf(self, sources: list[Tensor], conf: Tensor) -> list[Tensor]:
        """Each source map's slice of ``conf`` (Tensor[B, P, C]): Tensor[B, H*W*A, C] per map."""
        sizes = [s.shape[2] * s.shape[3] * a for s, a in zip(sources, self.priors_per_location, strict=True)]
        return list(conf.split(sizes, dim=1))


def _split(outputs: Outputs, start: int, stop: int | None) -> Outputs:
    """The images ``start:stop`` of a joint pass's outputs."""
    return {k: ([t[start:stop] for t in v] if isinstance(v, list) else v[start:stop]) for k, v in outputs.items()}
