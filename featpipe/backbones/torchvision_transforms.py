"""What ``<Enum>.transforms()`` gives for featpipe's torchvision members, generated from torchvision
0.29.1+cu130 by ``python tests/parity.py --write-torchvision-table`` (do not edit: regenerate). Read by
:class:`featpipe.backbones.reference.TorchvisionTransforms` without importing torch; tests/test_parity.py compares
it with the installed torchvision."""

TORCHVISION_VERSION = '0.29.1+cu130'
TORCHVISION_TRANSFORMS = {
    'DenseNet121_Weights.IMAGENET1K_V1': {'input_size': 224, 'resize_size': 256, 'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225), 'interpolation': 'bilinear', 'resize_mode': 'shorter', 'channels': 3},
    'DenseNet161_Weights.IMAGENET1K_V1': {'input_size': 224, 'resize_size': 256, 'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225), 'interpolation': 'bilinear', 'resize_mode': 'shorter', 'channels': 3},
    'EfficientNet_B4_Weights.IMAGENET1K_V1': {'input_size': 380, 'resize_size': 384, 'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225), 'interpolation': 'bicubic', 'resize_mode': 'shorter', 'channels': 3},
    'ResNet18_Weights.IMAGENET1K_V1': {'input_size': 224, 'resize_size': 256, 'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225), 'interpolation': 'bilinear', 'resize_mode': 'shorter', 'channels': 3},
    'ResNet50_Weights.IMAGENET1K_V1': {'input_size': 224, 'resize_size': 256, 'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225), 'interpolation': 'bilinear', 'resize_mode': 'shorter', 'channels': 3},
    'ViT_B_16_Weights.IMAGENET1K_V1': {'input_size': 224, 'resize_size': 256, 'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225), 'interpolation': 'bilinear', 'resize_mode': 'shorter', 'channels': 3},
}
