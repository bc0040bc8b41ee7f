"""Self-attention maps of a timm Vision Transformer (no labels, no gradients), used like the CAM classes:

    with ViTAttention(model, blocks=[1, 3, 5, 7, 9, 11], fusion="max") as att:
        maps = att(images)  # (N, H, W) in [0, 1], on the model's device

Capture: a forward hook on each chosen block's ``attn.qkv`` recomputes ``softmax(q_norm(q) · k_norm(k)ᵀ · scale)``
from the projection the block just made, which is timm's unfused attention (``fused_attn`` SDPA computes the same
weights without returning them); the model's own forward is left exactly as it is. Only timm's plain
``Attention`` (``vit_*``, ``deit_*``) is read; rotary or differential attention is refused.

Fusion: the head mean of each block's attention; then the query row of the class token (or, for a model without
one, the mean over the patch tokens' rows) over the patch columns (register tokens left out), and the max or mean
of those over the blocks; or ``rollout`` (Abnar & Zuidema 2020): ``Â = 0.5·A + 0.5·I`` row-normalised per block,
multiplied through the blocks in order (``R = Â_k ··· Â_1``), and the same query row of ``R``. The patch-grid map
is bilinearly upsampled to the image and min-max normalised per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from weakseg.cams.base import scale_maps, upsample

FUSIONS = ("max", "mean", "rollout")


def find_vit(model: nn.Module) -> nn.Module:
    """The timm VisionTransformer inside ``model`` (itself, or a wrapper's ``net``, e.g. weakseg's classifier)."""
    for candidate in (model, getattr(model, "net", None)):
        if isinstance(candidate, nn.Module) and hasattr(candidate, "blocks") and hasattr(candidate, "patch_embed"):
            return candidate
    raise ValueError(f"{type(model).__name__} is not a timm Vision Transformer (no blocks / patch_embed)")


def default_blocks(depth: int, fusion: str) -> list[int]:
    """Every block for ``rollout``; otherwise the odd (0-based) ones: 1, 3, ..., 11 of 12."""
    return list(range(depth)) if fusion == "rollout" else list(range(1, depth, 2))


def _check_attention(index: int, attn: nn.Module) -> None:
    from timm.layers import Attention

    if type(attn).forward is not Attention.forward or not isinstance(getattr(attn, "qkv", None), nn.Linear):
        raise ValueError(
            f"block {index}'s attention is {type(attn).__name__}: ViTAttention reads timm's plain Attention only "
            "(vit_*, deit_*), not rotary or differential attention"
        )


class ViTAttention:
    """Attention maps of a timm ViT: ``with ViTAttention(model, blocks, fusion) as att: maps = att(images)``.

    ``model``: a timm VisionTransformer or a wrapper with one as ``net`` whose ``forward_features`` takes the
    images (weakseg's wrappers normalise inside). ``blocks``: 0-based block indices (negative ones count from the
    end; None: :func:`default_blocks`). ``fusion``: ``max`` or ``mean`` over the blocks, or ``rollout``. After a
    call, ``attentions`` holds each chosen block's attention (N, heads, T, T) float32. Call ``model.eval()`` first.
    """

    def __init__(self, model: nn.Module, blocks: Sequence[int] | None = None, fusion: str = "max"):
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, not '{fusion}'")
        self.model = model
        self.vit = find_vit(model)
        depth = len(self.vit.blocks)
        chosen = default_blocks(depth, fusion) if blocks is None else list(blocks)
        if not chosen or any(not -depth <= b < depth for b in chosen):
            raise ValueError(f"blocks must be indices among the {depth} blocks (0..{depth - 1}), got {chosen}")
        self.blocks = sorted({b % depth for b in chosen})
        self.fusion = fusion
        self.prefix = int(getattr(self.vit, "num_prefix_tokens", 1))
        self.has_class_token = bool(getattr(self.vit, "has_class_token", self.prefix > 0))
        self.device = next(model.parameters()).device
        self.attentions: list[torch.Tensor] = []
        self._captured: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []
        for b in self.blocks:
            _check_attention(b, self.vit.blocks[b].attn)
        for b in self.blocks:
            attn = self.vit.blocks[b].attn
            self._handles.append(attn.qkv.register_forward_hook(self._make_hook(b, attn)))
            self._handles.append(attn.register_forward_pre_hook(self._check_mask, with_kwargs=True))

    # -- hooks ---------------------------------------------------------------------------------------------
    def _make_hook(self, index: int, attn: nn.Module):
        def hook(module: nn.Module, inputs: Any, qkv: torch.Tensor) -> None:
            n, t, _ = qkv.shape
            q, k, _ = qkv.detach().reshape(n, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            q, k = attn.q_norm(q), attn.k_norm(k)
            self._captured[index] = ((q * attn.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1)

        return hook

    @staticmethod
    def _check_mask(module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        if kwargs.get("attn_mask") is not None or kwargs.get("is_causal"):
            raise ValueError("ViTAttention does not read masked or causal attention")

    def release(self) -> None:
        """Remove the hooks from the model (done on leaving the ``with`` block)."""
        for handle in getattr(self, "_handles", []):
            handle.remove()
        self._handles = []

    def __enter__(self) -> ViTAttention:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()

    # -- maps ----------------------------------------------------------------------------------------------
    def grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """The patch grid (rows, columns) for an input of ``size``; a clear error for a size the model refuses."""
        embed = self.vit.patch_embed
        if getattr(self.vit, "dynamic_img_size", False):
            return tuple(embed.dynamic_feat_size(size))
        if getattr(embed, "img_size", None) is not None and tuple(embed.img_size) != tuple(size):
            raise ValueError(
                f"this ViT takes {tuple(embed.img_size)} images, got {tuple(size)}: create it with "
                "timm.create_model(..., dynamic_img_size=True) to take other sizes"
            )
        return tuple(embed.grid_size)

    def _query(self, matrix: torch.Tensor) -> torch.Tensor:
        """(N, T, T) -> (N, P): the class token's row, or the mean of the patch rows, over the patch columns."""
        rows = matrix[:, :1] if self.has_class_token else matrix[:, self.prefix :]
        return rows[:, :, self.prefix :].mean(dim=1)

    def fuse(self, attentions: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-patch scores (N, P) from the blocks' attentions (N, heads, T, T), by ``fusion``."""
        means = [a.float().mean(dim=1) for a in attentions]
        if self.fusion == "rollout":
            eye = torch.eye(means[0].shape[-1], device=means[0].device)
            rollout = eye.expand_as(means[0])
            for a in means:
                a = 0.5 * a + 0.5 * eye
                rollout = (a / a.sum(dim=-1, keepdim=True)) @ rollout
            return self._query(rollout)
        per_block = torch.stack([self._query(a) for a in means])
        return per_block.amax(dim=0) if self.fusion == "max" else per_block.mean(dim=0)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Maps (N, H, W) in [0, 1] for float ``images`` (N, 3, H, W)."""
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if not self._handles:
            raise RuntimeError("this ViTAttention was released; create a new one")
        size = tuple(images.shape[-2:])
        rows, cols = self.grid(size)
        self._captured = {}
        forward = getattr(self.model, "forward_features", self.model)
        with torch.no_grad():
            forward(images.to(self.device))
            missing = [b for b in self.blocks if b not in self._captured]
            if missing:
                raise RuntimeError(f"blocks {missing} did not run in the forward pass")
            self.attentions = [self._captured.pop(b) for b in self.blocks]
            tokens = self.attentions[0].shape[-1]
            if tokens - self.prefix != rows * cols:
                raise ValueError(f"{tokens - self.prefix} patch tokens do not fill a {rows}x{cols} patch grid")
            scores = self.fuse(self.attentions).reshape(len(images), rows, cols)
            return scale_maps(upsample(scores, size))
