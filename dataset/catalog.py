"""The data sets and loaders by name, in a module light enough for option parsing to import."""

DATASETS = ("cifar100", "cifar10", "imagenet", "digits")
LOADERS = ("fast", "torchvision")
BAD_IMAGE_CHOICES = ("refuse", "skip")
