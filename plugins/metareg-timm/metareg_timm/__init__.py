"""metareg-timm: any timm model as a metareg backbone (``--backbone timm --backbone-opt model=resnet50``)."""
