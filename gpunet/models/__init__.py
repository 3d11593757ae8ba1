"""LeNet-5, AlexNet and VGG, and the notes' parameter/shape table."""
from .alexnet import alexnet, alexnet_cifar
from .lenet import lenet5, lenet5_notes
from .summary import Summary, summary
from .vgg import vgg16, vgg_cifar

MODELS = {"lenet5": lenet5, "lenet5_notes": lenet5_notes, "alexnet": alexnet,
          "alexnet_cifar": alexnet_cifar, "vgg16": vgg16, "vgg_cifar": vgg_cifar}

__all__ = ["MODELS", "Summary", "alexnet", "alexnet_cifar", "lenet5", "lenet5_notes",
           "summary", "vgg16", "vgg_cifar"]
