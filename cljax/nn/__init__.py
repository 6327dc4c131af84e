"""Flax linen models exposed as :data:`cljax.types.LogitsFn`."""
from cljax.nn.alexnet import AlexNet
from cljax.nn.cnn import CNN
from cljax.nn.conv import Conv, canonical_conv
from cljax.nn.heads import select_head
from cljax.nn.init import INITIALIZERS, kernel_initializer
from cljax.nn.mlp import MLP, check_init
from cljax.nn.model import MASKED_LOGIT, Model, as_model, mask_task_logits, rebuild
from cljax.nn.resnet import BatchStatNorm, ResNet18

__all__ = ["AlexNet", "BatchStatNorm", "ResNet18", "CNN", "Conv", "canonical_conv", "MLP",
           "check_init", "Model", "as_model", "rebuild", "select_head", "MASKED_LOGIT",
           "mask_task_logits", "INITIALIZERS", "kernel_initializer"]
