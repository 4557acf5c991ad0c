"""The CIFAR-100 class hierarchy and the published few-shot splits built on it (CIFAR-FS, FC100).

Sources (checked against each other when written):

* CIFAR-100's 20 superclasses and their 5 classes each, with the archive's own
  spelling (``maple_tree``, ``large_man-made_outdoor_things``): the [superclass,
  class] pairs of torchmeta's ``datasets/assets/cifar100/cifar-fs/{train,val,test}.json``
  (github.com/tristandeleu/pytorch-meta), which together list all 100 classes.
  Class ids are the alphabetical order of the names, as in the archive's
  ``fine_label_names`` / ``coarse_label_names``.
* CIFAR-FS (Bertinetto et al., ICLR 2019): the 64 / 16 / 20 classes of
  ``splits/bertinetto/{train,val,test}.txt`` in their ``cifar100.zip``, as listed by the
  same torchmeta files.
* FC100 (Oreshkin et al., NeurIPS 2018, TADAM): superclasses 1, 2, 3, 4, 5, 6, 9, 10,
  15, 17, 18, 19 for training, 8, 11, 13, 16 for validation, 0, 7, 12, 14 for test
  (``class_split`` of TADAM's dataset script; torchmeta's ``fc100/{train,test}.json``
  and ``cifar100/val.json`` name the same superclasses).

Both splits pool CIFAR-100's training and test images: 600 images per class.
"""
from __future__ import annotations

SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
COARSE_NAMES: tuple[str, ...] = tuple(sorted(SUPERCLASSES))
FINE_NAMES: tuple[str, ...] = tuple(sorted(f for fines in SUPERCLASSES.values() for f in fines))
COARSE_OF: dict[str, str] = {f: c for c, fines in SUPERCLASSES.items() for f in fines}

CIFAR_FS: dict[str, tuple[str, ...]] = {
    "train": (
        "apple", "aquarium_fish", "bear", "bee", "bottle", "bowl", "boy", "bridge", "bus", "can", "castle",
        "caterpillar", "chair", "clock", "cloud", "cockroach", "couch", "cup", "dinosaur", "dolphin", "elephant",
        "forest", "girl", "hamster", "house", "kangaroo", "keyboard", "lawn_mower", "lion", "lizard", "lobster",
        "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid", "palm_tree", "pear", "pine_tree", "plate",
        "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "seal", "shrew", "skunk", "skyscraper", "snake",
        "spider", "squirrel", "streetcar", "sunflower", "tank", "tiger", "train", "trout", "tulip", "turtle",
        "willow_tree", "wolf",
    ),
    "validation": (
        "beaver", "beetle", "butterfly", "camel", "cattle", "crab", "crocodile", "flatfish", "lamp", "maple_tree",
        "motorcycle", "otter", "sea", "shark", "television", "tractor",
    ),
    "test": (
        "baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck", "plain", "poppy", "rocket",
        "rose", "snail", "sweet_pepper", "table", "telephone", "wardrobe", "whale", "woman", "worm",
    ),
}

# Superclass ids (alphabetical order of COARSE_NAMES), exactly TADAM's class_split.
FC100_SUPERCLASSES: dict[str, tuple[int, ...]] = {
    "train": (1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19),
    "validation": (8, 11, 13, 16),
    "test": (0, 7, 12, 14),
}
FC100: dict[str, tuple[str, ...]] = {
    split: tuple(sorted(f for c in ids for f in SUPERCLASSES[COARSE_NAMES[c]]))
    for split, ids in FC100_SUPERCLASSES.items()
}

SPLITS: dict[str, dict[str, tuple[str, ...]]] = {"cifarfs": CIFAR_FS, "fc100": FC100}
