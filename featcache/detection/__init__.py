"""Detection and instance segmentation over any catalog backbone (BoB sections 3.2, 3.3).

Split like torchvision's ``references/detection``: :mod:`.data` (a detection split as a
torch dataset, augmentation), :mod:`.model` (backbone body + neck + torchvision's
(Mask) R-CNN, the three protocols), :mod:`.engine` (train one epoch, evaluate). None of
them opens a store; :mod:`featcache.runners.detection` is the glue that does.
"""
