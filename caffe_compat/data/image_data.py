"""The images of a list file as a PyTorch ``Dataset`` (what Caffe's ``ImageData`` layer reads).

Each item is read like ``ReadImageToCVMat``: ``root_folder + name``, decoded in colour or grey,
resized to ``new_height`` x ``new_width`` when both are set. Unlike ``convert_imageset`` an
unreadable image is fatal (Caffe: ``Could not load <name>``); we name the list file and line.
"""

from __future__ import annotations

import logging
import os

import numpy as np
from torch.utils.data import Dataset

from caffe_compat.data.imageio import ImageReadError, hwc_to_chw, load_image
from caffe_compat.data.listfile import read_list, show
from caffe_compat.errors import CaffeCompatError

log = logging.getLogger(__name__)


class ImageListDataset(Dataset):
    """``(CxHxW uint8 array, label)`` for each line of a Caffe image list, in list order."""

    def __init__(self, list_file: str | os.PathLike[str], root_folder: str = "", new_height: int = 0,
                 new_width: int = 0, is_color: bool = True) -> None:
        if not ((new_height == 0 and new_width == 0) or (new_height > 0 and new_width > 0)):
            raise CaffeCompatError(
                f"new_height ({new_height}) and new_width ({new_width}) must be set together or not at all"
            )
        self.listing = read_list(list_file)
        for warning in self.listing.warnings:
            log.warning(warning)
        self.root = os.fsencode(root_folder)
        self.new_height = new_height
        self.new_width = new_width
        self.is_color = is_color

    def __len__(self) -> int:
        return len(self.listing.entries)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        entry = self.listing.entries[index]
        try:
            img = load_image(self.root + entry.name, self.is_color, self.new_height, self.new_width)
        except ImageReadError as exc:
            raise CaffeCompatError(f"{self.listing.where(entry)}: could not load {show(entry.name)}: {exc}") from None
        return hwc_to_chw(img.pixels), entry.label
