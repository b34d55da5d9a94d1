"""``lora``: low-rank adapters (peft) on the backbone's attention/MLP layers; the head trains in full.

Export merges the adapters (``merge_and_unload``) so the checkpoint is a plain model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from autotransfer.strategies import register_strategy
from autotransfer.strategies.base import Adapted, ModelBundle, Strategy

if TYPE_CHECKING:
    from torch import nn


@register_strategy
class Lora(Strategy):
    name = "lora"
    hyperparameters = {
        "lr": "learning rate of the adapters",
        "head_lr": "learning rate of the head (defaults to lr)",
        "lora_r": "adapter rank",
        "lora_alpha": "adapter scaling numerator (scale = alpha / r)",
        "lora_dropout": "dropout on the adapter input",
    }
    defaults = {"lr": 5e-4, "head_lr": None, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05}

    def apply(self, bundle: ModelBundle, config: Mapping[str, Any], phase: int = 0) -> Adapted:
        from peft import LoraConfig, get_peft_model

        if not bundle.lora_targets:
            raise ValueError("this backbone exposes no layers LoRA can adapt")
        lora_config = LoraConfig(
            r=int(self.hp(config, "lora_r")),
            lora_alpha=float(self.hp(config, "lora_alpha")),
            lora_dropout=float(self.hp(config, "lora_dropout")),
            target_modules=list(bundle.lora_targets),
            modules_to_save=list(bundle.head_modules),
            # GPT-2's layers are transformers' Conv1D (weights stored transposed): peft must know
            fan_in_fan_out=_targets_conv1d(bundle.model, bundle.lora_targets),
        )
        model = get_peft_model(bundle.model, lora_config)
        lr = float(self.hp(config, "lr"))
        head_lr = config.get("head_lr") or lr
        adapters, head = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            (adapters if "lora_" in name else head).append(p)
        return Adapted(model, self.only_trainable([{"params": adapters, "lr": lr},
                                                   {"params": head, "lr": head_lr}]))

    def finalize(self, model: nn.Module) -> nn.Module:
        from peft import PeftModel

        if isinstance(model, PeftModel):
            return model.merge_and_unload()
        return model


def _targets_conv1d(model: nn.Module, targets: list[str]) -> bool:
    """Whether the LoRA targets are transformers' ``Conv1D`` layers (GPT-2 family) rather than ``nn.Linear``."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - another transformers layout
        return False
    return any(isinstance(m, Conv1D) for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in targets)
