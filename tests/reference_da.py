"""Plain restatements of what the domain adaptation references compute, written anew for the fidelity tests
(tests/test_da_fidelity.py): loops where the reference loops, one function per reference function, each with the
reference's file:line. They are checked against the project's vectorised versions on the same weights and inputs.

References (read at the commits of their default branches): czzbb/I3Net (``ssd_I3N.py``, ``train_I3N.py``),
VisionLearningGroup/DA_Detection (SWDA), facebookresearch/adaptive_teacher.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def weight_ce_loss(pre: Tensor, target: int, weight: Tensor) -> Tensor:
    """I3Net train_I3N.py:501-509: ``-weight * log(clamp(softmax(pre), 1e-6, 1)[:, target])``, averaged."""
    losses = []
    for row in range(pre.shape[0]):
        p = F.softmax(pre[row], dim=0).clamp(1e-6, 1)[target]
        losses.append(-weight[row] * torch.log(p))
    return torch.stack(losses).mean()


def focal_loss_softmax(inputs: Tensor, targets: Tensor, gamma: float) -> Tensor:
    """DA_Detection lib/model/utils/net_utils.py:150-178 (``FocalLoss`` with ``sigmoid=False``, alpha 1,
    ``size_average``): ``-(1 - p)^gamma log p`` of each row's target class, averaged."""
    losses = []
    for row in range(inputs.shape[0]):
        p = F.softmax(inputs[row], dim=0)[int(targets[row])]
        losses.append(-((1 - p) ** gamma) * torch.log(p))
    return torch.stack(losses).mean()


def dcbr_w1_weight(cls_pre: Tensor) -> Tensor:
    """I3Net train_I3N.py:511-516."""
    rows = []
    for row in cls_pre:
        valid = [p for p in row if p > 0.5]
        rows.append(sum(valid, torch.tensor(0.0)) / (len(valid) + 1e-7) + 1)
    return torch.stack(rows)


def dcbr_weight(gcr_pre_t: Tensor, old_state: Tensor, img_per_epoch: int) -> Tensor:
    """I3Net train_I3N.py:206-213 (past epoch 20): ``(w1 + w2) * 0.5`` with ``w2 = exp(1 - old_state[argmax] /
    img_per_epoch)``."""
    ind_max_cls = torch.argmax(gcr_pre_t.detach(), 1)
    w1 = dcbr_w1_weight(gcr_pre_t.sigmoid().detach())
    w2 = torch.stack([torch.exp(1 - old_state[int(i)] / img_per_epoch) for i in ind_max_cls])
    return (w1 + w2) * 0.5


def get_fea_list(fea: Tensor, pre: Tensor, num_classes: int) -> list[Tensor]:
    """I3Net ssd_I3N.py:346-358. fea [B, H, W, Ch] (the map permuted), pre [B, H, W, A*C] (its head's logits);
    one mean feature per foreground class, an empty tensor for an absent one."""
    fea = fea.reshape(-1, fea.shape[-1])
    pre = pre.reshape(-1, pre.shape[-1])
    max_ind = torch.max(pre, -1)[1] % num_classes
    fea_list = []
    for i in range(1, num_classes):
        rows = [fea[n] for n in range(fea.shape[0]) if max_ind[n] == i]
        fea_list.append(torch.stack(rows).mean(0) if rows else torch.tensor([]))
    return fea_list


def moving_average(fea_lists: list[list[Tensor]], cur_fea_lists: list[list[Tensor]]) -> list[list[Tensor]]:
    """I3Net ssd_I3N.py:319-328, returning the new lists instead of assigning ``self.fea_lists``."""
    new = [list(layer) for layer in fea_lists]
    for i in range(len(cur_fea_lists)):
        for j in range(len(cur_fea_lists[0])):
            if cur_fea_lists[i][j].numel():
                if new[i][j].numel():
                    new[i][j] = new[i][j].detach() * 0.7 + cur_fea_lists[i][j] * 0.3
                else:
                    new[i][j] = cur_fea_lists[i][j]
            else:
                new[i][j] = new[i][j].detach()
    return new


def contrasive_separation(f1: Tensor, f2: Tensor) -> Tensor:
    """I3Net train_I3N.py:406-410."""
    dis = torch.pow(f1 - f2, 2.0).mean().sqrt()
    loss = torch.pow(torch.max(1 - dis, torch.tensor(0.0)), 2.0)
    return loss * torch.pow(1 - dis, 2.0)


def get_pa_loss(fea_list: list[Tensor], fea_list_t: list[Tensor]) -> Tensor:
    """I3Net train_I3N.py:363-404: the intra-class and inter-class terms of one map's prototypes."""
    intra_loss, cnt = torch.tensor(0.0), 0
    for fea, fea_t in zip(fea_list, fea_list_t, strict=True):
        if fea.numel() and fea_t.numel():
            intra_loss = intra_loss + torch.pow(fea - fea_t, 2.0).mean()
            cnt += 1
    if cnt:
        intra_loss = intra_loss / cnt
    inter_loss, cnt = torch.tensor(0.0), 0
    for i in range(len(fea_list)):
        src_1, tgt_1 = fea_list[i], fea_list_t[i]
        for j in range(i + 1, len(fea_list)):
            src_2, tgt_2 = fea_list[j], fea_list_t[j]
            for a, b in ((src_1, src_2), (src_1, tgt_2), (tgt_1, src_2), (tgt_1, tgt_2)):
                if a.numel() and b.numel():
                    inter_loss = inter_loss + contrasive_separation(a, b)
                    cnt += 1
    if cnt:
        inter_loss = inter_loss / cnt
    return intra_loss + inter_loss


def get_kl_loss(pre_lists: list[Tensor], num_classes: int) -> Tensor:
    """I3Net ssd_I3N.py:288-316. Each of the two ``pre`` is a head's logits [B, H, W, A*C]."""
    kl_lists = []
    for pre in pre_lists:
        pre = pre.reshape(-1, pre.shape[-1]) / 2
        pre = pre.reshape(pre.shape[0], -1, num_classes)
        pre = F.softmax(pre, dim=-1).mean(1)
        max_ind = torch.max(pre, -1)[1]
        kl_list = []
        for i in range(1, num_classes):
            rows = [pre[n] for n in range(pre.shape[0]) if max_ind[n] == i]
            kl_list.append(torch.stack(rows).mean(0) + 1e-6 if rows else torch.tensor([]))
        kl_lists.append(kl_list)
    loss, cnt = torch.tensor(0.0), 0
    p_list, q_list = kl_lists
    for i in range(num_classes - 1):
        p, q = p_list[i], q_list[i]
        if p.numel() and q.numel():
            tmp = p * torch.log(p / q) + q * torch.log(q / p)
            loss = loss + tmp.mean() / 2
            cnt += 1
    if cnt:
        loss = loss / cnt
    return loss


def random_layer(inputs: list[Tensor], matrices: list[Tensor], output_dim: int) -> Tensor:
    """I3Net ssd_I3N.py:135-140 (``RandomLayer.forward``)."""
    products = [torch.mm(x, m) for x, m in zip(inputs, matrices, strict=True)]
    out = products[0] / math.pow(float(output_dim), 1.0 / len(products))
    for single in products[1:]:
        out = torch.mul(out, single)
    return out


def get_feature_vector(f1: Tensor, f2: Tensor, num_classes: int, matrices: list[Tensor]) -> Tensor:
    """I3Net ssd_I3N.py:330-343. f1 [B, Ch, H, W] (relu(conv4_3)), f2 [B, H, W, A*C] (the first head's logits)."""
    bs = f1.shape[0]
    f1 = f1.permute(0, 2, 3, 1).reshape(-1, f1.shape[1])
    f2 = f2.reshape(-1, f2.shape[-1])
    f2 = f2.reshape(f2.shape[0], -1, num_classes)
    f2 = F.softmax(f2, dim=-1).reshape(f2.shape[0], -1)
    feat = random_layer([f1, f2], matrices, matrices[0].shape[1])
    feat = feat.pow(2).mean(1).reshape(bs, -1)
    return F.normalize(feat, p=2, dim=1).mean(0)


def net_d_pixel(x: Tensor, w1: Tensor, w2: Tensor, w3: Tensor) -> Tensor:
    """I3Net ssd_I3N.py:52-61 (SWDA's netD_pixel, ``context=False``): three 1x1 convolutions, a sigmoid."""
    x = F.relu(F.conv2d(x, w1))
    x = F.relu(F.conv2d(x, w2))
    return torch.sigmoid(F.conv2d(x, w3))


def net_d(x: Tensor, convs: list[Tensor], norms: list[torch.nn.BatchNorm2d], fc: torch.nn.Linear) -> Tensor:
    """I3Net ssd_I3N.py:75-87 (``netD``) without dropout (the tests run it in eval mode): three stride-2 3x3
    convolutions with BatchNorm and ReLU, average pooling, the linear layer."""
    for weight, norm in zip(convs, norms, strict=True):
        x = F.relu(norm(F.conv2d(x, weight, stride=2, padding=1)))
    x = F.avg_pool2d(x, (x.shape[2], x.shape[3])).reshape(-1, x.shape[1])
    return fc(x)


def net_gcr_simple(x: Tensor, conv: torch.nn.Conv2d) -> Tensor:
    """I3Net ssd_I3N.py:123-126: adaptive average pooling, then the 1x1 convolution."""
    return conv(F.adaptive_avg_pool2d(x, (1, 1))).squeeze(-1).squeeze(-1)


def gt_classes2cls_onehot(targets: list[Tensor], classes: int) -> Tensor:
    """I3Net train_I3N.py:413-420."""
    onehot = torch.zeros(len(targets), classes)
    for i, target in enumerate(targets):
        for row in target:
            onehot[i, int(row[-1])] = 1
    return onehot


def update_teacher_model(teacher: dict[str, Tensor], student: dict[str, Tensor], keep_rate: float) -> dict[str, Tensor]:
    """Adaptive Teacher adapteacher/engine/trainer.py:701-719 (``_update_teacher_model``): every state_dict entry
    becomes ``student * (1 - keep_rate) + teacher * keep_rate``."""
    return {key: student[key] * (1 - keep_rate) + value * keep_rate for key, value in teacher.items()}


def threshold_scores(scores: Tensor, thres: float) -> Tensor:
    """Adaptive Teacher adapteacher/engine/trainer.py:433: the ROI head's detections kept as pseudo-labels,
    ``scores > thres``."""
    return torch.tensor([float(s) > thres for s in scores])
