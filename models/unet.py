"""``UNet2DModel`` presets sized for 28x28 single-channel images."""

from __future__ import annotations

from typing import Any

from diffusers import UNet2DModel

# 28 -> 14 -> 7: two downsamplings keep every feature map an integer size; attention only at 7x7,
# where it is cheap, so the model trains at a useful speed on a laptop CPU.
# About the coursework CNN's cost per image on a CPU, with a far larger receptive field.
_TINY: dict[str, Any] = {
    "block_out_channels": (16, 32, 64),
    "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    "layers_per_block": 1,
    "norm_num_groups": 8,
}
UNET_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": _TINY,
    # The tiny preset's shape varied one way each, for the quality-per-CPU-minute benchmark: two ResNet
    # layers per level (depth), and no attention at all (attention resolutions).
    "tiny_2layers": {**_TINY, "layers_per_block": 2},
    "tiny_no_attention": {
        **_TINY,
        "down_block_types": ("DownBlock2D",) * 3,
        "up_block_types": ("UpBlock2D",) * 3,
        "add_attention": False,  # the middle block's too
    },
    "small": {
        "block_out_channels": (32, 64, 64),
        "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        "layers_per_block": 1,
        "norm_num_groups": 8,
    },
    "base": {
        "block_out_channels": (64, 128, 128),
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        "layers_per_block": 2,
        "norm_num_groups": 32,
    },
}


def unet_preset(
    name: str = "small", sample_size: int = 28, in_channels: int = 1, num_class_embeds: int | None = None
) -> UNet2DModel:
    """Build a ``UNet2DModel`` from a named preset.

    Args:
        name: one of :data:`UNET_PRESETS`.
        sample_size: image height and width (must be divisible by 4).
        in_channels: image channels (output has the same number).
        num_class_embeds: for a class-conditional network, the number of class labels including the "no
            class" label of classifier-free guidance (11 for MNIST); Diffusers adds a learned embedding of
            ``class_labels`` to the time embedding. ``None``: unconditional.

    Raises:
        ValueError: on an unknown preset name or fewer than 2 class embeddings.
    """
    if name not in UNET_PRESETS:
        raise ValueError(f"unknown UNet preset {name!r}; choose one of {sorted(UNET_PRESETS)}")
    if num_class_embeds is not None and num_class_embeds < 2:
        raise ValueError(f"num_class_embeds={num_class_embeds} must be >= 2 (or None: unconditional)")
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        num_class_embeds=num_class_embeds,
        **UNET_PRESETS[name],
    )
