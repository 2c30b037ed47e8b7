"""The shared data module and its sources."""

from genbench.data.idx import CLASS_NAMES as FASHION_MNIST_CLASSES
from genbench.data.module import ImageDataModule
from genbench.data.sources import SUPPORTED_IMAGE_SIZES, SourceSpec, load_splits

__all__ = ["FASHION_MNIST_CLASSES", "ImageDataModule", "SUPPORTED_IMAGE_SIZES", "SourceSpec", "load_splits"]
