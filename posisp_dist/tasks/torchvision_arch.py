"""Light torchvision detectors for small images on a CPU, assembled from torchvision's own parts.

torchvision's lightest builders are sized for COCO (SSDlite at a fixed 320 px, R-CNNs and one-stage models on
ResNet-50 with 256-channel pyramids). On 128-pixel renders and two CPU cores they cost 4x (FCOS-R50) to 14x
(Faster R-CNN MobileNetV3-320) the training time of the same detector on a ResNet-18 body with a 64-channel
pyramid (measured: 16 images, one training step, 0.57 s against 2.3 s and 7.8 s). Both builders follow the
torchvision builder signature, so `task.builder: posisp_dist.tasks.torchvision_arch:fcos_resnet18_fpn` works
like a torchvision name; they never download (`weights` must be None).
"""

from __future__ import annotations

from typing import Any

from torch import nn


def _body(fpn_channels: int, extra: str) -> nn.Module:
    from torchvision.models import resnet18
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

    c = fpn_channels
    if extra == "p6p7":  # FCOS / RetinaNet: P3-P7
        layers, in_ch = {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512]
        extra_blocks: nn.Module = LastLevelP6P7(c, c)
    else:  # R-CNN: P2-P5 + pool
        layers, in_ch = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}, [64, 128, 256, 512]
        extra_blocks = LastLevelMaxPool()
    return BackboneWithFPN(resnet18(weights=None), layers, in_ch, c, extra_blocks=extra_blocks)


def _no_hub(weights: Any, weights_backbone: Any) -> None:
    if weights is not None or weights_backbone is not None:
        raise ValueError("these light detectors have no pretrained weights; train them here or load a state_dict")


def fcos_resnet18_fpn(
    *, weights: Any = None, weights_backbone: Any = None, num_classes: int = 91, fpn_channels: int = 64,
    min_size: int = 128, max_size: int = 128, **kwargs: Any,
) -> nn.Module:
    """FCOS (anchor-free, no proposal sampling: a deterministic loss) on ResNet-18 + a light FPN."""
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    _no_hub(weights, weights_backbone)
    anchors = AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((1.0,),) * 5)
    return FCOS(_body(fpn_channels, "p6p7"), num_classes, min_size=min_size, max_size=max_size,
                anchor_generator=anchors, **kwargs)


def maskrcnn_resnet18_fpn(
    *, weights: Any = None, weights_backbone: Any = None, num_classes: int = 91, fpn_channels: int = 64,
    representation: int = 256, min_size: int = 128, max_size: int = 128, **kwargs: Any,
) -> nn.Module:
    """Mask R-CNN on ResNet-18 + a light FPN, with box and mask heads sized to it."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    _no_hub(weights, weights_backbone)
    c = fpn_channels
    anchors = AnchorGenerator(((16,), (32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 5)
    return MaskRCNN(
        _body(c, "pool"), None, min_size=min_size, max_size=max_size, rpn_anchor_generator=anchors,
        box_head=TwoMLPHead(c * 7 * 7, representation), box_predictor=FastRCNNPredictor(representation, num_classes),
        mask_head=MaskRCNNHeads(c, (c, c, c, c), 1), mask_predictor=MaskRCNNPredictor(c, c, num_classes), **kwargs,
    )
