"""MNIST-style data: loaded once into memory as tensors, and the one definition of pixel scaling.

Every part of the project (training data, pipeline outputs, evaluation inputs) converts pixels with
:func:`to_model_range` and :func:`to_unit_range`, which delegate to Diffusers' own
``VaeImageProcessor`` so that our pipelines and the stock ``DDPMPipeline`` agree on the range.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor

MNIST = "ylecun/mnist"
FASHION_MNIST = "zalando-datasets/fashion_mnist"
# The offline copies beside the project folder (as on this project's CI machines), when there are some.
LOCAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LOCAL_MNIST = LOCAL_DATA / "mnist"
LOCAL_FASHION_MNIST = LOCAL_DATA / "fashion_mnist"


def default_mnist() -> str:
    """The offline MNIST copy beside the project when present, else the Hub id ``ylecun/mnist``."""
    return str(LOCAL_MNIST) if LOCAL_MNIST.is_dir() else MNIST


def default_fashion_mnist() -> str:
    """The offline Fashion-MNIST copy beside the project when present, else its Hub id."""
    return str(LOCAL_FASHION_MNIST) if LOCAL_FASHION_MNIST.is_dir() else FASHION_MNIST


@dataclass
class ImageSplit:
    """One split of an image dataset held in memory.

    Attributes:
        images: ``uint8`` tensor of shape ``(N, 28, 28)``.
        labels: ``int64`` tensor of shape ``(N,)``.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """Map ``uint8`` images ``(N, H, W)`` or ``(N, 1, H, W)`` to float ``(N, 1, H, W)`` in ``[-1, 1]``."""
    if images.ndim == 3:
        images = images.unsqueeze(1)
    return VaeImageProcessor.normalize(images.float() / 255.0)


def to_unit_range(samples: torch.Tensor) -> torch.Tensor:
    """Map model-space samples in ``[-1, 1]`` to ``[0, 1]`` (clamped), the range of saved images."""
    return VaeImageProcessor.denormalize(samples)


def uint8_to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Map ``uint8`` images ``(N, H, W)`` to float ``(N, 1, H, W)`` in ``[0, 1]``, the evaluators' range."""
    return to_unit_range(to_model_range(images))


# The names image-classification datasets on the Hub give their image column.
IMAGE_COLUMNS = ("image", "img")


def check_dataset_name(dataset_name: str) -> None:
    """Raise ``ValueError`` if ``dataset_name`` is neither a local folder nor shaped like a Hub id.

    A Hub id is exactly ``owner/name``; anything else that is not a folder is a mistyped local path.
    """
    if not os.path.isdir(dataset_name) and (
        dataset_name.count("/") != 1 or dataset_name.startswith((".", "/", "~"))
    ):
        raise ValueError(
            f"dataset folder {dataset_name!r} does not exist; pass a local folder in the Hub's parquet "
            "layout (e.g. ../shared/data/mnist) or a Hub id such as ylecun/mnist"
        )


def load_split(dataset_name: str, split: str, limit: int | None = None) -> ImageSplit:
    """Load one split of an image-classification dataset into memory.

    Args:
        dataset_name: a Hub dataset id (``ylecun/mnist``) or a local folder in the Hub's parquet layout
            (``../shared/data/mnist``).
        split: ``train`` or ``test``.
        limit: keep only the first ``limit`` images (decoding is the slow part, so it happens after).

    Returns:
        The split's images and labels; the images are decoded once, here.

    Raises:
        ValueError: if the dataset cannot be found locally or loaded from the Hub, or lacks the split.
    """
    from datasets import load_dataset

    check_dataset_name(dataset_name)
    is_local = os.path.isdir(dataset_name)
    try:
        dataset = load_dataset(dataset_name, split=split)
    except ValueError as error:
        if "split" in str(error).lower():
            raise ValueError(f"dataset {dataset_name!r} has no split {split!r}: {error}") from error
        raise _unreachable(dataset_name, is_local, error) from error
    except Exception as error:  # the Hub client raises many connection and lookup error types
        raise _unreachable(dataset_name, is_local, error) from error
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    image_column = next((name for name in IMAGE_COLUMNS if name in dataset.column_names), None)
    if image_column is None or "label" not in dataset.column_names:
        raise ValueError(
            f"dataset {dataset_name!r} split {split!r} has columns {dataset.column_names}; it needs an image "
            f"column ({' or '.join(IMAGE_COLUMNS)}) and a label column (label)"
        )
    images = dataset.with_format("numpy")[:][image_column]
    labels = np.asarray(dataset.data.column("label"))
    return ImageSplit(torch.from_numpy(np.array(images, dtype=np.uint8)), torch.from_numpy(np.array(labels)))


def _unreachable(dataset_name: str, is_local: bool, error: Exception) -> ValueError:
    where = "the local folder" if is_local else "the Hugging Face Hub"
    return ValueError(
        f"could not load dataset {dataset_name!r} from {where} ({type(error).__name__}); "
        "pass a Hub id that is reachable (e.g. ylecun/mnist) or a local folder in the Hub's parquet "
        "layout (e.g. ../shared/data/mnist)"
    )


def write_synthetic_mnist(folder: str | os.PathLike, num_train: int, num_test: int, seed: int = 0) -> Path:
    """Write an MNIST look-alike in the Hub's parquet layout, for tests and smoke runs that need no download.

    Each 28x28 image is dim noise with a bright bar whose height encodes its label, so a model can learn it.

    Returns:
        ``folder``, which ``datasets.load_dataset`` (and :func:`load_split`) read offline.
    """
    from datasets import ClassLabel, Dataset, Features, Image

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    for split, count in (("train", num_train), ("test", num_test)):
        labels = rng.integers(0, 10, count)
        images = rng.integers(0, 40, (count, 28, 28), dtype=np.uint8)
        for image, label in zip(images, labels, strict=True):
            image[4 + 2 * label : 6 + 2 * label, 4:24] = 255
        dataset = Dataset.from_dict({"image": list(images), "label": labels.tolist()}, features=features)
        (folder / "data").mkdir(parents=True, exist_ok=True)
        dataset.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder
