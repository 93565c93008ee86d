"""Data: class-folder, TFDS and synthetic domains, class alignment, and tf.data streams."""

from ddc.data.images import DataError, IMAGE_EXTENSIONS, decode_image, to_channels  # noqa: F401
from ddc.data.domains import Domain, load_domain  # noqa: F401
from ddc.data.align import align_domains, stratified_split  # noqa: F401
