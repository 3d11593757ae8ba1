"""LeNet-5, AlexNet, VGG and ResNet-18, and the notes' parameter/shape table."""
from .alexnet import alexnet, alexnet_cifar
from .lenet import lenet5, lenet5_notes
from .resnet import resnet18_cifar
from .summary import Summary, summary
from .vgg import vgg16, vgg_cifar

MODELS = {"lenet5": lenet5, "lenet5_notes": lenet5_notes, "alexnet": alexnet,
          "alexnet_cifar": alexnet_cifar, "vgg16": vgg16, "vgg_cifar": vgg_cifar,
          "resnet18_cifar": resnet18_cifar}

__all__ = ["MODELS", "Summary", "alexnet", "alexnet_cifar", "lenet5", "lenet5_notes",
           "resnet18_cifar", "summary", "vgg16", "vgg_cifar"]
