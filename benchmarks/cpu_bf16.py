"""Training step speed on CPU, float32 against bfloat16 autocast (``train.cpu_amp``), as ``fit`` runs it: an smp
U-Net (EfficientNet-Lite0) in channels-last format, the forward pass under autocast, the loss in float32, then
backward and an Adam step. Alternating pairs after a warm-up; one JSON line per size.

python benchmarks/cpu_bf16.py            # sizes 128 and 256, batch 16, 3 pairs of 4 timed steps each
"""

import json
import time

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F


def images_per_s(model, optimizer, x, y, bf16: bool, steps: int = 4) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return len(x) * steps / (time.perf_counter() - started)


def measure(size: int, batch: int = 16, pairs: int = 3) -> dict:
    torch.manual_seed(0)
    model = smp.Unet("tu-tf_efficientnet_lite0", encoder_weights=None, classes=2).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch, size, size))
    for bf16 in (False, True):  # warm-up, untimed
        images_per_s(model, optimizer, x, y, bf16, steps=1)
    fp32, bf16 = [], []
    for pair in range(pairs):
        for flag in (False, True) if pair % 2 == 0 else (True, False):
            (bf16 if flag else fp32).append(round(images_per_s(model, optimizer, x, y, flag), 2))
    ratios = [round(b / f, 3) for f, b in zip(fp32, bf16, strict=True)]
    return {
        "bench": "cpu_bf16",
        "size": size,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "fp32_img_s": fp32,
        "bf16_img_s": bf16,
        "pair_ratios": ratios,
        "ratio": sorted(ratios)[len(ratios) // 2],
    }


if __name__ == "__main__":
    for size in (128, 256):
        print(json.dumps(measure(size)), flush=True)
