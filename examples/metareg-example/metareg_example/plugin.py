import metareg


@metareg.hookimpl
def metareg_transforms():
    yield metareg.TransformSpec("invert", "metareg_example.components:invert",
                                summary="Invert image intensities with probability p")


@metareg.hookimpl
def metareg_backbones():
    yield metareg.BackboneSpec("mlp", "metareg_example.components:mlp",
                               summary="Two-layer perceptron on flattened pixels")
