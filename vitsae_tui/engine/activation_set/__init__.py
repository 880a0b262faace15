"""An activation set (`activations/<set>/`): this package alone reads and writes its files.

Fixed-size `.npy` shards of [tokens, d_model] rows, one thumbnail (and, on synthetic sets, concept-map) file per
shard, and `manifest.json` listing only complete shards: a killed collection leaves every listed shard whole.
"""

from vitsae_tui.engine.activation_set.manifest import (
    MANIFEST,
    MANIFEST_VERSION,
    SUMMARY,
    THUMB_SIZE,
    ImageEntry,
    Manifest,
    Provenance,
    SetSummary,
    ShardEntry,
    StoreError,
    check_provenance,
)
from vitsae_tui.engine.activation_set.reader import ActivationSet, find_validation_set
from vitsae_tui.engine.activation_set.writer import (
    ShardWriter,
    make_thumbnails,
    mark_complete,
    open_or_create,
    size_on_disk,
)

__all__ = [
    "MANIFEST",
    "MANIFEST_VERSION",
    "SUMMARY",
    "THUMB_SIZE",
    "ActivationSet",
    "ImageEntry",
    "Manifest",
    "Provenance",
    "SetSummary",
    "ShardEntry",
    "ShardWriter",
    "StoreError",
    "check_provenance",
    "find_validation_set",
    "make_thumbnails",
    "mark_complete",
    "open_or_create",
    "size_on_disk",
]
