"""torchvision's vision transformers (vit_b_16 …) and ResNets (resnet18 … resnext, wide_resnet) as StagedModels."""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision
from torchvision.models import get_model, get_model_weights, list_models
from torchvision.models.vision_transformer import VisionTransformer

from vitsae_tui.engine.models import Preprocess
from vitsae_tui.engine.models.base import StagedModel, transformer_points

VERSION = torchvision.__version__
VITS = {  # patch size, heads, width, MLP width of torchvision's ViT builders (the depth is read from the weights)
    "vit_b_16": (16, 12, 768, 3072),
    "vit_b_32": (32, 12, 768, 3072),
    "vit_l_16": (16, 16, 1024, 4096),
    "vit_l_32": (32, 16, 1024, 4096),
    "vit_h_14": (14, 16, 1280, 5120),
}
RESNET_PREFIXES = ("resnet", "resnext", "wide_resnet")


def build(name: str, state: dict[str, torch.Tensor] | None) -> nn.Module:
    """torchvision's model `name`: with `state` loaded, else its DEFAULT weights through torchvision's download."""
    if state is None:
        return get_model(name, weights="DEFAULT")
    if name in VITS:
        patch, heads, width, mlp = VITS[name]
        layers = {key.split(".")[2] for key in state if key.startswith("encoder.layers.")}
        model = VisionTransformer(
            image_size=224,
            patch_size=patch,
            num_layers=len(layers),
            num_heads=heads,
            hidden_dim=width,
            mlp_dim=mlp,
            num_classes=state["heads.head.weight"].shape[0] if "heads.head.weight" in state else 1000,
        )
    else:
        model = get_model(name, weights=None, num_classes=state["fc.weight"].shape[0] if "fc.weight" in state else 1000)
    model.load_state_dict(state)
    return model


def unknown(name: str) -> str:
    """Why we cannot read torchvision's `name` block by block ("" when we can)."""
    if name in VITS or (name.startswith(RESNET_PREFIXES) and name in list_models()):
        return ""
    return (
        f"torchvision:{name} is not a torchvision ViT or ResNet; use one of {', '.join(VITS)} or resnet18 … resnet152"
    )


def has_head(model: nn.Module) -> bool:
    return True


def supports(model: nn.Module) -> str:
    if isinstance(model, VisionTransformer) or all(hasattr(model, a) for a in ("layer1", "layer4", "fc")):
        return ""
    return f"{type(model).__name__} is not a torchvision ViT or ResNet"


def preprocess(name: str) -> Preprocess:
    """The evaluation transform of the name's DEFAULT weights (read from torchvision, no download)."""
    transform = get_model_weights(name).DEFAULT.transforms()
    return Preprocess(
        size=int(transform.crop_size[0]),
        resize=int(transform.resize_size[0]),
        interpolation=transform.interpolation.value,
        mean=tuple(float(m) for m in transform.mean),
        std=tuple(float(s) for s in transform.std),
    )


class _VitEmbed(nn.Module):
    def __init__(self, vit: VisionTransformer):
        super().__init__()
        self.vit = vit

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        x = vit._process_input(images)  # (B, H*W, d)
        x = torch.cat([vit.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return vit.encoder.dropout(x + vit.encoder.pos_embedding)  # (B, 1 + H*W, d)


class _VitReadout(nn.Module):
    def __init__(self, vit: VisionTransformer):
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.heads(self.vit.encoder.ln(x)[:, 0])


class _ResNetReadout(nn.Module):
    def __init__(self, resnet: nn.Module):
        super().__init__()
        self.resnet = resnet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnet.fc(torch.flatten(self.resnet.avgpool(x), 1))


def wrap(model: nn.Module, name: str) -> StagedModel:
    if isinstance(model, VisionTransformer):
        grid = model.image_size // model.patch_size
        blocks = list(model.encoder.layers)
        return StagedModel(
            _VitEmbed(model),
            blocks,
            _VitReadout(model),
            transformer_points(len(blocks)),
            preprocess(name),
            patch_grid=(grid, grid),
            special=("cls",),
        )
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    points = [["stem"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
    return StagedModel(stem, stages, _ResNetReadout(model), points, preprocess(name), spatial=True)


def class_names(model: nn.Module, name: str) -> tuple[str, ...]:
    categories = get_model_weights(name).DEFAULT.meta.get("categories") or ()
    n_classes = model.heads.head.out_features if isinstance(model, VisionTransformer) else model.fc.out_features
    return tuple(categories) if len(categories) == n_classes else ()
