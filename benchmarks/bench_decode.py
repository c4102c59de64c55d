"""JPEG decoding for evaluation: OpenCV (what eval.py's loader workers run) against torchvision.io.decode_jpeg, on
the CPU and, with --device cuda, batched on the GPU (nvJPEG).

The GPU-throughput issue allows GPU decoding in eval.py only if the mAP stays that of the CPU path. Equal pixels
guarantee it; so this reports, beside the times, how many decoded images equal OpenCV's to the last bit and the
largest pixel difference. (GPU decoding also ignores EXIF orientation, which OpenCV applies; these JPEGs have none.)

    python -m benchmarks.bench_decode --images 256
    python -m benchmarks.bench_decode --device cuda --images 4952
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision.io import decode_jpeg

from benchmarks.bench_loader import write_voc_sized_set
from benchmarks.common import get_args_parser, measure, report, setup, synchronize


def main() -> None:
    parser = get_args_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="VOC-sized JPEGs (500x375) to decode per call")
    parser.set_defaults(rounds=3, warmup=1)
    args = parser.parse_args()
    device = setup(args)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_voc_sized_set(Path(tmp), args.images)
        files = sorted((folder / "JPEGImages").glob("*.jpg"))
        encoded = [np.fromfile(path, np.uint8) for path in files]
    as_tensors = [torch.from_numpy(data) for data in encoded]

    def opencv() -> list[np.ndarray]:
        return [cv2.imdecode(data, cv2.IMREAD_COLOR) for data in encoded]  # BGR [H, W, 3]

    def torchvision_cpu() -> list[torch.Tensor]:
        return [decode_jpeg(data) for data in as_tensors]  # RGB [3, H, W]

    candidates = {"OpenCV (eval.py's loader)": opencv, "torchvision decode_jpeg, CPU": torchvision_cpu}
    if device.type == "cuda":

        def torchvision_gpu() -> list[torch.Tensor]:
            decoded = decode_jpeg(as_tensors, device=device)  # one batched nvJPEG call
            synchronize(device)
            return decoded

        candidates["torchvision decode_jpeg, GPU (batched)"] = torchvision_gpu
    reference = opencv()
    for name, decode in list(candidates.items())[1:]:
        decoded = [image.permute(1, 2, 0).flip(-1).cpu().numpy() for image in decode()]  # as BGR [H, W, 3]
        differences = [
            int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) for a, b in zip(reference, decoded, strict=True)
        ]
        equal = sum(d == 0 for d in differences)
        print(f"{name}: {equal} of {len(differences)} images equal OpenCV's bit for bit; largest pixel difference "
              f"{max(differences)}")  # fmt: skip
    results = measure(candidates, rounds=args.rounds, warmup=args.warmup, number=args.number, device=device)
    report(f"decode_{args.images}", results, "OpenCV (eval.py's loader)", args, device, per_call_items=args.images)


if __name__ == "__main__":
    main()
