"""Imports every built-in dataset reader so that its registration runs."""

from rationality.data import caltech101  # noqa: F401
from rationality.data import coco  # noqa: F401
from rationality.data import corrupted  # noqa: F401
from rationality.data import cub  # noqa: F401
from rationality.data import folder  # noqa: F401
from rationality.data import imagenet  # noqa: F401
from rationality.data import imagenet_c  # noqa: F401
from rationality.data import stanford_dogs  # noqa: F401
from rationality.data import synthetic  # noqa: F401
