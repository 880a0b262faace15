"""AlexNet features -> 6x6 grid of tokens -> GPT blocks (no causal mask) -> linear head, with named hook points."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitsae_tui.engine.config import ModelConfig
from vitsae_tui.engine.models import NATIVE_PREPROCESS, TokenLayout
from vitsae_tui.engine.models.base import HookedModel, HookPoint, with_prefix


class AlexNetFeatures(nn.Module):
    def __init__(self, channels: tuple[int, ...], grid_size: int):
        super().__init__()
        c1, c2, c3, c4, c5 = channels
        self.layers = nn.Sequential(
            nn.Conv2d(3, c1, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(c1),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2, groups=2),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(c2),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c2, c3, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, kernel_size=3, padding=1, groups=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, kernel_size=3, padding=1, groups=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.AdaptiveAvgPool2d((grid_size, grid_size)),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)  # (B, C, G, G)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "token width must be divisible by the number of heads"
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        dropout_p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=False)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, cfg.mlp_ratio * cfg.n_embd)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.relu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.resid_pre = HookPoint()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = SelfAttention(cfg)
        self.resid_mid = HookPoint()
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)
        self.resid_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resid_pre(x)
        x = self.resid_mid(x + self.attn(self.ln_1(x)))
        return self.resid_post(x + self.mlp(self.ln_2(x)))


class VisionTransformerClassifier(HookedModel):
    preprocess = NATIVE_PREPROCESS

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.features = AlexNetFeatures(cfg.conv_channels, cfg.grid_size)
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.n_tokens, cfg.n_embd)) if cfg.learned_pos_emb else None
        self.tokens = HookPoint()
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_tokens * cfg.n_embd, cfg.n_classes)
        self.apply(self._init_weights)
        if self.pos_emb is not None:
            nn.init.normal_(self.pos_emb, mean=0.0, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        fmap = self.features(images)  # (B, C, G, G)
        x = fmap.flatten(2).transpose(1, 2)  # (B, T, C), tokens in row-major grid order
        if self.pos_emb is not None:
            x = x + self.pos_emb
        x = self.tokens(x)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        return self.head(x.flatten(1))  # (B, n_classes)

    def token_layout(self, hook: str) -> TokenLayout:
        self.hook_module(hook)
        return TokenLayout((self.cfg.grid_size, self.cfg.grid_size))

    def run_from(self, hook: str, act: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Logits when the activation at `hook` is `act` (B, T, C): only the layers after the hook run."""
        self.hook_module(hook)
        act = with_prefix(act, prefix)
        if hook == "tokens":
            start, x = 0, act
        else:
            _, index, position = hook.split(".")
            block = self.blocks[int(index)]
            if position == "resid_pre":
                start, x = int(index), act
            elif position == "resid_mid":
                start, x = int(index) + 1, act + block.mlp(block.ln_2(act))
            else:
                start, x = int(index) + 1, act
        for block in self.blocks[start:]:
            x = block(x)
        return self.head(self.ln_f(x).flatten(1))


def hook_names(cfg: ModelConfig) -> list[str]:
    """The hook points of a model with this config, in forward order, without building it."""
    names = ["tokens"]
    for i in range(cfg.n_layer):
        names += [f"blocks.{i}.resid_pre", f"blocks.{i}.resid_mid", f"blocks.{i}.resid_post"]
    return names


def default_hook(cfg: ModelConfig) -> str:
    """The residual stream near the middle: blocks.6.resid_post of 16 as in the reference, blocks.1 of 4."""
    return f"blocks.{(3 * cfg.n_layer) // 8}.resid_post"
