"""Forward + backward + Adam step of an smp U-Net (EfficientNet-Lite0), default vs channels-last memory format.

python benchmarks/channels_last.py
"""

import time

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F


def images_per_s(channels_last: bool, batch: int = 16, size: int = 160, steps: int = 5) -> float:
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 2, (batch, size, size))
    model = smp.Unet("tu-tf_efficientnet_lite0", encoder_weights=None, classes=2)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for i in range(steps + 2):
        if i == 2:
            started = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return batch * steps / (time.perf_counter() - started)


if __name__ == "__main__":
    for flag in (False, True, False, True):
        print(f"channels_last={flag}: {images_per_s(flag):.1f} images/s")
